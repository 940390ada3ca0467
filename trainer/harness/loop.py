"""The one training loop: `run(task, config, workdir)` for every trainer.

A trainer is a `Task`: its state, its pure train step, its batches and a few hooks. The harness owns
the rest, the same way for all of them: the config check against the workdir, the mesh, the state
built in its sharded layout or restored (input position included), the jitted step, the cadence of
logging and evaluation (`itstime`), the non-finite checks before anything is saved or evaluated,
preemption, one run per workdir (harness/lease.py), Orbax checkpoints, TensorBoard through clu, the
progress bar, and done.json last. A rerun of the same command resumes from the newest checkpoint; a
SIGTERM saves at the next step boundary and returns (on several hosts, all stop at the same step).
Every process runs this same function on its own slice of each batch.
"""
import contextlib
import dataclasses
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath

from trainer import sharding
from trainer.harness import checkpoints as checkpoints_lib
from trainer.harness import lease
from trainer.harness import preemption
from trainer.harness import progress
from trainer.harness import workdir as workdir_lib


class NonFiniteError(FloatingPointError):
  """The loss or the weights stopped being finite; nothing from that step on was saved."""


@dataclasses.dataclass
class Run:
  """What the harness built for the task's hooks: the mesh, where the state lives, checkpoints,
  and the TensorBoard writer."""
  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  state_shardings: Any
  checkpoints: checkpoints_lib.Checkpoints
  writer: Any


class Task:
  """A trainer, as the harness sees it. Subclasses set the attributes and the first four methods;
  the hooks are optional."""
  total_steps: int
  resumable: tuple = ()            # config keys that may change between starts of one run
  data_in_checkpoint = False       # the batches come from an iterator whose position is saved
  keeps_best = False               # `evaluate` may save a best checkpoint (run.checkpoints)

  def init_state(self) -> Any:
    """A fresh state pytree with a `step` field; jitted with the state's shardings."""
    raise NotImplementedError

  def train_step(self, state, batch) -> tuple[Any, dict]:
    """Pure: (state, global batch) -> (state, scalar metrics)."""
    raise NotImplementedError

  def data(self, first_step: int) -> Iterator[dict]:
    """This host's numpy batches for the steps after `first_step`. An 'id' field stays on the
    host (the ids a step consumed, for exact-resume records)."""
    raise NotImplementedError

  def setup(self, run: Run) -> None:
    """Once, before the first step: build what needs the mesh (e.g. an evaluation function)."""

  def log_extras(self, step: int) -> dict:
    """More train/ scalars at each log step (e.g. the learning rate)."""
    return {}

  def evaluate(self, step: int, state) -> dict:
    """Every eval.every_steps and at the last step; scalars to log (the state is finite)."""
    return {}

  def shown(self, results: dict) -> dict:
    """What the progress bar shows of an evaluation's results."""
    return {}

  def finish(self, state, results: dict) -> dict:
    """After the last step and its checkpoint, before done.json; returns the final results."""
    return results


def itstime(step, every, total_steps):
  """The one predicate for periodic work: every `every` steps, and at the last step so a run
  always ends measured."""
  return step == total_steps or (every > 0 and step % every == 0)


@jax.jit
def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree) -> bool:
  """Whether every float in `tree` is finite (one reduction on the devices)."""
  return bool(_all_finite(tree))


def check_finite(step, state):
  if not all_finite(state):
    raise NonFiniteError(f'Non-finite weights at step {step}: nothing from this step on was saved '
                         'or evaluated; the newest checkpoint is intact. Lower the learning rate '
                         'or check the data.')


class _Window:
  """Train metrics since the last log, averaged when logged; the seconds spent in evaluations
  are kept out of the rates."""

  def __init__(self, step):
    self._reset(step)

  def _reset(self, step):
    self.metrics, self.step, self.start, self.paused = [], step, time.time(), 0.0

  def flush(self, step, batch_size):
    means = {k: float(np.mean([m[k] for m in jax.device_get(self.metrics)]))
             for k in self.metrics[0]}
    bad = {k: v for k, v in means.items() if not np.isfinite(v)}
    if bad:
      raise NonFiniteError(f'Non-finite training metrics at step {step}: {bad}. Nothing from '
                           'this step on was saved; the newest checkpoint is intact.')
    seconds = max(time.time() - self.start - self.paused, 1e-9)
    means['steps_per_second'] = (step - self.step) / seconds
    means['images_per_second'] = means['steps_per_second'] * batch_size
    self._reset(step)
    return means


