"""Crash safety: SIGKILL at random moments (also mid-save), SIGTERM, and resume onto other meshes.

An uninterrupted run is the reference. A second run of the same config is interrupted again and
again (SIGKILL at a random time, SIGKILL during an asynchronous checkpoint write, SIGKILL at a
random step, SIGTERM) and relaunched each time; its final state must be bitwise equal to the
reference and its sample-id stream exactly-once:

  every run appends 'step ids…' for each step it trains (--debug_batch_ids). A relaunch resumes
  from the newest committed checkpoint c, so it must continue at step c + 1 and redo exactly the
  steps the crash lost; taking the last line of each step gives the surviving timeline, whose
  steps 1..N must carry the reference run's ids, and a redone step the ids it had before.

Subprocesses use 2 virtual devices, so checkpoints are sharded and restoring onto the test
process's 8 devices is a change of mesh.
"""
import functools
import json
import os
import random
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import trainer_runs as runs
from data import real
from models import registry
from trainer.robust import optimizer
from trainer import sharding
from trainer.robust import train
from trainer.robust import train_state

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

STEPS = 16
OVERRIDES = runs.tiny_overrides(STEPS)
SEED = int(os.environ.get('CRASH_TEST_SEED', '0'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run (it also fills the compilation cache the interrupted runs read)."""
  root = tmp_path_factory.mktemp('crash')
  workdir, cache = str(root / 'reference'), root / 'jax_cache'
  proc = runs.launch(workdir, OVERRIDES, runs.env(2, cache), str(root / 'reference.log'))
  assert runs.finish(proc) == 0, runs.log_tail(proc)
  return {'workdir': workdir, 'root': root, 'cache': cache}


def _checkpoints(workdir):
  return os.path.join(workdir, 'checkpoints')


# --- Ways to interrupt a run ----------------------------------------------------------------------
class Attempt:
  """One launch of the interrupted run, resuming from its newest committed step `start`."""

  def __init__(self, workdir, environ, log_path, rng):
    self.workdir, self.rng = workdir, rng
    self.ckpts = _checkpoints(workdir)
    committed = runs.committed_steps(self.ckpts)
    self.start = committed[-1] if committed else 0
    self.lines = len(runs.batch_id_lines(workdir))
    self.leftovers = self._tmp_inodes()  # of earlier crashes; this launch deletes them
    self.proc = runs.launch(workdir, OVERRIDES, environ, log_path)

  def step(self):
    """The last step this launch has started (its resume point before the first)."""
    lines = runs.batch_id_lines(self.workdir)
    return lines[-1][0] if len(lines) > self.lines else self.start

  def wait_for_step(self, step):
    runs.wait_until(lambda: self.step() >= step, self.proc)

  def _tmp_inodes(self):
    found = set()
    for name in runs.tmp_dirs(self.ckpts):
      try:
        found.add((name, os.stat(os.path.join(self.ckpts, name)).st_ino))
      except FileNotFoundError:  # deleted meanwhile
        pass
    return found

  def fresh_tmp_dirs(self):
    """Steps this launch has started writing and not finished."""
    return self._tmp_inodes() - self.leftovers


def kill_during_save(at):
  """SIGKILL at a random moment while a step is being written (its tmp directory exists)."""
  runs.wait_until(at.fresh_tmp_dirs, at.proc, poll=0.002)
  time.sleep(at.rng.uniform(0.0, 0.15))
  return runs.signal_and_wait(at.proc, runs.SIGKILL), 'SIGKILL during a checkpoint write'


def kill_at_random_time(at):
  """SIGKILL at a random time within about four steps of training, before the last steps.

  Steps speed up once a launch warms (and when a neighbouring test finishes), so the time is
  capped by a step that leaves the run unfinished: a kill must land on a running trainer.
  """
  at.wait_for_step(at.start + 2)  # the first step of a launch also loads the compiled program
  begin = time.time()
  at.wait_for_step(at.start + 3)
  deadline = time.time() + at.rng.uniform(0.0, 4 * (time.time() - begin))
  runs.wait_until(lambda: time.time() >= deadline or at.step() >= STEPS - 2, at.proc)
  return runs.signal_and_wait(at.proc, runs.SIGKILL), 'SIGKILL at a random time'


def kill_at_random_step(at):
  target = at.rng.randint(at.start + 1, min(at.start + 4, STEPS - 1))
  at.wait_for_step(target)
  time.sleep(at.rng.uniform(0.0, 0.3))
  return runs.signal_and_wait(at.proc, runs.SIGKILL), f'SIGKILL after step {target}'


def terminate_at_random_step(at):
  target = at.rng.randint(at.start + 1, min(at.start + 3, STEPS - 1))
  at.wait_for_step(target)
  return runs.signal_and_wait(at.proc, runs.SIGTERM), f'SIGTERM after step {target}'


INTERRUPTIONS = (kill_during_save, kill_at_random_time, kill_at_random_step,
                 terminate_at_random_step, kill_during_save)


def test_interrupted_run_equals_uninterrupted_run_bitwise(reference):
  rng = random.Random(SEED)
  root = reference['root']
  workdir = str(root / 'interrupted')
  ckpts = _checkpoints(workdir)
  read_only_cache = runs.env(2, reference['cache'], write_cache=False)
  resumes, mid_save_kills = [], 0
  for i, interrupt in enumerate(INTERRUPTIONS + (None,)):
    at = Attempt(workdir, read_only_cache, str(root / f'attempt{i}.log'), rng)
    resumes.append((at.lines, at.start))
    if interrupt is None:
      assert runs.finish(at.proc) == 0, runs.log_tail(at.proc)
      break
    rc, what = interrupt(at)
    info = f'attempt {i} ({what}, seed {SEED}):\n{runs.log_tail(at.proc)}'
    assert not os.path.exists(os.path.join(workdir, 'done.json')), info
    if interrupt is terminate_at_random_step:
      # Saved at the next step boundary and exited 0: the newest checkpoint is the last step run.
      assert rc == 0, info
      assert runs.committed_steps(ckpts)[-1] == at.step(), info
      assert not runs.tmp_dirs(ckpts), info
    else:
      assert rc == -9, info
      mid_save_kills += bool(at.fresh_tmp_dirs())

  # A crash mid-save really happened, and the half-written step was neither restored nor kept.
  assert mid_save_kills >= 1, 'no SIGKILL landed during a checkpoint write'
  assert not runs.tmp_dirs(ckpts) and not runs.tmp_dirs(os.path.join(workdir, 'best'))

  # Exactly-once: each run continued right after the newest committed step.
  lines = runs.batch_id_lines(workdir)
  for first_line, committed in resumes:
    if first_line < len(lines):
      assert lines[first_line][0] == committed + 1, (resumes, [s for s, _ in lines])
  timeline, seen = {}, {}
  for step, ids in lines:
    assert seen.setdefault(step, ids) == ids, f'step {step} was redone with other samples'
    timeline[step] = ids
  want = dict(runs.batch_id_lines(reference['workdir']))
  assert sorted(timeline) == list(range(1, STEPS + 1)) == sorted(want)
  assert timeline == want

  # The final state is bitwise the uninterrupted one, and so is the final evaluation.
  got, ref = runs.restore_state(workdir, STEPS), runs.restore_state(reference['workdir'], STEPS)
  assert got.keys() == ref.keys()
  for key in ref:
    assert got[key].dtype == ref[key].dtype
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
  done = [json.load(open(os.path.join(w, 'done.json'))) for w in (workdir, reference['workdir'])]
  assert done[0]['step'] == STEPS and done[0]['final'] == done[1]['final']


def _copy_until(src, dst, step):
  """A copy of workdir `src` as a run interrupted right after its `step` checkpoint left it."""
  shutil.copytree(src, dst)
  os.remove(os.path.join(dst, 'done.json'))
  for s in runs.committed_steps(_checkpoints(dst)):
    if s > step:
      shutil.rmtree(os.path.join(_checkpoints(dst), str(s)))


def _abstract_state(config, mesh):
  model, tx = registry.from_config(config), optimizer.make_optimizer(config)
  info = real.info(config.dataset)
  abstract = jax.eval_shape(functools.partial(train_state.create, model, tx, info.shape, 0))
  shardings = sharding.state_shardings(mesh, abstract)
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


@pytest.mark.parametrize('devices,data,fsdp', [(8, 8, 1), (8, 4, 2), (4, 4, 1), (4, 2, 2)])
def test_restore_onto_another_mesh(reference, devices, data, fsdp):
  """A checkpoint written on 2 devices restores exactly onto other meshes, sharded as asked."""
  config = runs.config(OVERRIDES)
  config.mesh.data, config.mesh.fsdp = data, fsdp
  mesh = sharding.make_mesh(config, jax.devices()[:devices])
  manager = ocp.CheckpointManager(_checkpoints(reference['workdir']), item_names=('state', 'data'),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  state = manager.restore(STEPS, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract_state(config, mesh))))['state']
  manager.close()
  want = runs.restore_state(reference['workdir'], STEPS)
  for leaf in jax.tree_util.tree_leaves(state):
    assert leaf.sharding.mesh.shape == {'data': data, 'fsdp': fsdp}
    assert len(leaf.sharding.device_set) == devices
  got = runs.flat(state)
  assert got.keys() == want.keys()
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  if fsdp > 1:
    big = max(jax.tree_util.tree_leaves(state.params), key=lambda a: a.size)
    assert big.addressable_shards[0].data.size == big.size // fsdp


def test_resume_on_a_data_fsdp_mesh_continues_the_run(reference, tmp_path):
  """Saved on 2 devices, resumed on a (4, 2) data × fsdp mesh of 8 devices: the same run."""
  workdir = str(tmp_path / 'resumed')
  step = runs.committed_steps(_checkpoints(reference['workdir']))[0]  # the oldest one kept
  _copy_until(reference['workdir'], workdir, step)
  config = runs.config(OVERRIDES)
  config.mesh.data, config.mesh.fsdp = 4, 2
  result = train.train_and_evaluate(config, workdir, record_batch_ids=True)
  assert result['finished'] and result['step'] == STEPS
  want = dict(runs.batch_id_lines(reference['workdir']))
  redone = runs.batch_id_lines(workdir)[STEPS:]  # after the reference's lines
  assert [s for s, _ in redone] == list(range(step + 1, STEPS + 1))
  assert all(ids == want[s] for s, ids in redone)
  got, ref = runs.restore_state(workdir, STEPS), runs.restore_state(reference['workdir'], STEPS)
  for key in ref:  # another mesh sums in another order: close, not bitwise
    np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_restart_on_a_finished_workdir_rewrites_done_json_without_training(reference, tmp_path):
  workdir = str(tmp_path / 'finished')
  shutil.copytree(reference['workdir'], workdir)
  old = json.load(open(os.path.join(workdir, 'done.json')))
  lines = len(runs.batch_id_lines(workdir))
  os.remove(os.path.join(workdir, 'done.json'))  # as if the crash came just before writing it
  result = train.train_and_evaluate(runs.config(OVERRIDES), workdir, record_batch_ids=True)
  new = json.load(open(os.path.join(workdir, 'done.json')))
  assert result['finished'] and new['step'] == new['total_steps'] == STEPS
  assert new['best'] == old['best']
  # The final evaluation is redone, here on 8 devices instead of 2: a point may flip.
  assert new['final'].keys() == old['final'].keys()
  for key, value in old['final'].items():
    assert abs(new['final'][key] - value) <= 2 / 32, (key, new['final'], old['final'])
  assert len(runs.batch_id_lines(workdir)) == lines  # no step was trained
