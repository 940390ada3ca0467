"""The whole method in one command.

  python -m trainer.method --config=configs/demo.py [--config.key=value …] --workdir=DIR

  1. classifier/      non-robust classifier (train.loss='standard') on the real training set
     generator/       class-conditional Gaussian fit of the real training set (App. D)
  2. generated/       N samples → pseudo-labelled by the classifier (optionally top-K per class)
                      → shards; data_metrics.json and samples.png beside them
  3. robust/          TRADES on batches of α real and 1 − α generated images
  4. robust/eval.json final evaluation with the attack cascade(s) of config.eval.attacks

Every stage writes its output last and is skipped when that output exists, so an interrupted
pipeline resumes where it stopped (the training stages also resume from their checkpoints).
"""
import copy
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from etils import epath
from ml_collections import config_flags
import tqdm

from data.generation import gaussian_fit
from data.generation import metrics
from data.generation import pseudolabel
from data import real
from data.records import shard_writer
from data.records import shards
from models import features
from trainer import checkpointing
from trainer import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every stage of the method.')


def _done(path):
  return epath.Path(path).exists()


def classifier_config(config):
  """The robust config turned into the pseudo-labeller's: no attack, real data only."""
  c = copy.deepcopy(config)
  c.train.loss = 'standard'
  c.model.name = config.pipeline.classifier_model
  c.train.num_epochs = config.pipeline.classifier_epochs
  c.generated.alpha, c.generated.path = 1.0, ''
  return c


def _train(config, out):
  """Trains to the end, or stops the whole pipeline when training stopped early (preemption:
  the checkpoint is saved and the next start resumes this stage)."""
  if not _done(os.path.join(out, 'done.json')):
    if not train.train_and_evaluate(config, out)['finished']:
      logging.warning('Training in %s stopped before its last step; the pipeline stops too.', out)
      sys.exit(0)
  return out


def stage_classifier(config, workdir):
  return _train(classifier_config(config), os.path.join(workdir, 'classifier'))


def stage_generator(config, workdir):
  path = os.path.join(workdir, 'generator', 'gaussian_fit.npz')
  if not _done(path):
    train_data, _, _ = real.training_splits(config)
    fit = gaussian_fit.fit(train_data['image'], train_data['label'],
                           real.info(config.dataset.name).num_classes,
                           n_components=config.pipeline.gaussian_components)
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    gaussian_fit.save(fit, path)
  return path


def stage_samples(config, workdir, fit_path, classifier):
  """Samples the fit straight into shards, then pseudo-labels them with the classifier."""
  prefix = os.path.join(workdir, 'generated', 'gaussian')
  raw = prefix + '-raw'
  if not _done(shards.manifest_path(raw)):
    fit = gaussian_fit.load(fit_path)
    n = config.pipeline.num_generated
    with shard_writer.ShardWriter(raw, num_shards=config.pipeline.num_shards, total=n,
                                  image_shape=fit.image_shape, num_classes=fit.num_classes,
                                  source='gaussian_fit', seed=config.seed) as writer:
      progress = tqdm.tqdm(total=n, unit='img', desc='sample', disable=None)
      for images, labels in gaussian_fit.sample(fit, n, seed=config.seed):
        writer.write_batch(images, labels)
        progress.update(len(labels))
  if not _done(shards.manifest_path(prefix)):
    pseudolabel.pseudolabel(classifier, shards.manifest_path(raw), prefix,
                            num_shards=config.pipeline.num_shards, top_k=config.pipeline.top_k,
                            seed=config.seed, source_name='gaussian_fit')
  return shards.manifest_path(prefix)


def stage_data_metrics(config, workdir, manifest, classifier):
  out = os.path.join(workdir, 'generated', 'data_metrics.json')
  if _done(out):
    return json.loads(epath.Path(out).read_text())
  n = config.pipeline.metrics_samples
  train_data, _, test = real.training_splits(config)
  generated = next(shards.read_examples(manifest, batch_size=n))
  _, model, variables = checkpointing.restore_for_eval(classifier)
  feature_fn = features.make_feature_fn(model, variables)
  featurize = lambda images: metrics.batched_features(lambda x: feature_fn(x / 255.0), images)
  result = metrics.metrics_from_features(
      featurize(train_data['image'][:n]), featurize(test['image'][:n]),
      featurize(generated['image']), seed=config.seed)
  num_classes = real.info(config.dataset.name).num_classes
  metrics.sample_grid(generated['image'], generated['label'], num_classes,
                      path=os.path.join(workdir, 'generated', 'samples.png'))
  epath.Path(out).write_text(json.dumps(result, indent=2))
  return result


def stage_robust(config, workdir, manifest):
  c = copy.deepcopy(config)
  c.generated.path = manifest
  return _train(c, os.path.join(workdir, 'robust'))


def stage_evaluate(config, robust):
  out = os.path.join(robust, 'eval.json')
  if not _done(out):
    from trainer import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.evaluate(checkpointing.load_config(robust), robust, attacks=config.eval.attacks,
                      num_examples=config.pipeline.eval_examples)
  return json.loads(epath.Path(out).read_text())


def run(config, workdir):
  """Runs (or resumes) every stage; returns each stage's output."""
  out = {'classifier': stage_classifier(config, workdir),
         'generator': stage_generator(config, workdir)}
  out['samples'] = stage_samples(config, workdir, out['generator'], out['classifier'])
  out['data_metrics'] = stage_data_metrics(config, workdir, out['samples'], out['classifier'])
  logging.info('Data metrics: %s', out['data_metrics'])
  out['robust'] = stage_robust(config, workdir, out['samples'])
  out['evaluation'] = stage_evaluate(config, out['robust'])
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  print(_report(run(_CONFIG.value, _WORKDIR.value)), flush=True)


def _report(out):
  """Where each stage left its output, and the headline numbers."""
  evaluation, data = out['evaluation'], out['data_metrics']
  robust = ', '.join(f"{name} {100 * c['robust_accuracy']:.2f}%"
                     for name, c in evaluation['cascades'].items())
  return '\n'.join([
      'The method ran to the end:',
      f"  non-robust classifier   {out['classifier']}",
      f"  Gaussian fit            {out['generator']}",
      f"  pseudo-labelled shards  {out['samples']}",
      f"  data metrics            complementarity {data['complementarity']:.3f}, coverage "
      f"{data['coverage']:.3f}",
      f"  robust (TRADES) run     {out['robust']}  (tensorboard --logdir {out['robust']})",
      f"  evaluation              test[:{evaluation['num_examples']}]: clean "
      f"{100 * evaluation['clean_accuracy']:.2f}%, {robust}"])


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
