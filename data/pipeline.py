"""Training input pipeline: real and generated images mixed at an exact ratio.

  it = make_train_iterator(config, real_images, real_labels, real_ids)
  batch = next(it)   # this host's share of one global batch

Each batch is a dict of numpy arrays for this host, b = batch_size // P rows
(P = process count): `image` float32 in [0, 1] (b, H, W, C), `label` int32,
`is_generated` bool (for label smoothing) and `id` int64 (the original training
index for real images, the shard set's id for generated ones).

Exact mixing. Every GLOBAL batch of B = config.train.batch_size holds exactly
R = round(alpha * B) real examples (round half up) and B - R generated ones.
With q, rem = divmod(R, P), host h takes q + 1 real examples at step t when
(h - t) mod P < rem, else q, and fills the rest of its b with generated ones.
Exactly `rem` hosts take the extra example at every step, so the global count
is exact at every step; the extra rotates, so all hosts consume real data at the
same average rate and their real epochs stay aligned. B must divide by P.
alpha == 1, or generated.path == '', means generated data is never opened.

Real data (in RAM): the index range is permuted afresh every epoch, and host h
takes global positions h, h+P, h+2P, ..., so within each epoch the hosts'
slices are disjoint and cover the real set. The positions step t consumes are a
closed-form function of t, vectorised per batch, so the real stream has no state
besides the step counter.

Generated data: `config.generated.path` is the shard set's manifest (local or
gs://). Shards are split across hosts by file (host h reads files h::P), read
by `tfrecord.TFRecordIterDataset` (`cycle_length` files interleaved, file
order reshuffled every epoch, repeated forever, CRCs checked) and shuffled in
consecutive windows of `shuffle_window` records (`WindowShuffleIterDataset`).

Augmentation (pad + random crop + optional flip, `config.dataset.pad/flip`) is
applied to the whole uint8 batch, both parts, with an RNG seeded from
(config.seed, host, step); real and generated rows are then shuffled together.

Loader: `config.loader.worker_count` > 0 runs Grain `mp_prefetch` workers; each
produces whole batches for steps w, w+W, ... (its generated files are a further
file slice, so generated order depends on the worker count; real order and all
counts do not). `config.loader.prefetch` > 0 adds a prefetch thread in this
process (after the workers, if any).

Checkpointing: the iterator state (step, file positions, window-shuffle
position, skip count) is JSON and goes through Grain's Orbax handler:

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=save_args(it)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=restore_args(it)))

`skipped_records(it)` is the number of corrupt generated records skipped so far
(with `config.generated.on_corrupt = 'skip'`), for logging to TensorBoard.
"""
from __future__ import annotations

import atexit
import copy
import dataclasses
import itertools
import math
from typing import Any
import weakref

from absl import flags
from absl import logging
import grain
import numpy as np

from data import augment
from data import shards
from data import tfrecord


# ------------------------------------------------------------------------------
# Batch plan: how many real examples each host takes at each step.
# ------------------------------------------------------------------------------


