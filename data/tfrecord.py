"""TFRecord files: framing with CRC checks and a checkpointable Grain source.

A TFRecord file is a sequence of records, each framed (little endian) as

  uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)

where masked_crc is CRC32C rotated right by 15 bits plus a constant (as in
TensorFlow). Grain's own `TFRecordIterDataset` skips both CRCs and opens files
with `open`, so this module reads the framing itself and checks every CRC:

  ds = TFRecordIterDataset(paths, cycle_length=16, shuffle_seed=0,
                           num_epochs=None, on_corrupt='raise')
  it = iter(ds)          # a grain DatasetIterator
  record = next(it)      # bytes (or parse_fn(bytes))
  state = it.get_state() # JSON-able: epoch, file order position, offsets

On a bad record it raises `CorruptRecordError`, whose message names the file
and the byte offset of the record. With `on_corrupt='skip'` it logs the same
message, counts the record in the iterator state (`state['skipped']`) and goes
on: a bad data CRC skips one record; a bad length CRC or a truncated tail makes
the rest of that file unreadable (the framing can no longer be trusted) and
counts as one.

Paths with a scheme (`gs://`, `ram://`, ...) go through `tf.io.gfile`; plain
local paths use Python's buffered I/O. TensorFlow is imported only when a
non-local path is opened: importing it costs ~0.7 GB of RSS and seconds of start
time in every worker process, which local pipelines should not pay.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
import google_crc32c
import grain
import numpy as np

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct('<QI')   # length, masked crc of length
_FOOTER = struct.Struct('<I')    # masked crc of data
_HEADER_SIZE = _HEADER.size      # 12
_FRAME_OVERHEAD = _HEADER_SIZE + _FOOTER.size  # 16
_READ_CHUNK = 1 << 20

ON_CORRUPT_CHOICES = ('raise', 'skip')


class CorruptRecordError(ValueError):
  """A record whose framing, CRC or content is invalid."""

  def __init__(self, path: str, offset: int, reason: str):
    super().__init__(f'{path}: bad record at byte offset {offset}: {reason}')
    self.path = path
    self.offset = offset
    self.reason = reason


# ------------------------------------------------------------------------------
# Files.
# ------------------------------------------------------------------------------


def is_local(path: str) -> bool:
  """True for plain filesystem paths (no `scheme://` prefix)."""
  return '://' not in str(path)


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def open_file(path: str, mode: str = 'rb'):
  """Opens a local file with `open`, anything else with `tf.io.gfile.GFile`."""
  if is_local(path):
    return open(path, mode)
  return _gfile().GFile(path, mode)


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def makedirs(path: str) -> None:
  if not path:
    return
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _gfile().makedirs(path)


def rename(src: str, dst: str) -> None:
  """Renames `src` over `dst` (atomic on local filesystems)."""
  if is_local(src):
    os.replace(src, dst)
  else:
    _gfile().rename(src, dst, overwrite=True)


def remove(path: str) -> None:
  """Removes a file if it exists."""
  if is_local(path):
    if os.path.exists(path):
      os.remove(path)
  elif _gfile().exists(path):
    _gfile().remove(path)


# ------------------------------------------------------------------------------
# Framing.
# ------------------------------------------------------------------------------


def masked_crc32c(data: bytes) -> int:
  """TensorFlow's masked CRC32C of `data`."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """Returns `data` framed as one TFRecord record."""
  length = struct.pack('<Q', len(data))
  return b''.join((length, _FOOTER.pack(masked_crc32c(length)), data,
                   _FOOTER.pack(masked_crc32c(data))))


def write_records(path: str, records: Sequence[bytes]) -> None:
  """Writes `records` to a new TFRecord file (small files, tests, tools)."""
  with open_file(path, 'wb') as f:
    f.write(b''.join(frame(r) for r in records))


