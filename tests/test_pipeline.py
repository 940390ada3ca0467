"""The training pipeline: exact alpha mix, host split, resume, errors."""
import json
import os
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest

from configs import base
from data.input import augment
from data.input import batch_mix
from data.input import pipeline
from data.records import shard_writer
from data.records import shards
from data.records import tfrecord
from data.input import window_shuffle

SHAPE = (8, 8, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def gen_set(tmp_path_factory):
  """64 generated images in 8 shards; ids 0..63."""
  prefix = str(tmp_path_factory.mktemp('gen') / 'gen')
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (64, *SHAPE), dtype=np.uint8)
  labels = rng.integers(0, 10, 64)
  with shard_writer.ShardWriter(prefix, num_shards=8, total=64,
                                image_shape=SHAPE, num_classes=10,
                                source='test', seed=0) as writer:
    writer.write_batch(images, labels)
  return writer.manifest_path, images, labels


def _real(n=40):
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 10, n)
  labels[:10] = np.arange(10)   # every class present
  return (rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8), labels,
          1000 + np.arange(n))


def _config(path, *, alpha=0.3, batch_size=16, pad=4, window=16, cycle=2,
            prefetch=0, workers=0):
  c = base.get_config()
  c.generated.path = path
  c.generated.alpha = alpha
  c.generated.shuffle_window = window
  c.generated.cycle_length = cycle
  c.train.batch_size = batch_size
  c.dataset.pad = pad
  c.dataset.flip = pad > 0
  c.loader.prefetch = prefetch
  c.loader.worker_count = workers
  return c


def _iterator(config, real=None, host=0, hosts=1):
  images, labels, ids = real or _real()
  return pipeline.make_train_iterator(config, images, labels, ids,
                                      process_index=host, process_count=hosts)


def test_batch_contents_match_the_sources(gen_set):
  path, gen_images, gen_labels = gen_set
  images, labels, ids = real = _real()
  it = _iterator(_config(path, alpha=0.25, pad=0), real)
  for _ in range(10):
    batch = next(it)
    assert batch['image'].dtype == np.uint8   # uint8 to the devices; float in the step
    assert batch['image'].shape == (16, *SHAPE)
    assert batch['label'].dtype == np.int32
    assert batch['is_generated'].dtype == bool
    assert batch['id'].dtype == np.int64
    for row in range(16):
      i = batch['id'][row]
      if batch['is_generated'][row]:
        source, label = gen_images[i], gen_labels[i]
      else:
        source, label = images[i - 1000], labels[i - 1000]
      np.testing.assert_array_equal(batch['image'][row], source)
      assert batch['label'][row] == label
  it.close()


def test_png_generated_shards_give_the_same_batches_as_raw_ones(gen_set, tmp_path):
  path, gen_images, gen_labels = gen_set
  with shard_writer.ShardWriter(str(tmp_path / 'png'), num_shards=8, total=64,
                                image_shape=SHAPE, num_classes=10, source='test',
                                seed=0, encoding='png') as writer:
    writer.write_batch(gen_images, gen_labels)
  raw = _iterator(_config(path, alpha=0.25, workers=0))
  png = _iterator(_config(writer.manifest_path, alpha=0.25, workers=0))
  _same(_take(raw, 6), _take(png, 6))   # decoded in the loader, bit for bit
  raw.close()
  png.close()


def test_augmentation_pads_with_zeros_around_a_shifted_image():
  # Images with no zero pixel: after pad-and-crop, the zeros of each image are exactly the
  # padding, i.e. the complement of one (H - |dy|) x (W - |dx|) rectangle of source pixels.
  images = np.full((64, *SHAPE), 200, np.uint8)
  out = augment.pad_crop_flip(images, np.random.default_rng(0), pad=4, flip=True)
  assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 200}
  shifted = 0
  for image in out[..., 0] > 0:
    rows, cols = image.any(1), image.any(0)
    np.testing.assert_array_equal(image, np.outer(rows, cols))  # a rectangle
    assert rows.sum() >= SHAPE[0] - 4 and cols.sum() >= SHAPE[1] - 4  # shift at most pad
    shifted += not image.all()
  assert shifted >= 56  # a (0, 0) shift has probability 1/81 per image


@pytest.mark.parametrize('alpha,batch_size,real_per_batch', [
    (0.0, 20, 0), (0.3, 20, 6), (0.3, 16, 5), (0.5, 3, 2), (1.0, 20, 20)])
def test_exact_real_count_in_every_batch(gen_set, alpha, batch_size,
                                         real_per_batch):
  path = gen_set[0] if alpha < 1 else '/nonexistent/never-opened.json'
  it = _iterator(_config(path, alpha=alpha, batch_size=batch_size))
  for _ in range(60):
    batch = next(it)
    assert len(batch['id']) == batch_size
    assert (~batch['is_generated']).sum() == real_per_batch
  it.close()


