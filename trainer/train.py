"""`train_and_evaluate(config, workdir)`: the robust training run, top to bottom.

Resumes automatically from the newest checkpoint in the workdir (state and data position), so a
preempted run is simply started again with the same command. A SIGTERM makes it save at the next
step boundary and return; on several hosts all of them stop at the same step. Every process runs
this same function on its own slice of each batch (multi-host: see trainer/main.py).
"""
import datetime
import functools
import json
import signal
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions
from etils import epath
import tqdm

from data.input import pipeline
from data import real
from models import registry
from trainer import checkpointing
from trainer import config_validation
from trainer import optimizer
from trainer import robust_accuracy
from trainer import sharding
from trainer import step as step_lib
from trainer import train_state
from trainer.attacks import compositions


def selection_key(config):
  """The held-out metric the best checkpoint is chosen by: robust accuracy, or clean accuracy for
  the non-robust classifier (whose robust accuracy only falls as it learns)."""
  return 'holdout/clean_accuracy' if config.train.loss == 'standard' else 'holdout/robust_accuracy'


class NonFiniteLossError(FloatingPointError):
  pass


def _preemption_notice():
  """A SIGTERM (a preemption notice, or `launch/tpu_vm.sh stop`) must not kill the run mid-step.

  One process: a handler raises a flag; the loop saves at the next step boundary and stops.
  Several processes: every host has to stop at the same step, since a save is collective, but
  the notice may reach one host only, or the hosts at different steps. JAX's preemption service
  (started by jax.distributed.initialize) catches SIGTERM itself and agrees on a common step,
  which `Checkpoints.reached_preemption` reads; so no Python handler replaces it there.
  """
  flag = {'set': False}
  if jax.process_count() > 1:
    return flag
  def handler(signum, frame):
    del signum, frame
    flag['set'] = True
  signal.signal(signal.SIGTERM, handler)
  return flag


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
    self._file = (path / f'process_{jax.process_index()}.txt').open('a')

  def write(self, step, ids):
    self._file.write(f'{step} {" ".join(map(str, np.asarray(ids).tolist()))}\n')
    self._file.flush()


def _check_finite(step, metrics):
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteLossError(f'Non-finite training metrics at step {step}: {bad}. Nothing was '
                             'saved from this step on; the newest checkpoint is intact.')


def _done_record(step, total_steps, results, best):
  return {'step': step, 'total_steps': total_steps,
          'finished_at': datetime.datetime.now(datetime.timezone.utc).strftime(
              '%Y-%m-%dT%H:%M:%SZ'),
          'final': results, 'best': best}


def _previous_final_results(workdir):
  path = epath.Path(workdir, 'done.json')
  return json.loads(path.read_text()).get('final') if path.exists() else None


def itstime(step, every, total_steps):
  """The one predicate for periodic work (logging, evaluation): every `every` steps, and at the
  last step so a run always ends measured."""
  return step == total_steps or (every > 0 and step % every == 0)


def progress_bar(name, first_step, total_steps):
  """A progress bar over the train steps (process 0 only), with images/s and an ETA."""
  if not name or jax.process_index() > 0:
    return None
  return tqdm.tqdm(total=total_steps, initial=first_step, desc=name, unit='step',
                   dynamic_ncols=True, mininterval=1.0,
                   bar_format='{desc}: {percentage:3.0f}%|{bar:20}| {n}/{total} steps '
                              '[{elapsed}<{remaining}, {rate_fmt}]{postfix}')


def _percent(value):
  return '' if value is None else f'{100 * value:.1f}%'


def summary_line(result, workdir):
  """One line for the console: where the run is and how it ended."""
  if not result['finished']:
    return f'stopped at step {result["step"]} (checkpoint saved): run the same command to resume'
  measured = ', '.join(f'{k} {_percent(v)}' for k, v in sorted(result.items())
                       if k.endswith('_accuracy'))
  return f'finished at step {result["step"]}: {measured}  ({workdir})'


