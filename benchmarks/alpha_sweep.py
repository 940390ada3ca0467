"""Robust accuracy against the real share α, per generator: the paper's Fig. 3(a) and Fig. 5 at
small scale, and in the data-scarce regime.

  python benchmarks/alpha_sweep.py --workdir=runs/alpha_sweep [--alphas=1.0,0.8,0.5,0.2]
      [--seeds=0,1,2] [--epochs=30] [--num_generated=10000] [--model=wrn-10-2] [--eps=0.1]
      [--classifier_epochs=15] [--generators=gaussian[,ddpm][,edm] [--ddpm_checkpoint=DIR]
      [--edm_checkpoint=DIR]]
      [--samplers=ddpm-1000,ddim-100,dpm++2m-20] [--class_balanced=1]
      [--train_fractions=0.1,0.25,0.5] [--attacks=aa+mt]

On digits (the demo config, with the ε and pseudo-labeller epochs of the recorded Fig. 3(a) sweep as
defaults): one non-robust classifier; per generator (the class-conditional Gaussian fit, and/or a
diffusion model: --ddpm_checkpoint / --edm_checkpoint, e.g. one made by `trainer.train_generator`,
or without it one the method trains, `configs/ddpm_digits.py` / `edm_digits.py`; an EDM samples
with Heun's 18 noise levels, 35 evaluations) N pseudo-labelled samples and their Algorithm-1
numbers; then TRADES for every (α, seed), the same model and budget for all, each evaluated on the
whole digits test split on its best EMA checkpoint (held-out PGD selection) with PGD-40 (margin
loss, sign steps of 2.5ε/40, uniform start) and, with --attacks, the named cascades of
`trainer.evaluate`. α = 1 uses no generated data, so its runs are shared by the generators and run
first. Prints mean ± std per (generator, α) and each run's seconds; writes alpha_sweep.json (with
each run's held-out robust accuracy curve and best step), alpha_sweep.png and the generators' sample
grids side by side (samples.png) into the workdir. Every finished run is skipped when the script is
started again.

--samplers samples one DDPM with each sampler (NAME-STEPS; the demo's DPM-Solver++(2M)-20 without
it): the generators become ddpm@NAME-STEPS, each with its set, data metrics and the wall time of
its sampling stage (sampling.json). --class_balanced=1 (the default, as the paper's sets) keeps the
first N / classes of each pseudo-label class; 0 keeps every sample (the sections of BENCHMARKS.md
before the option). --train_fractions keeps a class-balanced subset of the training split
(dataset.train_fraction) for everything trained (classifier, Gaussian fit, DDPM, TRADES): one tree
per fraction (WORKDIR/f0.1, …; 1.0 is WORKDIR itself), and with several fractions fractions.json,
fractions.png (accuracy and the gain over α = 1 against the kept fraction) and heldout.png (the
held-out curves) at the top.
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from configs import demo  # noqa: E402
from data import real  # noqa: E402
from data.records import shards  # noqa: E402
from trainer import cli  # noqa: E402
from trainer.evaluation import evaluate as evaluate_lib  # noqa: E402
from trainer.pipeline import console as console_lib  # noqa: E402
from trainer.pipeline import report  # noqa: E402
from trainer.pipeline import stages as method  # noqa: E402
from trainer.robust import robust_accuracy  # noqa: E402
from trainer import sharding  # noqa: E402
from trainer.robust import classifier  # noqa: E402
from trainer.robust import train  # noqa: E402
from trainer.attacks.pgd import pgd_attack  # noqa: E402

REAL_ONLY = 'real'  # the runs at α = 1, shared by every generator


def pgd40(workdir, config):
  _, model, variables = classifier.load(workdir, 'best')
  test = real.load(config.dataset, 'test')
  attack = pgd_attack(norm=config.threat.norm, eps=config.threat.eps, steps=40,
                          loss='margin')
  measure = robust_accuracy.make_measure(model, attack, sharding.make_mesh(config),
                                         config.eval.batch_size)
  return measure(variables, test['image'], test['label'])


def run_one(base, out, manifest, alpha, seed, attacks):
  """TRADES for one (α, seed), then its evaluations; each result is kept in `out`."""
  result_path = os.path.join(out, 'pgd40.json')
  c = copy.deepcopy(base)
  c.seed, c.generated.alpha, c.generated.path = seed, alpha, manifest if alpha < 1 else ''
  if not os.path.exists(result_path):
    start = time.time()
    train.train_and_evaluate(c, out)
    result = pgd40(out, c)
    result['train_and_pgd40_seconds'] = time.time() - start
    json.dump(result, open(result_path, 'w'))
  result = json.load(open(result_path))
  result['heldout_curve'] = heldout_curve(out)
  result['best_step'] = json.load(open(os.path.join(out, 'best.json')))['step']
  for cascade in attacks:
    path = os.path.join(out, f'{cascade}.json')
    if not os.path.exists(path):
      start = time.time()
      summary = evaluate_lib.evaluate(c, out, attacks=cascade)
      json.dump({'robust': summary['cascades'][cascade]['robust_accuracy'],
                 'clean': summary['clean_accuracy'],
                 'seconds': time.time() - start}, open(path, 'w'))
    result[cascade] = json.load(open(path))
  # Every run compiles its own programs, and the executables that JAX keeps hold memory maps: a
  # sweep of 33 runs with AA+MT in one process ran out of them (vm.max_map_count, 65,530).
  jax.clear_caches()
  return result


def heldout_curve(workdir):
  """[(step, held-out robust accuracy)] of a training run, from its TensorBoard events."""
  return [list(p) for p in report.read_scalars(workdir).get('holdout/robust_accuracy', [])]


# The sampler of each diffusion kind unless --samplers names others (the DDPM's: the demo's).
DEFAULT_SAMPLER = {'edm': ('heun', 18)}


def variants(generators, samplers):
  """[(name, generator, sampler, steps)]: one per generator, and the DDPM once per sampler."""
  out = []
  for generator in generators:
    if generator != 'ddpm' or not samplers:
      out.append((generator, generator, *DEFAULT_SAMPLER.get(generator, (None, None))))
      continue
    for spec in samplers:
      name, steps = spec.rsplit('-', 1)
      out.append((f'ddpm@{spec}', 'ddpm', name, int(steps)))
  return out


def diffusion_path(base, stages, kind, checkpoint, console):
  """The DDPM or EDM to sample: the one given, or the one the method trains in stages/KIND."""
  if checkpoint:
    return checkpoint
  c = copy.deepcopy(base)
  c.pipeline.generator, c.pipeline.generator_checkpoint = kind, ''
  c.pipeline.generator_preset = f'{kind}_digits'
  return method.stage_generator(c, os.path.join(stages, kind), console)


def generator_data(base, stages, classifier, variant, checkpoints, console):
  """The generator's pseudo-labelled shards, their data metrics and the sampling stage's wall
  time, in stages/<name>."""
  name, generator, sampler, steps = variant
  c = copy.deepcopy(base)
  c.pipeline.generator = generator
  c.pipeline.generator_checkpoint = checkpoints.get(generator, '')
  if sampler:
    c.pipeline.sampler, c.pipeline.sampler_steps = sampler, steps
  workdir = os.path.join(stages, name)
  made = method.stage_generator(c, workdir, console)
  timing = os.path.join(workdir, 'generated', 'sampling.json')
  start = time.time()
  manifest = method.stage_samples(c, workdir, made, classifier, console)
  if not os.path.exists(timing):
    balance = shards.load_manifest(manifest)['metadata'].get('class_balance', {})
    json.dump({'seconds': time.time() - start, 'images': c.pipeline.num_generated,
               'candidates': balance.get('candidates', c.pipeline.num_generated)},
              open(timing, 'w'))
  numbers = method.stage_data_metrics(c, workdir, manifest, classifier, console)
  return manifest, {**numbers, 'sampling': json.load(open(timing))}


def summarise(results, attacks):
  sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
  out = {'best_steps': [r['best_step'] for r in results],
         'heldout_curves': [r['heldout_curve'] for r in results]}
  for name, values in [('clean', [r['clean'] for r in results]),
                       ('robust', [r['robust'] for r in results])] + [
                           (a, [r[a]['robust'] for r in results]) for a in attacks]:
    out[name] = {'mean': statistics.mean(values), 'std': sd(values), 'runs': values}
  out['seconds'] = [r['train_and_pgd40_seconds'] + sum(r[a]['seconds'] for a in attacks)
                    for r in results]
  return out


def plot(summary, attacks, title, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics_shown = [('robust', 'PGD-40')] + [(a, a.upper()) for a in attacks]
  fig, axes = plt.subplots(1, len(metrics_shown), figsize=(4.6 * len(metrics_shown), 3.4),
                           squeeze=False)
  for ax, (key, label) in zip(axes[0], metrics_shown):
    for generator, rows in summary.items():
      alphas = sorted(rows)
      ax.errorbar(alphas, [100 * rows[a][key]['mean'] for a in alphas],
                  yerr=[100 * rows[a][key]['std'] for a in alphas], marker='o', capsize=4,
                  label=generator)
    ax.set_xlabel('α (share of real images per batch)')
    ax.set_ylabel(f'{label} robust accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def plot_samples(stages, generators, path):
  """The generators' sample grids (rows: pseudo-labels), side by side."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(generators), figsize=(5 * len(generators), 5.3), squeeze=False)
  for ax, generator in zip(axes[0], generators):
    ax.imshow(plt.imread(os.path.join(stages, generator, 'generated', 'samples.png')),
              cmap='gray')
    ax.set_title(generator)
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def print_table(summary, attacks):
  cols = ['clean', 'robust'] + list(attacks)
  heads = ['clean %', 'PGD-40 %'] + [f'{a.upper()} %' for a in attacks]
  print('| generator | α | ' + ' | '.join(heads) + ' | seconds per run |')
  print('|---|---:|' + '---:|' * len(cols) + '---:|')
  for generator, rows in summary.items():
    for alpha in sorted(rows, reverse=True):
      r = rows[alpha]
      cells = [f"{100 * r[k]['mean']:.2f} ± {100 * r[k]['std']:.2f}" for k in cols]
      print(f'| {generator} | {alpha:g} | ' + ' | '.join(cells) +
            f" | {statistics.mean(r['seconds']):.0f} |")


