"""Shard writer, manifest and reader: round trips, atomicity, validation.

The remote-path test uses TensorFlow's in-memory `ram://` filesystem: it goes
through exactly the `tf.io.gfile` calls a `gs://` path would (open, seek,
rename, exists, makedirs, remove), without a bucket. It does not exercise
GCS-specific behaviour such as latency or eventual listing.
"""
import json
import os

import numpy as np
import pytest

from data.records import example_format
from data.records import record_dataset
from data.records import shard_writer
from data.records import shards
from data.records import tfrecord

SHAPE = (4, 4, 3)


def _data(n, seed=0, num_classes=10):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8),
          rng.integers(0, num_classes, n), rng.random(n).astype(np.float32))


def _write(prefix, images, labels, scores=None, num_shards=3, batch=7):
  with shard_writer.ShardWriter(prefix, num_shards=num_shards,
                                total=len(images), image_shape=SHAPE,
                                num_classes=10, source='ddpm',
                                seed=5) as writer:
    for i in range(0, len(images), batch):
      writer.write_batch(images[i:i + batch], labels[i:i + batch],
                         None if scores is None else scores[i:i + batch])
  return writer.manifest_path


def test_round_trip_and_manifest(tmp_path):
  images, labels, scores = _data(50)
  path = _write(str(tmp_path / 'gen'), images, labels, scores)
  assert path == str(tmp_path / 'gen.json')
  assert sorted(os.listdir(tmp_path)) == [
      'gen-00000-of-00003.tfrecord', 'gen-00001-of-00003.tfrecord',
      'gen-00002-of-00003.tfrecord', 'gen.json']
  manifest = shards.load_manifest(path)
  assert manifest['count'] == 50 and manifest['image_shape'] == list(SHAPE)
  assert manifest['num_classes'] == 10 and manifest['generator'] == 'ddpm'
  assert manifest['seed'] == 5
  assert [s['count'] for s in manifest['shards']] == [16, 17, 17]
  assert manifest['label_counts'] == np.bincount(labels, minlength=10).tolist()
  examples = list(shards.read_examples(path))
  assert [e['id'] for e in examples] == list(range(50))
  np.testing.assert_array_equal(np.stack([e['image'] for e in examples]),
                                images)
  assert [e['label'] for e in examples] == labels.tolist()
  np.testing.assert_allclose([e['score'] for e in examples], scores)
  assert {e['source'] for e in examples} == {'ddpm'}
  batches = list(shards.read_examples(path, batch_size=20))
  assert [len(b['id']) for b in batches] == [20, 20, 10]
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in batches]),
                                images)


def test_scores_default_to_nan_and_ids_can_be_given(tmp_path):
  images, labels, _ = _data(6)
  with shard_writer.ShardWriter(str(tmp_path / 'g'), num_shards=2, total=6,
                                image_shape=SHAPE, num_classes=10,
                                source='x') as writer:
    writer.write_batch(images, labels, ids=[60, 50, 40, 30, 20, 10])
  examples = list(shards.read_examples(writer.manifest_path))
  assert [e['id'] for e in examples] == [60, 50, 40, 30, 20, 10]
  assert all(np.isnan(e['score']) for e in examples)


def test_tensorflow_reads_the_shards_and_remote_paths_work():
  tf = pytest.importorskip('tensorflow')
  images, labels, scores = _data(20, seed=1)
  prefix = 'ram://bucket/sets/gen'   # non-local: goes through tf.io.gfile
  assert not tfrecord.is_local(prefix) and not tfrecord.is_local('gs://b/x')
  path = _write(prefix, images, labels, scores, num_shards=2)
  assert tf.io.gfile.exists(path)
  assert not [p for p in tf.io.gfile.listdir('ram://bucket/sets')
              if '.tmp-' in p]
  # Our reader, through gfile.
  examples = list(shards.read_examples(path))
  np.testing.assert_array_equal(np.stack([e['image'] for e in examples]),
                                images)
  # tf.data with the stock parser, on the same files.
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64),
          'id': tf.io.FixedLenFeature([], tf.int64),
          'score': tf.io.FixedLenFeature([], tf.float32),
          'source': tf.io.FixedLenFeature([], tf.string)}
  ds = tf.data.TFRecordDataset(shards.shard_paths(path)).batch(20)
  batch = tf.io.parse_example(next(iter(ds)), spec)
  got = tf.io.decode_raw(batch['image'], tf.uint8).numpy().reshape(-1, *SHAPE)
  np.testing.assert_array_equal(got, images)
  np.testing.assert_array_equal(batch['label'].numpy(), labels)
  np.testing.assert_array_equal(batch['id'].numpy(), np.arange(20))
  assert set(batch['source'].numpy()) == {b'ddpm'}
  # Our framing is byte-identical to TensorFlow's writer.
  local = 'ram://bucket/tf.tfrecord'
  with tf.io.TFRecordWriter(local) as w:
    w.write(b'abc')
    w.write(b'')
  with tf.io.gfile.GFile(local, 'rb') as f:
    assert f.read() == tfrecord.frame(b'abc') + tfrecord.frame(b'')


