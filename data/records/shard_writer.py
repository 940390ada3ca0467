"""Writes a generated-data shard set: records into shards, the manifest last.

Gaussian-fit sampling, pseudo-labelling and npz import all stream here:

  with ShardWriter('gs://bucket/gen/ddpm', num_shards=64, total=1_000_000,
                   image_shape=(32, 32, 3), num_classes=10, source='ddpm',
                   seed=0) as writer:
    for images, labels, scores in batches:          # uint8 NHWC, int, float
      writer.write_batch(images, labels, scores)    # ids: 0, 1, 2, ...
  # writer.manifest_path == 'gs://bucket/gen/ddpm.json'

`encoding='png'` stores each image as a PNG file (lossless: 5M generated 256x256
images are ~1 TB raw), `encoding='jpeg'` as a JPEG of `jpeg_quality` (lossy:
only when asked for; the manifest records the quality). `write_encoded` stores
PNG or JPEG bytes as they are (a real set packed from its files, without
re-encoding them).

The layout and manifest are described in `shards`, the record schema in
`example_format`. The writer streams records straight to the open shard, so it
holds at most one shard's write buffer. Shards are written under temporary
names and renamed when complete; any old manifest is removed first and the new
one is written (also via a temporary name) only after every shard is in place,
so a crash never leaves a manifest that describes missing or partial shards.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from typing import Any

import numpy as np

from data import files
from data import image_codec
from data.records import example_format
from data.records import shards
from data.records import tfrecord

_WRITE_GROUP = 1024   # records serialised per write call: bounds the copies


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
               metadata: dict[str, Any] | None = None, encoding: str = 'raw',
               jpeg_quality: int = 95):
    if num_shards < 1 or total < num_shards:
      raise ValueError(f'need 1 <= num_shards <= total, got num_shards='
                       f'{num_shards}, total={total}')
    image_codec.check_encoding(encoding, jpeg_quality)
    self._encoding = encoding
    self._jpeg_quality = jpeg_quality
    self._formats = set()   # image formats written so far ('raw', 'png', 'jpeg')
    self._encoded_here = False   # write_batch encoded images (at jpeg_quality if JPEG)
    self.prefix = prefix
    self.manifest_path = shards.manifest_path(prefix)
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
    self._file: files.AtomicFile | None = None
    self._done: list[str] = []
    self._closed = False
    files.makedirs(self._dir)
    # An old manifest must not describe shards that are being replaced.
    files.remove(self.manifest_path)

  @property
  def written(self) -> int:
    return self._written

  def _bounds(self, shard: int) -> tuple[int, int]:
    n, total = self._num_shards, self._total
    return shard * total // n, (shard + 1) * total // n

  def _path(self, shard: int) -> str:
    return posixpath.join(
        self._dir, shards.shard_name(self._name, shard, self._num_shards))

  def _open_next(self) -> None:
    self._shard += 1
    self._file = files.AtomicFile(self._path(self._shard))  # clears a killed writer's leftovers

  def _finish_shard(self) -> None:
    self._done.append(self._file.commit())
    self._file = None

  def _check_images(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != self._image_shape:
      raise ValueError(f'images must be uint8 of shape '
                       f'(n, *{self._image_shape}), got {images.dtype} '
                       f'{images.shape}')
    return np.ascontiguousarray(images)

  def _check_rows(self, n, labels, scores, ids):
    labels = np.asarray(labels)
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
    return labels, scores, ids

  def write_batch(self, images, labels, scores=None, ids=None) -> None:
    """Appends uint8 images (n, H, W, C) with labels, scores and ids."""
    if self._closed:
      raise ValueError(f'{self.prefix}: writer is closed')
    images = self._check_images(images)
    labels, scores, ids = self._check_rows(len(images), labels, scores, ids)
    self._formats.add(self._encoding)
    self._encoded_here = True
    if self._encoding == 'raw':
      blobs = [image.tobytes() for image in images]
    else:
      blobs = [image_codec.encode(image, self._encoding, self._jpeg_quality)
               for image in images]
    self._write(blobs, labels, scores, ids)

  def write_encoded(self, blobs, labels, scores=None, ids=None) -> None:
    """Appends PNG or JPEG files' bytes as they are (a writer made with an
    encoded `encoding`); each image's header must fit `image_shape`."""
    if self._closed:
      raise ValueError(f'{self.prefix}: writer is closed')
    if self._encoding == 'raw':
      raise ValueError(f'{self.prefix}: write_encoded needs a writer with a PNG or '
                       'JPEG encoding')
    labels, scores, ids = self._check_rows(len(blobs), labels, scores, ids)
    for i, blob in enumerate(blobs):
      try:
        example_format.check_image(blob, self._image_shape, 'mixed')
      except ValueError as e:
        raise ValueError(f'{self.prefix}: image {i} of the batch (id {ids[i]}): {e}') from e
      self._formats.add(image_codec.sniff(blob))
    self._write(list(blobs), labels, scores, ids)

  def _write(self, images, labels, scores, ids) -> None:
    """Frames and appends records; `images` are the image fields' bytes."""
    self._label_counts += np.bincount(labels, minlength=self._num_classes)
    start = 0
    while start < len(images):
      if self._file is None:
        self._open_next()
      end_of_shard = self._bounds(self._shard)[1]
      stop = min(len(images), start + end_of_shard - self._written,
                 start + _WRITE_GROUP)
      self._file.write(b''.join(
          tfrecord.frame(example_format.serialize_example(
              images[i], int(labels[i]), int(ids[i]),
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
        'format': shards.FORMAT, 'version': shards.VERSION, 'name': self._name,
        'count': self._total, 'image_shape': list(self._image_shape),
        'num_classes': self._num_classes, 'generator': self._source,
        'seed': self._seed, 'label_counts': self._label_counts.tolist(),
        'features': example_format.features(self._manifest_encoding()),
        'image_encoding': self._manifest_encoding(),
        'jpeg_quality': (self._jpeg_quality
                         if self._encoding == 'jpeg' and self._encoded_here else None),
        'shards': [{'file': shards.shard_name(self._name, i, self._num_shards),
                    'count': self._bounds(i)[1] - self._bounds(i)[0]}
                   for i in range(self._num_shards)],
        'metadata': self._metadata,
    }
    files.write_atomic(self.manifest_path, json.dumps(manifest, indent=1))
    self._closed = True
    return self.manifest_path

  def _manifest_encoding(self) -> str:
    if len(self._formats) > 1:
      return 'mixed'
    return next(iter(self._formats), self._encoding)

  def abort(self) -> None:
    """Removes everything written so far; no manifest is left behind."""
    if self._file is not None:
      self._file.abort()
      self._file = None
    for path in self._done:
      files.remove(path)
    self._done = []
    self._closed = True

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()
