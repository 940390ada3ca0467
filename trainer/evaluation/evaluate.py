"""Final evaluation of a training workdir: clean accuracy and the attack cascades, per stage.

Loads the EMA weights of the chosen checkpoint, attacks the first N test images (default all)
with each cascade (default: config.eval.attacks), prints a table in the manner of the paper's
Table 3, writes it to WORKDIR/eval.json and to TensorBoard under eval/, and checks for signs of
gradient masking. A cascade is 'standard', 'aa+mt', or a single stage name of
`trainer.attacks.autoattack` (e.g. 'pgd-20' or 'square', to see one attack alone). The model is
always rebuilt as it was trained; the config may change the data's place, ε or the attacks.
"""
import functools
import io
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath

from data import files
from data import images
from data import real
from models import registry
from models.interop import robustbench
from trainer.attacks.autoattack import autoattack
from trainer.attacks.autoattack import zero_gradient_share
from trainer import sharding
from trainer.attacks.stages import VERSIONS
from trainer.evaluation import chunks
from trainer.harness import workdir as workdir_lib
from trainer.robust import classifier

SQUARE_SHARE_THRESHOLD = 0.002  # as fra31/auto-attack's check: Square adding > 0.2 pp is suspect


def checkpoint_step(workdir, which):
  """The training step of checkpoint `which`, or None if it cannot be told."""
  if which == 'best':
    record = epath.Path(workdir, 'best.json')
    return int(workdir_lib.read_json(record)['step']) if record.exists() else None
  if which == 'latest':
    steps = [int(p.name) for p in epath.Path(workdir, 'checkpoints').glob('*') if p.name.isdigit()]
    return max(steps, default=None)
  return int(which)


def _architecture(config):
  """config.model without what may differ from training: the compute dtype and remat."""
  model = dict(config.model.to_dict())
  for key in ('dtype', 'remat'):
    model.pop(key, None)
  model.setdefault('bn_group_size', 0)
  return model


def _cascades(spec):
  names = [s.strip() for s in spec.split(',') if s.strip()]
  if not names:
    raise ValueError(f'No cascade in attacks={spec!r}.')
  return names


def _version(name):
  """A version name as is; a single stage name as a one-stage cascade."""
  return name if name in VERSIONS else [name]


def _masking_report(results, zero_share, n):
  """Counts that hint at gradient masking, and the warnings they raise."""
  whitebox_robust = np.ones(n, bool)
  square_broken = np.zeros(n, bool)
  has_whitebox = False
  for result in results.values():
    stages = [name.split('#')[0] for name in result.stage_accuracy]
    if any(s != 'square' for s in stages):
      has_whitebox = True
      whitebox_robust &= result.robust | (result.broken_by == 'square')
    square_broken |= result.broken_by == 'square'
  square_only = int(np.sum(square_broken & whitebox_robust)) if has_whitebox else 0
  flags_raised = []
  for loss, share in zero_share.items():
    if share > 0:
      flags_raised.append(f'{100 * share:.2f}% of the points have a zero input gradient of the '
                          f'{loss.upper()} loss at the clean image.')
  if square_only > SQUARE_SHARE_THRESHOLD * n:
    flags_raised.append(f'Square broke {square_only} points ({100 * square_only / n:.2f}%) that '
                        'every gradient-based attack missed.')
  return {'zero_gradient_share': zero_share, 'square_only_points': square_only,
          'square_only_share': square_only / n, 'flags': flags_raised}


