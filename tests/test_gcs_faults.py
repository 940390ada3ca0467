"""gs:// under faults: `trainer.main` with its workdir and generated data in a bucket (a local
GCS emulator behind a proxy that injects faults, tests/gcs_emulator.py).

One run without faults is the reference. A second run of the same config meets, in turn:
  1. 503s on its checkpoint uploads and connection resets on its shard reads, a few at a time:
     the clients retry, the run goes on;
  2. connection resets on every array upload of one checkpoint (a bucket gone for good, as far
     as the save can tell), and is SIGKILLed while the save retries (tensorstore would retry
     for about 15 minutes): the step it was saving must not
     count as a checkpoint, the one before stays whole;
  3. 503s on every shard read when it starts again: it stops with one line naming the shard and
     what to do, the checkpoint untouched;
  4. no faults: it resumes from that checkpoint and ends bitwise equal to the reference, every
     sample id of every step exactly once.
docs/reliability.md ("gs://") tabulates these faults.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import trainer_runs as runs
from data.records import shard_writer

pytestmark = pytest.mark.integration

STEPS, EVERY = 18, 6
NUM_GENERATED = 256



@pytest.fixture(scope='module')
def setup(gcs, tmp_path_factory):
  """The generated set in the bucket, the overrides and the subprocess environment."""
  rng = np.random.default_rng(0)
  with shard_writer.ShardWriter(gcs.url('gen/set'), num_shards=4, total=NUM_GENERATED,
                                image_shape=(8, 8, 1), num_classes=10, source='test') as writer:
    writer.write_batch(rng.integers(0, 256, (NUM_GENERATED, 8, 8, 1), dtype=np.uint8),
                       rng.integers(0, 10, NUM_GENERATED))
  root = tmp_path_factory.mktemp('runs')
  overrides = runs.tiny_overrides(STEPS, **{
      'generated.alpha': 0.5, 'generated.path': gcs.url('gen/set.json'),
      'checkpoint.every_steps': EVERY})
  return {'root': root, 'overrides': overrides, 'env': gcs.env(runs.env(2, root / 'jax_cache'))}


def _launch(setup, workdir, name, write_cache=True):
  env = setup['env'] if write_cache else dict(
      setup['env'], JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=str(2 ** 62))
  return runs.launch(workdir, setup['overrides'], env, str(setup['root'] / f'{name}.log'))


def _batch_lines(gcs, run):
  """[(step, ids)] of the run's batch-id log, as the bucket holds it."""
  try:
    text = gcs.read(f'runs/{run}/batch_ids/process_0.txt').decode()
  except OSError:
    return []
  return [(int(line.split()[0]), tuple(int(i) for i in line.split()[1:]))
          for line in text.split('\n')[:-1]]


def _wait(condition, proc, what, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f'trainer exited ({proc.returncode}) before {what}:\n'
                           f'{runs.log_tail(proc)}')
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f'no {what} after {timeout}s:\n{runs.log_tail(proc)}')
    time.sleep(0.2)


@pytest.fixture(scope='module')
def reference(gcs, setup):
  proc = _launch(setup, gcs.url('runs/ref'), 'reference')
  assert runs.finish(proc) == 0, runs.log_tail(proc)
  return proc


def test_reference_run_keeps_everything_in_the_bucket(gcs, reference):
  names = gcs.objects('runs/ref/')
  assert gcs.committed_steps('runs/ref/checkpoints') == [6, 12, 18]
  assert gcs.committed_steps('runs/ref/best') == [STEPS]
  done = json.loads(gcs.read('runs/ref/done.json'))
  assert done['step'] == STEPS and done['best']['step'] == STEPS
  assert json.loads(gcs.read('runs/ref/config.json'))['generated']['path'] == gcs.url(
      'gen/set.json')
  assert any(n.startswith('runs/ref/events.out.tfevents.') and size > 0
             for n, size in names.items())
  assert not os.path.exists(os.path.join(runs.ROOT, 'gs:'))  # no local stand-in for the bucket
  assert 'finished at step 18' in runs.log_tail(reference)


@pytest.fixture(scope='module')
def killed_mid_save(gcs, setup, reference):
  """Attempt 1: transient faults (retried), then every upload of checkpoint 12 reset; SIGKILL
  while that save retries."""
  del reference  # its compilation cache first
  gcs.faults([
      {'method': 'POST|PUT', 'path': 'runs/faulted/checkpoints/6/', 'action': '503', 'skip': 2,
       'times': 4},
      {'method': 'GET', 'path': 'gen/set-0000[0-3]', 'action': 'reset', 'skip': 1, 'times': 2},
      {'method': 'POST|PUT', 'path': 'runs/faulted/events', 'action': '429', 'times': 2},
  ])
  proc = _launch(setup, gcs.url('runs/faulted'), 'faulted', write_cache=False)
  _wait(lambda: 6 in gcs.committed_steps('runs/faulted/checkpoints'), proc, 'checkpoint 6')
  retried = [r for r in gcs.requests() if r['fault']]
  # The arrays' uploads (tensorstore), once Orbax has made the step's directory.
  gcs.faults([{'method': 'POST|PUT', 'path': 'runs/faulted/checkpoints/12/state/(d/|ocdbt.+/.)',
               'action': 'reset'}])

  def save_failing():
    return sum(r['fault'] and '/12/state/' in r['path'] for r in gcs.requests()) >= 6
  _wait(save_failing, proc, 'failing uploads of checkpoint 12')
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  gcs.faults()
  return {'retried': retried, 'lines': _batch_lines(gcs, 'faulted')}


