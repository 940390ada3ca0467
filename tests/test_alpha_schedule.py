"""A schedule of α over training (generated.alpha_schedule): the real rows of every step follow it
exactly, on one host and on two, in RAM and streamed, and a restart anywhere sees the same batches;
a phase does not read the side it does not use; bad schedules are one line naming the key."""
import json
import os

import ml_collections
import numpy as np
import pytest

import fake_datasets as fake
import toy_mix_data
from configs import base
from data import datasets
from data import real as real_lib
from data.datasets import packed
from data.input import alpha_schedule
from data.input import batch_mix
from data.input import pipeline
from data.records import shard_writer
from trainer.robust import config_validation
from trainer.robust import optimizer

SHAPE = (8, 8, 3)
BATCH = 16
STEPS_PER_EPOCH = 4                   # train.epoch_size = 64 at batch 16
# Real share 0.25 (4 of 16) in epoch 0, 0.75 (12) in epoch 1, none in epoch 2, 0.5 (8) from epoch 3:
# 96 real rows, so the 40 real images' epochs end after steps 5 and 13, the first inside the
# 0.75 phase, the second spanning the real-free epoch.
ALPHA, SCHEDULE = 0.25, ((1, 0.75), (2, 0.0), (3, 0.5))
REAL_ROWS = [4] * 4 + [12] * 4 + [0] * 4 + [8] * 4


@pytest.fixture(scope='module')
def gen_set(tmp_path_factory):
  """64 generated 8x8 images in 8 shards; ids 0..63."""
  return toy_mix_data.generated_set(tmp_path_factory.mktemp('gen'), SHAPE)


def _real(n=40):
  return toy_mix_data.real_split(SHAPE, n)


def _config(path, *, alpha=ALPHA, schedule=SCHEDULE, prefetch=0, pad=2):
  c = base.get_config()
  c.generated.path = path
  c.generated.alpha = alpha
  c.generated.alpha_schedule = schedule
  c.generated.shuffle_window, c.generated.cycle_length = 16, 2
  c.train.batch_size = BATCH
  c.train.epoch_size = BATCH * STEPS_PER_EPOCH
  c.train.num_epochs = 8
  c.dataset.pad, c.dataset.flip = pad, pad > 0
  c.loader.prefetch, c.loader.worker_count = prefetch, 0
  return c


def _iterator(config, host=0, hosts=1, real=None):
  images, labels, ids = real or _real()
  return pipeline.make_train_iterator(config, images, labels, ids, process_index=host,
                                      process_count=hosts)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ------------------------------------------------------------------------------------------------
# The schedule in steps, and its checks.
# ------------------------------------------------------------------------------------------------


def test_epochs_become_steps_as_the_run_length_does():
  c = _config('x/manifest.json')
  assert alpha_schedule.phases(c) == ((0, 0.25), (4, 0.75), (8, 0.0), (12, 0.5))
  c.train.epoch_size = 50_000
  c.train.batch_size = 2048                       # 24.4140625 steps per epoch
  c.train.num_epochs = 10_000
  c.generated.alpha, c.generated.alpha_schedule = 0.0, ((6000, 0.125),)
  (_, first), (step, second) = alpha_schedule.phases(c)
  assert (first, second) == (0.0, 0.125)
  assert step == round(6000 * optimizer.steps_per_epoch(c)) == 146_484
  assert optimizer.total_steps(c) == 244_141      # the same rounding for the run's length
  # The config a restarted run reads back from config.json holds lists: the same phases.
  again = ml_collections.ConfigDict(json.loads(c.to_json_best_effort()))
  assert isinstance(again.generated.alpha_schedule[0], list)
  assert alpha_schedule.phases(again) == alpha_schedule.phases(c)


@pytest.mark.parametrize('schedule,message', [
    (((0, 0.5),), 'epoch 0 must be > 0'),
    (((2, 1.5),), 'alpha 1.5 at epoch 2: the real share must lie in [0, 1]'),
    (((3, 0.5), (2, 0.1)), 'epoch 2 is step 8, not after the previous change at step 12'),
    (((2, 0.5), (2.1, 0.1)), 'epoch 2.1 is step 8, not after the previous change at step 8'),
    (((2,),), 'entry (2,) is not a pair (epoch, alpha) of numbers'),
    ((('2', 0.5),), "entry ('2', 0.5) is not a pair"),
    (((8, 0.5),), 'its last change falls on step 32, at or after the end of training '
                  '(train.num_epochs=8: 32 steps)'),
])
def test_a_bad_schedule_is_one_line_naming_the_key(schedule, message):
  c = _config('x/manifest.json', schedule=schedule)
  with pytest.raises(ValueError) as e:
    config_validation.validate(c, device_count=1, process_count=1)
  text = str(e.value)
  assert text.startswith('config.generated.alpha_schedule=') and '\n' not in text
  assert message in text


