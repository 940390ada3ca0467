"""Orbax checkpoints of a training workdir.

    workdir/config.json       the resolved config
    workdir/checkpoints/<s>/  periodic: 'state' (TrainState) + 'data' (Grain iterator state,
                              one JSON file per process)
    workdir/best/<s>/         'ema' variables of the best held-out robust accuracy so far, and
                              'record': its step and metrics
    workdir/best.json         a copy of that record, for people and scripts

The latest good step is atomic: Orbax writes each step into `<s>.orbax-checkpoint-tmp` and
renames it to `<s>` only once every process has finished writing (on GCS, where there is no
rename, a commit marker plays that part). A crash in the middle of a save therefore leaves the
previous step as the latest restorable one; the leftover temporary directory is deleted when the
next run opens the workdir (`cleanup_tmp_directories`), before its first save. The best record
lives inside the best checkpoint for the same reason: weights and metrics appear together or not
at all. Plain JSON files are written to a temporary name and renamed.

Multi-host: every process opens the same workdir (a shared disk or a gs:// bucket) and takes part
in every save and restore; process 0 writes the shared files and finalises each step.
"""
import functools
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from etils import epath

from data.input import pipeline


def _join(workdir, name):
  return os.path.join(os.fspath(workdir), name)


def write_atomic(path, text):
  """Writes `text` whole or not at all: a reader never sees half a file, even after a crash."""
  path = epath.Path(path)
  tmp = path.parent / f'{path.name}.tmp-{os.getpid()}'
  tmp.write_text(text)
  tmp.replace(path)


def save_config(workdir, config):
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    write_atomic(_join(workdir, 'config.json'), config.to_json_best_effort(indent=2))


# Keys that may change between the starts of one run: where it runs and how fast, not what it
# computes (a run saved on one mesh resumes on another; evaluation settings apply afterwards).
RESUMABLE_CHANGES = ('distributed', 'mesh.', 'loader.', 'dataset.data_dir', 'eval.attacks',
                     'eval.batch_size', 'pipeline.eval_examples', 'checkpoint.keep')


class ConfigMismatchError(ValueError):
  """The workdir holds a run of another config; resuming it would mix two experiments."""


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def check_same_run(workdir, config, resumable=()):
  """Refuses, before anything is written, a workdir whose config.json is another run's.

  Keys starting with RESUMABLE_CHANGES, or with one of `resumable` (the caller's own), may change.
  """
  path = epath.Path(_join(workdir, 'config.json'))
  if not path.exists():
    return
  old = _flat(json.loads(path.read_text()))
  new = _flat(json.loads(config.to_json_best_effort()))
  changed = [k for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES + tuple(resumable))]
  if changed:
    shown = ', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed[:4])
    more = f' and {len(changed) - 4} more' if len(changed) > 4 else ''
    raise ConfigMismatchError(
        f'workdir {workdir} holds a run of a different config ({shown}{more}); give a new '
        '--workdir, or the same config to resume it')


def load_config(workdir):
  path = epath.Path(_join(workdir, 'config.json'))
  if not path.exists():
    raise FileNotFoundError(f'No config.json in workdir {workdir}: is it a training workdir?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


class Checkpoints:
  """Periodic (interval + preemption, keep-N, async) and best-so-far checkpoints of one run."""

  def __init__(self, workdir, config):
    self.workdir = os.fspath(workdir)
    policy = policies.AnySavePolicy([
        policies.FixedIntervalPolicy(config.checkpoint.every_steps),
        policies.PreemptionCheckpointingPolicy()])
    self.periodic = ocp.CheckpointManager(
        _join(workdir, 'checkpoints'), item_names=('state', 'data'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep, save_decision_policy=policy,
            enable_async_checkpointing=True, cleanup_tmp_directories=True))
    self.best = ocp.CheckpointManager(
        _join(workdir, 'best'), item_names=('ema', 'record'),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True))
    # Held in memory so every process takes the same save-or-not decision (a save is collective).
    self._best = self._load_best_record()

  # --- periodic ----------------------------------------------------------------------------------
  def latest_step(self):
    return self.periodic.latest_step()

  def should_save(self, step):
    return self.periodic.should_save(step)

  def reached_preemption(self, step):
    return self.periodic.reached_preemption(step)

  def save(self, step, state, data_iterator, force=False):
    return self.periodic.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=pipeline.save_args(data_iterator)), force=force)

  def restore(self, step, abstract_state, data_iterator):
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs).

    Those shardings are the current mesh's, not the saved ones: a run saved on 8 devices resumes
    on 4, or on a (4, 2) data × fsdp mesh, each process reading only the slices it holds.
    """
    restored = self.periodic.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=pipeline.restore_args(data_iterator)))
    return restored['state']

  # --- best --------------------------------------------------------------------------------------
  def best_record(self):
    """{'step', 'key', 'metrics'} of the best checkpoint, or None before the first evaluation."""
    return self._best

  def _load_best_record(self):
    step = self.best.latest_step()
    if step is None:
      return None
    return dict(self.best.restore(step, args=ocp.args.Composite(
        record=ocp.args.JsonRestore()))['record'])

  def maybe_save_best(self, step, ema_variables, metrics, key):
    """Saves the EMA weights when metrics[key] beats the best so far; returns True if saved."""
    if self._best is not None and self._best['metrics'][key] >= metrics[key]:
      return False
    record = {'step': int(step), 'key': key, 'metrics': metrics}
    self.best.save(step, args=ocp.args.Composite(ema=ocp.args.StandardSave(ema_variables),
                                                 record=ocp.args.JsonSave(record)), force=True)
    self.best.wait_until_finished()
    self._best = record
    if jax.process_index() == 0:
      write_atomic(_join(self.workdir, 'best.json'), json.dumps(record, indent=2))
    return True

  def close(self):
    self.periodic.wait_until_finished()
    self.periodic.close()
    self.best.close()


def _replicated(abstract):
  """`abstract` as ShapeDtypeStructs replicated over every device of this run."""
  everywhere = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(jax.devices()), ('devices',)), jax.sharding.PartitionSpec())
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=everywhere), abstract)


def restore_for_eval(workdir, which='best'):
  """Loads (config, model, EMA variables) from a workdir: 'best', 'latest' or a step number.

  The variables come back replicated on this run's devices, whichever mesh and however many
  hosts wrote them (a checkpoint of a pod run can be evaluated on one machine).
  """
  from models import registry  # pylint: disable=g-import-not-at-top
  from data import real  # pylint: disable=g-import-not-at-top
  from trainer import optimizer  # pylint: disable=g-import-not-at-top
  from trainer import train_state  # pylint: disable=g-import-not-at-top
  config = load_config(workdir)
  info = real.info(config.dataset)
  model = registry.from_config(config)
  abstract = jax.eval_shape(functools.partial(
      train_state.create, model, optimizer.make_optimizer(config), info.shape, config.seed))
  if which == 'best':
    manager = ocp.CheckpointManager(_join(workdir, 'best'), item_names=('ema', 'record'))
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'No best checkpoint in {workdir}/best.')
    variables = manager.restore(step, args=ocp.args.Composite(
        ema=ocp.args.StandardRestore(_replicated(abstract.ema_variables()))))
    return config, model, dict(variables['ema'])
  manager = ocp.CheckpointManager(_join(workdir, 'checkpoints'), item_names=('state', 'data'))
  step = manager.latest_step() if which == 'latest' else int(which)
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f'No checkpoint {which!r} in {workdir}/checkpoints '
                            f'(have {manager.all_steps()}).')
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_replicated(abstract))))['state']
  return config, model, state.ema_variables()
