"""Converts a generated-image `.npz` into a shard set, with bounded memory (the command is
`python -m trainer.import_npz`).

Reads the published sets (DeepMind's `cifar10_ddpm.npz`, DM-Improves-AT's 1M-50M
parts: keys `image` uint8 NHWC and `label`) without loading them: a member
stored uncompressed in the zip is memory-mapped at its offset inside the zip; a
compressed one is decompressed as a stream, a chunk of rows at a time. Mapped
pages are released after each chunk, so resident memory stays near one chunk
plus one shard's write buffer, whatever the file size.

`shuffle` writes the samples in a random order (a permutation seeded by
`seed`), spreading them across shards. It needs random access, so compressed
members are first decompressed (streamed) into an uncompressed temporary file
beside the output (local output) or in the system temp directory, then
memory-mapped; the file is unlinked at once and vanishes with the process.

`encoding='png'` stores each image as a PNG (lossless; see
`data.records.shard_writer`), `encoding='jpeg'` (with `jpeg_quality`) as a JPEG
(lossy, only when asked; the manifest records Q); the default keeps raw pixels.

Each sample keeps its index in the file as its `id`, so any record can be traced
back to the source. Scores are NaN (unknown) unless `score_key` names one.
The output is atomic: shards appear under their final names only when
complete, and the manifest (`DIR/NAME.json`) only after all of them.
"""
from __future__ import annotations

import mmap
import os
import posixpath
import struct
import tempfile
import zipfile
from typing import NamedTuple

import numpy as np
import tqdm

from data import files
from data.records import shard_writer

_CHUNK_BYTES = 16 << 20
_LOCAL_HEADER = struct.Struct('<4s22xHH')  # signature, name length, extra len


