"""A real two-process run on loopback (jax.distributed, 2 processes × 4 CPU devices).

Both processes train on one shared workdir, each reading its own slice of every batch. A SIGTERM
sent to one process only (as a preemption notice may reach one host first) must stop both at the
same step, saved, with exit status 0 and no done.json; relaunched, both resume and finish. The
result must equal one process on 8 devices fed the same global batches: data/pipeline.py gives
host h of P the positions h, h + P, … of the real stream and its own augmentation seed, so the
reference concatenates the batches of two single-process iterators built as hosts 0 and 1.
"""
import functools
import glob
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

import trainer_runs as runs
from data.input import pipeline
from data import real
from models import registry
from trainer.robust import classifier
from trainer.robust import optimizer
from trainer import sharding
from trainer.robust import step as step_lib
from trainer.robust import train_state

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

STEPS = 16
OVERRIDES = runs.tiny_overrides(STEPS, **{'checkpoint.every_steps': 4})


def launch_both(workdir, environ, port, name):
  return [runs.launch(workdir, {'distributed': True, **OVERRIDES}, environ,
                      os.path.join(os.path.dirname(workdir), f'{name}_{i}.log'),
                      extra=(f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                             f'--process_id={i}'))
          for i in range(2)]


def one_process_reference(config, hosts=2):
  """The 8-device run of the same global batches, with its per-step losses and host slices."""
  mesh = sharding.make_mesh(config)
  info = real.info(config.dataset)
  data, _, _ = real.training_splits(config)
  model, tx = registry.from_config(config), optimizer.make_optimizer(config)
  create = functools.partial(train_state.create, model, tx, info.shape, config.seed)
  state_sh = sharding.state_shardings(mesh, jax.eval_shape(create))
  state = jax.jit(create, out_shardings=state_sh)()
  train_step = jax.jit(step_lib.make_train_step(config, model, tx, info.num_classes),
                       in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                       out_shardings=(state_sh, sharding.replicated(mesh)))
  iterators = [pipeline.make_train_iterator(
      config, data['image'], data['label'], data['id'], process_index=h, process_count=hosts,
      num_classes=info.num_classes) for h in range(hosts)]
  losses, ids = {}, {}
  for s in range(1, optimizer.total_steps(config) + 1):
    parts = [next(it) for it in iterators]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    state, metrics = train_step(state, sharding.global_batch(mesh, batch))
    losses[s] = float(metrics['loss'])
    ids[s] = [tuple(p['id'].tolist()) for p in parts]
  target = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
  return runs.flat(state), target, losses, ids


def event_files_and_losses(workdir):
  files = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  losses = {}
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == 'train/loss':
          losses[event.step] = float(tf.make_ndarray(v.tensor))
  return files, losses


def test_two_processes_stop_together_resume_and_equal_one_process(tmp_path):
  workdir, cache = str(tmp_path / 'run'), tmp_path / 'jax_cache'
  environ = runs.env(4, cache)

  # --- Run 1: SIGTERM to process 1 only, once it is training ----------------------------------
  procs = launch_both(workdir, environ, runs.free_port(), 'first')
  runs.wait_until(lambda: runs.last_step_logged(workdir, process=1) >= 3, procs[1])
  procs[1].send_signal(runs.SIGTERM)
  for p in procs:
    assert runs.finish(p) == 0, runs.log_tail(p)
  stopped = [runs.last_step_logged(workdir, process=i) for i in range(2)]
  saved = runs.committed_steps(os.path.join(workdir, 'checkpoints'))
  assert stopped[0] == stopped[1] == saved[-1] < STEPS, (stopped, saved)
  assert not os.path.exists(os.path.join(workdir, 'done.json'))
  pids = {procs[0].pid}

  # --- Run 2: both resume and finish ------------------------------------------------------------
  procs = launch_both(workdir, environ, runs.free_port(), 'second')
  for p in procs:
    assert runs.finish(p) == 0, runs.log_tail(p)
  pids.add(procs[0].pid)
  done = json.load(open(os.path.join(workdir, 'done.json')))
  assert done['step'] == done['total_steps'] == STEPS
  for i in range(2):
    assert runs.batch_id_lines(workdir, i)[stopped[i]][0] == stopped[i] + 1  # resumed right after

  # --- Only process 0 wrote TensorBoard; each host read its own slice ---------------------------
  files, losses = event_files_and_losses(workdir)
  assert len(files) == 2 and {int(f.split('.')[-3]) for f in files} == pids, files
  slices = [dict(runs.batch_id_lines(workdir, i)) for i in range(2)]
  for s in range(1, STEPS + 1):
    assert len(slices[0][s]) == len(slices[1][s]) == 16
    assert not set(slices[0][s]) & set(slices[1][s])

  # --- The same run as one process on 8 devices -------------------------------------------------
  want_state, target, want_losses, want_ids = one_process_reference(runs.config(OVERRIDES))
  for s in range(1, STEPS + 1):
    assert [slices[0][s], slices[1][s]] == want_ids[s], f'step {s}'
  assert sorted(losses) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [want_losses[s] for s in sorted(losses)], rtol=1e-5)
  got = runs.restore_state(workdir, STEPS, target)  # onto this process's 8 devices
  assert got.keys() == want_state.keys()
  for key, value in want_state.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)

  # The two-host checkpoint also loads for evaluation in this one process.
  _, _, ema = classifier.load(workdir, 'best')
  for key, value in runs.flat(ema).items():
    np.testing.assert_array_equal(value, got[f'ema_{key}'], err_msg=key)
