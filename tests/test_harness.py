"""The training harness (trainer/harness/loop.py) on a toy task with no model: cadence, resume,
the done marker, the finish hook, non-finite weights refused before evaluation and saving, the
SIGTERM handler put back, old config key names that still resume, one run per workdir."""
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from trainer.harness import checkpoints
from trainer.harness import lease
from trainer.harness import loop
from trainer.harness import workdir as workdir_lib


@flax.struct.dataclass
class CountState:
  step: jax.Array
  total: jax.Array


class CountTask(loop.Task):
  """state.total += the batch's sum; batch of step s is [s, s] (a function of the step)."""

  def __init__(self, total_steps, poison_at=None):
    self.total_steps, self.poison_at = total_steps, poison_at
    self.evaluated, self.finished = [], []

  def init_state(self):
    return CountState(step=jnp.zeros((), jnp.int32), total=jnp.zeros((), jnp.float32))

  def train_step(self, state, batch):
    total = state.total + jnp.sum(batch['x'])
    return CountState(step=state.step + 1, total=total), {'loss': total}

  def data(self, first_step):
    for s in itertools.count(first_step + 1):
      value = np.nan if s == self.poison_at else float(s)
      yield {'x': np.full((8,), value, np.float32), 'id': np.arange(8) + 8 * s}

  def evaluate(self, step, state):
    self.evaluated.append(step)
    return {'eval/total': float(state.total)}

  def finish(self, state, results):
    self.finished.append(int(state.step))
    return {**results, 'finished_total': float(state.total)}


def _config(log_every=1000, eval_every=3, checkpoint_every=2):
  c = ml_collections.ConfigDict()
  c.seed, c.distributed = 0, False
  c.train = ml_collections.ConfigDict({'batch_size': 8, 'log_every_steps': log_every})
  c.eval = ml_collections.ConfigDict({'every_steps': eval_every})
  c.checkpoint = ml_collections.ConfigDict({'every_steps': checkpoint_every, 'keep': 2})
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1})
  return c


def _sum(upto):
  return 8.0 * sum(range(1, upto + 1))


def test_a_run_evaluates_on_cadence_finishes_once_and_writes_done(tmp_path):
  task = CountTask(7)
  result = loop.run(task, _config(log_every=2), str(tmp_path))
  assert result['finished'] and result['step'] == 7
  assert task.evaluated == [3, 6, 7]       # every 3 steps and the last
  assert task.finished == [7]
  assert result['finished_total'] == _sum(7)
  assert [s for s, _ in result['history']] == [2, 4, 6, 7]
  assert result['history'][0][1]['loss'] == pytest.approx((_sum(1) + _sum(2)) / 2)  # the mean
  done = json.loads((tmp_path / 'done.json').read_text())
  assert done['step'] == 7 and done['final']['finished_total'] == _sum(7)


def test_a_resumed_run_continues_from_the_checkpoint(tmp_path):
  loop.run(CountTask(4), _config(), str(tmp_path))      # checkpoints at 2 and 4, done.json
  again = CountTask(9)                                    # the same run, lengthened
  result = loop.run(again, _config(), str(tmp_path))
  assert result['finished_total'] == _sum(9)              # steps 5..9 added to 1..4
  assert again.evaluated == [6, 9]


def test_a_finished_workdir_is_not_trained_again(tmp_path):
  loop.run(CountTask(4), _config(), str(tmp_path))
  again = CountTask(4)
  result = loop.run(again, _config(), str(tmp_path))
  assert result['step'] == 4 and again.evaluated == [] and again.finished == [4]
  assert result['eval/total'] == _sum(4)                  # done.json's final results


def test_non_finite_weights_are_neither_evaluated_nor_saved(tmp_path):
  """The NaN arrives at step 5, between log periods; evaluation at 6 and the save at 6 refuse
  it, and the newest checkpoint stays the finite one of step 4."""
  task = CountTask(9, poison_at=5)
  with pytest.raises(loop.NonFiniteError, match='step 6'):
    loop.run(task, _config(eval_every=3, checkpoint_every=2), str(tmp_path))
  assert task.evaluated == [3]
  manager = checkpoints.manager(tmp_path / 'checkpoints', ('state',))
  assert manager.latest_step() == 4
  assert not (tmp_path / 'done.json').exists()