def _open_zip(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise ValueError(f'{path} is not an .npz file (not a zip archive): {e}') from e


class NpzMember:
  """One array of an npz, readable by row ranges without loading it.

  `mapped` says whether rows come from a memory map (random access) or from a
  decompressing stream (sequential only).
  """

  def __init__(self, npz_path: str, key: str):
    self.path, self.key = npz_path, key
    with _open_zip(npz_path) as zf:
      name = f'{key}.npy'
      if name not in zf.namelist():
        keys = sorted(n[:-4] for n in zf.namelist() if n.endswith('.npy'))
        raise ValueError(f'{npz_path}: no array {key!r}; it has {keys} (name the arrays with '
                         '--image_key / --label_key)')
      self._info = zf.getinfo(name)
      with zf.open(name) as f:
        self.shape, self.dtype, header_size = _read_npy_header(f, npz_path,
                                                               key)
    self.mapped = self._info.compress_type == zipfile.ZIP_STORED
    self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:]))
    self._stream = None
    self._stream_row = 0
    self._mmap = None
    if self.mapped:
      self._map(self._member_offset() + header_size)

  def __len__(self) -> int:
    return self.shape[0]

  def _member_offset(self) -> int:
    """Offset of the member's bytes: after its local header in the zip."""
    with open(self.path, 'rb') as f:
      f.seek(self._info.header_offset)
      sig, name_len, extra_len = _LOCAL_HEADER.unpack(
          f.read(_LOCAL_HEADER.size))
    if sig != b'PK\x03\x04':
      raise ValueError(f'{self.path}: bad zip local header for {self.key!r}')
    return self._info.header_offset + _LOCAL_HEADER.size + name_len + extra_len

  def _map(self, data_offset: int) -> None:
    aligned = data_offset - data_offset % mmap.ALLOCATIONGRANULARITY
    nbytes = self.row_bytes * len(self)
    if os.path.getsize(self.path) < data_offset + nbytes:
      # Touching a mapping past the end of the file would kill the process.
      raise ValueError(f'{self.path}: member {self.key!r} is truncated')
    if nbytes == 0:
      self._array = np.empty(self.shape, self.dtype)
      return
    with open(self.path, 'rb') as f:
      self._mmap = mmap.mmap(f.fileno(), data_offset - aligned + nbytes,
                             access=mmap.ACCESS_READ, offset=aligned)
    self._array = np.frombuffer(
        self._mmap, self.dtype, count=int(np.prod(self.shape)),
        offset=data_offset - aligned).reshape(self.shape)

  def _release_pages(self) -> None:
    # Drop mapped pages from this process (they stay in the page cache), so
    # resident memory does not grow with the part of the file already read.
    if self._mmap is not None and hasattr(mmap, 'MADV_DONTNEED'):
      self._mmap.madvise(mmap.MADV_DONTNEED)

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as a new array (sequential if not mapped)."""
    if self.mapped:
      out = np.array(self._array[start:stop])
      self._release_pages()
      return out
    if self._stream is None or start < self._stream_row:
      self._open_stream()
    self._skip_to(start)
    return self._read_rows(stop - start)

  def take(self, index: np.ndarray) -> np.ndarray:
    """Rows at `index` (any order); needs a mapped member."""
    if not self.mapped:
      raise ValueError('random access needs an uncompressed member')
    order = np.argsort(index, kind='stable')
    out = np.empty((len(index),) + self.shape[1:], self.dtype)
    out[order] = self._array[index[order]]   # read the file in order
    self._release_pages()
    return out

  def _open_stream(self) -> None:
    self.close_stream()
    self._zip = _open_zip(self.path)
    self._stream = self._zip.open(self._info)
    _read_npy_header(self._stream, self.path, self.key)
    self._stream_row = 0

  def _skip_to(self, row: int) -> None:
    while self._stream_row < row:
      self._read_rows(min(row - self._stream_row,
                          max(1, _CHUNK_BYTES // self.row_bytes)))

  def _read_rows(self, n: int) -> np.ndarray:
    data = self._stream.read(n * self.row_bytes)
    if len(data) != n * self.row_bytes:
      raise ValueError(f'{self.path}: member {self.key!r} ends early at row '
                       f'{self._stream_row + len(data) // self.row_bytes}')
    self._stream_row += n
    return np.frombuffer(data, self.dtype).reshape((n,) + self.shape[1:])

  def materialize(self, directory: str) -> NpzMember:
    """A mapped copy of a compressed member, decompressed to a temp file."""
    if self.mapped:
      return self
    fd, tmp = tempfile.mkstemp(suffix='.npz', dir=directory)
    try:
      with os.fdopen(fd, 'wb') as out, zipfile.ZipFile(out, 'w') as zf:
        with zf.open(f'{self.key}.npy', 'w', force_zip64=True) as dst:
          self._open_stream()
          np.lib.format.write_array_header_2_0(dst, {
              'descr': np.lib.format.dtype_to_descr(self.dtype),
              'fortran_order': False, 'shape': self.shape})
          step = max(1, _CHUNK_BYTES // self.row_bytes)
          for start in range(0, len(self), step):
            dst.write(self._read_rows(min(step, len(self) - start)).tobytes())
      member = NpzMember(tmp, self.key)
    finally:
      # The open mapping keeps the data readable after the unlink.
      os.remove(tmp)
      self.close_stream()
    return member

  def close_stream(self) -> None:
    if self._stream is not None:
      self._stream.close()
      self._zip.close()
      self._stream = None


def _read_npy_header(f, path: str, key: str):
  """Shape, dtype and header size of a .npy stream; refuses object arrays."""
  try:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
  except ValueError as e:
    raise ValueError(f'{path}: member {key!r} is not a valid .npy: {e}') from e
  if dtype.hasobject:
    raise ValueError(f'{path}: member {key!r} holds Python objects; refusing '
                     'to unpickle it')
  if fortran and len(shape) > 1:
    raise ValueError(f'{path}: member {key!r} is Fortran-ordered; save it in '
                     'C order')
  return tuple(shape), dtype, f.tell()


def _check_members(images: NpzMember, labels: NpzMember) -> None:
  if images.dtype != np.uint8 or len(images.shape) != 4:
    raise ValueError(f'{images.path}: {images.key!r} must be uint8 NHWC, got '
                     f'{images.dtype} {images.shape}')
  if len(labels.shape) != 1 or labels.dtype.kind not in 'iu':
    raise ValueError(f'{labels.path}: {labels.key!r} must be a 1-D integer '
                     f'array, got {labels.dtype} {labels.shape}')
  if len(labels) != len(images):
    raise ValueError(f'{images.path}: {len(images)} images but {len(labels)} '
                     'labels')


def _label_range(labels: NpzMember, chunk: int) -> tuple[int, int]:
  lo, hi = None, None
  for start in range(0, len(labels), chunk):
    part = labels.rows(start, min(len(labels), start + chunk))
    lo = part.min() if lo is None else min(lo, part.min())
    hi = part.max() if hi is None else max(hi, part.max())
  return int(lo), int(hi)


class NpzSet(NamedTuple):
  """The checked arrays of one npz: images, labels, optional scores, and the class count."""
  path: str
  images: NpzMember
  labels: NpzMember
  scores: NpzMember | None
  num_classes: int


def open_npz(src: str, *, num_classes: int | None = None, image_key: str = 'image',
             label_key: str = 'label', score_key: str | None = None) -> NpzSet:
  """Opens and checks `src` (arrays, shapes, label range); writes nothing."""
  images = NpzMember(src, image_key)
  labels = NpzMember(src, label_key)
  scores = NpzMember(src, score_key) if score_key else None
  _check_members(images, labels)
  if len(images) == 0:
    raise ValueError(f'{src}: {image_key!r} holds no images')
  lo, hi = _label_range(labels, 1 << 22)
  num_classes = hi + 1 if num_classes is None else num_classes
  if lo < 0 or hi >= num_classes:
    raise ValueError(f'{src}: labels span [{lo}, {hi}], outside [0, '
                     f'{num_classes})')
  return NpzSet(src, images, labels, scores, num_classes)


def import_npz(src: str, out: str, *, num_shards: int, shuffle: bool = False,
               seed: int = 0, source: str | None = None,
               num_classes: int | None = None, image_key: str = 'image',
               label_key: str = 'label', score_key: str | None = None,
               progress: bool = True, encoding: str = 'raw',
               jpeg_quality: int = 95) -> str:
  """Writes the shard set `out` from `src`; returns the manifest path."""
  npz = open_npz(src, num_classes=num_classes, image_key=image_key, label_key=label_key,
                 score_key=score_key)
  return write_shards(npz, out, num_shards=num_shards, shuffle=shuffle, seed=seed,
                      source=source, progress=progress, encoding=encoding,
                      jpeg_quality=jpeg_quality)


def write_shards(npz: NpzSet, out: str, *, num_shards: int, shuffle: bool = False,
                 seed: int = 0, source: str | None = None, progress: bool = True,
                 encoding: str = 'raw', jpeg_quality: int = 95) -> str:
  """Writes the shard set `out` from an opened npz; returns the manifest path."""
  src, images, labels, scores, num_classes = npz
  n = len(images)
  chunk = max(1, _CHUNK_BYTES // images.row_bytes)
  order = None
  if shuffle:
    order = np.random.default_rng(seed).permutation(n)
    tmp_dir = posixpath.dirname(out) if files.is_local(out) else None
    if tmp_dir:
      os.makedirs(tmp_dir, exist_ok=True)
    images = images.materialize(tmp_dir or None)
    labels = labels.materialize(tmp_dir or None)
    scores = scores.materialize(tmp_dir or None) if scores else None
  name = source or os.path.splitext(os.path.basename(src))[0]
  writer = shard_writer.ShardWriter(
      out, num_shards=num_shards, total=n, image_shape=images.shape[1:],
      num_classes=num_classes, source=name, seed=seed if shuffle else None,
      metadata={'imported_from': os.path.basename(src), 'shuffled': shuffle},
      encoding=encoding, jpeg_quality=jpeg_quality)
  bar = tqdm.tqdm(total=n, unit='img', disable=not progress,
                  desc=f'import {os.path.basename(src)}')
  with writer, bar:
    for start in range(0, n, chunk):
      stop = min(n, start + chunk)
      ids = (np.arange(start, stop, dtype=np.int64) if order is None
             else order[start:stop].astype(np.int64))
      parts = [_read(m, start, stop, ids, order is not None)
               for m in (images, labels, scores)]
      writer.write_batch(*parts, ids=ids)
      bar.update(stop - start)
  return writer.manifest_path


def _read(member, start, stop, ids, shuffled):
  if member is None:
    return None
  return member.take(ids) if shuffled else member.rows(start, stop)
