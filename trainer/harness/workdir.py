"""A training workdir's own files: the config it runs, the finished marker, JSON written whole.

    WORKDIR/config.json   the resolved config of the run (a restart with another one is refused)
    WORKDIR/done.json     written last, by process 0, once the run has reached its last step

Process 0 writes the shared files; every process reads them.
"""
import datetime
import json
import os

import jax
import ml_collections
from etils import epath

from data import files

# Keys that may change between the starts of one run: where it runs and how fast, not what it
# computes (a run saved on one mesh resumes on another; evaluation settings apply afterwards).
RESUMABLE_CHANGES = ('distributed', 'mesh.', 'loader.', 'dataset.data_dir', 'eval.attacks',
                     'eval.batch_size', 'eval.chunk_size', 'pipeline.eval_examples',
                     'checkpoint.keep')
# Keys renamed when the two trainers took one vocabulary: a run started under the old name
# resumes under the new one.
RENAMED = {'ema.decay': 'optim.ema_decay', 'train.eval_every_steps': 'eval.every_steps',
           'train.grid_samples': 'eval.grid_samples', 'train.grid_sampler': 'eval.grid_sampler',
           'train.grid_sampler_steps': 'eval.grid_sampler_steps',
           'pipeline.ddpm_preset': 'pipeline.generator_preset',
           'pipeline.ddpm_steps': 'pipeline.generator_steps'}


# Keys added since a run may have started, with the value that keeps what such a run did: a
# config.json without one still resumes when the config leaves it at that value (JSON's form).
ADDED = {
    'objective': 'ddpm', 'unet.init': 'lecun_normal',
    'dataset.path': '', 'dataset.image_size': 0, 'dataset.resize': False,
    'dataset.test_fraction': 0.1, 'dataset.split_seed': 0, 'dataset.storage': 'auto',
    'dataset.ram_limit_gb': 4.0, 'dataset.shuffle_window': 10_000, 'dataset.cycle_length': 16,
    'dataset.on_corrupt': 'raise', 'dataset.crop': 'pad',
    'generated.alpha_schedule': [], 'generated.smooth_real_labels': False,
    'eval.chunk_size': 2048, 'dataset.train_fraction': 1.0, 'pipeline.class_balanced': False,
    'pipeline.sampler_spacing': '', 'pipeline.labels': 'classifier', 'pipeline.classes': '',
    'pipeline.shard_encoding': 'raw'}


class ConfigMismatchError(ValueError):
  """The workdir holds a run of another config; resuming it would mix two experiments."""


def write_json(path, value) -> None:
  """JSON written whole or not at all (data/files.py)."""
  files.write_atomic(os.fspath(path), json.dumps(value, indent=2))


def read_json(path):
  """The JSON at `path`, or a one-line error that names the file when it is not JSON."""
  try:
    return json.loads(epath.Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); it may have been cut short: delete it to '
                     'redo the step that writes it') from e


def flat(tree, prefix=''):
  """{'a.b': value} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def in_todays_keys(old: dict, new: dict) -> dict:
  """An older run's flat config under today's key names, a key added since at the value the run
  ran with (RENAMED, ADDED)."""
  old = {RENAMED.get(k, k): v for k, v in old.items()}
  old.update({k: v for k, v in ADDED.items() if k not in old and k in new})
  return old


def check_same_run(workdir, config, resumable=()) -> None:
  """Refuses, before anything is written, a workdir whose config.json is another run's.

  Keys starting with RESUMABLE_CHANGES, or with one of `resumable` (the trainer's own), may change.
  """
  path = epath.Path(workdir, 'config.json')
  if not path.exists():
    return
  new = flat(json.loads(config.to_json_best_effort()))
  old = in_todays_keys(flat(read_json(path)), new)
  allowed = RESUMABLE_CHANGES + tuple(resumable)
  changed = [k for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(allowed)]
  if changed:
    shown = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed[:4])
    more = f' and {len(changed) - 4} more' if len(changed) > 4 else ''
    raise ConfigMismatchError(
        f'workdir {workdir} holds a run of a different config ({shown}{more}); give a new '
        '--workdir, or the same config to resume it')


def save_config(workdir, config) -> None:
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    files.write_atomic(os.fspath(epath.Path(workdir, 'config.json')),
                       config.to_json_best_effort(indent=2))


def load_config(workdir) -> ml_collections.ConfigDict:
  path = epath.Path(workdir, 'config.json')
  if not path.exists():
    raise FileNotFoundError(f'No config.json in workdir {workdir}: is it a training workdir?')
  return ml_collections.ConfigDict(read_json(path))


def write_done(workdir, step: int, total_steps: int, final: dict, best=None) -> None:
  """done.json: the run reached its last step; `final` holds its last results."""
  if jax.process_index() == 0:
    write_json(epath.Path(workdir, 'done.json'), {
        'step': step, 'total_steps': total_steps,
        'finished_at': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'final': final, 'best': best})


def read_done(workdir) -> dict | None:
  """done.json's record, or None while the run has not finished."""
  path = epath.Path(workdir, 'done.json')
  return read_json(path) if path.exists() else None