def _cells(per_fraction):
  """[(label, generator, α)]: real only, then each generator's mixes, as every fraction has them."""
  first = next(iter(per_fraction.values()))
  cells = [('real only (α = 1)', next(iter(first)), 1.0)]
  for generator, rows in first.items():
    cells += [(f'{generator}, α = {a:g}', generator, a) for a in sorted(rows, reverse=True)
              if a != 1.0]
  return cells


def fraction_outputs(per_fraction, attacks, workdir, title):
  """The table, fractions.json, fractions.png and heldout.png over the kept fractions."""
  fractions = sorted(per_fraction)
  cells = _cells(per_fraction)
  for key, name in [('robust', 'PGD-40')] + [(a, a.upper()) for a in attacks]:
    print(f'| {name} % | ' + ' | '.join(f'kept {f:g}' for f in fractions) + ' |')
    print('|---|' + '---:|' * len(fractions))
    for label, generator, alpha in cells:
      row = []
      for f in fractions:
        r, base = per_fraction[f][generator][alpha][key], per_fraction[f][generator][1.0][key]
        gain = '' if alpha == 1.0 else f' ({100 * (r["mean"] - base["mean"]):+.2f})'
        row.append(f'{100 * r["mean"]:.2f} ± {100 * r["std"]:.2f}{gain}')
      print(f'| {label} | ' + ' | '.join(row) + ' |')
    print()
  json.dump({str(f): {g: {str(a): r for a, r in rows.items()} for g, rows in s.items()}
             for f, s in per_fraction.items()},
            open(os.path.join(workdir, 'fractions.json'), 'w'), indent=1)
  plot_fractions(per_fraction, cells, attacks, title, os.path.join(workdir, 'fractions.png'))
  plot_heldout(per_fraction, cells, title, os.path.join(workdir, 'heldout.png'))


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_fractions(per_fraction, cells, attacks, title, path):
  """Robust accuracy, and its gain over real data alone, against the kept fraction."""
  plt = _pyplot()
  keys = [('robust', 'PGD-40')] + [(a, a.upper()) for a in attacks]
  fig, axes = plt.subplots(2, len(keys), figsize=(5.2 * len(keys), 7.4), squeeze=False)
  fractions = sorted(per_fraction)
  for column, (key, name) in enumerate(keys):
    for label, generator, alpha in cells:
      rows = [per_fraction[f][generator] for f in fractions]
      mean = [100 * r[alpha][key]['mean'] for r in rows]
      std = [100 * r[alpha][key]['std'] for r in rows]
      style = dict(marker='o', capsize=3, label=label,
                   linewidth=2.5 if alpha == 1.0 else 1.2, color='k' if alpha == 1.0 else None,
                   linestyle='-' if alpha == 1.0 or not generator.startswith('gaussian') else '--')
      axes[0, column].errorbar(fractions, mean, yerr=std, **style)
      if alpha != 1.0:
        gain = [m - 100 * r[1.0][key]['mean'] for m, r in zip(mean, rows)]
        axes[1, column].plot(fractions, gain, **{k: v for k, v in style.items()
                                                 if k != 'capsize'})
    axes[1, column].axhline(0, color='k', linewidth=2.5)
    axes[0, column].set_ylabel(f'{name} robust accuracy (%)')
    axes[1, column].set_ylabel(f'{name}: gain over real only (pp)')
    for ax in axes[:, column]:
      ax.set_xscale('log')
      ax.set_xticks(fractions, [f'{f:g}' for f in fractions])
      ax.set_xlabel('kept fraction of the digits training split')
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _mean_curve(curves):
  steps = sorted({s for c in curves for s, _ in c})
  by_step = [[v for c in curves for s2, v in c if s2 == s] for s in steps]
  return steps, [100 * statistics.mean(v) for v in by_step]