def format_table(summary):
  """The per-stage table: one block per cascade, clean accuracy first."""
  eps = summary['eps']
  eps_text = f'{eps:.4g}' + (f' ({eps * 255:.3g}/255)' if summary['norm'] == 'linf' else '')
  lines = [f"{summary['model']} on {summary['dataset']} test[:{summary['num_examples']}], "
           f"checkpoint {summary['checkpoint']} (step {summary['step']}), {summary['norm']} "
           f'ε = {eps_text}', '']
  cascades = summary['cascades']
  a = max([12] + [len(name) + 2 for name in cascades])   # column widths: names never run on
  b = max([12] + [len(stage) + 2 for c in cascades.values() for stage in c['stage_accuracy']])
  lines.append(f"{'cascade':<{a}}{'stage':<{b}}{'accuracy':>10}{'broken':>9}{'seconds':>10}")
  for cascade, c in cascades.items():
    lines.append(f"{cascade:<{a}}{'clean':<{b}}{100 * summary['clean_accuracy']:>9.2f}%")
    for stage, acc in c['stage_accuracy'].items():
      lines.append(f"{'':<{a}}{stage:<{b}}{100 * acc:>9.2f}%{c['broken'][stage]:>9d}"
                   f"{c['seconds'][stage]:>10.1f}")
  lines += ['', f"worst case over the cascades: {100 * summary['worst_case_robust_accuracy']:.2f}%"]
  masking = summary['gradient_masking']
  zero = ', '.join(f'{k.upper()} {100 * v:.2f}%' for k, v in masking['zero_gradient_share'].items())
  lines.append(f'zero input gradient at the clean image: {zero}')
  lines.append(f"points broken only by Square: {masking['square_only_points']}")
  lines += [f'POSSIBLE GRADIENT MASKING: {f}' for f in masking['flags']]
  return '\n'.join(lines)


def _summarise(results, clean_accuracy, meta, zero_share):
  n = meta['num_examples']
  cascades = {}
  for cascade, r in results.items():
    cascades[cascade] = {
        'stage_accuracy': dict(r.stage_accuracy),
        'robust_accuracy': r.robust_accuracy,
        'broken': {s: int(np.sum(r.broken_by == s)) for s in r.stage_accuracy},
        'seconds': dict(r.stage_seconds)}
  worst = np.logical_and.reduce([r.robust for r in results.values()])
  return dict(meta, clean_accuracy=clean_accuracy, cascades=cascades,
              worst_case_robust_accuracy=float(np.mean(worst)),
              gradient_masking=_masking_report(results, zero_share, n))


def robustbench_record(summary):
  """The result in RobustBench's terms (its model-info fields; accuracies in percent, as strings
  the way RobustBench writes them): AutoAttack is the first of the 'standard', 'plus' or 'rand'
  cascades that ran, None if none did."""
  version = next((v for v in ('standard', 'plus', 'rand') if v in summary['cascades']), None)
  percent = lambda a: None if a is None else str(round(100 * a, 2))
  return {'dataset': summary['dataset'],
          'threat_model': {'linf': 'Linf', 'l2': 'L2'}.get(summary['norm'].lower()),
          'eps': summary['eps'], 'clean_acc': percent(summary['clean_accuracy']),
          'autoattack_acc': percent(version and summary['cascades'][version]['robust_accuracy']),
          'autoattack_version': version, 'n_examples': summary['num_examples'],
          'architecture': robustbench.architecture_name(summary['model']),
          'model': summary['model'], 'checkpoint': summary['checkpoint'], 'step': summary['step']}


def _scalars(summary):
  out = {'eval/clean_accuracy': summary['clean_accuracy'],
         'eval/worst_case_robust_accuracy': summary['worst_case_robust_accuracy']}
  for cascade, c in summary['cascades'].items():
    out[f'eval/{cascade}/robust_accuracy'] = c['robust_accuracy']
    for stage, acc in c['stage_accuracy'].items():
      out[f'eval/{cascade}/{stage}'] = acc
  for loss, share in summary['gradient_masking']['zero_gradient_share'].items():
    out[f'eval/zero_gradient_share_{loss}'] = share
  out['eval/square_only_share'] = summary['gradient_masking']['square_only_share']
  return out


@jax.jit
def _labels(logits_fn, x):
  return jnp.argmax(logits_fn(x), axis=-1)


def _zero_gradient_shares(workdir, plan, x, y, losses, logits_fn, mesh, batch_size, chunk):
  """{loss: share of the correctly classified points with a zero input gradient}, chunked."""
  def check(a, b, seed):
    del seed
    predicted = sharding.map_batches(lambda xb: _labels(logits_fn, xb), mesh, batch_size,
                                     [x[a:b]], ladder=True)
    correct = int(np.sum(predicted == y[a:b]))
    return {'correct': np.asarray(correct),
            **{loss: np.asarray(round(correct * zero_gradient_share(
                logits_fn, x[a:b], y[a:b], loss=loss, batch_size=batch_size, mesh=mesh)))
               for loss in losses}}
  parts = chunks.run(workdir, 'gradients', plan, len(y), chunk, check)
  correct = sum(int(p['correct']) for p in parts)
  return {loss: sum(int(p[loss]) for p in parts) / correct if correct else 0.0 for loss in losses}


