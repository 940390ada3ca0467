"""TFRecord files: framing with CRC checks, a reader, local or remote I/O.

A TFRecord file is a sequence of records, each framed (little endian) as

  uint64 length | uint32 masked_crc(length) | data | uint32 masked_crc(data)

where masked_crc is CRC32C rotated right by 15 bits plus a constant (as in
TensorFlow). Grain's own TFRecord reader skips both CRCs and opens files with
`open`, so this module reads the framing itself and checks every CRC:

  write_records(path, [b'a', b'b'])           # or frame(data) per record
  for record in read_records(path):           # bytes
    ...
  reader = RecordReader(path, offset)         # resumable: reader.offset
  reader.index                                # records framed before reader.offset

On a bad record the reader raises `CorruptRecordError`, whose message names the
file and the byte offset of the record. With `on_corrupt='skip'` it logs the
same message, counts the record (`reader.skipped`) and goes on: a bad data CRC
skips one record; a bad length CRC or a truncated tail makes the rest of that
file unreadable (the framing can no longer be trusted) and counts as one.
`record_dataset.TFRecordIterDataset` builds the checkpointable Grain source of
many files on this reader.

Paths with a scheme (`gs://`, `ram://`, ...) go through `tf.io.gfile`; plain
local paths use Python's buffered I/O. TensorFlow is imported only when a
non-local path is opened: importing it costs ~0.7 GB of RSS and seconds of start
time in every worker process, which local pipelines should not pay.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

from absl import logging
import google_crc32c

from data import files

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
  files.write_atomic(path, b''.join(frame(r) for r in records))


class RecordReader:
  """Reads records of one TFRecord file sequentially from a byte offset.

  Reads in large chunks, since per-call overhead (and, on GCS, per-request
  latency) dominates for ~3 KB records. `offset` is always the byte offset of
  the next record, which is what a checkpoint needs; `index` counts the records
  framed before it (give both to resume), so `index - 1` is the position in the
  file of the record last returned. A record with a bad data CRC still counts.
  """

  def __init__(self, path: str, offset: int = 0, *, on_corrupt: str = 'raise',
               chunk_size: int = _READ_CHUNK, index: int = 0):
    check_on_corrupt(on_corrupt)
    self.path = path
    self.index = index
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
    self._file = files.open_file(self.path, 'rb')
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
      self.index += 1
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


def check_on_corrupt(on_corrupt: str) -> None:
  """Rejects an `on_corrupt` policy other than 'raise' or 'skip'."""
  if on_corrupt not in ON_CORRUPT_CHOICES:
    raise ValueError(f'on_corrupt must be one of {ON_CORRUPT_CHOICES}, got '
                     f'{on_corrupt!r}')


__all__ = [
    'CorruptRecordError', 'ON_CORRUPT_CHOICES', 'RecordReader', 'check_on_corrupt', 'frame',
    'masked_crc32c', 'read_records', 'write_records',
]
