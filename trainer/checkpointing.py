"""Orbax checkpoints of a training workdir.

    workdir/config.json       the resolved config
    workdir/checkpoints/<s>/  periodic: 'state' (TrainState) + 'data' (Grain iterator state)
    workdir/best/<s>/         'ema' variables of the best held-out robust accuracy so far
    workdir/best.json         its step and metrics (written after the save has finished)

Orbax writes each step into a temporary directory and renames it when complete, so a crash in
the middle of a save leaves the previous step as the latest restorable one.
"""
import json
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from etils import epath


def _join(workdir, name):
  return os.path.join(os.fspath(workdir), name)


def save_config(workdir, config):
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    epath.Path(_join(workdir, 'config.json')).write_text(config.to_json_best_effort(indent=2))


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
        _join(workdir, 'best'), item_names=('ema',),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True))

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
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)

  def restore(self, step, abstract_state, data_iterator):
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    restored = self.periodic.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  # --- best --------------------------------------------------------------------------------------
  def best_record(self):
    path = epath.Path(_join(self.workdir, 'best.json'))
    return json.loads(path.read_text()) if path.exists() else None

  def maybe_save_best(self, step, ema_variables, metrics, key):
    """Saves the EMA weights when metrics[key] beats the best so far; returns True if saved."""
    record = self.best_record()
    if record is not None and record['metrics'][key] >= metrics[key]:
      return False
    self.best.save(step, args=ocp.args.Composite(ema=ocp.args.StandardSave(ema_variables)),
                   force=True)
    self.best.wait_until_finished()
    if jax.process_index() == 0:
      epath.Path(_join(self.workdir, 'best.json')).write_text(
          json.dumps({'step': int(step), 'key': key, 'metrics': metrics}, indent=2))
    return True

  def close(self):
    self.periodic.wait_until_finished()
    self.periodic.close()
    self.best.close()


def restore_for_eval(workdir, which='best'):
  """Loads (config, model, EMA variables) from a workdir: 'best', 'latest' or a step number."""
  from models import registry  # pylint: disable=g-import-not-at-top
  from data import real  # pylint: disable=g-import-not-at-top
  config = load_config(workdir)
  info = real.info(config.dataset.name)
  model = registry.get_model(config.model.name, num_classes=info.num_classes, mean=info.mean,
                             std=info.std, dtype=config.model.dtype,
                             bn_momentum=config.model.bn_momentum,
                             bn_epsilon=config.model.bn_epsilon)
  if which == 'best':
    manager = ocp.CheckpointManager(_join(workdir, 'best'), item_names=('ema',))
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'No best checkpoint in {workdir}/best.')
    variables = manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore()))
    return config, model, dict(variables['ema'])
  manager = ocp.CheckpointManager(_join(workdir, 'checkpoints'), item_names=('state', 'data'))
  step = manager.latest_step() if which == 'latest' else int(which)
  if step is None or step not in manager.all_steps():
    raise FileNotFoundError(f'No checkpoint {which!r} in {workdir}/checkpoints '
                            f'(have {manager.all_steps()}).')
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  return config, model, {'params': state['ema_params'], 'batch_stats': state['ema_batch_stats']}
