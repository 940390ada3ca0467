"""The whole method in one command.

  python -m trainer.method --config=configs/demo.py [--config.key=value …] --workdir=DIR

  1. classifier/      non-robust classifier (train.loss='standard') on the real training set
  2. generator/       class-conditional Gaussian fit of the real training set (App. D), or
                      (pipeline.generator='ddpm') a diffusion model's checkpoint
  3. generated/       N samples → pseudo-labelled by the classifier (optionally top-K per class)
                      → shards
  4. generated/       Algorithm 1's complementarity and coverage (data_metrics.json), samples.png
  5. robust/          TRADES on batches of α real and 1 − α generated images
  6. robust/eval.json final evaluation with the attack cascade(s) of config.eval.attacks
     report.md        the stage table, the evaluation per attack stage, samples and curves

Every stage writes its output last and is skipped when that output exists, so an interrupted run
resumes where it stopped (the training stages also resume from their checkpoints). A training
stage stopped by a preemption notice stops the method too: `run` returns status 'stopped'.
"""
import contextlib
import copy
import json
import os
import time

from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags
import numpy as np
import tqdm

from data import real
from data.generation import gaussian_fit
from data.generation import metrics
from data.records import shard_writer
from data.records import shards
from models import features
from trainer import checkpointing
from trainer import cli
from trainer import pseudolabel
from trainer import report
from trainer import sharding
from trainer import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every stage of the method.')

STAGES = ('classifier', 'generator', 'samples', 'data metrics', 'robust', 'evaluation')
GRID_WIDTH = 480  # pixels: small images are upscaled so a person can see them


class Stopped(Exception):
  """A training stage stopped before its last step (preemption); its checkpoint is saved."""


class Console:
  """One line when each stage starts and one when it ends: headline figure, output, seconds."""

  def __init__(self, stream=None):
    self.seconds, self.headlines = {}, {}
    self._print = (lambda text: print(text, flush=True)) if stream is None else stream

  @contextlib.contextmanager
  def stage(self, name, what, out, done):
    i = STAGES.index(name) + 1
    tag = f'[{i}/{len(STAGES)}] {name:<13}'
    start = time.time()
    result = {}
    if done:
      yield result
      headline = result.get('headline', '')
      self._print(f'{tag}done before → {report.shown(out)}  {headline}'.rstrip())
    else:
      self._print(f'{tag}{what} → {report.shown(out)}')
      yield result
      self.seconds[name] = time.time() - start
      self._print(f'{tag}done in {self.seconds[name]:.0f} s: {result.get("headline", "")}')
    self.headlines[name] = result.get('headline', '')


def _done(path):
  return epath.Path(path).exists()


def _percent(value):
  return f'{100 * value:.1f}%'


def classifier_config(config):
  """The robust config turned into the pseudo-labeller's: no attack, real data only."""
  c = copy.deepcopy(config)
  c.train.loss = 'standard'
  c.model.name = config.pipeline.classifier_model
  c.train.num_epochs = config.pipeline.classifier_epochs
  c.generated.alpha, c.generated.path = 1.0, ''
  return c


def _train(config, out, name):
  """Trains to the end (or finds it done); raises Stopped when a preemption stopped it first."""
  if not _done(os.path.join(out, 'done.json')):
    if not train.train_and_evaluate(config, out, progress_name=name)['finished']:
      raise Stopped(name)
  return json.loads(epath.Path(out, 'done.json').read_text())['final']


def _accuracies(final, keys):
  return ', '.join(f'{label} {_percent(final[k])}' for k, label in keys if k in final)


def stage_classifier(config, workdir, console):
  out = os.path.join(workdir, 'classifier')
  c = classifier_config(config)
  with console.stage('classifier', f'training a non-robust {c.model.name} '
                     f'({c.train.num_epochs:g} epochs)', out,
                     _done(os.path.join(out, 'done.json'))) as stage:
    final = _train(c, out, 'classifier')
    stage['headline'] = _accuracies(final, (('holdout/clean_accuracy', 'held-out'),
                                            ('test/clean_accuracy', 'test')))
  return out