def test_empty_path_means_real_only():
  it = _iterator(_config('', alpha=0.3))
  assert not next(it)['is_generated'].any()
  it.close()


def test_hosts_get_exact_disjoint_covering_shares(gen_set):
  path = gen_set[0]
  hosts = 4
  # alpha=0.3 of 16 is 5 real per global batch: 2 on one host, 1 on the rest.
  its = [_iterator(_config(path, alpha=0.3), host=h, hosts=hosts)
         for h in range(hosts)]
  real_ids = [[] for _ in range(hosts)]
  for _ in range(8):   # 8 steps x 5 = 40 real = one epoch of the real set
    batches = [next(it) for it in its]
    assert all(len(b['id']) == 4 for b in batches)
    assert sum((~b['is_generated']).sum() for b in batches) == 5
    for h, b in enumerate(batches):
      real_ids[h].extend(b['id'][~b['is_generated']])
  assert [len(r) for r in real_ids] == [10] * hosts
  assert sorted(np.concatenate(real_ids)) == list(range(1000, 1040))
  # Generated: each host reads its own 2 of the 8 files (16 records); with
  # alpha=0, 4 steps of 4 read each host's share exactly once.
  its = [_iterator(_config(path, alpha=0.0), host=h, hosts=hosts)
         for h in range(hosts)]
  gen_ids = [np.concatenate([next(it)['id'] for _ in range(4)]) for it in its]
  assert all(len(set(g)) == 16 for g in gen_ids)
  assert sorted(np.concatenate(gen_ids)) == list(range(64))
  for it in its:
    it.close()


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_resume_from_json_state_with_prefetch(gen_set):
  config = _config(gen_set[0], alpha=0.3, window=10, prefetch=2)
  want = _take(_iterator(config), 25)
  it = _iterator(config)
  _take(it, 11)
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  resumed = _iterator(config)
  resumed.set_state(state)
  _same(_take(resumed, 14), want[11:])
  resumed.close()