def test_shards_are_needed_when_any_phase_has_generated_rows():
  c = _config('', alpha=1.0, schedule=((2, 0.5),))
  with pytest.raises(ValueError, match=r'config.generated.path=\'\': generated.alpha_schedule '
                     r'\(with generated.alpha=1.0\) asks for generated data'):
    config_validation.validate(c, device_count=1, process_count=1)
  config_validation.validate(_config('', alpha=1.0, schedule=((2, 1.0),)),
                             device_count=1, process_count=1)   # real rows only: no shards


def test_batch_plan_is_exact_at_every_step_across_changes():
  changes = ((3, 5), (7, 0), (8, 16), (11, 9))   # (first step, global real rows)
  for hosts in (1, 2, 3, 4):
    plans = [batch_mix.BatchPlan(48, 7, h, hosts, changes=changes) for h in range(hosts)]
    for step in range(20):
      want = [r for s, r in ((0, 7),) + changes if s <= step][-1]
      counts = [p.real_at(step) for p in plans]
      assert sum(counts) == want and max(counts) - min(counts) <= 1
      for p in plans:   # the closed form equals the sum of the steps before
        assert p.real_before(step) == sum(p.real_at(t) for t in range(step))
  with pytest.raises(ValueError, match='increasing steps'):
    batch_mix.BatchPlan(16, 4, 0, 1, changes=((5, 8), (5, 0)))
  with pytest.raises(ValueError, match='global_real 17 outside'):
    batch_mix.BatchPlan(16, 4, 0, 1, changes=((5, 17),))