def stage_generator(config, workdir, console):
  """The Gaussian fit (made here), or the diffusion model's checkpoint (given by the config)."""
  if config.pipeline.generator == 'ddpm':
    return _ddpm_generator(config, console)
  path = os.path.join(workdir, 'generator', 'gaussian_fit.npz')
  k = config.pipeline.gaussian_components
  with console.stage('generator', f'class-conditional Gaussian fit ({k} components per class)',
                     path, _done(path)) as stage:
    if not _done(path):
      train_data, _, _ = real.training_splits(config)
      fit = gaussian_fit.fit(train_data['image'], train_data['label'],
                             real.info(config.dataset.name).num_classes, n_components=k)
      epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
      gaussian_fit.save(fit, path)
    stage['headline'] = f'{k} PCA components per class'
  return path


def _ddpm_generator(config, console):
  path = cli.absolute(config.pipeline.generator_checkpoint)
  if not path:
    raise cli.UserError("pipeline.generator='ddpm' needs --config.pipeline.generator_checkpoint="
                        'DIR: a generator checkpoint (python -m models.diffusion.diffusers_import '
                        'makes one from a diffusers model)')
  from models.diffusion import checkpoint  # pylint: disable=g-import-not-at-top
  with console.stage('generator', 'diffusion model', path, done=True) as stage:
    generator = checkpoint.load(path)
    params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(generator.params))
    shape = real.info(config.dataset.name).shape
    if tuple(generator.image_shape) != tuple(shape):
      raise ValueError(f'{path} generates images of shape {tuple(generator.image_shape)}, but '
                       f'{config.dataset.name} images have shape {tuple(shape)}')
    kind = (f'class-conditional ({generator.num_classes} classes)' if generator.num_classes
            else 'unconditional')
    stage['headline'] = f'{generator.name}: {kind} DDPM, {params / 1e6:.2f}M parameters'
  return path


def _sample_gaussian(config, fit_path, raw):
  fit = gaussian_fit.load(fit_path)
  n = config.pipeline.num_generated
  with shard_writer.ShardWriter(raw, num_shards=config.pipeline.num_shards, total=n,
                                image_shape=fit.image_shape, num_classes=fit.num_classes,
                                source='gaussian_fit', seed=config.seed) as writer:
    progress = tqdm.tqdm(total=n, unit='img', desc='sample', dynamic_ncols=True, mininterval=1.0)
    for images, labels in gaussian_fit.sample(fit, n, seed=config.seed):
      writer.write_batch(images, labels)
      progress.update(len(labels))
    progress.close()


def stage_samples(config, workdir, generator, classifier, console):
  """Samples the generator straight into shards pseudo-labelled by the classifier."""
  kind = config.pipeline.generator
  prefix = os.path.join(workdir, 'generated', kind)
  raw = prefix + '-raw'
  manifest = shards.manifest_path(prefix)
  top_k, n = config.pipeline.top_k, config.pipeline.num_generated
  how = f'{config.pipeline.sampler}-{config.pipeline.sampler_steps}, ' if kind == 'ddpm' else ''
  with console.stage('samples', f'{n:,} samples, {how}pseudo-labelled'
                     + (f', top-{top_k} per class' if top_k else ''), manifest,
                     _done(manifest)) as stage:
    if kind == 'ddpm' and not _done(manifest):
      from trainer import sample  # pylint: disable=g-import-not-at-top
      sample.sample_to_shards(generator, prefix, num=n, num_shards=config.pipeline.num_shards,
                              sampler=config.pipeline.sampler,
                              steps=config.pipeline.sampler_steps, seed=config.seed,
                              classifier=classifier, top_k=top_k,
                              batch_size=config.pipeline.sample_batch_size)
    elif not _done(manifest):
      if not _done(shards.manifest_path(raw)):
        _sample_gaussian(config, generator, raw)
      pseudolabel.label_with(classifier, shards.manifest_path(raw), prefix,
                             num_shards=config.pipeline.num_shards, top_k=top_k,
                             seed=config.seed, source_name='gaussian_fit')
    count = shards.load_manifest(manifest)['count']
    stage['headline'] = f'{count:,} pseudo-labelled samples in {config.pipeline.num_shards} shards'
  return manifest


def _feature_fn(classifier, batch_size):
  _, model, variables = checkpointing.restore_for_eval(classifier)
  return sharding.batched_apply(features.make_feature_fn(model, variables), sharding.make_mesh(),
                                batch_size)


