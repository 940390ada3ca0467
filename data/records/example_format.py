"""The record schema of generated data: `tf.train.Example` without TensorFlow.

Each record of a shard set is a `tf.train.Example` with the features

  image   bytes   raw uint8 pixels, HWC, C-order (H*W*C bytes); or one PNG or
                  JPEG file, when the manifest's `image_encoding` says so
  label   int64   class (pseudo-label for generated samples)
  id      int64   unique across the whole set
  score   float   pseudo-label confidence (NaN when unknown)
  source  bytes   generator name

so tf.data can read a set with `tf.io.parse_example`:

  record = serialize_example(image_bytes, label, id_, score, b'ddpm')
  parse_example(record)    # {'image': bytes, 'label': int, 'id': int, ...}
  ExampleParser(image_shape, num_classes)(record)   # (image, label, id)

`ExampleParser` is the fast, checking parser the training pipeline runs per
record; it returns the image field as stored, and `decode_image` turns it into
pixels where the batch is assembled (so a shuffle window holds encoded bytes).
An encoded record's header is checked in the parser (size and channels against
the manifest: 25-40 us for a 256x256 PNG or JPEG, against 1-4 ms to decode it),
so a wrong or corrupt image is reported with its file and byte offset like any
bad record.

The message classes are built here from a small descriptor in a private
protobuf pool, so neither writing nor reading imports TensorFlow (~0.7 GB of
RSS in every Grain worker).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
import numpy as np

from data import image_codec

# How the manifest describes the image field, per `image_encoding` ('mixed': each
# record is a PNG or a JPEG, as the files a real set was packed from were).
IMAGE_FIELD = {'raw': 'bytes: raw uint8 HWC', 'png': 'bytes: PNG file',
               'jpeg': 'bytes: JPEG file', 'mixed': 'bytes: PNG or JPEG file'}
ENCODINGS = tuple(IMAGE_FIELD)


def features(encoding: str = 'raw') -> dict[str, str]:
  """The schema as the manifest records it, for readers that do not know it."""
  return {'image': IMAGE_FIELD[encoding], 'label': 'int64', 'id': 'int64',
          'score': 'float', 'source': 'bytes'}


FEATURES = features('raw')


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


def single(feature, key: str, kind: str):
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
  return {'image': single(feature, 'image', 'bytes_list'),
          'label': int(single(feature, 'label', 'int64_list')),
          'id': int(single(feature, 'id', 'int64_list')),
          'score': float(single(feature, 'score', 'float_list')),
          'source': single(feature, 'source', 'bytes_list').decode()}


def check_image(image: bytes, shape: tuple[int, ...], encoding: str) -> None:
  """Raises ValueError unless the stored image fits `shape` (H or W 0: any size).

  Raw images are checked by length, encoded ones by their header.
  """
  if encoding == 'raw':
    if len(image) != math.prod(shape):
      raise ValueError(f'image has {len(image)} bytes, the manifest shape {shape} '
                       f'needs {math.prod(shape)}')
    return
  got = image_codec.peek(image)
  if got[2] != shape[2] and not (got[2] == 1 and shape[2] == 3):  # grey files become RGB
    raise ValueError(f'image has {got[2]} channels, the manifest shape is {shape}')
  if shape[0] and got[:2] != shape[:2]:
    raise ValueError(f'image is {got[0]}x{got[1]}, the manifest shape is {shape}')


def decode_image(image: bytes, shape: Sequence[int], encoding: str) -> np.ndarray:
  """The stored image field as uint8 pixels (H, W, C); `shape` may have H = W = 0."""
  if encoding == 'raw':
    return np.frombuffer(image, np.uint8).reshape(shape)
  return image_codec.decode(image, channels=shape[2])


class ExampleParser:
  """Record -> (image bytes, label, id), checking size and label range.

  A class (not a closure) so Grain can pickle it into worker processes. Raises
  ValueError on a bad record; the reader turns that into an error naming the
  file and byte offset. With an encoded `encoding`, the image stays encoded
  (see `decode_image`); its header is checked here.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int,
               encoding: str = 'raw'):
    if encoding not in ENCODINGS:
      raise ValueError(f'image encoding {encoding!r}: expected one of {ENCODINGS}')
    self.image_shape = tuple(int(d) for d in image_shape)
    self.num_classes = int(num_classes)
    self.encoding = encoding
    self._raw_bytes = math.prod(self.image_shape) if encoding == 'raw' else -1

  def __call__(self, record: bytes) -> tuple[bytes, int, int]:
    feature = Example.FromString(record).features.feature
    image = single(feature, 'image', 'bytes_list')
    label = single(feature, 'label', 'int64_list')
    id_ = single(feature, 'id', 'int64_list')
    if len(image) != self._raw_bytes:   # (a raw image of the right size needs no more checks)
      check_image(image, self.image_shape, self.encoding)
    if not 0 <= label < self.num_classes:
      raise ValueError(f'label {label} outside [0, {self.num_classes})')
    return image, label, id_