# ------------------------------------------------------------------------------------------------
# Real data in RAM.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('hosts', [1, 2])
def test_real_rows_follow_the_schedule_and_the_real_order_runs_on(gen_set, hosts):
  its = [_iterator(_config(gen_set), h, hosts) for h in range(hosts)]
  taken = [[] for _ in range(hosts)]
  for step, want in enumerate(REAL_ROWS):
    batches = [next(it) for it in its]
    assert all(len(b['id']) == BATCH // hosts for b in batches)
    assert sum(int((~b['is_generated']).sum()) for b in batches) == want, step
    for h, b in enumerate(batches):
      taken[h] += b['id'][~b['is_generated']].tolist()
      assert (b['id'][b['is_generated']] < 64).all() and (b['id'][~b['is_generated']] >= 1000).all()
  # Each host walks its share of every epoch's permutation on from where the last phase left it,
  # through the changes and the real-free epoch: no image skipped or repeated.
  share = 40 // hosts
  for epoch in range(2):
    chunks = [t[epoch * share:(epoch + 1) * share] for t in taken]
    assert sorted(sum(chunks, [])) == list(range(1000, 1040)), epoch
  for it in its:
    it.close()


@pytest.mark.parametrize('hosts,stop', [(1, 3), (1, 4), (1, 9), (1, 13), (2, 7), (2, 12)])
def test_a_restart_anywhere_gives_the_same_batches(gen_set, hosts, stop):
  config = _config(gen_set, prefetch=2)
  for h in range(hosts):
    want = _take(_iterator(config, h, hosts), len(REAL_ROWS))
    it = _iterator(config, h, hosts)
    _take(it, stop)
    state = json.loads(json.dumps(it.get_state()))   # as a checkpoint stores it
    it.close()
    resumed = _iterator(config, h, hosts)
    resumed.set_state(state)
    _same(_take(resumed, len(REAL_ROWS) - stop), want[stop:])
    resumed.close()


@pytest.mark.integration
def test_loader_workers_keep_the_schedule(gen_set):   # worker processes: ~20 s
  local = _take(_iterator(_config(gen_set, pad=0)), len(REAL_ROWS))
  config = _config(gen_set, pad=0, prefetch=1)
  config.loader.worker_count = 2   # each makes the batches of every other step
  it = _iterator(config)
  batches = _take(it, 10)
  state = it.get_state()
  more = _take(it, len(REAL_ROWS) - 10)
  it.close()
  for x, y, want in zip(local, batches + more, REAL_ROWS):
    assert (~y['is_generated']).sum() == want
    np.testing.assert_array_equal(np.sort(x['id'][~x['is_generated']]),
                                  np.sort(y['id'][~y['is_generated']]))
  resumed = _iterator(config)
  resumed.set_state(state)
  _same(_take(resumed, len(REAL_ROWS) - 10), more)
  resumed.close()


def test_the_state_goes_through_an_orbax_checkpoint(gen_set, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  config = _config(gen_set, prefetch=2)
  want = _take(_iterator(config), len(REAL_ROWS))
  it = _iterator(config)
  _take(it, 6)                        # inside the 0.5 phase, before the real-free epoch
  mngr = ocp.CheckpointManager(str(tmp_path / 'ckpt'))
  mngr.save(6, args=ocp.args.Composite(
      state=ocp.args.StandardSave({'w': np.ones(2, np.float32)}), data=pipeline.save_args(it)))
  mngr.wait_until_finished()
  it.close()
  resumed = _iterator(config)
  mngr.restore(6, args=ocp.args.Composite(
      state=ocp.args.StandardRestore({'w': np.zeros(2, np.float32)}),
      data=pipeline.restore_args(resumed)))
  rest = _take(resumed, len(REAL_ROWS) - 6)
  _same(rest, want[6:])
  assert [int((~b['is_generated']).sum()) for b in rest] == REAL_ROWS[6:]
  resumed.close()


def test_a_phase_does_not_read_the_side_it_does_not_use(gen_set, tmp_path):
  # The shard files are gone (the manifest stays): a real-only phase never notices, the first
  # generated row after it does.
  manifest = tmp_path / 'manifest.json'
  manifest.write_text(open(gen_set).read())
  config = _config(str(manifest), alpha=1.0, schedule=((1, 0.5),))
  it = _iterator(config)
  for _ in range(STEPS_PER_EPOCH):
    assert not next(it)['is_generated'].any()
  with pytest.raises(FileNotFoundError, match=r'gen-\d{5}-of-00008\.tfrecord'):
    next(it)
  it.close()


def test_generated_only_throughout_never_opens_the_real_side(gen_set):
  config = _config(gen_set, alpha=0.0, schedule=())
  empty = (np.zeros((0, *SHAPE), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))
  it = pipeline.make_train_iterator(config, *empty, process_index=0, process_count=1,
                                    num_classes=10)
  assert all(next(it)['is_generated'].all() for _ in range(4))
  it.close()
  config.generated.alpha_schedule = ((1, 0.25),)   # some real rows later: the set must be there
  with pytest.raises(ValueError, match='no real images'):
    pipeline.make_train_iterator(config, *empty, process_index=0, process_count=1,
                                 num_classes=10)


# ------------------------------------------------------------------------------------------------
# A streamed real split.
# ------------------------------------------------------------------------------------------------

HOLDOUT = 6


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """An image folder of 3 classes x 20 8x8 PNGs (48 for training, 42 after the held-out head),
  packed into 8 shards."""
  root = fake.image_folder(str(tmp_path_factory.mktemp('real')), per_class=20, size=8)
  packed.pack(datasets.get(_streamed_config(root, '').dataset), 'train', num_shards=8,
              progress=False)
  return root


@pytest.fixture(scope='module')
def gen_set3(tmp_path_factory):
  """64 generated 8x8 images of 3 classes in 8 shards."""
  return toy_mix_data.generated_set(tmp_path_factory.mktemp('gen3'), SHAPE, num_classes=3,
                                    seed=3, labels=np.arange(64) % 3)


def _streamed_config(root, generated, prefetch=0):
  c = _config(generated, prefetch=prefetch)
  c.dataset.name, c.dataset.path = 'image_folder', root
  c.dataset.test_fraction, c.dataset.holdout = 0.2, HOLDOUT
  c.dataset.storage = 'stream'
  c.dataset.shuffle_window, c.dataset.cycle_length = 5, 2
  return c


def _streamed(config, host=0, hosts=1):
  train, _, _ = real_lib.training_splits(config)
  return pipeline.make_train_iterator(config, train, process_index=host, process_count=hosts)


@pytest.mark.parametrize('hosts', [1, 2])
def test_a_streamed_real_split_follows_the_schedule(folder, gen_set3, hosts):
  config = _streamed_config(folder, gen_set3)
  its = [_streamed(config, h, hosts) for h in range(hosts)]
  real_states = []
  for step, want in enumerate(REAL_ROWS):
    batches = [next(it) for it in its]
    assert sum(int((~b['is_generated']).sum()) for b in batches) == want, step
    assert all(((b['id'][~b['is_generated']] >= HOLDOUT).all() for b in batches))
    if 8 <= step < 12:                # the real-free epoch: the real readers stay where they are
      assert all((~b['is_generated']).sum() == 0 for b in batches)
    real_states.append(json.dumps([it.get_state()['real'] for it in its], sort_keys=True))
  assert len(set(real_states[7:12])) == 1 and real_states[12] != real_states[11]
  for it in its:
    it.close()


def test_a_streamed_real_split_restarts_across_the_changes(folder, gen_set3):
  config = _streamed_config(folder, gen_set3, prefetch=2)
  it = _streamed(config)
  want = _take(it, len(REAL_ROWS))
  it.close()
  for stop in (5, 10):                # in the 0.5 phase, and in the real-free epoch
    it = _streamed(config)
    _take(it, stop)
    state = json.loads(json.dumps(it.get_state()))
    it.close()
    resumed = _streamed(config)
    resumed.set_state(state)
    _same(_take(resumed, len(REAL_ROWS) - stop), want[stop:])
    resumed.close()



def test_the_methods_pseudo_labeller_drops_the_schedule_and_its_line_shows_it():
  from trainer.pipeline import stages  # pylint: disable=g-import-not-at-top
  c = _config('x/manifest.json', alpha=0.0, schedule=((3, 0.125),))
  labeller = stages.classifier_config(c)   # real data only, whatever the robust run's schedule
  assert labeller.generated.alpha_schedule == () and labeller.generated.path == ''
  config_validation.validate(labeller, device_count=1, process_count=1)
  assert alpha_schedule.describe(c) == 'α = 0 real, 0.125 from epoch 3 (step 12)'


# ------------------------------------------------------------------------------------------------
# Through the trainer: the harness saves the iterator with every checkpoint.
# ------------------------------------------------------------------------------------------------

GENERATED_IDS = 10 ** 6   # generated ids start here, so a batch's ids say which rows are real


@pytest.mark.integration
def test_the_trainer_follows_the_schedule_across_a_restart(tmp_path):   # two runs: ~45 CPU-s
  import shutil  # pylint: disable=g-import-not-at-top
  import trainer_runs as runs  # pylint: disable=g-import-not-at-top
  from trainer.robust import train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  with shard_writer.ShardWriter(str(tmp_path / 'gen'), num_shards=8, total=256,
                                image_shape=(8, 8, 1), num_classes=10, source='test', seed=0,
                                first_id=GENERATED_IDS) as writer:
    writer.write_batch(rng.integers(0, 17, (256, 8, 8, 1), dtype=np.uint8),
                       rng.integers(0, 10, 256))
  # Digits, batch 32, 8 steps: real only for the first half epoch, then 8 real rows of 32.
  config = runs.config(runs.tiny_overrides(
      8, **{'generated.path': writer.manifest_path, 'generated.alpha': 1.0,
            'generated.alpha_schedule': ((0.5, 0.25),), 'checkpoint.every_steps': 2,
            'checkpoint.keep': 4}))
  whole = str(tmp_path / 'whole')
  assert train.train_and_evaluate(config, whole, record_batch_ids=True)['finished']
  lines = runs.batch_id_lines(whole)
  assert [s for s, _ in lines] == list(range(1, 9))
  assert [sum(i < GENERATED_IDS for i in ids) for _, ids in lines] == [32] * 4 + [8] * 4
  # The same run stopped after its step-2 checkpoint (before the change) and started again.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(whole, resumed)
  os.remove(os.path.join(resumed, 'done.json'))
  kept = runs.committed_steps(os.path.join(resumed, 'checkpoints'))
  assert kept == [2, 4, 6, 8]
  for step in kept[1:]:
    shutil.rmtree(os.path.join(resumed, 'checkpoints', str(step)))
  assert train.train_and_evaluate(config, resumed, record_batch_ids=True)['finished']
  redone = runs.batch_id_lines(resumed)[len(lines):]
  assert redone == lines[2:]                            # the same ids, step by step
  want, got = runs.restore_state(whole, 8), runs.restore_state(resumed, 8)
  assert want.keys() == got.keys()
  for key in want:                                      # and the same weights, bit for bit
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