def plot_heldout(per_fraction, cells, title, path):
  """Held-out robust accuracy during training (mean over seeds), one panel per fraction."""
  plt = _pyplot()
  fractions = sorted(per_fraction)
  fig, axes = plt.subplots(1, len(fractions), figsize=(5 * len(fractions), 3.8), squeeze=False)
  for ax, f in zip(axes[0], fractions):
    for label, generator, alpha in cells:
      steps, values = _mean_curve(per_fraction[f][generator][alpha]['heldout_curves'])
      ax.plot(steps, values, label=label, linewidth=2.5 if alpha == 1.0 else 1.2,
              color='k' if alpha == 1.0 else None,
              linestyle='-' if alpha == 1.0 or not generator.startswith('gaussian') else '--')
    ax.set_title(f'kept {f:g}')
    ax.set_xlabel('step')
    ax.set_ylabel('held-out PGD robust accuracy (%)')
    ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--alphas', default='1.0,0.8,0.5,0.2')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--epochs', type=int, default=30)
  parser.add_argument('--num_generated', type=int, default=10_000)
  parser.add_argument('--model', default='wrn-10-2', help='the robust model (demo: wrn-10-2)')
  parser.add_argument('--eps', type=float, default=0.1, help='L∞ radius (demo: 0.15)')
  parser.add_argument('--classifier_epochs', type=int, default=15,
                      help='epochs of the non-robust pseudo-labeller (demo: 12)')
  parser.add_argument('--generators', default='gaussian', help='gaussian, ddpm and/or edm')
  parser.add_argument('--ddpm_checkpoint', default='',
                      help="generator checkpoint directory for 'ddpm' (trainer.train_generator's "
                      "WORKDIR/generator); '' trains one in the method's stages")
  parser.add_argument('--edm_checkpoint', default='',
                      help="the same for 'edm' (configs/edm_digits.py when '')")
  parser.add_argument('--samplers', default='',
                      help='NAME-STEPS of each DDPM sampler, e.g. ddpm-1000,ddim-100,dpm++2m-20')
  parser.add_argument('--class_balanced', type=int, choices=(0, 1), default=1,
                      help='1: the first N / classes of each pseudo-label class; 0: every sample')
  parser.add_argument('--train_fractions', default='1.0',
                      help='kept fractions of the training split (class-balanced subsets)')
  parser.add_argument('--attacks', default='',
                      help='cascades of trainer.evaluate to run as well, e.g. aa+mt')
  return parser.parse_args()