class RecordReader:
  """Reads records of one TFRecord file sequentially from a byte offset.

  Reads in large chunks, since per-call overhead (and, on GCS, per-request
  latency) dominates for ~3 KB records. `offset` is always the byte offset of
  the next record, which is what a checkpoint needs.
  """

  def __init__(self, path: str, offset: int = 0, *, on_corrupt: str = 'raise',
               chunk_size: int = _READ_CHUNK):
    _check_on_corrupt(on_corrupt)
    self.path = path
    self.offset = offset
    self.record_offset = offset   # offset of the record last returned
    self.skipped = 0
    self._on_corrupt = on_corrupt
    self._chunk_size = chunk_size
    self._file = None
    self._buf = b''
    self._pos = 0
    self._eof = False

  def _open(self):
    self._file = open_file(self.path, 'rb')
    if self.offset:
      self._file.seek(self.offset)

  def _fill(self, n: int) -> int:
    """Makes at least `n` unread bytes available if the file has them."""
    avail = len(self._buf) - self._pos
    if avail >= n:
      return avail
    if self._file is None:
      self._open()
    parts = [self._buf[self._pos:]]
    while avail < n:
      chunk = self._file.read(max(self._chunk_size, n - avail))
      if not chunk:
        break
      parts.append(chunk)
      avail += len(chunk)
    self._buf = b''.join(parts)
    self._pos = 0
    return avail

  def _bad(self, offset: int, reason: str, *, fatal_for_file: bool) -> None:
    """Raises, or logs and counts a bad record (ending the file if needed)."""
    error = CorruptRecordError(self.path, offset, reason)
    if self._on_corrupt == 'raise':
      raise error
    logging.warning('Skipping %s', error)
    self.skipped += 1
    if fatal_for_file:
      self._eof = True

  def read(self) -> bytes | None:
    """Returns the next record, or None at the end of the file."""
    while not self._eof:
      avail = self._fill(_HEADER_SIZE)
      if avail == 0:
        self._eof = True
        break
      if avail < _HEADER_SIZE:
        self._bad(self.offset, f'truncated header: {avail} of '
                  f'{_HEADER_SIZE} bytes before end of file',
                  fatal_for_file=True)
        continue
      length, length_crc = _HEADER.unpack_from(self._buf, self._pos)
      if masked_crc32c(self._buf[self._pos:self._pos + 8]) != length_crc:
        self._bad(self.offset, 'length CRC mismatch', fatal_for_file=True)
        continue
      size = length + _FRAME_OVERHEAD
      avail = self._fill(size)
      if avail < size:
        self._bad(self.offset, f'truncated record: needs {size} bytes, '
                  f'only {avail} before end of file', fatal_for_file=True)
        continue
      start = self._pos + _HEADER_SIZE
      data = self._buf[start:start + length]
      (data_crc,) = _FOOTER.unpack_from(self._buf, start + length)
      self.record_offset = self.offset
      self._pos += size
      self.offset += size
      if masked_crc32c(data) != data_crc:
        self._bad(self.record_offset, 'data CRC mismatch',
                  fatal_for_file=False)
        continue
      return data
    return None

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    self._buf = b''
    self._pos = 0


def read_records(path: str, *, on_corrupt: str = 'raise'):
  """Yields every record of one file (checks CRCs)."""
  reader = RecordReader(path, on_corrupt=on_corrupt)
  try:
    while (record := reader.read()) is not None:
      yield record
  finally:
    reader.close()


def _check_on_corrupt(on_corrupt: str) -> None:
  if on_corrupt not in ON_CORRUPT_CHOICES:
    raise ValueError(f'on_corrupt must be one of {ON_CORRUPT_CHOICES}, got '
                     f'{on_corrupt!r}')


# ------------------------------------------------------------------------------
# Grain source.
# ------------------------------------------------------------------------------


class TFRecordIterDataset(grain.IterDataset):
  """Records of many TFRecord files: interleaved, file order shuffled per epoch.

  `cycle_length` files are read round-robin; when one ends, the next file of
  the epoch's order takes its slot, and the order of epoch e+1 follows that of
  epoch e without a gap. `num_epochs=None` repeats forever. `parse_fn`, if
  given, is applied to each record; an exception in it is reported like a
  corrupt record (file and offset named, or skipped and counted).

  Supports Grain's in-place slicing (used by `mp_prefetch` workers): a slice
  selects files, so each worker reads whole files.
  """

  def __init__(self, paths: Sequence[str], *, cycle_length: int = 1,
               shuffle_seed: int | None = None, num_epochs: int | None = 1,
               on_corrupt: str = 'raise',
               parse_fn: Callable[[bytes], Any] | None = None):
    super().__init__()
    _check_on_corrupt(on_corrupt)
    if cycle_length < 1:
      raise ValueError(f'cycle_length must be >= 1, got {cycle_length}')
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f'num_epochs must be >= 1 or None, got {num_epochs}')
    self._paths = list(paths)
    self._cycle_length = cycle_length
    self._shuffle_seed = shuffle_seed
    self._num_epochs = num_epochs
    self._on_corrupt = on_corrupt
    self._parse_fn = parse_fn

  @property
  def paths(self) -> list[str]:
    return list(self._paths)

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    del sequential_slice  # whole files are the unit either way
    self._paths = self._paths[sl]

  def __iter__(self) -> grain.DatasetIterator:
    return _TFRecordIterator(self._paths, self._cycle_length,
                             self._shuffle_seed, self._num_epochs,
                             self._on_corrupt, self._parse_fn)

  def __str__(self) -> str:
    return (f'TFRecordIterDataset({len(self._paths)} files, '
            f'cycle_length={self._cycle_length})')


