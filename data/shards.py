"""Generated-data shard sets: `tf.train.Example` TFRecords plus a JSON manifest.

A shard set with prefix `DIR/NAME` is the files

  DIR/NAME-00000-of-00008.tfrecord ... DIR/NAME-00007-of-00008.tfrecord
  DIR/NAME.json                         the manifest, written last

Each record is a `tf.train.Example` with the features

  image   bytes   raw uint8 pixels, HWC, C-order (H*W*C bytes)
  label   int64   class (pseudo-label for generated samples)
  id      int64   unique across the whole set
  score   float   pseudo-label confidence (NaN when unknown)
  source  bytes   generator name

so tf.data can read the set with `tf.io.parse_example`. The manifest holds
`count`, `image_shape`, `num_classes`, `generator`, `seed`, per-class counts
and the shard files (names relative to the manifest), e.g.

  {"format": "tfrecord-example", "version": 1, "count": 1000000,
   "image_shape": [32, 32, 3], "num_classes": 10, "generator": "ddpm",
   "seed": 0, "label_counts": [...], "shards": [{"file": ..., "count": ...}]}

Writing (Gaussian-fit sampling, pseudo-labelling and npz import stream here):

  with ShardWriter('gs://bucket/gen/ddpm', num_shards=64, total=1_000_000,
                   image_shape=(32, 32, 3), num_classes=10, source='ddpm',
                   seed=0) as writer:
    for images, labels, scores in batches:          # uint8 NHWC, int, float
      writer.write_batch(images, labels, scores)    # ids: 0, 1, 2, ...
  # writer.manifest_path == 'gs://bucket/gen/ddpm.json'

The writer streams records straight to the open shard, so it holds at most one
shard's write buffer. Shards are written under temporary names and renamed when
complete; any old manifest is removed first and the new one is written (also via
a temporary name) only after every shard is in place, so a crash never leaves a
manifest that describes missing or partial shards.

Reading:

  manifest = load_manifest(path)        # checks keys; ManifestError otherwise
  validate_manifest(manifest, path, image_shape=(32, 32, 3), num_classes=10)
  for example in read_examples(path):   # dicts: image (HWC uint8), label, ...
    ...
  for batch in read_examples(path, batch_size=1024):  # dicts of arrays
    ...

`ExampleParser` is the fast per-record parser the training pipeline uses. The
`tf.train.Example` message classes are built here from a small descriptor in a
private protobuf pool, so neither writing nor reading imports TensorFlow.
"""
from __future__ import annotations

import json
import math
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
import numpy as np

from data import tfrecord

FORMAT = 'tfrecord-example'
VERSION = 1
_WRITE_GROUP = 1024   # records serialised per write call: bounds the copies
_REQUIRED_KEYS = {'count': int, 'image_shape': list, 'num_classes': int,
                  'shards': list}


class ManifestError(ValueError):
  """A manifest that is missing, malformed, or disagrees with the config."""


# ------------------------------------------------------------------------------
# tf.train.Example without TensorFlow.
# ------------------------------------------------------------------------------


def _example_classes():
  """Builds wire-compatible `tf.train.Example` classes in a private pool."""
  f = descriptor_pb2.FileDescriptorProto(
      name='shards_example.proto', package='tensorflow', syntax='proto3')
  fd = descriptor_pb2.FieldDescriptorProto
  rep, opt = fd.LABEL_REPEATED, fd.LABEL_OPTIONAL

  def message(name, *fields):
    m = f.message_type.add(name=name)
    for field_name, number, label, ftype, type_name in fields:
      m.field.add(name=field_name, number=number, label=label, type=ftype,
                  type_name=type_name)
    return m

  message('BytesList', ('value', 1, rep, fd.TYPE_BYTES, None))
  message('FloatList', ('value', 1, rep, fd.TYPE_FLOAT, None))
  message('Int64List', ('value', 1, rep, fd.TYPE_INT64, None))
  feature = message(
      'Feature',
      ('bytes_list', 1, opt, fd.TYPE_MESSAGE, '.tensorflow.BytesList'),
      ('float_list', 2, opt, fd.TYPE_MESSAGE, '.tensorflow.FloatList'),
      ('int64_list', 3, opt, fd.TYPE_MESSAGE, '.tensorflow.Int64List'))
  feature.oneof_decl.add(name='kind')
  for field in feature.field:
    field.oneof_index = 0
  features = message('Features', ('feature', 1, rep, fd.TYPE_MESSAGE,
                                  '.tensorflow.Features.FeatureEntry'))
  entry = features.nested_type.add(name='FeatureEntry')
  entry.options.map_entry = True
  entry.field.add(name='key', number=1, label=opt, type=fd.TYPE_STRING)
  entry.field.add(name='value', number=2, label=opt, type=fd.TYPE_MESSAGE,
                  type_name='.tensorflow.Feature')
  message('Example',
          ('features', 1, opt, fd.TYPE_MESSAGE, '.tensorflow.Features'))
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName('tensorflow.Example'))