def test_failed_write_leaves_no_manifest_or_shards(tmp_path):
  images, labels, _ = _data(30)
  old = _write(str(tmp_path / 'gen'), images, labels)
  with pytest.raises(RuntimeError, match='generator crashed'):
    with shard_writer.ShardWriter(str(tmp_path / 'gen'), num_shards=3,
                                  total=30, image_shape=SHAPE, num_classes=10,
                                  source='x') as writer:
      writer.write_batch(images[:25], labels[:25])   # completes 2 shards
      raise RuntimeError('generator crashed')
  # The old manifest went first, so nothing describes a half-replaced set;
  # what this writer wrote is gone (the old set's last shard, which it never
  # reached, stays but is listed by no manifest).
  assert not os.path.exists(old)
  assert os.listdir(tmp_path) == ['gen-00002-of-00003.tfrecord']
  os.remove(tmp_path / 'gen-00002-of-00003.tfrecord')
  # Too few records: rejected at close, nothing left either.
  with pytest.raises(ValueError, match='wrote 10 records, declared total 30'):
    with shard_writer.ShardWriter(str(tmp_path / 'gen'), num_shards=3,
                                  total=30, image_shape=SHAPE, num_classes=10,
                                  source='x') as writer:
      writer.write_batch(images[:10], labels[:10])
  assert os.listdir(tmp_path) == []


def test_crash_without_cleanup_leaves_only_temporary_names(tmp_path):
  images, labels, _ = _data(30)
  writer = shard_writer.ShardWriter(str(tmp_path / 'gen'), num_shards=3,
                                    total=30, image_shape=SHAPE,
                                    num_classes=10, source='x')
  writer.write_batch(images[:15], labels[:15])   # shard 0 done, shard 1 half
  names = sorted(os.listdir(tmp_path))           # (no close, no abort)
  assert names[0] == 'gen-00000-of-00003.tfrecord'
  assert names[1].startswith('gen-00001-of-00003.tfrecord.tmp-')
  assert len(names) == 2   # no manifest: the set is not readable
  with pytest.raises(shards.ManifestError, match='not found'):
    shards.load_manifest(str(tmp_path / 'gen.json'))
  writer.abort()


def test_writer_rejects_bad_batches(tmp_path):
  images, labels, _ = _data(10)
  writer = shard_writer.ShardWriter(str(tmp_path / 'g'), num_shards=2,
                                    total=10, image_shape=SHAPE,
                                    num_classes=10, source='x')
  with pytest.raises(ValueError, match='uint8'):
    writer.write_batch(images.astype(np.float32), labels)
  with pytest.raises(ValueError, match=r'shape \(n, \*\(4, 4, 3\)\)'):
    writer.write_batch(images[:, :2], labels)
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 10\)'):
    writer.write_batch(images, labels + 5)
  writer.write_batch(images, labels)
  with pytest.raises(ValueError, match='exceed the declared total 10'):
    writer.write_batch(images[:1], labels[:1])
  writer.close()


def test_manifest_validation_messages(tmp_path):
  images, labels, _ = _data(10)
  path = _write(str(tmp_path / 'gen'), images, labels, num_shards=2)
  manifest = shards.load_manifest(path)
  shards.validate_manifest(manifest, path, image_shape=SHAPE, num_classes=10)
  with pytest.raises(shards.ManifestError,
                     match=r'gen.json: generated images have shape \(4, 4, 3\)'
                     r' but the real images have shape \(32, 32, 3\)'):
    shards.validate_manifest(manifest, path, image_shape=(32, 32, 3))
  with pytest.raises(shards.ManifestError, match='10 classes but the real '
                     'dataset has 100'):
    shards.validate_manifest(manifest, path, num_classes=100)
  broken = dict(manifest)
  del broken['num_classes']
  (tmp_path / 'broken.json').write_text(json.dumps(broken))
  with pytest.raises(shards.ManifestError, match="missing key 'num_classes'"):
    shards.load_manifest(str(tmp_path / 'broken.json'))


def test_parser_rejects_records_that_disagree_with_the_manifest(tmp_path):
  images, labels, _ = _data(8)
  path = _write(str(tmp_path / 'gen'), images, labels, num_shards=1)
  (shard,) = shards.shard_paths(path)
  parser = example_format.ExampleParser((4, 4, 3), num_classes=10)
  assert len(list(record_dataset.TFRecordIterDataset(
      [shard], parse_fn=parser))) == 8
  wrong_shape = example_format.ExampleParser((8, 8, 3), num_classes=10)
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=r'byte offset 0: image has 48 bytes, the manifest '
                     r'shape \(8, 8, 3\) needs 192'):
    list(record_dataset.TFRecordIterDataset([shard], parse_fn=wrong_shape))
  few_classes = example_format.ExampleParser((4, 4, 3), num_classes=1)
  with pytest.raises(tfrecord.CorruptRecordError, match=r'outside \[0, 1\)'):
    list(record_dataset.TFRecordIterDataset([shard], parse_fn=few_classes))