def _write_points(workdir, results):
  """WORKDIR/eval_points.npz: per cascade, each point's robust flag and the stage that broke it."""
  arrays = {}
  for cascade, result in results.items():
    arrays[f'{cascade}/robust'] = result.robust
    arrays[f'{cascade}/broken_by'] = result.broken_by.astype('U32')
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.write_atomic(os.path.join(workdir, 'eval_points.npz'), buffer.getvalue())


def evaluate(config, workdir, *, checkpoint='best', num_examples=0, attacks=None, batch_size=0):
  """Runs the evaluation; writes eval.json and TensorBoard scalars; returns the summary dict."""
  workdir = os.fspath(workdir)
  attacks = attacks or config.eval.attacks
  cascades = _cascades(attacks)
  batch_size = batch_size or config.eval.batch_size
  stored, _, variables = classifier.load(workdir, checkpoint)
  if _architecture(stored) != _architecture(config):
    raise ValueError('The model settings (config.model) cannot be overridden: the checkpoint '
                     f'holds a {stored.model.name} as trained.')
  # The attacks run in eval.dtype (float32 unless asked), whatever the training compute dtype.
  model = registry.from_config(stored, dtype=config.eval.dtype)
  step = checkpoint_step(workdir, checkpoint)

  test = real.load(config.dataset, 'test')
  n = num_examples or len(test['label'])
  if n > len(test['label']):
    raise ValueError(f'num_examples={n} but the {config.dataset.name} test split has '
                     f'{len(test["label"])} images.')
  x = np.asarray(images.to_float(test['image'][:n]))
  y = test['label'][:n].astype(np.int32)
  # On this host's devices: several hosts split the chunks between them (chunks.py).
  mesh = sharding.make_mesh(devices=jax.local_devices())
  logits_fn = jax.device_put(
      jax.tree_util.Partial(functools.partial(model.apply, train=False),
                            sharding.host_copy(variables)), sharding.replicated(mesh))
  norm, eps = config.threat.norm, float(config.threat.eps)
  logging.info('Evaluating %s checkpoint %s (step %s) on %d %s test images, %s eps=%g: %s',
               workdir, checkpoint, step, n, config.dataset.name, norm, eps, cascades)
  plan = {'checkpoint': checkpoint, 'step': step, 'model': stored.model.name, 'norm': norm,
          'eps': eps, 'seed': config.seed, 'dtype': config.eval.dtype,
          'dataset': config.dataset.name}
  chunk = config.eval.chunk_size

  num_classes = real.info(config.dataset).num_classes
  losses = [loss for loss in ('ce', 'dlr') if loss == 'ce' or num_classes >= 3]
  zero_share = _zero_gradient_shares(workdir, plan, x, y, losses, logits_fn, mesh, batch_size,
                                     chunk)
  results = {}
  for cascade in cascades:
    start = time.time()

    def attack(a, b, seed, cascade=cascade):
      return chunks.result_arrays(autoattack(
          logits_fn, x[a:b], y[a:b], norm=norm, eps=eps, version=_version(cascade), seed=seed,
          batch_size=batch_size, mesh=mesh, progress=True))
    results[cascade] = chunks.merge(chunks.run(workdir, cascade, plan, n, chunk, attack))
    logging.info('%s done in %.1f s: robust accuracy %.2f%%', cascade, time.time() - start,
                 100 * results[cascade].robust_accuracy)
  clean_accuracy = results[cascades[-1]].clean_accuracy

  meta = {'workdir': workdir, 'checkpoint': checkpoint, 'step': step, 'model': stored.model.name,
          'dataset': config.dataset.name, 'split': 'test', 'num_examples': n, 'norm': norm,
          'eps': eps, 'seed': config.seed, 'attacks': cascades}
  summary = _summarise(results, clean_accuracy, meta, zero_share)
  print(format_table(summary), flush=True)
  for message in summary['gradient_masking']['flags']:
    logging.warning('Possible gradient masking: %s', message)

  if jax.process_index() == 0:
    _write_points(workdir, results)
    workdir_lib.write_json(epath.Path(workdir, 'eval.json'), summary)
    workdir_lib.write_json(epath.Path(workdir, 'robustbench.json'), robustbench_record(summary))
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_scalars(step or 0, _scalars(summary))
  writer.flush()
  return summary
