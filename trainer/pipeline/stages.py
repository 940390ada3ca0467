"""The whole method's stages, each writing its output last and skipped when that output exists.

  1. classifier/      non-robust classifier (train.loss='standard') on the real training set;
                      none with pipeline.labels='generator' (a class-conditional generator's
                      own labels, the paper's footnote 12)
  2. generator/       class-conditional Gaussian fit of the real training set (App. D), or
                      (pipeline.generator='ddpm' or 'edm') a diffusion model: the checkpoint
                      given by pipeline.generator_checkpoint, or without one a generator
                      trained here (trainer.train_generator with the preset
                      pipeline.generator_preset; generator/generator)
  3. generated/       N samples → pseudo-labelled by the classifier (optionally top-K per class)
                      → shards
  4. generated/       Algorithm 1's complementarity and coverage and the classifier-feature
                      Fréchet distance (data_metrics.json, TensorBoard), samples.png; skipped
                      without a classifier (its features are the space they are measured in)
  5. robust/          TRADES on batches of α real and 1 − α generated images
  6. robust/eval.json final evaluation with the attack cascade(s) of config.eval.attacks
     report.md        the stage table, the evaluation per attack stage, samples and curves

An interrupted run resumes where it stopped (the training stages also resume from their
checkpoints). A training stage stopped by a preemption notice stops the method too: `run` returns
status 'stopped'.
"""
import copy
import importlib
import os

import jax
import numpy as np
import tqdm
from absl import logging
from clu import metric_writers
from etils import epath

from data import real
from data.generation import frechet
from data.generation import gaussian_fit
from data.generation import metrics
from data.input import alpha_schedule
from data.records import shard_writer
from data.records import shards
from models import features
from models.diffusion import generators
from trainer import cli
from trainer import sharding
from trainer.diffusion import generator as generator_lib
from trainer.evaluation import evaluate
from trainer.generation import pseudolabel
from trainer.generation import sample
from trainer.harness import lease
from trainer.harness import progress
from trainer.harness import workdir as workdir_lib
from trainer.pipeline import report
from trainer.pipeline.console import Console
from trainer.pipeline import stage_records
from trainer.robust import classifier as classifier_lib
from trainer.robust import config_validation
from trainer.robust import train

GRID_WIDTH = 480  # pixels: small images are upscaled so a person can see them


class Stopped(Exception):
  """A training stage stopped before its last step (preemption); its checkpoint is saved."""


def _done(path):
  return epath.Path(path).exists()


def classifier_config(config):
  """The robust config turned into the pseudo-labeller's: no attack, real data only."""
  c = copy.deepcopy(config)
  c.train.loss = 'standard'
  c.model.name = config.pipeline.classifier_model
  c.train.num_epochs = config.pipeline.classifier_epochs
  c.generated.alpha, c.generated.path = 1.0, ''
  c.generated.alpha_schedule = ()
  return c


def _train(config, out, name):
  """Trains to the end (or finds it done); raises Stopped when a preemption stopped it first."""
  if not _done(os.path.join(out, 'done.json')):
    if not train.train_and_evaluate(config, out, progress_name=name)['finished']:
      raise Stopped(name)
  return workdir_lib.read_done(out)['final']


def _accuracies(final, keys):
  return ', '.join(f'{label} {progress.percent(final[k])}' for k, label in keys if k in final)


def labels_from_generator(config):
  return config.pipeline.labels == 'generator'


def stage_classifier(config, workdir, console):
  if labels_from_generator(config):
    console.skip('classifier', "the generator's own classes are the labels "
                 "(pipeline.labels='generator')")
    return None
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
  """The Gaussian fit (made here), or a diffusion model: imported, or trained here."""
  if config.pipeline.generator != 'gaussian' and config.pipeline.generator_checkpoint:
    return _imported_generator(config, console)
  if config.pipeline.generator != 'gaussian':
    return _trained_generator(config, workdir, console)
  path = os.path.join(workdir, 'generator', 'gaussian_fit.npz')
  k = config.pipeline.gaussian_components
  with console.stage('generator', f'class-conditional Gaussian fit ({k} components per class)',
                     path, _done(path)) as stage:
    if not _done(path):
      train_data, _, _ = real.training_splits(config)
      fit = gaussian_fit.fit(train_data['image'], train_data['label'],
                             real.info(config.dataset).num_classes, n_components=k)
      epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
      gaussian_fit.save(fit, path)
    stage['headline'] = f'{k} PCA components per class'
  return path


