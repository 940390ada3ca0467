"""Batches that mix real and generated images at an exact ratio, per host.

Every GLOBAL batch of B examples holds exactly R = real_count(B, alpha) =
round(alpha * B) real examples (round half up) and B - R generated ones. With
P hosts and q, rem = divmod(R, P), host h takes q + 1 real examples at step t
when (h - t) mod P < rem, else q, and fills the rest of its b = B // P rows with
generated ones (`BatchPlan`). Exactly `rem` hosts take the extra example at
every step, so the global count is exact at every step; the extra rotates, so
all hosts consume real data at the same average rate and their real epochs stay
aligned. B must divide by P.

Real data (in RAM): the index range is permuted afresh every epoch, and host h
takes global positions h, h+P, h+2P, ..., so within each epoch the hosts'
slices are disjoint and cover the real set. The positions step t consumes are a
closed-form function of t, vectorised per batch, so the real stream has no state
besides the step counter.

Real data (streamed, a `Stream` of TFRecord files like the generated data):
host h (and, within it, each loader worker) reads its own slice of the files,
interleaved, in a file order reshuffled every epoch, through a window shuffle;
each step takes exactly the count above from it, and its reader position is part
of the iterator state. Hosts' real epochs are then aligned only as far as their
files hold the same number of images.

An alpha schedule (`generated.alpha_schedule`, converted to steps by
`alpha_schedule.phases`) makes R a function of the step: R(t) is the count of
the phase that holds step t (`BatchPlan.changes`), and all of the above holds
with R(t) in place of R, the host split included (q, rem from R(t) and P; the
extra keeps rotating with t), so the count is exact at every step and depends
on t alone. The real position of a host is the number of distinct real images
it took before step t, summed phase by phase (`unique_before`): a change of
alpha only changes how fast the epoch's permutation is walked, from where the
last phase left it, no image skipped or seen twice, and a phase without real
rows leaves it where it was (Bartoldson et al.'s run, generated-only for 6,000
epochs, takes position 0 of epoch 0 at its first real row). A streamed real
split, and the generated stream, advance by the rows taken, so the same holds
for their readers: a phase that takes no rows of a side does not read it (its
files open at the first read), and a side no phase uses is not opened. The
iterator state needs nothing more than before: the step fixes every count and
the in-RAM real position, and the readers' positions are in their states. The
schedule itself is part of the run's config, which a restart must repeat.

Real repeats (`real_repeats` = r, default 1): DeepMind's reference code
(adversarial_robustness/jax: experiment.py's `emulated_workers` = 4, divided by
the host count, passed as `repeat` to datasets.py's `_repeat_batch`, which
batches B_real / r distinct images, `tf.repeat`s each r times and only then maps
the random crop + flip) shows every real image r times per batch, each copy
augmented independently, and never repeats the extra (generated) data. (On 4
hosts the repeat is 1, but every host shuffles the real set with the same seed,
`shuffle(50_000, seed=0)`, and the extra data with `seed=jax.host_id()`, so the
published 4-host runs also saw each real image 4 times per batch.) Here the
plan then holds U = R / r distinct real images per global batch, split across
hosts as above; each host repeats its share r times (the r copies stay on one
host), so R = r * round(alpha * B / r) (`real_count`). The reference rounds per
device instead (round(alpha * B_device / r) * r: 320 real of 1024 at alpha 0.3,
r 4, 8 devices; 308 here) and keeps the copies adjacent on one device, where its
BatchNorm statistics are computed; our rows are shuffled (see below). The real
epoch advances U, not R, images per step.

Stored images (raw, PNG, JPEG) are decoded here, in the loader worker.
Augmentation, with an RNG seeded from (seed, host, step), after real and
generated rows are shuffled together: `crop='pad'` pads, randomly crops and
optionally flips the whole uint8 batch (every image has the dataset's shape);
`crop='inception'` crops each image, whatever its size, Inception-style to the
dataset's shape (`crops.random_resized_crop`), then flips. `MixedBatchIterDataset` yields dicts
of numpy arrays: `image` (b, H, W, C) uint8, `label` int32, `is_generated`
bool (for label smoothing), `id` int64 (the original training index for real
images, the shard set's id for generated ones) and `SKIPPED_RECORDS`: int64
(stream, count), the corrupt records this stream (a loader worker, or 0
without workers) has skipped so far in its generated and streamed real files;
the pipeline takes it off the batch and sums it over the streams, since workers
run in processes of their own.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import grain
import numpy as np

from data import image_codec
from data.input import augment
from data.input import crops
from data.records import example_format
from data.records import record_dataset

SKIPPED_RECORDS = 'skipped_records'   # the batch field of the skip count


def real_count(batch_size: int, alpha: float, repeats: int = 1) -> int:
  """Real rows per global batch: repeats * round(alpha * batch_size / repeats),
  halves rounded up, at most repeats * (batch_size // repeats)."""
  unique = int(math.floor(alpha * batch_size / repeats + 0.5))
  return repeats * min(unique, batch_size // repeats)


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Real/generated counts per host and step; see module docstring.

  `global_real` counts the real rows of a global batch from step 0, copies included;
  `changes` holds (first step, global real rows) of each later phase of an alpha schedule, steps
  increasing. Every count must divide by `real_repeats`; U = count // real_repeats distinct
  images are split across hosts.
  """
  global_batch: int
  global_real: int
  process_index: int
  process_count: int
  real_repeats: int = 1
  changes: tuple[tuple[int, int], ...] = ()

  def __post_init__(self):
    if self.global_batch % self.process_count:
      raise ValueError(
          f'global batch size {self.global_batch} is not divisible by the '
          f'process count {self.process_count}')
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f'process_index {self.process_index} outside '
                       f'[0, {self.process_count})')
    starts = [start for start, _ in self.phases]
    if any(b <= a for a, b in zip(starts, starts[1:])):
      raise ValueError(f'the phases of the real count must start at increasing steps, got '
                       f'{starts}')
    for _, real in self.phases:
      self._check_real(real)

  def _check_real(self, real: int) -> None:
    if not 0 <= real <= self.global_batch:
      raise ValueError(f'global_real {real} outside [0, {self.global_batch}]')
    r = self.real_repeats
    if r < 1 or real % r:
      raise ValueError(f'dataset.real_repeats = {r}: must be >= 1 and divide '
                       f'the {real} real rows of a batch')
    most = -(-(real // r) // self.process_count) * r
    if most > self.host_batch:
      raise ValueError(
          f'dataset.real_repeats = {r}: a host would need {most} real rows '
          f'but its batch has {self.host_batch}; use a real_repeats that '
          f'divides the per-host batch ({self.host_batch})')

  @property
  def phases(self) -> tuple[tuple[int, int], ...]:
    """((first step, global real rows), ...), the first at step 0."""
    return ((0, self.global_real),) + tuple(tuple(c) for c in self.changes)

  @property
  def uses_real(self) -> bool:
    return any(real for _, real in self.phases)

  @property
  def uses_generated(self) -> bool:
    return any(real < self.global_batch for _, real in self.phases)

  @property
  def host_batch(self) -> int:
    return self.global_batch // self.process_count

  def global_real_at(self, step: int) -> int:
    """Real rows of the global batch of `step` (its phase's count)."""
    return [real for start, real in self.phases if start <= step][-1]

  def _extra(self, step: int, unique: int) -> bool:
    """Whether this host takes one of the unique % P leftover images at `step`."""
    rem = unique % self.process_count
    return (self.process_index - step) % self.process_count < rem

  def _extras_before(self, step: int, unique: int) -> int:
    """Leftover images this host takes in steps [0, step) at `unique` per batch (the pattern
    repeats every P steps)."""
    p, rem = self.process_count, unique % self.process_count
    cycles, left = divmod(step, p)
    return cycles * rem + sum(self._extra(u, unique) for u in range(left))

  def unique_at(self, step: int) -> int:
    """Distinct real images this host takes at `step`."""
    unique = self.global_real_at(step) // self.real_repeats
    return unique // self.process_count + self._extra(step, unique)

  def unique_before(self, step: int) -> int:
    """Distinct real images this host took in steps [0, step), summed over the phases."""
    total = 0
    phases = self.phases
    for (start, real), (end, _) in zip(phases, phases[1:] + ((step, 0),)):
      end = min(end, step)
      if end <= start:
        break
      unique = real // self.real_repeats
      total += (unique // self.process_count * (end - start)
                + self._extras_before(end, unique) - self._extras_before(start, unique))
    return total

  def real_at(self, step: int) -> int:
    """Real rows (copies included) this host has at `step`."""
    return self.real_repeats * self.unique_at(step)

  def real_before(self, step: int) -> int:
    """Real rows this host had in steps [0, step)."""
    return self.real_repeats * self.unique_before(step)


# ------------------------------------------------------------------------------
# Real data.
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
class RealData:
  """The real training set in RAM and this host's order over it."""
  images: np.ndarray
  labels: np.ndarray
  ids: np.ndarray
  order: _RealOrder


def real_data(images, labels, ids, plan: BatchPlan, seed: int) -> RealData:
  """Checks the real arrays; `seed` fixes this host's per-epoch permutations."""
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
  order = _RealOrder(len(images), seed, plan.process_index, plan.process_count)
  return RealData(images, labels.astype(np.int32), ids.astype(np.int64), order)


# ------------------------------------------------------------------------------
# The mixed, augmented batch dataset.
# ------------------------------------------------------------------------------


@dataclasses.dataclass
class Stream:
  """A shuffled stream of (image bytes, label, id) from TFRecord files.

  `dataset` yields the tuples; `records` is the `TFRecordIterDataset` at its
  root, sliced by file when Grain slices the batches for its workers;
  `encoding` and `shape` are the stored images' (H = W = 0: sizes vary).
  """
  dataset: grain.IterDataset
  records: record_dataset.TFRecordIterDataset
  encoding: str
  shape: tuple
  what: str    # 'generated' or 'real', for messages


class MixedBatchIterDataset(grain.IterDataset):
  """Per-host batches of real and generated examples; see module docstring.

  `real` is the real set in RAM (`RealData`) or streamed (`Stream`);
  `generated` a `Stream`. `crop` 'pad' assembles images of `image_shape` and
  pads-and-crops them; 'inception' crops every row (of any size) to
  `image_shape` (`crops.random_resized_crop`), and flips.
  """

  def __init__(self, *, plan: BatchPlan, image_shape,
               real: RealData | Stream | None, generated: Stream | None,
               pad: int, flip: bool, seed: int, crop: str = 'pad'):
    self.streams = [x for x in (generated, real) if isinstance(x, Stream)]
    super().__init__([x.dataset for x in self.streams])
    self.plan = plan
    self.image_shape = tuple(image_shape)
    self.real = real
    self.generated = generated
    self.pad = pad
    self.flip = flip
    self.seed = seed
    self.crop = crop
    self.step_start, self.step_stride = 0, 1

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Keeps steps start, start+stride, ... (Grain worker slicing)."""
    del sequential_slice
    if sl.stop is not None:
      raise ValueError(f'only open-ended slices are supported, got {sl}')
    start, stride = sl.start or 0, sl.step or 1
    self.step_start += self.step_stride * start
    self.step_stride *= stride
    for stream in self.streams:
      stream.records.set_slice(sl)
      if not stream.records.paths:
        raise ValueError(f'a Grain worker got no {stream.what} shard files; use '
                         'fewer workers or more shards')

  def __iter__(self) -> grain.DatasetIterator:
    return _MixedBatchIterator(self)

  def __str__(self) -> str:
    return (f'MixedBatchIterDataset(host_batch={self.plan.host_batch}, '
            f'global_real={self.plan.global_real})')


def _next_rows(iterator, n: int, what: str):
  """n (image bytes, label, id) tuples of a stream, as (list, labels, ids)."""
  rows, labels, ids = [], np.empty(n, np.int32), np.empty(n, np.int64)
  for i in range(n):
    try:
      image, labels[i], ids[i] = next(iterator)
    except StopIteration:
      raise RuntimeError(f'the {what}-data stream ended: no readable records '
                         'left in its shard files') from None
    rows.append(image)
  return rows, labels, ids


def _decode_rows(rows, stream: Stream, shape, ids, out) -> None:
  """Stored images -> pixels of `shape` in `out` (in the loader worker)."""
  if stream.encoding == 'raw' and tuple(stream.shape) == tuple(shape):
    out[:] = np.frombuffer(b''.join(rows), np.uint8).reshape(len(rows), *shape)
    return
  for i, data in enumerate(rows):
    try:
      out[i] = example_format.decode_image(data, shape, stream.encoding)
    except ValueError as e:
      raise ValueError(f'{stream.what} record id {ids[i]}: {e}') from e


class _MixedBatchIterator(grain.DatasetIterator):
  """State: {'step': batches produced, 'generated': generated-stream state,
  'real': real-stream state (None when the real set is in RAM)} (the skip
  counts live in the record readers' states)."""

  def __init__(self, ds: MixedBatchIterDataset):
    self._gen = iter(ds.generated.dataset) if ds.generated is not None else None
    self._real = (iter(ds.real.dataset) if isinstance(ds.real, Stream)
                  else None)
    super().__init__([x for x in (self._gen, self._real) if x is not None])
    self._ds = ds
    self._count = 0
    self._buffer = None

  def get_state(self) -> dict[str, Any]:
    state = lambda it: it.get_state() if it is not None else None
    return {'step': self._count, 'generated': state(self._gen),
            'real': state(self._real)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._count = int(state['step'])
    if self._gen is not None:
      self._gen.set_state(state['generated'])
    if self._real is not None:
      self._real.set_state(state['real'])

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    ds = self._ds
    step = ds.step_start + ds.step_stride * self._count
    b, num_real = ds.plan.host_batch, ds.plan.real_at(step)
    real, real_labels, real_ids = self._take_real(step, num_real)
    gen, gen_labels, gen_ids = self._take_generated(b - num_real)
    labels = np.concatenate([real_labels, gen_labels])
    ids = np.concatenate([real_ids, gen_ids])
    is_generated = np.arange(b) >= num_real
    rng = np.random.default_rng([ds.seed, 3, ds.plan.process_index, step])
    order = rng.permutation(b)   # mix real and generated rows
    if ds.crop == 'inception':
      images = self._crop_rows(real, gen, ids, order, rng)
      images = augment.pad_crop_flip(images, rng, pad=0, flip=ds.flip)
    else:
      images = self._fixed_rows(real, gen, ids)
      images = augment.pad_crop_flip(images[order], rng, pad=ds.pad,
                                     flip=ds.flip)
    self._count += 1
    skipped = sum(record_dataset.skipped_in(it)
                  for it in (self._gen, self._real) if it is not None)
    return {'image': images, 'label': labels[order],
            'is_generated': is_generated[order], 'id': ids[order],
            SKIPPED_RECORDS: np.array([ds.step_start, skipped], np.int64)}

  def _take_real(self, step, n):
    """(rows, labels, ids): rows the indices of images in RAM, or a list of
    stored images."""
    ds = self._ds
    real, plan, r = ds.real, ds.plan, ds.plan.real_repeats
    if not n:
      return [], np.empty(0, np.int32), np.empty(0, np.int64)
    if isinstance(real, Stream):
      rows, labels, ids = _next_rows(self._real, n // r, 'real')
      index = np.repeat(np.arange(n // r), r)   # copies; augmented apart later
      return [rows[i] for i in index], labels[index], ids[index]
    index = np.repeat(real.order.indices(plan.unique_before(step), n // r), r)
    return index, real.labels[index], real.ids[index]

  def _take_generated(self, n):
    if not n:
      return [], np.empty(0, np.int32), np.empty(0, np.int64)
    return _next_rows(self._gen, n, 'generated')

  def _fixed_rows(self, real, gen, ids) -> np.ndarray:
    """All rows as pixels of the dataset's shape (crop 'pad')."""
    ds = self._ds
    n = len(real)
    # One buffer for the iterator's life: the batch leaves as a shuffled copy,
    # and a fresh 3 MB array each step costs its page faults again.
    if self._buffer is None or len(self._buffer) != n + len(gen):
      self._buffer = np.empty((n + len(gen), *ds.image_shape), np.uint8)
    images = self._buffer
    if isinstance(real, np.ndarray):   # indices into the set in RAM
      np.take(ds.real.images, real, axis=0, out=images[:n])
    elif n:
      _decode_rows(real, ds.real, ds.image_shape, ids[:n], images[:n])
    if gen:
      _decode_rows(gen, ds.generated, ds.image_shape, ids[n:], images[n:])
    return images

  def _crop_rows(self, real, gen, ids, order, rng) -> np.ndarray:
    """Every row cropped Inception-style to the dataset's shape (crop 'inception')."""
    ds = self._ds
    size, channels = ds.image_shape[0], ds.image_shape[2]
    n = len(real)
    out = np.empty((len(order), *ds.image_shape), np.uint8)
    for row, i in enumerate(order):
      stream = ds.real if i < n else ds.generated
      if i < n:
        image = (ds.real.images[real[i]] if isinstance(real, np.ndarray)
                 else real[i])
      else:
        image = gen[i - n]
      try:
        if isinstance(image, bytes):
          image = (np.frombuffer(image, np.uint8).reshape(stream.shape)
                   if stream.encoding == 'raw' else image_codec.open_image(image))
        out[row] = crops.random_resized_crop(image, rng, size, channels)
      except ValueError as e:
        what = 'real' if i < n else 'generated'
        raise ValueError(f'{what} record id {ids[i]}: {e}') from e
    return out

  def __str__(self) -> str:
    return f'MixedBatchIterator(step={self._count})'