class BatchIdLog:
  """Debug record of the sample ids each train step consumes, for tests of exact resume.

  One line 'step id id …' per step in workdir/batch_ids/process_<i>.txt (this host's share),
  appended and flushed before the step runs. A crash keeps the lines of the steps it reached;
  the resumed run appends the steps it redoes after them, so the last line of each step is the
  one of the surviving run.
  """

  def __init__(self, workdir):
    path = epath.Path(workdir, 'batch_ids')
    path.mkdir(parents=True, exist_ok=True)
    # A context manager for gs:// (etils opens those through TensorFlow), a file object locally.
    self._open = contextlib.ExitStack()
    self._file = self._open.enter_context((path / f'process_{jax.process_index()}.txt').open('a'))

  def write(self, step, ids):
    self._file.write(f'{step} {" ".join(map(str, np.asarray(ids).tolist()))}\n')
    self._file.flush()


def _start(task, config, workdir):
  """The Run, and the state: fresh in its sharded layout, or the newest checkpoint's."""
  workdir_lib.check_same_run(workdir, config, task.resumable)  # before anything is written
  workdir_lib.save_config(workdir, config)
  mesh = sharding.make_mesh(config)
  abstract = jax.eval_shape(task.init_state)
  state_sh = sharding.state_shardings(mesh, abstract)
  ckpt = checkpoints_lib.Checkpoints(workdir, config, with_data=task.data_in_checkpoint,
                                     keeps_best=task.keeps_best)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  run = Run(config, workdir, mesh, state_sh, ckpt, writer)
  latest = ckpt.latest_step()
  if latest is None:
    return run, jax.jit(task.init_state, out_shardings=state_sh)(), None
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
  logging.info('Resuming from step %d in %s.', latest, workdir)
  return run, ckpt.restore(latest, target), latest


def run(task: Task, config, workdir, *, progress_name=None, record_batch_ids=False) -> dict:
  """Trains (or resumes) to task.total_steps; returns {'step', 'finished', 'history': [(step,
  logged train metrics)], **the last evaluation, or the task's final results}. done.json is
  written last, and only for a finished run."""
  workdir = str(workdir)
  with preemption.Notice() as notice, lease.Lease(workdir):  # first: a notice during set-up too
    run_, state, latest = _start(task, config, workdir)
    data = task.data(int(state.step))
    if latest is not None and task.data_in_checkpoint:
      run_.checkpoints.restore_data(latest, data)
    task.setup(run_)
    try:
      state, results, history = _loop(task, run_, state, data, notice, progress_name,
                                      BatchIdLog(workdir) if record_batch_ids else None)
      step = int(state.step)
      finished = step >= task.total_steps
      if finished and not results:  # started on a finished workdir
        results = (workdir_lib.read_done(workdir) or {}).get('final') or task.evaluate(step, state)
    finally:
      run_.checkpoints.close()  # commits the saves in flight, also after an error: all are finite
    if finished:
      results = task.finish(state, results)
      workdir_lib.write_done(workdir, step, task.total_steps, results,
                             run_.checkpoints.best_record())
    run_.writer.flush()
    return {'step': step, 'finished': finished, 'history': history, **results}


def _loop(task, run_, state, data, notice, progress_name, batch_ids):
  """The steps after the state's own, to the last or to a preemption notice."""
  config, ckpt, writer, mesh = run_.config, run_.checkpoints, run_.writer, run_.mesh
  train_step = jax.jit(task.train_step, donate_argnums=0,
                       in_shardings=(run_.state_shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(run_.state_shardings, sharding.replicated(mesh)))
  first, total = int(state.step), task.total_steps
  bar = progress.bar(progress_name, first, total)
  window, results, history, shown = _Window(first), {}, [], {}
  try:
    for s in range(first + 1, total + 1):
      batch = next(data)
      ids = batch.pop('id', None)  # host-only: which samples this step used
      if batch_ids:
        batch_ids.write(s, ids)
      with jax.profiler.StepTraceAnnotation('train', step_num=s):
        state, metrics = train_step(state, sharding.global_batch(mesh, batch))
      window.metrics.append(metrics)
      if itstime(s, config.train.log_every_steps, total):
        logged = {**window.flush(s, config.train.batch_size), **task.log_extras(s)}
        writer.write_scalars(s, {f'train/{k}': v for k, v in logged.items()})
        history.append((s, logged))
        shown['loss'] = f"{logged['loss']:.4g}"
      if itstime(s, config.eval.every_steps, total):
        tic = time.time()
        check_finite(s, state)
        results = task.evaluate(s, state)
        writer.write_scalars(s, results)
        window.paused += time.time() - tic
        shown.update(task.shown(results))
      preempted = notice.received(s, ckpt)
      if ckpt.should_save(s) or preempted or s == total:
        check_finite(s, state)
        ckpt.save(s, state, data, force=True)
      if bar:
        bar.set_postfix(shown, refresh=False)
        bar.update(1)
      if preempted and s < total:
        logging.warning('Preemption notice at step %d: checkpoint saved, exiting.', s)
        break
  finally:  # the console line after the bar starts clean, also after an error
    if bar:
      bar.close()
  return state, results, history
