"""`python -m trainer.main` on each new dataset from a relative workdir, and a run whose real AND
generated data both stream, killed (SIGKILL) and rerun: the same samples exactly once and the
same final state, bit for bit, as a run never interrupted."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fake_datasets as fake
import trainer_runs as runs
from configs import demo
from data import datasets
from data.datasets import packed
from data.records import shard_writer

pytestmark = pytest.mark.integration   # each run compiles a model in a subprocess

TINY = {'model.name': 'wrn-10-1', 'generated.alpha': 1.0, 'train.batch_size': 16,
        'train.num_epochs': 1, 'train.attack_steps': 1, 'train.log_every_steps': 1,
        'optim.warmup_epochs': 0.25, 'eval.every_steps': 1000, 'eval.pgd_steps': 1,
        'eval.batch_size': 16, 'checkpoint.every_steps': 2, 'checkpoint.keep': 3,
        'dataset.flip': True}


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """A folder holding one copy of each dataset layout, the runs' working directory."""
  path = tmp_path_factory.mktemp('datasets')
  fake.tiny_imagenet(str(path), classes=4, per_class=12, val=16)
  folder = fake.image_folder(str(path), per_class=16)
  config = demo.get_config()
  config.dataset.name, config.dataset.path = 'image_folder', folder
  config.dataset.test_fraction = 0.25
  packed.pack(datasets.get(config.dataset), 'train', num_shards=4, progress=False)
  images, labels = fake.arrays(64, size=8)
  np.savez(str(path / 'set.npz'), image=images, label=labels)
  fake.imagenet2012(str(path / 'imagenet'), classes=3, per_class=8, val=8)
  rng = np.random.default_rng(5)
  with shard_writer.ShardWriter(str(path / 'gen' / 'gen'), num_shards=4, total=96,
                                image_shape=(16, 16, 3), num_classes=3, source='test',
                                encoding='png') as writer:
    writer.write_batch(np.stack([fake.image(i % 3, 16, 16, rng) for i in range(96)]),
                       np.arange(96) % 3, ids=1000 + np.arange(96))   # real ids stay below
  return path


def launch(cwd, workdir, overrides, log, cache, write_cache=False):
  args = [sys.executable, '-m', 'trainer.main', f'--config={runs.ROOT}/configs/demo.py',
          f'--workdir={workdir}', '--debug_batch_ids']
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  environ = runs.env(2, cache, write_cache=write_cache)
  environ['PYTHONPATH'] = runs.ROOT
  with open(log, 'ab') as out:
    proc = subprocess.Popen(args, cwd=cwd, env=environ, stdout=out, stderr=subprocess.STDOUT)
  proc.log_path = log
  return proc


RUNS = {
    'tiny_imagenet': {'dataset.name': 'tiny_imagenet', 'dataset.path': 'tiny-imagenet-200',
                      'dataset.holdout': 16, 'dataset.pad': 4},
    'imagenet2012': {'dataset.name': 'imagenet2012', 'dataset.data_dir': 'imagenet/data',
                     'dataset.crop': 'inception', 'dataset.image_size': 32,
                     'dataset.holdout': 4, 'dataset.pad': 0},
    'image_folder': {'dataset.name': 'image_folder', 'dataset.path': 'folder',
                     'dataset.test_fraction': 0.25, 'dataset.storage': 'stream',
                     'dataset.holdout': 4, 'dataset.pad': 2},
    'npz': {'dataset.name': 'npz', 'dataset.path': 'set.npz', 'dataset.holdout': 8,
            'dataset.pad': 1},
}


@pytest.mark.parametrize('name', sorted(RUNS))
def test_a_short_run_from_a_relative_workdir(root, name):
  overrides = {**TINY, **RUNS[name], 'train.epoch_size': 16 * 3, 'dataset.test_size': 16}
  proc = launch(str(root), f'runs/{name}', overrides, str(root / f'{name}.log'),
                root / f'cache_{name}', write_cache=True)
  assert runs.finish(proc) == 0, runs.log_tail(proc)
  done = json.load(open(root / 'runs' / name / 'done.json'))
  assert done['step'] == 3
  for key in ('holdout/clean_accuracy', 'test/clean_accuracy', 'test/robust_accuracy'):
    assert 0 <= done['final'][key] <= 1, done
  lines = runs.batch_id_lines(str(root / 'runs' / name))
  assert [s for s, _ in lines] == [1, 2, 3] and all(len(ids) == 16 for _, ids in lines)
  holdout = overrides['dataset.holdout']
  assert min(i for _, ids in lines for i in ids) >= holdout   # held-out images never trained


STREAMED = {**TINY, **RUNS['image_folder'], 'generated.path': 'gen/gen.json',
            'generated.alpha': 0.5, 'generated.shuffle_window': 8, 'dataset.shuffle_window': 8,
            'dataset.cycle_length': 2, 'generated.cycle_length': 2, 'train.epoch_size': 16 * 10}


def test_sigkill_and_rerun_with_real_and_generated_data_streamed(root):
  cache = root / 'streamed_cache'
  reference = launch(str(root), 'runs/reference', STREAMED, str(root / 'reference.log'), cache,
                     write_cache=True)   # the runs that are killed only read the cache
  assert runs.finish(reference) == 0, runs.log_tail(reference)
  want = dict(runs.batch_id_lines(str(root / 'runs' / 'reference')))
  assert sorted(want) == list(range(1, 11))
  real_ids = [i for ids in want.values() for i in ids if i < 1000]
  assert all(sum(i < 1000 for i in ids) == 8 for ids in want.values())   # 16 x 0.5 real
  assert set(real_ids) == set(range(4, 36))   # 2.5 epochs of the 32 streamed: all of them

  workdir = str(root / 'runs' / 'killed')
  checkpoints, resumes = os.path.join(workdir, 'checkpoints'), []
  for attempt, stop_after in enumerate((3, 6, None)):
    committed = runs.committed_steps(checkpoints)
    resumes.append((len(runs.batch_id_lines(workdir)), committed[-1] if committed else 0))
    proc = launch(str(root), 'runs/killed', STREAMED, str(root / f'killed{attempt}.log'), cache)
    if stop_after is None:
      assert runs.finish(proc) == 0, runs.log_tail(proc)
      break
    runs.wait_until(lambda s=stop_after: runs.last_step_logged(workdir) >= s, proc)
    assert runs.signal_and_wait(proc, runs.SIGKILL) == -9
    assert not os.path.exists(os.path.join(workdir, 'done.json'))
  lines = runs.batch_id_lines(workdir)
  assert any(c > 0 for _, c in resumes[1:])   # a rerun resumed from a checkpoint
  for first_line, committed in resumes:   # each run went on right after the newest checkpoint
    assert lines[first_line][0] == committed + 1, (resumes, [s for s, _ in lines])
  timeline, seen = {}, {}
  for step, ids in runs.batch_id_lines(workdir):
    assert seen.setdefault(step, ids) == ids, f'step {step} was redone with other samples'
    timeline[step] = ids
  assert timeline == want
  got = runs.restore_state(workdir, 10)
  ref = runs.restore_state(str(root / 'runs' / 'reference'), 10)
  for key in ref:
    np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
  assert os.path.exists(os.path.join(workdir, 'done.json'))