def _describe_generator(config, path):
  """The generator's kind and size, after checking it makes the dataset's images."""
  generator = generators.load(path)
  params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(generator.params))
  shape = real.info(config.dataset).shape
  if tuple(generator.image_shape) != tuple(shape):
    raise ValueError(f'{path} generates images of shape {tuple(generator.image_shape)}, but '
                     f'{config.dataset.name} images have shape {tuple(shape)}')
  kind = (f'class-conditional ({generator.num_classes} classes)' if generator.num_classes
          else 'unconditional')
  family = 'EDM' if generators.is_edm(generator) else 'DDPM'
  return f'{generator.name}: {kind} {family}, {params / 1e6:.2f}M parameters'


def _imported_generator(config, console):
  path = cli.absolute(config.pipeline.generator_checkpoint)
  with console.stage('generator', 'diffusion model', path, done=True) as stage:
    stage['headline'] = _describe_generator(config, path)
  return path


def generator_config(config):
  """The generator's training config: the preset pipeline.generator_preset names, on the
  method's dataset with its held-out size (so the generator never sees the images that select
  the robust checkpoint), its train_fraction (the same subset the classifiers see) and seed;
  pipeline.generator_steps > 0 shortens (or lengthens) it."""
  c = importlib.import_module(f'configs.{config.pipeline.generator_preset}').get_config()
  c.dataset.name, c.dataset.data_dir = config.dataset.name, config.dataset.data_dir
  c.dataset.holdout, c.seed = config.dataset.holdout, config.seed
  c.dataset.train_fraction = config.dataset.train_fraction
  if config.pipeline.generator_steps:
    c.train.num_steps = config.pipeline.generator_steps
  return c


def _last_loss(generator_workdir):
  """'S steps, final loss L' from the generator run's own TensorBoard records: the run that made
  the generator, even when the config asks for other steps now (the stage is done)."""
  points = report.read_scalars(generator_workdir).get('train/loss')
  return f'{points[-1][0]:,} steps, final loss {points[-1][1]:.4f}' if points else 'no loss logged'


def _trained_generator(config, workdir, console):
  """trainer.train_generator in WORKDIR/generator (resumed from its checkpoints when rerun); its
  EMA generator is WORKDIR/generator/generator, and its done.json marks the stage done."""
  out = os.path.join(workdir, 'generator')
  path = os.path.join(out, 'generator')
  c = generator_config(config)
  done = _done(os.path.join(out, 'done.json'))
  with console.stage('generator', f'training a {c.objective.upper()} '
                     f'({config.pipeline.generator_preset}: {c.train.num_steps:,} steps of '
                     f'{c.train.batch_size})', path, done) as stage:
    if not done and not generator_lib.train(c, out, progress_name=c.objective)['finished']:
      raise Stopped('generator')
    stage['headline'] = f'{_last_loss(out)}; {_describe_generator(config, path)}'
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


def _selection(config):
  """How the set is chosen, for the console: the paper's class balance, top-K, or every sample."""
  p = config.pipeline
  if p.top_k:
    return f', top-{p.top_k} per class'
  if p.class_balanced:
    classes = real.info(config.dataset).num_classes
    return f', the first {p.num_generated // classes:,} of each class'
  return ''


def sampler_name(config):
  """'ddpm-1000' and the like: the sampler and its network evaluations per sample."""
  steps = config.pipeline.sampler_steps
  return f'{config.pipeline.sampler}-{steps}' if steps else f'{config.pipeline.sampler} (T steps)'


def generator_classes(config, generator):
  """pipeline.classes as the generator's class ids (None: all of them, which must then be the
  dataset's classes)."""
  spec, num_classes = config.pipeline.classes, real.info(config.dataset).num_classes
  classes = (list(real.info(config.dataset).class_map) if spec == 'dataset'
             else sample.parse_classes(spec))
  count = len(classes) if classes is not None else generators.load(generator).num_classes
  if count != num_classes:
    hint = (" (pipeline.classes='dataset' takes the dataset's class map)"
            if real.info(config.dataset).class_map else '')
    raise ValueError(f'pipeline.classes={spec!r}: {count} generator classes for the '
                     f'{num_classes} classes of {config.dataset.name}{hint}')
  return classes