# Restores the iterator (and a stand-in train state) in a fresh interpreter
# and prints digests of the next m batches; built exactly as `_resume_setup`.
_RESTORE_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import orbax.checkpoint as ocp
    from configs import base
    from data.input import pipeline

    manifest, ckpt, k, m = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(
        sys.argv[4])
    real = np.random.default_rng(2).integers(0, 256, (40, 8, 8, 3),
                                             dtype=np.uint8)
    c = base.get_config()
    c.generated.path = manifest
    c.generated.shuffle_window = 10
    c.generated.cycle_length = 3
    c.train.batch_size = 12
    c.loader.prefetch = 2
    it = pipeline.make_train_iterator(c, real, np.arange(40) % 10,
                                      1000 + np.arange(40), process_index=0,
                                      process_count=1)
    mngr = ocp.CheckpointManager(ckpt)
    abstract = {'step': np.zeros(1, np.int64), 'w': np.zeros(3, np.float32)}
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        data=pipeline.restore_args(it)))
    assert int(restored['state']['step'][0]) == k
    out = [[b['id'].tolist(), b['is_generated'].tolist(),
            float(b['image'].sum())] for b in (next(it) for _ in range(m))]
    print(json.dumps(out))
    ''')


def _resume_setup(path):
  real = np.random.default_rng(2).integers(0, 256, (40, 8, 8, 3),
                                           dtype=np.uint8)
  c = _config(path, alpha=0.3, batch_size=12, window=10, cycle=3, prefetch=2)
  return pipeline.make_train_iterator(c, real, np.arange(40) % 10,
                                      1000 + np.arange(40), process_index=0,
                                      process_count=1)


def test_exactly_once_resume_in_a_fresh_process(gen_set, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  path, k, m = gen_set[0], 7, 9
  it = _resume_setup(path)   # the uninterrupted run
  want = [[b['id'].tolist(), b['is_generated'].tolist(),
           float(b['image'].sum())] for b in _take(it, k + m)][k:]
  it.close()
  it = _resume_setup(path)   # stop after k batches, save next to the state
  _take(it, k)
  ckpt = str(tmp_path / 'ckpt')
  mngr = ocp.CheckpointManager(ckpt)
  mngr.save(k, args=ocp.args.Composite(
      state=ocp.args.StandardSave({'step': np.full(1, k),
                                   'w': np.ones(3, np.float32)}),
      data=pipeline.save_args(it)))
  mngr.wait_until_finished()
  it.close()
  proc = subprocess.run(
      [sys.executable, '-c', _RESTORE_SCRIPT, path, ckpt, str(k), str(m)],
      capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == want


@pytest.mark.integration
def test_worker_processes_keep_counts_real_order_and_state(gen_set):
  path = gen_set[0]
  local = _take(_iterator(_config(path, alpha=0.5, pad=0, window=0)), 6)
  config = _config(path, alpha=0.5, pad=0, window=0, workers=2, prefetch=1)
  it = _iterator(config)
  batches = _take(it, 6)
  state = it.get_state()
  more = _take(it, 3)
  it.close()
  for x, y in zip(local, batches):
    assert (~y['is_generated']).sum() == 8
    # Real rows and their positions do not depend on the worker count.
    np.testing.assert_array_equal(x['id'][~x['is_generated']],
                                  y['id'][~y['is_generated']])
  resumed = _iterator(config)
  resumed.set_state(state)
  _same(_take(resumed, 3), more)
  resumed.close()


def _corrupt_one_record(manifest, tmp_path):
  """A copy of the set with one payload byte flipped in shard 0, record 1."""
  out = tmp_path / 'corrupt'
  out.mkdir()
  paths = shards.shard_paths(manifest)
  for p in paths + [manifest]:
    (out / os.path.basename(p)).write_bytes(open(p, 'rb').read())
  shard = str(out / os.path.basename(paths[0]))
  data = bytearray(open(shard, 'rb').read())
  (first_len,) = np.frombuffer(bytes(data[:8]), '<u8')
  offset = int(first_len) + 16
  data[offset + 40] ^= 0xFF
  open(shard, 'wb').write(bytes(data))
  return str(out / os.path.basename(manifest)), shard, offset


def test_corrupt_record_raises_or_is_skipped_and_counted(gen_set, tmp_path):
  path, shard, offset = _corrupt_one_record(gen_set[0], tmp_path)
  it = _iterator(_config(path, alpha=0.0, window=0, cycle=8))
  with pytest.raises(tfrecord.CorruptRecordError) as e:
    _take(it, 4)
  assert shard in str(e.value) and f'byte offset {offset}' in str(e.value)
  config = _config(path, alpha=0.0, window=0, cycle=8)
  config.generated.on_corrupt = 'skip'
  it = _iterator(config, hosts=1)
  ids = np.concatenate([b['id'] for b in _take(it, 4)])   # 64 records read
  assert it.skipped_records == 1
  # Record 1 of shard 0 has id 1: it is simply not there.
  assert set(ids) == set(range(64)) - {1}
  state = it.get_state()
  _take(it, 4)   # the second epoch skips it again
  assert it.skipped_records == 2
  it.close()
  resumed = _iterator(config, hosts=1)   # the count comes back with the state
  resumed.set_state(state)
  _take(resumed, 4)
  assert resumed.skipped_records == 2
  resumed.close()
  # Summed over loader workers: the last batch comes from the worker without
  # the corrupt file.
  config.loader.worker_count = 2
  it = _iterator(config, hosts=1)
  _take(it, 4)
  assert it.skipped_records == 1
  it.close()


def test_rejects_inconsistent_inputs(gen_set, tmp_path):
  path = gen_set[0]   # (a bad alpha is the config validation's: tests/test_config.py)
  with pytest.raises(ValueError, match='not divisible by the process count'):
    _iterator(_config(path, batch_size=18), host=0, hosts=4)
  with pytest.raises(ValueError, match='8 generated shard files, but 16 hosts'):
    _iterator(_config(path, batch_size=32), host=0, hosts=16)
  images, labels, ids = _real()
  with pytest.raises(shards.ManifestError, match=r'generated images have '
                     r'shape \(8, 8, 3\) but the real images have shape '
                     r'\(4, 4, 3\)'):
    _iterator(_config(path), (images[:, :4, :4], labels, ids))
  with pytest.raises(shards.ManifestError, match='10 classes but the real '
                     'dataset has 100'):
    pipeline.make_train_iterator(_config(path), images, labels, ids,
                                 process_index=0, process_count=1,
                                 num_classes=100)


def test_batch_plan_rotates_the_extra_real_example():
  plans = [batch_mix.BatchPlan(16, 6, h, 4) for h in range(4)]
  for step in range(9):
    counts = [p.real_at(step) for p in plans]
    assert sum(counts) == 6 and set(counts) <= {1, 2}
    for p in plans:
      assert p.real_before(step) == sum(p.real_at(t) for t in range(step))
  assert batch_mix.real_count(16, 0.3) == 5
  assert batch_mix.real_count(4, 0.5) == 2


def test_window_shuffle_permutes_windows_and_resumes_anywhere():
  ds = window_shuffle.WindowShuffleIterDataset(
      grain.MapDataset.range(23).to_iter_dataset(), window_size=5, seed=3)
  full = list(ds)
  assert sorted(full) == list(range(23)) and full != list(range(23))
  for w in range(5):   # each window holds a permutation of its own block
    block = full[5 * w:5 * w + 5]
    assert sorted(block) == list(range(5 * w, min(23, 5 * w + 5)))
  for k in range(24):
    it = iter(ds)
    head = [next(it) for _ in range(k)]
    resumed = iter(ds)
    resumed.set_state(json.loads(json.dumps(it.get_state())))
    assert head + list(resumed) == full