def base_config(args, fraction):
  c = demo.get_config()
  c.threat.eps = args.eps
  c.pipeline.classifier_epochs = args.classifier_epochs
  c.train.num_epochs = args.epochs
  c.model.name = args.model
  c.pipeline.num_generated = args.num_generated
  c.pipeline.class_balanced = bool(args.class_balanced)
  c.dataset.train_fraction = fraction
  return c


def sweep(args, base, workdir, console):
  """Every run of one kept fraction in `workdir`; returns (summary, data metrics)."""
  attacks = [a for a in args.attacks.split(',') if a]
  alphas = [float(a) for a in args.alphas.split(',')]
  seeds = [int(s) for s in args.seeds.split(',')]
  stages = os.path.join(workdir, 'method')
  classifier = method.stage_classifier(base, stages, console)
  real_only = {seed: run_one(base, os.path.join(workdir, REAL_ONLY, f'alpha1.0_seed{seed}'), '',
                             1.0, seed, attacks) for seed in seeds if 1.0 in alphas}
  kinds = variants(args.generators.split(','), [s for s in args.samplers.split(',') if s])
  given = {'ddpm': args.ddpm_checkpoint, 'edm': args.edm_checkpoint}
  checkpoints = {kind: diffusion_path(base, stages, kind, cli.absolute(given[kind]), console)
                 for kind in given if any(v[1] == kind for v in kinds)}
  data = {v[0]: generator_data(base, stages, classifier, v, checkpoints, console)
          for v in kinds}
  # Seed by seed, so that an interrupted sweep has every (generator, α) at the same count.
  results = {}
  for seed in seeds:
    for generator, (manifest, _) in data.items():
      for alpha in alphas:
        result = real_only[seed] if alpha == 1.0 else run_one(
            base, os.path.join(workdir, generator, f'alpha{alpha}_seed{seed}'), manifest, alpha,
            seed, attacks)
        results.setdefault(generator, {}).setdefault(alpha, []).append(result)
  summary = {g: {a: summarise(r, attacks) for a, r in rows.items()}
             for g, rows in results.items()}
  print_table(summary, attacks)
  print()
  print_data_metrics({g: d[1] for g, d in data.items()})
  json.dump({'summary': {g: {str(a): r for a, r in rows.items()} for g, rows in summary.items()},
             'data_metrics': {g: d[1] for g, d in data.items()},
             'train_fraction': base.dataset.train_fraction},
            open(os.path.join(workdir, 'alpha_sweep.json'), 'w'), indent=2)
  plot_samples(stages, list(data), os.path.join(workdir, 'samples.png'))
  plot(summary, attacks, f'digits, ε = {args.eps:g}, TRADES {args.model}, '
       f'seeds {args.seeds}, kept {base.dataset.train_fraction:g}',
       os.path.join(workdir, 'alpha_sweep.png'))
  return summary, {g: d[1] for g, d in data.items()}


