"""A checkpointable Grain source over many TFRecord files, CRCs checked.

  ds = TFRecordIterDataset(paths, cycle_length=16, shuffle_seed=0,
                           num_epochs=None, on_corrupt='raise')
  it = iter(ds)          # a grain DatasetIterator
  record = next(it)      # bytes (or parse_fn(bytes))
  state = it.get_state() # JSON-able: epoch, file order position, offsets

Records come from `tfrecord.RecordReader`, so a bad record raises
`tfrecord.CorruptRecordError` naming the file and byte offset, or with
`on_corrupt='skip'` is logged and counted in the iterator state
(`state['skipped']`; `skipped_in(it)` sums it over a dataset chain). The state
is a few integers per interleave slot, so checkpoints stay small however large
the files are.

With `counts` ({path: records}, from a manifest), a file that ends after
another number of records than its count (a shard cut at a record boundary,
or a manifest of another set) is reported like a corrupt record: an error
naming the file and both numbers, or with `on_corrupt='skip'` a warning and
the missing records counted as skipped.

With `with_position=True`, `parse_fn(record, path, index)` also gets the
record's file and its position in that file (a foreign set, such as tfds's
prepared files, numbers its examples by position); a `parse_fn` that returns
None drops the record (a filter, not a corrupt record).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging
import grain
import numpy as np

from data.records import tfrecord


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
               parse_fn: Callable[..., Any] | None = None,
               with_position: bool = False, counts: Mapping[str, int] | None = None):
    super().__init__()
    tfrecord.check_on_corrupt(on_corrupt)
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
    self._with_position = with_position
    self._counts = dict(counts or {})

  @property
  def paths(self) -> list[str]:
    return list(self._paths)

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    del sequential_slice  # whole files are the unit either way
    self._paths = self._paths[sl]

  def __iter__(self) -> grain.DatasetIterator:
    return _TFRecordIterator(self._paths, self._cycle_length,
                             self._shuffle_seed, self._num_epochs,
                             self._on_corrupt, self._parse_fn,
                             self._with_position, self._counts)

  def __str__(self) -> str:
    return (f'TFRecordIterDataset({len(self._paths)} files, '
            f'cycle_length={self._cycle_length})')


class _TFRecordIterator(grain.DatasetIterator):
  """Iterator of `TFRecordIterDataset`; its state is a few integers per slot.

  State: `epoch` and `next_file` (position in that epoch's file order) say
  which file is opened next; `slots` holds `[file_index, byte_offset,
  record_index]` per interleave slot (`[-1, 0, 0]` when idle; states saved
  before record indices existed have pairs, and resume with indices from 0);
  `cursor` is the slot read next;
  `skipped` counts bad records skipped so far. A fresh iterator has all slots
  idle, so its state does not depend on the file list (as `mp_prefetch` needs).
  """

  def __init__(self, paths, cycle_length, shuffle_seed, num_epochs, on_corrupt,
               parse_fn, with_position=False, counts=None):
    super().__init__()
    self._with_position = with_position
    self._counts = counts or {}
    self._paths = paths
    self._cycle = max(1, min(cycle_length, len(paths)))
    self._shuffle_seed = shuffle_seed
    self._num_epochs = num_epochs
    self._on_corrupt = on_corrupt
    self._parse_fn = parse_fn
    self._order_cache = (-1, None)
    self._readers: list[tfrecord.RecordReader | None] = [None] * self._cycle
    self.set_state({'epoch': 0, 'next_file': 0,
                    'slots': [[-1, 0, 0]] * self._cycle, 'cursor': 0,
                    'skipped': 0})

  # -- state ------------------------------------------------------------------

  def get_state(self) -> dict[str, Any]:
    slots = []
    for (file_index, offset, index), reader in zip(self._slots, self._readers):
      slots.append([file_index, reader.offset, reader.index] if reader
                   else [file_index, offset, index])
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
    self._slots = [[int(f), int(o), int(rest[0]) if rest else 0]
                   for f, o, *rest in state['slots']]
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

  def _reader(self, slot: int) -> tfrecord.RecordReader:
    reader = self._readers[slot]
    if reader is None:
      file_index, offset, index = self._slots[slot]
      reader = tfrecord.RecordReader(self._paths[file_index], offset,
                                     on_corrupt=self._on_corrupt, index=index)
      self._readers[slot] = reader
    return reader

  def _release(self, slot: int) -> None:
    reader = self._readers[slot]
    if reader is not None:
      self._skipped += reader.skipped
      reader.close()
    self._readers[slot] = None
    self._slots[slot] = [-1, 0, 0]

  def __next__(self):
    self._assert_not_closed()
    if not self._paths:
      raise StopIteration
    while True:
      slot = self._cursor
      if self._slots[slot][0] < 0:
        file_index = self._take_next_file()
        if file_index is None:
          if all(f < 0 for f, _, _ in self._slots):
            raise StopIteration
          self._cursor = (slot + 1) % self._cycle
          continue
        self._slots[slot] = [file_index, 0, 0]
      reader = self._reader(slot)
      record = reader.read()
      if record is None:
        self._check_count(reader)
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
        if self._with_position:
          parsed = self._parse_fn(record, reader.path, reader.index - 1)
        else:
          parsed = self._parse_fn(record)
      except Exception as e:  # pylint: disable=broad-except
        error = tfrecord.CorruptRecordError(reader.path, reader.record_offset,
                                            str(e))
        if self._on_corrupt == 'raise':
          raise error from e
        logging.warning('Skipping %s', error)
        self._skipped += 1
        continue
      if parsed is not None:
        return parsed

  def _check_count(self, reader: tfrecord.RecordReader) -> None:
    """A file read to its end must hold the records its manifest counts."""
    want = self._counts.get(reader.path)
    if want is None or reader.index == want:
      return
    error = tfrecord.CorruptRecordError(
        reader.path, reader.offset, f'the file ends after {reader.index} records, its manifest '
        f'counts {want} (cut short, or a manifest of another set)')
    if self._on_corrupt == 'raise':
      raise error
    logging.warning('Skipping %s', error)
    self._skipped += max(0, want - reader.index)

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


__all__ = ['TFRecordIterDataset', 'skipped_in']
