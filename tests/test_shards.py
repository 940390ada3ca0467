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

from data import files
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
  assert not files.is_local(prefix) and not files.is_local('gs://b/x')
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


# --- Encoded images --------------------------------------------------------------------------


def _smooth(n, size=16, seed=0):
  """Images with some structure (JPEG's error on pure noise says little)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  base = np.stack([np.sin(3 * x + 2 * y), np.cos(4 * y), x * y], -1)
  images = [(base + 0.02 * rng.standard_normal(base.shape) + k) for k in rng.random(n)]
  return (np.clip(np.stack(images) * 80 + 100, 0, 255)).astype(np.uint8)


def _write_encoded(prefix, images, labels, encoding, quality=95, num_shards=2):
  with shard_writer.ShardWriter(prefix, num_shards=num_shards, total=len(images),
                                image_shape=images.shape[1:], num_classes=10,
                                source='adm', encoding=encoding,
                                jpeg_quality=quality) as writer:
    writer.write_batch(images, labels)
  return writer.manifest_path


def test_png_shards_are_lossless_and_say_so(tmp_path):
  images, labels = _smooth(12), np.arange(12) % 10
  path = _write_encoded(str(tmp_path / 'gen'), images, labels, 'png')
  manifest = shards.load_manifest(path)
  assert manifest['image_encoding'] == 'png' and manifest['jpeg_quality'] is None
  assert manifest['features']['image'] == 'bytes: PNG file'
  records = list(tfrecord.read_records(shards.shard_paths(path)[0]))
  image = example_format.parse_example(records[0])['image']
  assert image[:8] == b'\x89PNG\r\n\x1a\n' and len(image) < images[0].nbytes
  got = np.stack([e['image'] for e in shards.read_examples(path)])
  np.testing.assert_array_equal(got, images)


def test_jpeg_only_when_asked_with_its_quality_recorded(tmp_path):
  images, labels = _smooth(12), np.arange(12) % 10
  error = {}
  for quality in (90, 10):
    path = _write_encoded(str(tmp_path / f'q{quality}'), images, labels, 'jpeg', quality)
    manifest = shards.load_manifest(path)
    assert manifest['image_encoding'] == 'jpeg' and manifest['jpeg_quality'] == quality
    got = np.stack([e['image'] for e in shards.read_examples(path)]).astype(int)
    error[quality] = np.abs(got - images).mean()
  assert 0 < error[90] < 3.5 and error[10] > 3 * error[90]   # lossy, as much as asked
  with pytest.raises(ValueError, match="image encoding 'webp'"):
    _write_encoded(str(tmp_path / 'bad'), images, labels, 'webp')


def test_manifests_without_an_encoding_are_raw(tmp_path):
  images, labels, _ = _data(10)
  path = _write(str(tmp_path / 'gen'), images, labels, num_shards=2)
  manifest = json.load(open(path))
  for key in ('image_encoding', 'jpeg_quality'):
    del manifest[key]   # as written before encoded images existed
  (tmp_path / 'gen.json').write_text(json.dumps(manifest))
  assert shards.load_manifest(path)['image_encoding'] == 'raw'
  got = np.stack([e['image'] for e in shards.read_examples(path)])
  np.testing.assert_array_equal(got, images)
  manifest['image_encoding'] = 'webp'
  (tmp_path / 'gen.json').write_text(json.dumps(manifest))
  with pytest.raises(shards.ManifestError, match="image_encoding 'webp'"):
    shards.load_manifest(path)


def test_tensorflow_decodes_encoded_shards():
  tf = pytest.importorskip('tensorflow')
  images, labels = _smooth(6, size=8), np.arange(6)
  path = _write_encoded('ram://bucket/enc/gen', images, labels, 'png', num_shards=1)
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64)}
  ds = tf.data.TFRecordDataset(shards.shard_paths(path)).map(
      lambda r: tf.io.decode_png(tf.io.parse_single_example(r, spec)['image']))
  np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())), images)


def test_copied_files_keep_their_bytes_and_are_checked(tmp_path):
  from data import image_codec  # pylint: disable=g-import-not-at-top
  images = _smooth(4, size=8)
  blobs = [image_codec.encode(images[0], 'png'), image_codec.encode(images[1], 'jpeg'),
           image_codec.encode(images[2], 'png'), image_codec.encode(images[3], 'png')]
  with shard_writer.ShardWriter(str(tmp_path / 'real'), num_shards=1, total=4,
                                image_shape=(0, 0, 3), num_classes=10, source='folder',
                                encoding='png') as writer:
    writer.write_encoded(blobs, [0, 1, 2, 3], ids=[7, 8, 9, 10])
  manifest = shards.load_manifest(writer.manifest_path)
  assert manifest['image_encoding'] == 'mixed' and manifest['image_shape'] == [0, 0, 3]
  records = [example_format.parse_example(r)
             for r in tfrecord.read_records(shards.shard_paths(writer.manifest_path)[0])]
  assert [r['image'] for r in records] == blobs and [r['id'] for r in records] == [7, 8, 9, 10]
  sized = shard_writer.ShardWriter(str(tmp_path / 'sized'), num_shards=1, total=2,
                                   image_shape=(16, 16, 3), num_classes=10, source='x',
                                   encoding='png')
  with pytest.raises(ValueError, match=r'image 1 of the batch \(id 5\): image is 8x8, the '
                     r'manifest shape is \(16, 16, 3\)'):
    sized.write_encoded([image_codec.encode(_smooth(1)[0], 'png'), blobs[0]], [0, 0],
                        ids=[4, 5])
  with pytest.raises(ValueError, match='not a PNG or JPEG'):
    sized.write_encoded([b'GIF89a....'], [0], ids=[4])
  sized.abort()


def test_parser_checks_encoded_headers(tmp_path):
  images, labels = _smooth(3, size=8), np.arange(3)
  path = _write_encoded(str(tmp_path / 'gen'), images, labels, 'png', num_shards=1)
  (shard,) = shards.shard_paths(path)
  ok = example_format.ExampleParser((8, 8, 3), 10, 'png')
  assert len(list(record_dataset.TFRecordIterDataset([shard], parse_fn=ok))) == 3
  wrong = example_format.ExampleParser((16, 16, 3), 10, 'png')
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=r'byte offset 0: image is 8x8, the manifest shape is \(16, 16, 3\)'):
    list(record_dataset.TFRecordIterDataset([shard], parse_fn=wrong))
  raw_bytes = example_format.serialize_example(images[0].tobytes(), 0, 0, 0.0, b'x')
  with pytest.raises(ValueError, match='not a PNG or JPEG image'):
    ok(raw_bytes)


def test_records_know_their_position_across_a_resume(tmp_path):
  images, labels, _ = _data(30)
  path = _write(str(tmp_path / 'gen'), images, labels, num_shards=3)
  files = shards.shard_paths(path)

  def where(record, file, index):   # the position, and a filter: drop every third record
    id_ = example_format.parse_example(record)['id']
    return None if id_ % 3 == 0 else (os.path.basename(file), index, id_)

  ds = record_dataset.TFRecordIterDataset(files, cycle_length=2, shuffle_seed=4,
                                          parse_fn=where, with_position=True)
  got = list(ds)
  first = {os.path.basename(f): 10 * i for i, f in enumerate(files)}   # 10 records per file
  assert sorted(i for _, _, i in got) == [i for i in range(30) if i % 3]
  assert all(first[f] + index == id_ for f, index, id_ in got)
  it = iter(ds)
  head = [next(it) for _ in range(7)]
  state = json.loads(json.dumps(it.get_state()))
  resumed = iter(ds)
  resumed.set_state(state)
  assert head + list(resumed) == got
  old = dict(state, slots=[s[:2] for s in state['slots']])   # saved before positions existed
  plain = record_dataset.TFRecordIterDataset(files, cycle_length=2, shuffle_seed=4)
  new_it, old_it = iter(plain), iter(plain)
  new_it.set_state(state)
  old_it.set_state(old)
  rest = list(new_it)
  assert rest and list(old_it) == rest   # the same records follow


def _cut_at_record(path, keep):
  """The first `keep` records of a TFRecord file, written back whole: a clean cut."""
  tfrecord.write_records(path, list(tfrecord.read_records(path))[:keep])


def test_a_shard_cut_at_a_record_boundary_is_named(tmp_path):
  """60 of 100 records, every CRC intact: the count in the manifest catches it."""
  images, labels, _ = _data(100)
  manifest = _write(str(tmp_path / 'gen'), images, labels, num_shards=1)
  path = shards.shard_paths(manifest)[0]
  _cut_at_record(path, 60)
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=r'gen-00000-of-00001.tfrecord.*ends after 60 records, its manifest '
                           r'counts 100'):
    list(shards.read_examples(manifest))
  kept = list(shards.read_examples(manifest, on_corrupt='skip'))
  assert len(kept) == 60


def test_a_manifest_that_overstates_a_shard_is_named(tmp_path):
  images, labels, _ = _data(40)
  manifest = _write(str(tmp_path / 'gen'), images, labels, num_shards=2)
  record = json.loads(open(manifest).read())
  record['shards'][1]['count'] += 50
  record['count'] += 50
  with open(manifest, 'w') as f:
    json.dump(record, f)
  with pytest.raises(tfrecord.CorruptRecordError, match='ends after 20 records, its manifest '
                                                        'counts 70'):
    list(shards.read_examples(manifest))
  it = iter(record_dataset.TFRecordIterDataset(
      shards.shard_paths(manifest), on_corrupt='skip',
      counts=shards.shard_counts(manifest, shards.load_manifest(manifest))))
  assert len(list(it)) == 40 and record_dataset.skipped_in(it) == 50