def test_a_relative_checkpoint_directory_saves_and_restores(tmp_path, monkeypatch):
  """Orbax's tensorstore refuses a relative path when it restores; a library caller (a benchmark,
  a notebook) need not make it absolute first."""
  monkeypatch.chdir(tmp_path)
  tree = {'w': np.arange(4, dtype=np.float32)}
  with checkpoints.manager('runs/x/checkpoints', ('state',)) as manager:
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)))
    manager.wait_until_finished()
  with checkpoints.manager('runs/x/checkpoints', ('state',)) as manager:
    restored = manager.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore(tree)))
  np.testing.assert_array_equal(restored['state']['w'], tree['w'])


def test_non_finite_metrics_stop_at_the_log_step(tmp_path):
  with pytest.raises(loop.NonFiniteError, match='metrics at step 5'):
    loop.run(CountTask(9, poison_at=5), _config(log_every=5, eval_every=0,
                                                checkpoint_every=100), str(tmp_path))


def test_the_sigterm_handler_is_put_back(tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  loop.run(CountTask(2), _config(), str(tmp_path))
  assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_under_the_old_key_names_resumes_under_the_new_ones(tmp_path):
  """ema.decay and train.eval_every_steps became optim.ema_decay and eval.every_steps."""
  new = ml_collections.ConfigDict({'optim': {'ema_decay': 0.99}, 'eval': {'every_steps': 5},
                                   'train': {'batch_size': 8}})
  (tmp_path / 'config.json').write_text(json.dumps(
      {'ema': {'decay': 0.99}, 'train': {'eval_every_steps': 5, 'batch_size': 8}, 'optim': {},
       'eval': {}}))
  workdir_lib.check_same_run(str(tmp_path), new)
  new.optim.ema_decay = 0.9
  with pytest.raises(workdir_lib.ConfigMismatchError, match='optim.ema_decay: 0.99 -> 0.9'):
    workdir_lib.check_same_run(str(tmp_path), new)


def test_a_torn_json_file_is_named(tmp_path):
  path = tmp_path / 'eval.json'
  path.write_text('{"clean": 0.5, "robust": ')
  with pytest.raises(ValueError, match='eval.json is not valid JSON'):
    workdir_lib.read_json(path)


# --- One run per workdir -------------------------------------------------------------------------

def _lease_file(tmp_path, **holder):
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'heartbeat': time.time()}
  record.update(holder)
  (tmp_path / lease.NAME).write_text(json.dumps(record))


def test_a_held_workdir_is_refused_and_given_back_at_the_end(tmp_path):
  with lease.Lease(str(tmp_path)):
    assert json.loads((tmp_path / lease.NAME).read_text())['pid'] == os.getpid()
    with pytest.raises(lease.WorkdirBusyError, match=f'in use by another run .*pid {os.getpid()}'):
      with lease.Lease(str(tmp_path)):
        pass
  assert not (tmp_path / lease.NAME).exists()


def test_a_killed_runs_lease_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  _lease_file(tmp_path, pid=dead.pid)                           # this host, process gone
  with lease.Lease(str(tmp_path)):
    pass
  _lease_file(tmp_path, pid_start=-1)                            # a reused pid: not the holder
  with lease.Lease(str(tmp_path)):
    pass
  (tmp_path / lease.NAME).write_text('{"host": "a", "pi')         # cut short by a kill
  with lease.Lease(str(tmp_path)):
    pass


def test_another_hosts_lease_holds_while_its_heartbeat_is_fresh(tmp_path):
  _lease_file(tmp_path, host='tpu-worker-7', heartbeat=time.time() - 10)
  with pytest.raises(lease.WorkdirBusyError, match='host tpu-worker-7'):
    with lease.Lease(str(tmp_path)):
      pass
  _lease_file(tmp_path, host='tpu-worker-7', heartbeat=time.time() - lease.STALE_SECONDS - 1)
  with lease.Lease(str(tmp_path)):
    pass


def test_a_run_from_before_a_key_was_added_resumes_with_its_old_behaviour(tmp_path):
  """generated.alpha_schedule came later: a config.json without it is the constant alpha."""
  ran = ml_collections.ConfigDict({'generated': {'alpha': 0.3}, 'train': {'batch_size': 8}})
  (tmp_path / 'config.json').write_text(ran.to_json_best_effort())
  new = ml_collections.ConfigDict({'generated': {'alpha': 0.3, 'alpha_schedule': ()},
                                   'train': {'batch_size': 8}})
  workdir_lib.check_same_run(str(tmp_path), new)
  new.generated.alpha_schedule = ((100, 0.5),)
  with pytest.raises(workdir_lib.ConfigMismatchError, match='generated.alpha_schedule'):
    workdir_lib.check_same_run(str(tmp_path), new)