def print_data_metrics(numbers):
  first = next(iter(numbers.values()))
  keys = [k for k, v in first.items() if isinstance(v, float)]
  print('| generator | ' + ' | '.join(keys) + ' | sampling s | candidates | images/s |')
  print('|---|' + '---:|' * (len(keys) + 3))
  for generator, row in numbers.items():
    timing = row['sampling']
    print(f'| {generator} | ' + ' | '.join(f'{row.get(k, float("nan")):.3f}' for k in keys) +
          f" | {timing['seconds']:.0f} | {timing['candidates']} | "
          f"{timing['candidates'] / timing['seconds']:.2f} |")


def main():
  args = parse_args()
  workdir = cli.absolute(args.workdir)
  console = console_lib.Console()
  fractions = [float(f) for f in args.train_fractions.split(',')]
  per_fraction = {}
  for fraction in fractions:
    root = workdir if fraction == 1.0 else os.path.join(workdir, f'f{fraction:g}')
    per_fraction[fraction], _ = sweep(args, base_config(args, fraction), root, console)
  if len(fractions) > 1:
    attacks = [a for a in args.attacks.split(',') if a]
    fraction_outputs(per_fraction, attacks, workdir,
                     f'digits, ε = {args.eps:g}, TRADES {args.model}, {args.epochs} epochs')


if __name__ == '__main__':
  main()