Example = _example_classes()


def serialize_example(image: bytes, label: int, id_: int, score: float,
                      source: bytes) -> bytes:
  """One record in the shard schema."""
  ex = Example()
  feature = ex.features.feature
  feature['image'].bytes_list.value.append(image)
  feature['label'].int64_list.value.append(label)
  feature['id'].int64_list.value.append(id_)
  feature['score'].float_list.value.append(score)
  feature['source'].bytes_list.value.append(source)
  return ex.SerializeToString()


def _single(feature, key: str, kind: str):
  if key not in feature:
    raise ValueError(f'missing feature {key!r}')
  values = getattr(feature[key], kind).value
  if len(values) != 1:
    raise ValueError(f'feature {key!r} must hold one {kind} value, has '
                     f'{len(values)}')
  return values[0]


def parse_example(record: bytes) -> dict[str, Any]:
  """All five features of one record, as Python values (image as bytes)."""
  feature = Example.FromString(record).features.feature
  return {'image': _single(feature, 'image', 'bytes_list'),
          'label': int(_single(feature, 'label', 'int64_list')),
          'id': int(_single(feature, 'id', 'int64_list')),
          'score': float(_single(feature, 'score', 'float_list')),
          'source': _single(feature, 'source', 'bytes_list').decode()}


class ExampleParser:
  """Record -> (image bytes, label, id), checking size and label range.

  A class (not a closure) so Grain can pickle it into worker processes. Raises
  ValueError on a bad record; the reader turns that into an error naming the
  file and byte offset.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int):
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = int(num_classes)
    self._image_bytes = math.prod(self.image_shape)

  def __call__(self, record: bytes) -> tuple[bytes, int, int]:
    feature = Example.FromString(record).features.feature
    image = _single(feature, 'image', 'bytes_list')
    label = _single(feature, 'label', 'int64_list')
    id_ = _single(feature, 'id', 'int64_list')
    if len(image) != self._image_bytes:
      raise ValueError(
          f'image has {len(image)} bytes, the manifest shape '
          f'{self.image_shape} needs {self._image_bytes}')
    if not 0 <= label < self.num_classes:
      raise ValueError(f'label {label} outside [0, {self.num_classes})')
    return image, label, id_


# ------------------------------------------------------------------------------
# Names and manifests.
# ------------------------------------------------------------------------------


def shard_name(name: str, index: int, num_shards: int) -> str:
  return f'{name}-{index:05d}-of-{num_shards:05d}.tfrecord'


def manifest_path(prefix: str) -> str:
  return f'{prefix}.json'


def load_manifest(path: str) -> dict[str, Any]:
  """Reads and structurally checks a manifest; ManifestError names the path."""
  if not tfrecord.exists(path):
    raise ManifestError(f'{path}: shard manifest not found')
  with tfrecord.open_file(path, 'rb') as f:
    text = f.read()
  try:
    manifest = json.loads(text)
  except ValueError as e:
    raise ManifestError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(manifest, dict):
    raise ManifestError(f'{path}: expected a JSON object')
  for key, kind in _REQUIRED_KEYS.items():
    if key not in manifest:
      raise ManifestError(f'{path}: missing key {key!r}')
    if not isinstance(manifest[key], kind):
      raise ManifestError(f'{path}: key {key!r} must be a {kind.__name__}, '
                          f'got {manifest[key]!r}')
  shards = manifest['shards']
  if not shards:
    raise ManifestError(f'{path}: lists no shards')
  for i, shard in enumerate(shards):
    if not isinstance(shard, dict) or 'file' not in shard:
      raise ManifestError(f'{path}: shards[{i}] needs a "file" entry')
  total = sum(int(s.get('count', 0)) for s in shards)
  if all('count' in s for s in shards) and total != manifest['count']:
    raise ManifestError(f'{path}: shard counts sum to {total}, "count" says '
                        f'{manifest["count"]}')
  return manifest


def validate_manifest(manifest: dict[str, Any], path: str = '<manifest>', *,
                      image_shape: Sequence[int] | None = None,
                      num_classes: int | None = None) -> None:
  """Rejects a shard set whose image shape or classes disagree with the run."""
  shape = tuple(manifest['image_shape'])
  if image_shape is not None and shape != tuple(image_shape):
    raise ManifestError(
        f'{path}: generated images have shape {shape} but the real images '
        f'have shape {tuple(image_shape)}')
  if num_classes is not None and manifest['num_classes'] != num_classes:
    raise ManifestError(
        f'{path}: generated labels have {manifest["num_classes"]} classes but '
        f'the real dataset has {num_classes}')
  if len(shape) != 3 or min(shape) < 1:
    raise ManifestError(f'{path}: image_shape must be [H, W, C], got {shape}')
  if manifest['num_classes'] < 1:
    raise ManifestError(f'{path}: num_classes must be >= 1')


def shard_paths(path: str, manifest: dict[str, Any] | None = None) -> list[str]:
  """Full paths of the shards a manifest lists (relative to its directory)."""
  manifest = manifest if manifest is not None else load_manifest(path)
  base = posixpath.dirname(path)
  return [posixpath.join(base, s['file']) for s in manifest['shards']]


# ------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------


class ShardWriter:
  """Streams images, labels and scores into a shard set; see module docstring.

  Shard i receives records [i*total//num_shards, (i+1)*total//num_shards) of
  the stream, so shards differ by at most one record. ids default to
  `first_id + position in the stream`; pass `ids` to keep ids from elsewhere
  (e.g. the index in an imported file); they must be unique across the set.
  """

  def __init__(self, prefix: str, *, num_shards: int, total: int,
               image_shape: Sequence[int], num_classes: int, source: str,
               seed: int | None = None, first_id: int = 0,
               metadata: dict[str, Any] | None = None):
    if num_shards < 1 or total < num_shards:
      raise ValueError(f'need 1 <= num_shards <= total, got num_shards='
                       f'{num_shards}, total={total}')
    self.prefix = prefix
    self.manifest_path = manifest_path(prefix)
    self._name = posixpath.basename(prefix)
    self._dir = posixpath.dirname(prefix)
    self._num_shards = num_shards
    self._total = total
    self._image_shape = tuple(int(d) for d in image_shape)
    self._num_classes = int(num_classes)
    self._source = source
    self._source_bytes = source.encode()
    self._seed = seed
    self._next_id = first_id
    self._metadata = metadata or {}
    self._written = 0
    self._label_counts = np.zeros(self._num_classes, np.int64)
    self._shard = -1
    self._file = None
    self._tmp_path = None
    self._done: list[str] = []
    self._closed = False
    tfrecord.makedirs(self._dir)
    # An old manifest must not describe shards that are being replaced.
    tfrecord.remove(self.manifest_path)

  @property
  def written(self) -> int:
    return self._written

  def _bounds(self, shard: int) -> tuple[int, int]:
    n, total = self._num_shards, self._total
    return shard * total // n, (shard + 1) * total // n

  def _path(self, shard: int) -> str:
    return posixpath.join(
        self._dir, shard_name(self._name, shard, self._num_shards))

  def _open_next(self) -> None:
    self._shard += 1
    self._tmp_path = f'{self._path(self._shard)}.tmp-{uuid.uuid4().hex[:8]}'
    self._file = tfrecord.open_file(self._tmp_path, 'wb')

  def _finish_shard(self) -> None:
    self._file.close()
    self._file = None
    tfrecord.rename(self._tmp_path, self._path(self._shard))
    self._done.append(self._path(self._shard))
    self._tmp_path = None

  def _check_batch(self, images, labels, scores, ids):
    images = np.asarray(images)
    labels = np.asarray(labels)
    n = len(images)
    if images.dtype != np.uint8 or images.shape[1:] != self._image_shape:
      raise ValueError(f'images must be uint8 of shape '
                       f'(n, *{self._image_shape}), got {images.dtype} '
                       f'{images.shape}')
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f'labels must be integers of shape ({n},), got '
                       f'{labels.dtype} {labels.shape}')
    if n and (labels.min() < 0 or labels.max() >= self._num_classes):
      raise ValueError(f'labels must lie in [0, {self._num_classes}), got '
                       f'range [{labels.min()}, {labels.max()}]')
    scores = (np.full(n, np.nan, np.float32) if scores is None
              else np.asarray(scores, np.float32))
    if ids is None:
      ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
    ids = np.asarray(ids, np.int64)
    if scores.shape != (n,) or ids.shape != (n,):
      raise ValueError(f'scores and ids must have shape ({n},), got '
                       f'{scores.shape} and {ids.shape}')
    if self._written + n > self._total:
      raise ValueError(f'{self.prefix}: writing {n} more records would exceed '
                       f'the declared total {self._total}')
    return np.ascontiguousarray(images), labels, scores, ids

  def write_batch(self, images, labels, scores=None, ids=None) -> None:
    """Appends uint8 images (n, H, W, C) with labels, scores and ids."""
    if self._closed:
      raise ValueError(f'{self.prefix}: writer is closed')
    images, labels, scores, ids = self._check_batch(images, labels, scores, ids)
    self._label_counts += np.bincount(labels, minlength=self._num_classes)
    start = 0
    while start < len(images):
      if self._file is None:
        self._open_next()
      end_of_shard = self._bounds(self._shard)[1]
      stop = min(len(images), start + end_of_shard - self._written,
                 start + _WRITE_GROUP)
      self._file.write(b''.join(
          tfrecord.frame(serialize_example(
              images[i].tobytes(), int(labels[i]), int(ids[i]),
              float(scores[i]), self._source_bytes))
          for i in range(start, stop)))
      self._written += stop - start
      start = stop
      if self._written == end_of_shard:
        self._finish_shard()
    if len(ids):
      self._next_id = max(self._next_id, int(ids.max()) + 1)

  def close(self) -> str:
    """Checks the count, writes the manifest; returns the manifest path."""
    if self._closed:
      return self.manifest_path
    if self._written != self._total:
      self.abort()
      raise ValueError(f'{self.prefix}: wrote {self._written} records, '
                       f'declared total {self._total}; shard set discarded')
    manifest = {
        'format': FORMAT, 'version': VERSION, 'name': self._name,
        'count': self._total, 'image_shape': list(self._image_shape),
        'num_classes': self._num_classes, 'generator': self._source,
        'seed': self._seed, 'label_counts': self._label_counts.tolist(),
        'features': {'image': 'bytes: raw uint8 HWC', 'label': 'int64',
                     'id': 'int64', 'score': 'float', 'source': 'bytes'},
        'shards': [{'file': shard_name(self._name, i, self._num_shards),
                    'count': self._bounds(i)[1] - self._bounds(i)[0]}
                   for i in range(self._num_shards)],
        'metadata': self._metadata,
    }
    tmp = f'{self.manifest_path}.tmp-{uuid.uuid4().hex[:8]}'
    with tfrecord.open_file(tmp, 'wb') as f:
      f.write(json.dumps(manifest, indent=1).encode())
    tfrecord.rename(tmp, self.manifest_path)
    self._closed = True
    return self.manifest_path

  def abort(self) -> None:
    """Removes everything written so far; no manifest is left behind."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tmp_path:
      tfrecord.remove(self._tmp_path)
    for path in self._done:
      tfrecord.remove(path)
    self._done = []
    self._closed = True

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


# ------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------


def read_examples(path: str, *, batch_size: int | None = None,
                  on_corrupt: str = 'raise') -> Iterator[dict[str, Any]]:
  """Streams a shard set in file order: one dict per example, or batches.

  Examples are dicts with `image` (uint8 HWC array), `label`, `id`, `score`
  and `source`. With `batch_size`, dicts of stacked arrays (the last batch may
  be smaller). Reads one record at a time; memory does not grow with the set.
  """
  manifest = load_manifest(path)
  validate_manifest(manifest, path)
  shape = tuple(manifest['image_shape'])
  records = tfrecord.TFRecordIterDataset(
      shard_paths(path, manifest), on_corrupt=on_corrupt,
      parse_fn=parse_example)
  examples = (_with_array(e, shape) for e in records)
  if batch_size is None:
    yield from examples
    return
  batch = []
  for example in examples:
    batch.append(example)
    if len(batch) == batch_size:
      yield _stack(batch)
      batch = []
  if batch:
    yield _stack(batch)


def _with_array(example: dict[str, Any], shape) -> dict[str, Any]:
  image = np.frombuffer(example['image'], np.uint8)
  if image.size != math.prod(shape):
    raise ValueError(f'example id {example["id"]}: image has {image.size} '
                     f'bytes, manifest shape {shape} needs {math.prod(shape)}')
  example['image'] = image.reshape(shape)
  return example


def _stack(batch: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {'image': np.stack([e['image'] for e in batch]),
          'label': np.array([e['label'] for e in batch], np.int64),
          'id': np.array([e['id'] for e in batch], np.int64),
          'score': np.array([e['score'] for e in batch], np.float32),
          'source': np.array([e['source'] for e in batch])}