def stage_samples(config, workdir, generator, classifier, console):
  """Samples the generator straight into shards pseudo-labelled by the classifier (or labelled
  by a class-conditional generator, pipeline.labels='generator'): the first num_generated /
  classes of each class (pipeline.class_balanced, the paper's sets), the top-K of each class, or
  every sample."""
  kind = config.pipeline.generator
  prefix = os.path.join(workdir, 'generated', kind)
  raw = prefix + '-raw'
  manifest = shards.manifest_path(prefix)
  top_k, n = config.pipeline.top_k, config.pipeline.num_generated
  balanced = config.pipeline.class_balanced and not top_k   # a top-K set is balanced already
  how = f'{sampler_name(config)}, ' if kind != 'gaussian' else ''
  labelled = 'pseudo-labelled' if classifier else 'labelled by the generator'
  with console.stage('samples', f'{n:,} samples, {how}{labelled}{_selection(config)}',
                     manifest, _done(manifest)) as stage:
    if kind != 'gaussian' and not _done(manifest):
      spacing = config.pipeline.sampler_spacing
      sample.sample_to_shards(
          generator, prefix, num=n, num_shards=config.pipeline.num_shards,
          sampler=config.pipeline.sampler, steps=config.pipeline.sampler_steps, seed=config.seed,
          classifier=classifier, top_k=top_k, class_balanced=balanced,
          batch_size=config.pipeline.sample_batch_size,
          classes=None if classifier else generator_classes(config, generator),
          encoding=config.pipeline.shard_encoding,
          sampler_options={'spacing': spacing} if spacing else None)
    elif balanced and not _done(manifest):
      sample.gaussian_to_shards(generator, prefix, num=n, num_shards=config.pipeline.num_shards,
                                classifier=classifier, seed=config.seed)
    elif not _done(manifest):
      if not _done(shards.manifest_path(raw)):
        _sample_gaussian(config, generator, raw)
      pseudolabel.label_with(classifier, shards.manifest_path(raw), prefix,
                             num_shards=config.pipeline.num_shards, top_k=top_k,
                             seed=config.seed, source_name='gaussian_fit')
    written = shards.load_manifest(manifest)
    drawn = written.get('metadata', {}).get('class_balance', {}).get('candidates')
    stage['headline'] = (f"{written['count']:,} {labelled} samples"
                         + (f' (the first of each class among {drawn:,} drawn)' if drawn else '')
                         + f' in {config.pipeline.num_shards} shards')
  return manifest


def _feature_fn(classifier, batch_size):
  _, model, variables = classifier_lib.load(classifier)
  return sharding.batched_apply(features.make_feature_fn(model, variables), sharding.make_mesh(),
                                batch_size)


FD_LABEL = 'classifier-feature FD (not Inception FID)'


def _balanced_features(feature_fn, images, labels, n, num_classes, seed):
  """Features of the class-balanced N per set that `metrics.data_metrics` draws (same seeds)."""
  feats = {}
  for offset, key in enumerate(('train', 'test', 'generated')):
    index = metrics.class_balanced_indices(labels[key], n, num_classes, seed=seed + offset,
                                           name=key)
    feats[key] = metrics.batched_features(feature_fn, np.asarray(images[key])[index])
  return feats


def _classifier_fd(feats, holdout_feats):
  """The Fréchet distance of the generated set to the real test set, in the space Algorithm 1
  uses (the test set is one of its two real sets), and of the real held-out images to the same
  test set: how far two real sets lie apart, the scale the first number is read against."""
  out = {'classifier_fd': frechet.frechet_distance(feats['generated'], feats['test']),
         'classifier_fd_label': FD_LABEL,
         'classifier_fd_sets': f"generated {len(feats['generated'])} vs test {len(feats['test'])}"}
  if holdout_feats is not None:
    out['classifier_fd_real'] = frechet.frechet_distance(holdout_feats, feats['test'])
    out['classifier_fd_real_sets'] = f"held-out {len(holdout_feats)} vs test {len(feats['test'])}"
  return out


def _write_tensorboard(logdir, result):
  """Algorithm 1's five numbers and the Fréchet distances as scalars at step 0."""
  writer = metric_writers.create_default_writer(logdir, just_logging=jax.process_index() > 0)
  names = {**{k: k for k in metrics.KEYS}, 'classifier_fd': 'classifier_fd',
           'classifier_fd_real': 'classifier_fd_real_heldout_vs_test'}
  writer.write_scalars(0, {f'data/{name}': result[k] for k, name in names.items() if k in result})
  writer.close()


def _compute_data_metrics(config, manifest, classifier, n):
  train_data, holdout, _ = real.training_splits(config)
  test = real.load(config.dataset, 'test')  # whole split
  generated = next(shards.read_examples(manifest, batch_size=shards.load_manifest(
      manifest)['count']))
  num_classes = real.info(config.dataset).num_classes
  images = {'train': train_data['image'], 'test': test['image'], 'generated': generated['image']}
  labels = {'train': train_data['label'], 'test': test['label'], 'generated': generated['label']}
  n = min(n, *(len(v) for v in labels.values()))  # a small top-K set bounds N
  feature_fn = _feature_fn(classifier, config.eval.batch_size)
  feats = _balanced_features(feature_fn, images, labels, n, num_classes, config.seed)
  result = metrics.metrics_from_features(feats['train'], feats['test'], feats['generated'])
  holdout_feats = (metrics.batched_features(feature_fn, holdout['image'])
                   if len(holdout['label']) >= 2 else None)  # dataset.holdout=0: no reference
  result.update(_classifier_fd(feats, holdout_feats))
  return result, generated, num_classes