def stage_data_metrics(config, workdir, manifest, classifier, console):
  """Algorithm 1 (App. D) in the classifier's penultimate feature space, and the sample grid."""
  out = os.path.join(workdir, 'generated', 'data_metrics.json')
  grid = os.path.join(workdir, 'generated', 'samples.png')
  n = config.pipeline.metrics_samples
  with console.stage('data metrics', f'complementarity and coverage on {n} per set', out,
                     _done(out)) as stage:
    if not _done(out):
      train_data, _, _ = real.training_splits(config)
      test = real.load(config.dataset.name, 'test', config.dataset.data_dir)  # whole split
      generated = next(shards.read_examples(manifest, batch_size=shards.load_manifest(
          manifest)['count']))
      num_classes = real.info(config.dataset.name).num_classes
      images = {'train': train_data['image'], 'test': test['image'],
                'generated': generated['image']}
      labels = {'train': train_data['label'], 'test': test['label'],
                'generated': generated['label']}
      n = min(n, *(len(v) for v in labels.values()))  # a small top-K set bounds N
      result = metrics.data_metrics(images, labels, _feature_fn(classifier, config.eval.batch_size),
                                    num_classes, n, seed=config.seed)
      width = generated['image'].shape[2] * 10
      metrics.sample_grid(generated['image'], generated['label'], num_classes, path=grid,
                          scale=max(1, GRID_WIDTH // width))
      epath.Path(out).write_text(json.dumps(result, indent=2))
    result = json.loads(epath.Path(out).read_text())
    stage['headline'] = report.data_metrics_line(result)
  return result


def stage_robust(config, workdir, manifest, console):
  out = os.path.join(workdir, 'robust')
  c = copy.deepcopy(config)
  c.generated.path = manifest
  with console.stage('robust', f'TRADES on {c.model.name}, α = {c.generated.alpha:g} real '
                     f'({c.train.num_epochs:g} epochs)', out,
                     _done(os.path.join(out, 'done.json'))) as stage:
    final = _train(c, out, 'robust')
    stage['headline'] = _accuracies(final, (('holdout/robust_accuracy', 'held-out robust'),
                                            ('test/clean_accuracy', 'test clean'),
                                            ('test/robust_accuracy', 'test robust')))
  return out


def stage_evaluate(config, robust, console):
  out = os.path.join(robust, 'eval.json')
  n = config.pipeline.eval_examples
  with console.stage('evaluation', f'{config.eval.attacks} on ' +
                     (f'the first {n} test images' if n else 'the test set'), out,
                     _done(out)) as stage:
    if not _done(out):
      from trainer import evaluate  # pylint: disable=g-import-not-at-top
      evaluate.evaluate(checkpointing.load_config(robust), robust, attacks=config.eval.attacks,
                        num_examples=n)
    evaluation = json.loads(epath.Path(out).read_text())
    stage['headline'] = report.evaluation_line(evaluation)
  return evaluation


def run(config, workdir, console=None):
  """Runs (or resumes) every stage; returns each stage's output and the status.

  status is 'finished', or 'stopped' when a training stage was preempted (run the same command
  again to resume).
  """
  workdir = cli.absolute(workdir)
  console = console or Console()
  out = {'workdir': workdir, 'status': 'finished'}
  try:
    out['classifier'] = stage_classifier(config, workdir, console)
    out['generator'] = stage_generator(config, workdir, console)
    out['samples'] = stage_samples(config, workdir, out['generator'], out['classifier'], console)
    out['data_metrics'] = stage_data_metrics(config, workdir, out['samples'], out['classifier'],
                                             console)
    out['robust'] = stage_robust(config, workdir, out['samples'], console)
    out['evaluation'] = stage_evaluate(config, out['robust'], console)
  except Stopped as e:
    logging.warning('The %s stage stopped before its last step; the method stops too.', e)
    out.update(status='stopped', stopped_at=str(e))
  out['seconds'], out['headlines'] = console.seconds, console.headlines
  if out['status'] == 'finished':
    out['report'] = report.write(out, config)
  return out


def main(argv):
  del argv
  workdir = cli.absolute(_WORKDIR.value)
  cli.start(workdir)
  out = run(_CONFIG.value, workdir)
  if out['status'] == 'stopped':
    print(f"stopped in the {out['stopped_at']} stage (checkpoint saved): run the same command "
          'to resume', flush=True)
  else:
    print(report.closing(out), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run(main)