def test_transient_faults_are_retried(killed_mid_save):
  faults = killed_mid_save['retried']
  assert sum('/checkpoints/6/' in r['path'] for r in faults) == 4
  assert sum('gen/set-' in r['path'] for r in faults) == 2
  assert sum('events' in r['path'] for r in faults) == 2


def test_a_save_that_never_completes_is_not_a_checkpoint(gcs, killed_mid_save):
  assert gcs.committed_steps('runs/faulted/checkpoints') == [6]
  assert killed_mid_save['lines'][-1][0] >= 12  # it trained past step 12 while the save retried


@pytest.fixture(scope='module')
def stopped_on_shard_reads(gcs, setup, killed_mid_save):
  del killed_mid_save
  before = gcs.objects('runs/faulted/checkpoints/6/')
  gcs.faults([{'method': 'GET', 'path': 'gen/set-', 'action': '503'}])
  args = [sys.executable, '-m', 'trainer.main', '--config=configs/demo.py',
          f'--workdir={gcs.url("runs/faulted")}', '--debug_batch_ids']
  args += [f'--config.{k}={v}' for k, v in setup['overrides'].items()]
  start = time.time()
  proc = subprocess.run(args, cwd=runs.ROOT, env=setup['env'], capture_output=True, text=True,
                        timeout=600)
  gcs.faults()
  return {'proc': proc, 'seconds': time.time() - start, 'before': before,
          'after': gcs.objects('runs/faulted/checkpoints/6/')}


def test_unreadable_shards_stop_the_run_in_one_line(gcs, stopped_on_shard_reads):
  proc = stopped_on_shard_reads['proc']
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert gcs.url('gen/set-') in errors[0] and 'could not be reached' in errors[0]
  assert 'run the same command again' in errors[0]
  assert stopped_on_shard_reads['after'] == stopped_on_shard_reads['before']
  assert gcs.committed_steps('runs/faulted/checkpoints') == [6]


@pytest.fixture(scope='module')
def resumed(gcs, setup, stopped_on_shard_reads):
  del stopped_on_shard_reads
  proc = _launch(setup, gcs.url('runs/faulted'), 'resumed')
  assert runs.finish(proc) == 0, runs.log_tail(proc)
  return proc


def test_the_rerun_resumes_and_matches_the_reference(gcs, resumed):
  assert 'finished at step 18' in runs.log_tail(resumed)
  assert gcs.committed_steps('runs/faulted/checkpoints') == [6, 12, 18]
  ours = runs.restore_state(gcs.url('runs/faulted'), STEPS)
  reference = runs.restore_state(gcs.url('runs/ref'), STEPS)
  assert ours.keys() == reference.keys()
  for name, value in reference.items():
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  assert json.loads(gcs.read('runs/faulted/done.json'))['final'] == json.loads(
      gcs.read('runs/ref/done.json'))['final']


def test_every_sample_id_exactly_once_across_the_faults(gcs, resumed):
  del resumed
  lines = _batch_lines(gcs, 'faulted')
  timeline = dict(lines)  # the last line of each step is the surviving run's
  resumed_at = next(i for i in range(1, len(lines)) if lines[i][0] <= lines[i - 1][0])
  assert lines[resumed_at][0] == 7  # the rerun went on from checkpoint 6
  assert timeline == dict(_batch_lines(gcs, 'ref'))
  assert sorted(timeline) == list(range(1, STEPS + 1))


def _one_line_failure(setup, workdir, env):
  args = [sys.executable, '-m', 'trainer.main', '--config=configs/demo.py', f'--workdir={workdir}',
          *(f'--config.{k}={v}' for k, v in setup['overrides'].items())]
  proc = subprocess.run(args, cwd=runs.ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  return errors[0]


def test_refused_credentials_stop_in_one_line(gcs, setup):
  gcs.faults([{'action': '401'}])
  try:
    error = _one_line_failure(setup, gcs.url('runs/denied'), setup['env'])
  finally:
    gcs.faults()
  assert f'cannot write to {gcs.url("runs/denied")}' in error
  assert 'gcloud auth application-default login' in error
  assert gcs.objects('runs/denied') == {}


def test_a_missing_storage_client_stops_in_one_line(gcs, setup, tmp_path):
  """Without google-cloud-storage, Orbax's listing of a gs:// checkpoint directory fails."""
  (tmp_path / 'sitecustomize.py').write_text(
      'import sys\n'
      'class Missing:\n'
      '  def find_spec(self, name, path=None, target=None):\n'
      "    if name == 'google.cloud.storage':\n"
      "      raise ModuleNotFoundError(\"No module named 'google.cloud.storage'\")\n"
      'sys.meta_path.insert(0, Missing())\n')
  env = dict(setup['env'], PYTHONPATH=str(tmp_path))
  error = _one_line_failure(setup, gcs.url('runs/no_client'), env)
  assert 'storage' in error and 'a package is missing' in error
  assert 'pip install --no-deps -r requirements.lock' in error
  assert gcs.committed_steps('runs/no_client/checkpoints') == []
