"""A real training split streamed by the input workers, mixed with streamed generated data:
exact counts, per-host files, the held-out head dropped, resume, the packed copy's checks."""
import json
import os

import numpy as np
import pytest

import fake_datasets as fake
from configs import base
from data import datasets
from data import real
from data.datasets import dataset as dataset_lib
from data.datasets import packed
from data.input import pipeline
from data.records import shard_writer

HOLDOUT = 6


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """An image folder of 3 classes x 20 16x16 PNGs (48 for training), packed into 8 shards."""
  root = fake.image_folder(str(tmp_path_factory.mktemp('real')), per_class=20)
  config = _config(root, '')
  ds = datasets.get(config.dataset)
  packed.pack(ds, 'train', num_shards=8, progress=False)
  return root


@pytest.fixture(scope='module')
def gen_set(tmp_path_factory):
  """64 generated 16x16 images (PNG) in 8 shards, ids 0..63."""
  prefix = str(tmp_path_factory.mktemp('gen') / 'gen')
  rng = np.random.default_rng(1)
  images = np.stack([fake.image(int(c), 16, 16, rng) for c in range(64)])
  with shard_writer.ShardWriter(prefix, num_shards=8, total=64, image_shape=(16, 16, 3),
                                num_classes=3, source='test', encoding='png') as writer:
    writer.write_batch(images, np.arange(64) % 3)
  return writer.manifest_path, images


def _config(root, generated, *, alpha=0.5, batch_size=12, pad=0, workers=0, repeats=1):
  c = base.get_config()
  c.dataset.name, c.dataset.path = 'image_folder', root
  c.dataset.test_fraction, c.dataset.holdout = 0.2, HOLDOUT
  c.dataset.storage = 'stream'
  c.dataset.shuffle_window, c.dataset.cycle_length = 5, 2
  c.dataset.pad, c.dataset.flip = pad, pad > 0
  c.dataset.real_repeats = repeats
  c.generated.path, c.generated.alpha = generated, alpha
  c.generated.shuffle_window, c.generated.cycle_length = 7, 2
  c.train.batch_size = batch_size
  c.loader.worker_count, c.loader.prefetch = workers, 0
  return c


def _iterator(config, host=0, hosts=1):
  train, _, _ = real.training_splits(config)
  return pipeline.make_train_iterator(config, train, process_index=host, process_count=hosts)


def test_the_split_streams_and_rows_are_the_datasets_images(folder, gen_set):
  config = _config(folder, gen_set[0])
  train, holdout, _ = real.training_splits(config)
  assert isinstance(train, datasets.streamed.StreamedSplit) and train.size == 48 - HOLDOUT
  with pytest.raises(dataset_lib.StreamingError, match='streams from its files'):
    train['image']   # a command that wants arrays is told what to do
  full = datasets.get(config.dataset).load('train')
  np.testing.assert_array_equal(holdout['image'], full['image'][:HOLDOUT])
  it = pipeline.make_train_iterator(config, train, process_index=0, process_count=1)
  for _ in range(4):
    batch = next(it)
    assert (~batch['is_generated']).sum() == 6   # round(0.5 * 12)
    for image, label, id_, generated in zip(batch['image'], batch['label'], batch['id'],
                                            batch['is_generated']):
      source = gen_set[1][id_] if generated else full['image'][id_]
      np.testing.assert_array_equal(image, source)   # decoded in the loader, bit for bit
      assert generated or (label == full['label'][id_] and id_ >= HOLDOUT)
  it.close()


@pytest.mark.parametrize('hosts', [1, 2])
def test_exact_counts_and_each_host_its_own_files(folder, gen_set, hosts):
  config = _config(folder, gen_set[0], alpha=0.5, batch_size=12)   # 6 real per global batch
  # One file at a time and no window: epochs do not blend at their boundaries.
  config.dataset.shuffle_window, config.dataset.cycle_length = 1, 1
  its = [_iterator(config, h, hosts) for h in range(hosts)]
  seen = [[] for _ in range(hosts)]
  for _ in range(14):   # 84 real rows: two epochs of the 42 streamed images
    batches = [next(it) for it in its]
    assert sum((~b['is_generated']).sum() for b in batches) == 6
    assert all(len(b['id']) == 12 // hosts for b in batches)
    for h, b in enumerate(batches):
      seen[h] += b['id'][~b['is_generated']].tolist()
  if hosts == 1:
    assert sorted(seen[0][:42]) == list(range(HOLDOUT, 48))   # one epoch: each image once
    assert sorted(seen[0][42:]) == list(range(HOLDOUT, 48)) and seen[0][42:] != seen[0][:42]
  else:
    assert not set(seen[0]) & set(seen[1])                     # files split by host
    assert set(seen[0]) | set(seen[1]) == set(range(HOLDOUT, 48))
  for it in its:
    it.close()


def test_real_repeats_copy_streamed_images(folder, gen_set):
  it = _iterator(_config(folder, gen_set[0], alpha=0.5, batch_size=16, repeats=4))
  for _ in range(3):
    batch = next(it)
    real_ids = batch['id'][~batch['is_generated']]
    assert len(real_ids) == 8 and sorted(np.unique(real_ids, return_counts=True)[1]) == [4, 4]
  it.close()


@pytest.mark.parametrize('workers', [0, pytest.param(2, marks=pytest.mark.integration)])
def test_resume_from_the_saved_state(folder, gen_set, workers):   # 2: worker processes, ~30 s
  config = _config(folder, gen_set[0], pad=2, workers=workers)
  it = _iterator(config)
  want = [next(it) for _ in range(9)]
  it.close()
  it = _iterator(config)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  it.close()
  resumed = _iterator(config)
  resumed.set_state(state)
  for batch, expected in zip([next(resumed) for _ in range(5)], want[4:]):
    for key in expected:
      np.testing.assert_array_equal(batch[key], expected[key])
  resumed.close()


def test_a_missing_or_stale_packed_copy_is_named(tmp_path, folder):
  root = fake.image_folder(str(tmp_path))
  config = _config(root, '', alpha=1.0)
  with pytest.raises(dataset_lib.StreamingError, match=r'folder.packed/train.json\); pack it '
                     r'once: python -m trainer.pack_dataset'):
    real.training_splits(config)
  other = _config(folder, '', alpha=1.0)
  other.dataset.split_seed = 7   # another order than the one packed
  with pytest.raises(dataset_lib.StreamingError, match='was packed with other dataset options'):
    real.training_splits(other)
  packed.pack(datasets.get(config.dataset), 'train', num_shards=2, progress=False)
  real.training_splits(config)   # packed now
  extra = os.path.join(root, 'cat', 'cat99.png')
  with open(extra, 'wb') as f:
    f.write(fake.encode(fake.image(0, 16, 16, np.random.default_rng(0)), 'PNG'))
  datasets._cache.clear()   # as a new run would list the files again
  with pytest.raises(dataset_lib.StreamingError, match='holds 12 images, the train split now '
                     'has 13; pack it again'):
    real.training_splits(config)


def test_auto_streams_above_the_ram_limit(folder):
  config = _config(folder, '')
  config.dataset.storage = 'auto'
  assert not real.streams(config.dataset)   # 48 tiny images
  config.dataset.ram_limit_gb = 48 * 16 * 16 * 3 / 2 ** 30 * 0.99
  assert real.streams(config.dataset)