def train_and_evaluate(config, workdir, *, record_batch_ids=False, progress_name=None):
  """Trains, evaluates periodically, keeps the best EMA checkpoint; returns the final metrics.

  The workdir's done.json is written last, by process 0, only when the last step is done; a run
  stopped by SIGTERM saves and returns without it (see launch/tpu_vm.sh for the contract).
  `progress_name` names the console progress bar (None: no bar).
  """
  # --- Set-up -------------------------------------------------------------------------------------
  preemption = _preemption_notice()  # first, so a notice during set-up is honoured too
  config_validation.validate(config)
  workdir = str(workdir)
  mesh = sharding.make_mesh(config)
  info = real.info(config.dataset)
  train_data, holdout, test = real.training_splits(config)
  model = registry.from_config(config)
  tx = optimizer.make_optimizer(config)
  total_steps = optimizer.total_steps(config)
  lr_schedule = optimizer.learning_rate_schedule(config)
  checkpointing.check_same_run(workdir, config)  # before anything is written
  checkpointing.save_config(workdir, config)
  ckpt = checkpointing.Checkpoints(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  batch_ids = BatchIdLog(workdir) if record_batch_ids else None

  # --- State, built directly in its sharded layout; or restored --------------------------------
  create = functools.partial(train_state.create, model, tx, info.shape, config.seed)
  abstract = jax.eval_shape(create)
  state_sh = sharding.state_shardings(mesh, abstract)
  data_iter = pipeline.make_train_iterator(config, train_data, num_classes=info.num_classes)
  latest = ckpt.latest_step()
  if latest is None:
    state = jax.jit(create, out_shardings=state_sh)()
  else:
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sh)
    state = ckpt.restore(latest, target, data_iter)
    logging.info('Resumed from step %d in %s.', latest, workdir)

  # --- Compiled functions -------------------------------------------------------------------------
  train_step = jax.jit(step_lib.make_train_step(config, model, tx, info.num_classes),
                       in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  measure = robust_accuracy.make_measure(  # attacks in eval.dtype (float32 by default)
      registry.from_config(config, dtype=config.eval.dtype), compositions.selection_attack(config),
      mesh, config.eval.batch_size, seed=config.seed)

  def evaluate(step):
    results = {}
    for name, split in (('holdout', holdout), ('test', test)):
      if len(split['label']):
        acc = measure(state.ema_variables(), split['image'], split['label'])
        results[f'{name}/clean_accuracy'] = acc['clean']
        results[f'{name}/robust_accuracy'] = acc['robust']
    writer.write_scalars(step, results)
    if selection_key(config) in results:
      ckpt.maybe_save_best(step, state.ema_variables(), results, selection_key(config))
    return results

  # --- Loop ---------------------------------------------------------------------------------------
  first_step = int(state.step)
  progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  bar = progress_bar(progress_name, first_step, total_steps)
  last_log, last_log_step, results, shown = time.time(), first_step, {}, {}
  for s in range(first_step + 1, total_steps + 1):
    batch = next(data_iter)
    ids = batch.pop('id')  # host-only: which samples this step used
    if batch_ids:
      batch_ids.write(s, ids)
    with jax.profiler.StepTraceAnnotation('train', step_num=s):
      state, metrics = train_step(state, sharding.global_batch(mesh, batch))
    progress(s)
    if itstime(s, config.train.log_every_steps, total_steps):
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      _check_finite(s, metrics)
      now = time.time()
      metrics['learning_rate'] = float(lr_schedule(s - 1))
      seconds = now - last_log
      metrics['images_per_second'] = (s - last_log_step) * config.train.batch_size / seconds
      metrics['skipped_records'] = data_iter.skipped_records
      writer.write_scalars(s, {f'train/{k}': v for k, v in metrics.items()})
      last_log, last_log_step = now, s
      shown['loss'] = f"{metrics['loss']:.3f}"
    if itstime(s, config.eval.every_steps, total_steps):
      results = evaluate(s)
      logging.info('Step %d: %s', s, results)
      shown['held-out'] = _percent(results.get(selection_key(config)))
    preempted = preemption['set'] or ckpt.reached_preemption(s)
    if ckpt.should_save(s) or preempted or s == total_steps:
      _check_finite(s, {k: float(v) for k, v in jax.device_get(metrics).items()})
      ckpt.save(s, state, data_iter, force=True)
    if bar:
      bar.set_postfix(shown, refresh=False)
      bar.update(1)
    if preempted and s < total_steps:
      logging.warning('Preemption notice at step %d: checkpoint saved, exiting.', s)
      break
  if bar:
    bar.close()

  # --- Wrap-up: done.json last, and only for a finished run -------------------------------------
  finished = int(state.step) >= total_steps
  if finished and not results:  # started on a finished workdir
    results = _previous_final_results(workdir) or evaluate(int(state.step))
  ckpt.close()  # waits for the last save to be committed
  writer.flush()
  if finished and jax.process_index() == 0:
    checkpointing.write_atomic(epath.Path(workdir, 'done.json'), json.dumps(
        _done_record(int(state.step), total_steps, results, ckpt.best_record()), indent=2))
  return {'step': int(state.step), 'finished': finished, **results}