class _TFRecordIterator(grain.DatasetIterator):
  """Iterator of `TFRecordIterDataset`; its state is a few integers per slot.

  State: `epoch` and `next_file` (position in that epoch's file order) say
  which file is opened next; `slots` holds `[file_index, byte_offset]` per
  interleave slot (`[-1, 0]` when idle); `cursor` is the slot read next;
  `skipped` counts bad records skipped so far. A fresh iterator has all slots
  idle, so its state does not depend on the file list (as `mp_prefetch` needs).
  """

  def __init__(self, paths, cycle_length, shuffle_seed, num_epochs, on_corrupt,
               parse_fn):
    super().__init__()
    self._paths = paths
    self._cycle = max(1, min(cycle_length, len(paths)))
    self._shuffle_seed = shuffle_seed
    self._num_epochs = num_epochs
    self._on_corrupt = on_corrupt
    self._parse_fn = parse_fn
    self._order_cache = (-1, None)
    self._readers: list[RecordReader | None] = [None] * self._cycle
    self.set_state({'epoch': 0, 'next_file': 0,
                    'slots': [[-1, 0]] * self._cycle, 'cursor': 0,
                    'skipped': 0})

  # -- state ------------------------------------------------------------------

  def get_state(self) -> dict[str, Any]:
    slots = []
    for (file_index, offset), reader in zip(self._slots, self._readers):
      slots.append([file_index, reader.offset if reader else offset])
    skipped = self._skipped + sum(r.skipped for r in self._readers if r)
    return {'epoch': self._epoch, 'next_file': self._next_file,
            'slots': slots, 'cursor': self._cursor, 'skipped': skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    if len(state['slots']) != self._cycle:
      raise ValueError(
          f'Checkpointed TFRecord state has {len(state["slots"])} interleave '
          f'slots, this pipeline has {self._cycle} (did cycle_length or the '
          'number of files change?)')
    self._close_readers()
    self._epoch = int(state['epoch'])
    self._next_file = int(state['next_file'])
    self._slots = [[int(f), int(o)] for f, o in state['slots']]
    self._cursor = int(state['cursor'])
    self._skipped = int(state['skipped'])
    self._idle_files = 0

  # -- reading ----------------------------------------------------------------

  def _order(self, epoch: int) -> np.ndarray:
    if self._order_cache[0] != epoch:
      n = len(self._paths)
      if self._shuffle_seed is None:
        order = np.arange(n)
      else:
        rng = np.random.default_rng([self._shuffle_seed, epoch])
        order = rng.permutation(n)
      self._order_cache = (epoch, order)
    return self._order_cache[1]

  def _take_next_file(self) -> int | None:
    if self._next_file >= len(self._paths):
      if self._num_epochs is not None and self._epoch + 1 >= self._num_epochs:
        return None
      self._epoch += 1
      self._next_file = 0
    file_index = int(self._order(self._epoch)[self._next_file])
    self._next_file += 1
    return file_index

  def _reader(self, slot: int) -> RecordReader:
    reader = self._readers[slot]
    if reader is None:
      file_index, offset = self._slots[slot]
      reader = RecordReader(self._paths[file_index], offset,
                            on_corrupt=self._on_corrupt)
      self._readers[slot] = reader
    return reader

  def _release(self, slot: int) -> None:
    reader = self._readers[slot]
    if reader is not None:
      self._skipped += reader.skipped
      reader.close()
    self._readers[slot] = None
    self._slots[slot] = [-1, 0]

  def __next__(self):
    self._assert_not_closed()
    if not self._paths:
      raise StopIteration
    while True:
      slot = self._cursor
      if self._slots[slot][0] < 0:
        file_index = self._take_next_file()
        if file_index is None:
          if all(f < 0 for f, _ in self._slots):
            raise StopIteration
          self._cursor = (slot + 1) % self._cycle
          continue
        self._slots[slot] = [file_index, 0]
      reader = self._reader(slot)
      record = reader.read()
      if record is None:
        self._release(slot)
        self._idle_files += 1
        # Every file ended without a record: nothing readable, stop rather
        # than spin forever when repeating.
        if self._idle_files > len(self._paths) + self._cycle:
          raise StopIteration
        continue
      self._idle_files = 0
      self._cursor = (slot + 1) % self._cycle
      if self._parse_fn is None:
        return record
      try:
        return self._parse_fn(record)
      except Exception as e:  # pylint: disable=broad-except
        error = CorruptRecordError(reader.path, reader.record_offset, str(e))
        if self._on_corrupt == 'raise':
          raise error from e
        logging.warning('Skipping %s', error)
        self._skipped += 1

  def _close_readers(self) -> None:
    for slot, reader in enumerate(self._readers):
      if reader is not None:
        reader.close()
      self._readers[slot] = None

  def close(self) -> None:
    self._close_readers()
    super().close()

  def __str__(self) -> str:
    return f'TFRecordIterator({len(self._paths)} files)'


def skipped_in(iterator: grain.DatasetIterator) -> int:
  """Bad records skipped so far by the `TFRecordIterDataset` iterators under
  `iterator` (in this process)."""
  total, stack = 0, [iterator]
  while stack:
    it = stack.pop()
    if isinstance(it, _TFRecordIterator):
      total += it.get_state()['skipped']
    stack.extend(getattr(it, '_parents', ()))
  return total


__all__ = [
    'CorruptRecordError', 'RecordReader', 'TFRecordIterDataset', 'frame',
    'masked_crc32c', 'open_file', 'read_records', 'write_records', 'is_local',
    'exists', 'makedirs', 'rename', 'remove', 'skipped_in',
]
