"""Orbax checkpoints of a training workdir, every manager from one factory.

    workdir/checkpoints/<s>/  periodic: 'state' (the trainer's state pytree) and, for a trainer
                              whose input iterator has a position, 'data' (Grain's iterator
                              state, one JSON file per process)
    workdir/best/<s>/         'ema' variables of the best held-out metric so far, and 'record':
                              its step and metrics (trainers that select a checkpoint)
    workdir/best.json         a copy of that record, for people and scripts

The latest good step is atomic: Orbax writes each step into `<s>.orbax-checkpoint-tmp` and
renames it to `<s>` only once every process has finished writing (on GCS, where there is no
rename, a commit marker plays that part). A crash in the middle of a save therefore leaves the
previous step as the latest restorable one; the leftover temporary directory is deleted when the
next run opens the workdir (`cleanup_tmp_directories`), before its first save. The best record
lives inside the best checkpoint for the same reason: weights and metrics appear together or not
at all.

Multi-host: every process opens the same workdir (a shared disk or a gs:// bucket) and takes part
in every save and restore; process 0 writes the shared files and finalises each step.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from data import files
from data.input import pipeline
from trainer.harness import workdir as workdir_lib


def manager(directory, item_names, *, keep=None, every_steps=None, async_save=False):
  """The one place a CheckpointManager is built. With `every_steps`, it saves at that interval
  and when JAX's preemption service reports a notice; without, whenever asked."""
  policy = None
  if every_steps:
    policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(every_steps),
                                     policies.PreemptionCheckpointingPolicy()])
  directory = os.fspath(directory)
  if files.is_local(directory):
    directory = os.path.abspath(directory)   # Orbax's tensorstore refuses a relative path
  return ocp.CheckpointManager(
      directory, item_names=tuple(item_names),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, save_decision_policy=policy, enable_async_checkpointing=async_save,
          cleanup_tmp_directories=True))


class Checkpoints:
  """Periodic (interval + preemption, keep-N, async) and, with `keeps_best`, best-so-far
  checkpoints of one run; with `with_data`, the input iterator's position goes into each."""

  def __init__(self, workdir, config, *, with_data=False, keeps_best=False):
    self.workdir, self.with_data = os.fspath(workdir), with_data
    self.periodic = manager(os.path.join(self.workdir, 'checkpoints'),
                            ('state', 'data') if with_data else ('state',),
                            keep=config.checkpoint.keep, every_steps=config.checkpoint.every_steps,
                            async_save=True)
    self.best = manager(os.path.join(self.workdir, 'best'), ('ema', 'record'), keep=1) \
        if keeps_best else None
    # Held in memory so every process takes the same save-or-not decision (a save is collective).
    self._best = self._load_best_record() if keeps_best else None

  # --- periodic ----------------------------------------------------------------------------------
  def latest_step(self):
    return self.periodic.latest_step()

  def should_save(self, step):
    return self.periodic.should_save(step)

  def reached_preemption(self, step):
    return self.periodic.reached_preemption(step)

  def save(self, step, state, data_iterator=None, force=False):
    items = {'state': ocp.args.StandardSave(state)}
    if self.with_data:
      items['data'] = pipeline.save_args(data_iterator)
    return self.periodic.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step, abstract_state):
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs).

    Those shardings are the current mesh's, not the saved ones: a run saved on 8 devices resumes
    on 4, or on a (4, 2) data × fsdp mesh, each process reading only the slices it holds.
    """
    return self.periodic.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))['state']

  def restore_data(self, step, data_iterator):
    """Puts `data_iterator` where it was at `step` (this process's own position)."""
    self.periodic.restore(step, args=ocp.args.Composite(
        data=pipeline.restore_args(data_iterator)))

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
      workdir_lib.write_json(os.path.join(self.workdir, 'best.json'), record)
    return True

  def close(self):
    self.periodic.wait_until_finished()
    self.periodic.close()
    if self.best is not None:
      self.best.close()


def replicated(abstract):
  """`abstract` as ShapeDtypeStructs replicated over every device of this run, so a checkpoint
  written on any mesh by any number of hosts can be read on one machine."""
  everywhere = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.asarray(jax.devices()), ('devices',)), jax.sharding.PartitionSpec())
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=everywhere), abstract)


def read_best(workdir, abstract_ema):
  """The best checkpoint's EMA variables, replicated on this run's devices."""
  best = manager(os.path.join(os.fspath(workdir), 'best'), ('ema', 'record'))
  step = best.latest_step()
  if step is None:
    raise FileNotFoundError(f'No best checkpoint in {workdir}/best.')
  return dict(best.restore(step, args=ocp.args.Composite(
      ema=ocp.args.StandardRestore(replicated(abstract_ema))))['ema'])


def read_state(workdir, which, abstract_state):
  """The state of periodic checkpoint `which` ('latest' or a step), replicated."""
  periodic = manager(os.path.join(os.fspath(workdir), 'checkpoints'), ('state', 'data'))
  step = periodic.latest_step() if which == 'latest' else int(which)
  if step is None or step not in periodic.all_steps():
    raise FileNotFoundError(f'No checkpoint {which!r} in {workdir}/checkpoints '
                            f'(have {periodic.all_steps()}).')
  return periodic.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(replicated(abstract_state))))['state']