def stage_data_metrics(config, workdir, manifest, classifier, console):
  """Algorithm 1 (App. D) and the Fréchet distance in the classifier's penultimate feature space,
  and the sample grid."""
  out = os.path.join(workdir, 'generated', 'data_metrics.json')
  grid = os.path.join(workdir, 'generated', 'samples.png')
  n = config.pipeline.metrics_samples
  if classifier is None:
    console.skip('data metrics', 'no classifier to measure them in (pipeline.labels='
                 "'generator')")
    return None
  with console.stage('data metrics', f'complementarity, coverage and {FD_LABEL} on {n} per set',
                     out, _done(out)) as stage:
    if not _done(out):
      result, generated, num_classes = _compute_data_metrics(config, manifest, classifier, n)
      width = generated['image'].shape[2] * 10
      metrics.sample_grid(generated['image'], generated['label'], num_classes, path=grid,
                          scale=max(1, GRID_WIDTH // width))
      _write_tensorboard(os.path.dirname(out), result)
      workdir_lib.write_json(out, result)
    result = workdir_lib.read_json(out)
    stage['headline'] = report.data_metrics_line(result)
  return result


def stage_robust(config, workdir, manifest, console):
  out = os.path.join(workdir, 'robust')
  c = copy.deepcopy(config)
  c.generated.path = manifest
  with console.stage('robust', f'TRADES on {c.model.name}, {alpha_schedule.describe(c)} '
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
      evaluate.evaluate(workdir_lib.load_config(robust), robust, attacks=config.eval.attacks,
                        num_examples=n)
    evaluation = workdir_lib.read_json(out)
    stage['headline'] = report.evaluation_line(evaluation)
  return evaluation


def finished(config, workdir, stage):
  """Whether `stage`'s output is in the workdir (what makes it "done before")."""
  generated = os.path.join(workdir, 'generated')
  kind = config.pipeline.generator
  paths = {
      'classifier': os.path.join(workdir, 'classifier', 'done.json'),
      'generator': (os.path.join(workdir, 'generator', 'done.json') if kind != 'gaussian'
                    else os.path.join(workdir, 'generator', 'gaussian_fit.npz')),
      'samples': shards.manifest_path(os.path.join(generated, kind)),
      'data metrics': os.path.join(generated, 'data_metrics.json'),
      'robust': os.path.join(workdir, 'robust', 'done.json'),
      'evaluation': os.path.join(workdir, 'robust', 'eval.json')}
  if stage == 'generator' and kind != 'gaussian' and config.pipeline.generator_checkpoint:
    return True
  return _done(paths[stage])


def run(config, workdir, console=None, redo=None):
  """Runs (or resumes) every stage; returns each stage's output and the status.

  status is 'finished', or 'stopped' when a training stage was preempted (run the same command
  again to resume). A finished stage that ran under other settings stops the method before any
  work (stage_records.py); `redo` names the stage to redo, with every stage after it.
  """
  workdir = cli.absolute(workdir)
  console = console or Console()
  out = {'workdir': workdir, 'status': 'finished'}
  # A rerun may skip the stages that validate; the dataset's classes size the balanced set.
  config_validation.validate_pipeline(config, real.info(config.dataset).num_classes)
  with lease.Lease(workdir):  # one method per workdir; its training stages hold their own
    return _run(config, workdir, console, redo, out)


def _run(config, workdir, console, redo, out):
  current = stage_records.settings(config, classifier_config)
  if redo:
    stage_records.redo(workdir, stage_records.stage_named(redo))
  stage_records.check(workdir, current, lambda stage: finished(config, workdir, stage))
  done = lambda stage: stage_records.record(workdir, stage, current)  # noqa: E731
  try:
    out['classifier'] = stage_classifier(config, workdir, console)
    done('classifier')
    out['generator'] = stage_generator(config, workdir, console)
    done('generator')
    if config.pipeline.generator != 'gaussian' and not config.pipeline.generator_checkpoint:
      out['generator_run'] = os.path.dirname(out['generator'])  # its curves go in the report
    out['samples'] = stage_samples(config, workdir, out['generator'], out['classifier'], console)
    done('samples')
    out['data_metrics'] = stage_data_metrics(config, workdir, out['samples'], out['classifier'],
                                             console)
    done('data metrics')
    out['robust'] = stage_robust(config, workdir, out['samples'], console)
    done('robust')
    out['evaluation'] = stage_evaluate(config, out['robust'], console)
    done('evaluation')
  except Stopped as e:
    logging.warning('The %s stage stopped before its last step; the method stops too.', e)
    out.update(status='stopped', stopped_at=str(e))
  out['seconds'], out['headlines'] = console.seconds, console.headlines
  if out['status'] == 'finished':
    out['report'] = report.write(out, config)
  return out
