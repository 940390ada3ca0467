"""What each stage of the method ran with, so that a rerun under another config is refused rather
than skipped as "done before".

WORKDIR/stages.json holds, for every finished stage, the settings it read (the config keys that
change its output, not where or how fast it ran). Before any work, a rerun compares them with the
config it is given: the first finished stage whose settings differ stops the method in one line
that names the keys, and `--redo=STAGE` redoes that stage and every stage after it (their outputs
are deleted first); a new --workdir keeps both runs. A workdir from before this record has its
training stages checked against their own config.json.
"""
import json

import jax
import ml_collections
from absl import logging
from etils import epath

from trainer.harness import workdir as workdir_lib
from trainer.pipeline.console import STAGES

# The config keys (prefixes) each stage's output depends on; a later stage also depends on every
# earlier one, since it reads their outputs.
_KEYS = {
    'classifier': ('seed', 'dataset.', 'model.', 'optim.', 'train.batch_size',
                   'train.epoch_size', 'eval.every_steps', 'pipeline.classifier_'),
    'generator': ('seed', 'dataset.', 'pipeline.generator', 'pipeline.gaussian_components'),
    'samples': ('pipeline.num_generated', 'pipeline.top_k', 'pipeline.num_shards',
                'pipeline.sampler', 'pipeline.class_balanced', 'pipeline.labels',
                'pipeline.classes', 'pipeline.shard_encoding'),
    'data metrics': ('pipeline.metrics_samples',),
    'robust': ('seed', 'dataset.', 'model.', 'threat.', 'train.', 'optim.', 'generated.',
               'eval.every_steps', 'eval.pgd_steps', 'eval.selection_attack', 'eval.dtype'),
    'evaluation': ('threat.', 'eval.attacks', 'eval.dtype', 'pipeline.eval_examples'),
}
# Never part of a result: where the data lives, and paths the method fills in itself.
_NOT_SETTINGS = ('dataset.data_dir', 'generated.path')
# What each stage leaves in the workdir (relative paths); deleted by --redo.
OUTPUTS = {
    'classifier': ('classifier',),
    'generator': ('generator',),
    'samples': ('generated',),
    'data metrics': ('generated/data_metrics.json', 'generated/samples.png',
                     'generated/events.out.tfevents.*'),
    'robust': ('robust',),
    'evaluation': ('robust/eval.json', 'robust/robustbench.json'),
}
_RECORD = 'stages.json'


class StaleStageError(ValueError):
  """A finished stage ran under settings the config no longer has."""


def slug(stage):
  return stage.replace(' ', '_')


def stage_named(name):
  """The stage of a --redo value ('data_metrics' or 'data metrics')."""
  for stage in STAGES:
    if name in (stage, slug(stage)):
      return stage
  raise ValueError(f'--redo={name!r}: not a stage; use one of '
                   f'{", ".join(slug(s) for s in STAGES)}')


def _select(flat, stage):
  return {k: v for k, v in sorted(flat.items())
          if k.startswith(_KEYS[stage]) and not k.startswith(_NOT_SETTINGS)}


def settings(config, classifier_config):
  """{stage: {key: value}}: the settings of every stage under `config`; the classifier's are read
  from the config it trains with (`classifier_config(config)`)."""
  flat = _flat(config)
  out = {stage: _select(flat, stage) for stage in STAGES}
  out['classifier'] = _select(_flat(classifier_config(config)), 'classifier')
  return out


def _flat(config):
  """Flat keys, values as JSON has them (a tuple of the config and a list of the record agree)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = json.loads(config.to_json_best_effort())
  return workdir_lib.flat(config)


def _recorded(workdir):
  path = epath.Path(workdir, _RECORD)
  return workdir_lib.read_json(path) if path.exists() else {}


def _from_training_workdir(workdir, stage):
  """The settings a training stage of a workdir without stages.json ran with, from its own
  config.json (classifier/ and robust/ have one), or None."""
  path = epath.Path(workdir, stage, 'config.json')
  if stage not in ('classifier', 'robust') or not path.exists():
    return None
  return _select(_flat(workdir_lib.read_json(path)), stage)


def check(workdir, current, finished):
  """Refuses, in one line, the first finished stage whose settings differ from `current`
  (`settings(config)`); `finished(stage)` says whether a stage's output is there."""
  recorded = _recorded(workdir)
  for stage in STAGES:
    if not finished(stage):
      continue
    old = recorded.get(stage) or _from_training_workdir(workdir, stage)
    if old is None:
      continue
    new = current[stage]
    old = workdir_lib.in_todays_keys(old, new)
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
      shown = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed[:3])
      more = f' and {len(changed) - 3} more' if len(changed) > 3 else ''
      raise StaleStageError(
          f'the {stage} stage in {workdir} ran with other settings ({shown}{more}); pass '
          f'--redo={slug(stage)} to redo it and the stages after it, or give a new --workdir')


def record(workdir, stage, current):
  """Writes the settings `stage` finished with (process 0 writes)."""
  recorded = _recorded(workdir)
  if jax.process_index() == 0 and recorded.get(stage) != current[stage]:  # a rerun writes nothing
    recorded[stage] = current[stage]
    workdir_lib.write_json(epath.Path(workdir, _RECORD), recorded)


def redo(workdir, stage):
  """Deletes the outputs and records of `stage` and every stage after it."""
  later = STAGES[STAGES.index(stage):]
  for name in later:
    for pattern in OUTPUTS[name]:
      for path in epath.Path(workdir).glob(pattern):
        logging.info('--redo=%s: deleting %s', slug(stage), path)
        if path.is_dir():
          path.rmtree()
        else:
          path.unlink()
  recorded = {k: v for k, v in _recorded(workdir).items() if k not in later}
  workdir_lib.write_json(epath.Path(workdir, _RECORD), recorded)