def real_count(batch_size: int, alpha: float) -> int:
  """round(alpha * batch_size), halves rounded up."""
  return int(math.floor(alpha * batch_size + 0.5))


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Real/generated counts per host and step; see module docstring."""
  global_batch: int
  global_real: int
  process_index: int
  process_count: int

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise ValueError(
          f'global batch size {self.global_batch} is not divisible by the '
          f'process count {self.process_count}')
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f'process_index {self.process_index} outside '
                       f'[0, {self.process_count})')
    if not 0 <= self.global_real <= self.global_batch:
      raise ValueError(f'global_real {self.global_real} outside '
                       f'[0, {self.global_batch}]')

  @property
  def host_batch(self) -> int:
    return self.global_batch // self.process_count

  def _extra(self, step: int) -> bool:
    rem = self.global_real % self.process_count
    return (self.process_index - step) % self.process_count < rem

  def real_at(self, step: int) -> int:
    """Real examples this host takes at `step`."""
    return self.global_real // self.process_count + self._extra(step)

  def real_before(self, step: int) -> int:
    """Real examples this host took in steps [0, step)."""
    p, rem = self.process_count, self.global_real % self.process_count
    cycles, left = divmod(step, p)
    extra = cycles * rem + sum(self._extra(u) for u in range(left))
    return self.global_real // p * step + extra


# ------------------------------------------------------------------------------
# Window shuffle.
# ------------------------------------------------------------------------------


class WindowShuffleIterDataset(grain.IterDataset):
  """Shuffles consecutive windows of `window_size` elements.

  Same semantics as Grain's `WindowShuffleIterDataset` (each window is
  permuted with a seed derived from `seed` and the window index; a checkpoint
  stores where the window started and replays it), but permutes with numpy:
  Grain's per-element `index_shuffle` costs ~6 us per element for a 10K window
  and grows to ~40 us at 1K and milliseconds below 100, which would dominate
  the reader.
  """

  def __init__(self, parent: grain.IterDataset, *, window_size: int,
               seed: int):
    super().__init__(parent)
    if window_size < 1:
      raise ValueError(f'window_size must be >= 1, got {window_size}')
    self._window_size = window_size
    self._seed = seed

  def __iter__(self) -> grain.DatasetIterator:
    return _WindowShuffleIterator(iter(self._parent), self._window_size,
                                  self._seed)

  def __str__(self) -> str:
    return f'WindowShuffleIterDataset(window_size={self._window_size})'


class _WindowShuffleIterator(grain.DatasetIterator):
  """State: parent state at the window's start, window index, position."""

  def __init__(self, parent, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size = window_size
    self._seed = seed
    self._index = 0
    self._window: list[Any] = []
    self._order = np.zeros(0, np.int64)
    self._pos = 0
    self._start = copy.deepcopy(parent.get_state())

  def _fill(self) -> None:
    self._start = copy.deepcopy(self._parent.get_state())
    self._window = list(itertools.islice(self._parent, self._window_size))
    rng = np.random.default_rng([self._seed, self._index])
    self._order = rng.permutation(len(self._window))
    self._pos = 0

  def __next__(self):
    self._assert_not_closed()
    if self._pos >= len(self._window):
      if self._window:
        self._index += 1
      self._fill()
      if not self._window:
        raise StopIteration
    slot = self._order[self._pos]
    element, self._window[slot] = self._window[slot], None  # free as we go
    self._pos += 1
    return element

  def get_state(self) -> dict[str, Any]:
    if self._window and self._pos >= len(self._window):
      # Window used up: the next one starts at the parent's current state.
      return {'parent_window_start_state': self._parent.get_state(),
              'window_index': self._index + 1, 'pos_in_window': 0}
    return {'parent_window_start_state': copy.deepcopy(self._start),
            'window_index': self._index, 'pos_in_window': self._pos}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent_window_start_state'])
    self._index = int(state['window_index'])
    self._window, self._pos = [], 0
    self._start = copy.deepcopy(state['parent_window_start_state'])
    if state['pos_in_window']:
      self._fill()
      for slot in self._order[:state['pos_in_window']]:
        self._window[slot] = None
      self._pos = int(state['pos_in_window'])

  def __str__(self) -> str:
    return f'WindowShuffleIterator(window={self._index})'


# ------------------------------------------------------------------------------
# The mixed, augmented batch dataset.
# ------------------------------------------------------------------------------


class _RealOrder:
  """Host position k -> index into the real arrays.

  Global position j = host + hosts * k lies in epoch j // n at place j % n of
  that epoch's permutation. Vectorised over a batch; the last two epochs'
  permutations are cached (a batch rarely spans more).
  """

  def __init__(self, n: int, seed: int, host: int, hosts: int):
    self.n, self.seed, self.host, self.hosts = n, seed, host, hosts
    self._cache: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        self._cache.pop(min(self._cache))
      rng = np.random.default_rng([self.seed, epoch])
      self._cache[epoch] = rng.permutation(self.n)
    return self._cache[epoch]

  def indices(self, first: int, count: int) -> np.ndarray:
    j = self.host + self.hosts * np.arange(first, first + count, dtype=np.int64)
    epochs, places = np.divmod(j, self.n)
    out = np.empty(count, np.int64)
    for epoch in np.unique(epochs):
      mask = epochs == epoch
      out[mask] = self._permutation(int(epoch))[places[mask]]
    return out


@dataclasses.dataclass
class _Real:
  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray
  order: _RealOrder


def _seed(*parts: int) -> int:
  """A 31-bit seed derived from `parts` (headroom for seed + counter)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


class MixedBatchIterDataset(grain.IterDataset):
  """Per-host batches of real and generated examples; see module docstring.

  `generated` yields (image bytes, label, id) tuples; `records` is the
  `TFRecordIterDataset` at its root, sliced by file when Grain slices this
  dataset for its workers. `float_images=False` leaves images uint8.
  """

  def __init__(self, *, plan: BatchPlan, image_shape, real: _Real | None,
               generated: grain.IterDataset | None,
               records: tfrecord.TFRecordIterDataset | None,
               pad: int, flip: bool, seed: int, float_images: bool = True):
    super().__init__([generated] if generated is not None else [])
    self.float_images = float_images
    self.plan = plan
    self.image_shape = tuple(image_shape)
    self.real = real
    self.generated = generated
    self.records = records
    self.pad = pad
    self.flip = flip
    self.seed = seed
    self.step_start, self.step_stride = 0, 1

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Keeps steps start, start+stride, ... (Grain worker slicing)."""
    del sequential_slice
    if sl.stop is not None:
      raise ValueError(f'only open-ended slices are supported, got {sl}')
    start, stride = sl.start or 0, sl.step or 1
    self.step_start += self.step_stride * start
    self.step_stride *= stride
    if self.records is not None:
      self.records.set_slice(sl)
      if not self.records.paths:
        raise ValueError('a Grain worker got no generated shard files; use '
                         'fewer workers or more shards')

  def __iter__(self) -> grain.DatasetIterator:
    return _MixedBatchIterator(self)

  def __str__(self) -> str:
    return (f'MixedBatchIterDataset(host_batch={self.plan.host_batch}, '
            f'global_real={self.plan.global_real})')


def _to_float(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """uint8 images -> float32 in [0, 1]."""
  return dict(batch, image=np.divide(batch['image'], np.float32(255),
                                     dtype=np.float32))


class _MixedBatchIterator(grain.DatasetIterator):
  """State: {'step': batches produced, 'generated': generated-stream state,
  'skipped_records': corrupt generated records skipped so far}."""

  def __init__(self, ds: MixedBatchIterDataset):
    self._gen = iter(ds.generated) if ds.generated is not None else None
    super().__init__([self._gen] if self._gen is not None else [])
    self._ds = ds
    self._count = 0

  def get_state(self) -> dict[str, Any]:
    if self._gen is None:
      return {'step': self._count, 'generated': None, 'skipped_records': 0}
    return {'step': self._count, 'generated': self._gen.get_state(),
            'skipped_records': tfrecord.skipped_in(self._gen)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._count = int(state['step'])
    if self._gen is not None:
      self._gen.set_state(state['generated'])

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    ds = self._ds
    step = ds.step_start + ds.step_stride * self._count
    b, num_real = ds.plan.host_batch, ds.plan.real_at(step)
    images = np.empty((b, *ds.image_shape), np.uint8)
    labels = np.empty(b, np.int32)
    ids = np.empty(b, np.int64)
    if num_real:
      self._take_real(step, num_real, images, labels, ids)
    if b > num_real:
      self._take_generated(num_real, images, labels, ids)
    is_generated = np.arange(b) >= num_real
    rng = np.random.default_rng([ds.seed, 3, ds.plan.process_index, step])
    order = rng.permutation(b)   # mix real and generated rows
    images = augment.pad_crop_flip(images[order], rng, pad=ds.pad,
                                   flip=ds.flip)
    self._count += 1
    batch = {'image': images, 'label': labels[order],
             'is_generated': is_generated[order], 'id': ids[order]}
    return _to_float(batch) if ds.float_images else batch

  def _take_real(self, step, n, images, labels, ids) -> None:
    real = self._ds.real
    first = self._ds.plan.real_before(step)
    index = real.order.indices(first, n)
    np.take(real.images, index, axis=0, out=images[:n])
    labels[:n] = real.labels[index]
    ids[:n] = real.ids[index]

  def _take_generated(self, start, images, labels, ids) -> None:
    n = len(images) - start
    pixels, gen = [], self._gen
    for i in range(start, len(images)):
      try:
        image, labels[i], ids[i] = next(gen)
      except StopIteration:
        raise RuntimeError('the generated-data stream ended: no readable '
                           'records left in the shard files') from None
      pixels.append(image)
    images[start:] = np.frombuffer(b''.join(pixels), np.uint8).reshape(
        n, *self._ds.image_shape)

  def __str__(self) -> str:
    return f'MixedBatchIterator(step={self._count})'


# ------------------------------------------------------------------------------
# Construction from a config.
# ------------------------------------------------------------------------------


def _real_part(images, labels, ids, plan: BatchPlan, seed: int) -> _Real:
  images = np.asarray(images)
  labels, ids = np.asarray(labels), np.asarray(ids)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'real_images must be uint8 NHWC, got {images.dtype} '
                     f'{images.shape}')
  if not len(images):
    raise ValueError('alpha > 0 but there are no real images')
  if labels.shape != (len(images),) or ids.shape != (len(images),):
    raise ValueError(f'real_labels {labels.shape} and real_ids {ids.shape} '
                     f'must both have shape ({len(images)},)')
  order = _RealOrder(len(images), _seed(seed, 0), plan.process_index,
                     plan.process_count)
  return _Real(images, labels.astype(np.int32), ids.astype(np.int64), order)


def _generated_part(config, plan: BatchPlan, image_shape, num_classes,
                    workers: int):
  """Opens the manifest; returns (window-shuffled dataset, record dataset)."""
  path = config.generated.path
  manifest = shards.load_manifest(path)
  shards.validate_manifest(manifest, path, image_shape=image_shape,
                           num_classes=num_classes)
  files = sorted(shards.shard_paths(path, manifest))
  needed = plan.process_count * max(1, workers)
  if len(files) < needed:
    raise ValueError(
        f'{path}: {len(files)} shard files, but {plan.process_count} hosts x '
        f'{max(1, workers)} workers need at least {needed} (each reads whole '
        'files); re-shard the set with more files')
  h = plan.process_index
  records = tfrecord.TFRecordIterDataset(
      files[h::plan.process_count],
      cycle_length=config.generated.cycle_length,
      shuffle_seed=_seed(config.seed, 1, h), num_epochs=None,
      on_corrupt=config.generated.on_corrupt,
      parse_fn=shards.ExampleParser(manifest['image_shape'],
                                    manifest['num_classes']))
  window = config.generated.shuffle_window
  if window > 1:
    return WindowShuffleIterDataset(
        records, window_size=window, seed=_seed(config.seed, 2, h)), records
  return records, records


def make_train_dataset(config, real_images, real_labels, real_ids, *,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       num_classes: int | None = None) -> grain.IterDataset:
  """The Grain dataset behind `make_train_iterator` (same arguments)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
  alpha = float(config.generated.alpha)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'config.generated.alpha must lie in [0, 1], got {alpha}')
  batch_size = config.train.batch_size
  global_real = real_count(batch_size, alpha)
  if not config.generated.path and global_real < batch_size:
    logging.warning('config.generated.path is empty: every batch is real '
                    '(alpha=%s ignored)', alpha)
    global_real = batch_size
  plan = BatchPlan(batch_size, global_real, process_index, process_count)
  real_images = np.asarray(real_images)
  image_shape = real_images.shape[1:] if real_images.size else None
  if num_classes is None and np.size(real_labels):
    num_classes = int(np.max(real_labels)) + 1
  real = (_real_part(real_images, real_labels, real_ids, plan, config.seed)
          if global_real else None)
  generated = records = None
  workers = config.loader.worker_count
  if global_real < batch_size:
    generated, records = _generated_part(config, plan, image_shape,
                                         num_classes, workers)
    image_shape = image_shape or tuple(shards.load_manifest(
        config.generated.path)['image_shape'])
  ds = MixedBatchIterDataset(
      plan=plan, image_shape=image_shape, real=real, generated=generated,
      records=records, pad=config.dataset.pad, flip=config.dataset.flip,
      seed=config.seed, float_images=workers == 0)
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags; outside an absl app (tests,
      # notebooks) take their defaults instead of failing in the worker.
      flags.FLAGS.mark_as_parsed()
    # Workers hand over uint8 images: moving a batch through shared memory
    # costs ~14 ms of CPU as float32 and a quarter of that as uint8, more
    # than the conversion, which therefore happens here.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers,
        per_worker_buffer_size=max(1, config.loader.prefetch))).map(_to_float)
  if config.loader.prefetch > 0:
    return grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=config.loader.prefetch)
  return ds


def make_train_iterator(config, real_images, real_labels, real_ids, *,
                        process_index: int | None = None,
                        process_count: int | None = None,
                        num_classes: int | None = None
                        ) -> grain.DatasetIterator:
  """Returns a grain DatasetIterator (has get_state()/set_state()) of per-host
  batches; see the module docstring. `num_classes` defaults to the largest real
  label + 1 and must match the shard manifest."""
  iterator = iter(make_train_dataset(
      config, real_images, real_labels, real_ids, process_index=process_index,
      process_count=process_count, num_classes=num_classes))
  _close_at_exit(iterator)
  return iterator


def _close_at_exit(iterator: grain.DatasetIterator) -> None:
  # A prefetch thread still running native code when the interpreter shuts
  # down aborts the process (exit code 134); stop it while Python is intact.
  ref = weakref.ref(iterator)

  def close():
    if (it := ref()) is not None:
      it.close()
      # Some Grain iterators' close() is not idempotent and fails when called
      # again from __del__ during module teardown; all are closed already.
      stack = [it]
      while stack:
        node = stack.pop()
        node.close = lambda: None
        stack.extend(getattr(node, '_parents', ()))
        stack.extend(n for n in getattr(node, '_iterators_in_use', ()) if n)

  atexit.register(close)


# ------------------------------------------------------------------------------
# Checkpointing and monitoring.
# ------------------------------------------------------------------------------


def save_args(iterator: grain.DatasetIterator):
  """Orbax args that save the iterator state (an `ocp.args.Composite` item)."""
  return grain.checkpoint.CheckpointSave(iterator)


def restore_args(iterator: grain.DatasetIterator):
  """Orbax args that restore the saved state into `iterator` in place."""
  return grain.checkpoint.CheckpointRestore(iterator)


def skipped_records(iterator: grain.DatasetIterator) -> int:
  """Corrupt generated records skipped so far (all workers of this host)."""
  total, stack = 0, [iterator.get_state()]
  while stack:
    node = stack.pop()
    if isinstance(node, dict):
      for key, value in node.items():
        if key == 'skipped_records' and isinstance(value, int):
          total += value
        else:
          stack.append(value)
    elif isinstance(node, list):
      stack.extend(node)
  return total
