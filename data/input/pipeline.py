"""Training input pipeline: real and generated images mixed at an exact ratio.

  it = make_train_iterator(config, real_images, real_labels, real_ids)
  it = make_train_iterator(config, train)   # train from data.real.training_splits
  batch = next(it)   # this host's share of one global batch

Each batch is a dict of numpy arrays for this host, b = batch_size // P rows
(P = process count): `image` uint8 (b, H, W, C) — it crosses to the devices as
uint8 and becomes float in the jitted step (data.images.to_float) —, `label`
int32, `is_generated` bool (for label smoothing) and `id` int64 (the original
training index for real images, the shard set's id for generated ones; a
host-only field the train loop keeps off the devices).

This module assembles the pieces from a config. `batch_mix` holds the exact
mix: every global batch has round(alpha * batch_size) real examples, split
across hosts so the count is exact at every step, real data permuted per epoch
in RAM (or streamed), images decoded, and augmentation (`config.dataset.crop`:
pad/flip on the whole batch, or Inception-style crops) in the loader.
alpha == 1, or generated.path == '', means generated data is never opened.
alpha may change over training (`generated.alpha_schedule`: `alpha_schedule`);
the real count of step s is then a function of s alone, a side no phase uses
is never opened (alpha 0 throughout: the real split), and a phase that takes
no rows of a side does not read it.

Generated data: `config.generated.path` is the shard set's manifest (local or
gs://). Shards are split across hosts by file (host h reads files h::P), read
by `record_dataset.TFRecordIterDataset` (`cycle_length` files interleaved, file
order reshuffled every epoch, repeated forever, CRCs checked) and shuffled in
consecutive windows of `shuffle_window` records
(`window_shuffle.WindowShuffleIterDataset`).

Streamed real data (a `data.datasets.streamed.StreamedSplit`: tfds's prepared
files, or a path dataset's packed copy) is read the same way with its own keys
(`config.dataset.cycle_length`, `shuffle_window`, `on_corrupt`) and seeds, its
held-out head dropped by id; its position is part of the iterator state.

Loader: `config.loader.worker_count` > 0 runs Grain `mp_prefetch` workers; each
produces whole batches for steps w, w+W, ... (its generated files, and a
streamed real set's, are a further file slice, so their order depends on the
worker count; the order of real data in RAM and all counts do not).
`config.loader.prefetch` > 0 adds a prefetch thread in this process (after the
workers, if any).

Checkpointing: the iterator state (step, file positions, window-shuffle
position, skip count) is JSON and goes through Grain's Orbax handler:

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=save_args(it)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=restore_args(it)))

`it.skipped_records` is the number of corrupt records skipped so far on this
host (with `config.generated.on_corrupt` or `config.dataset.on_corrupt` =
'skip'), for logging to
TensorBoard; each batch brings its loader worker's count (`TrainIterator`).
"""
from __future__ import annotations

import atexit
import weakref

from absl import flags
from absl import logging
import grain
import numpy as np

from data.datasets import streamed
from data.input import alpha_schedule
from data.input import batch_mix
from data.records import example_format
from data.records import record_dataset
from data.records import shards
from data.input import window_shuffle


# ------------------------------------------------------------------------------
# Construction from a config.
# ------------------------------------------------------------------------------


def _seed(*parts: int) -> int:
  """A 31-bit seed derived from `parts` (headroom for seed + counter).

  Streams: (seed, 0) orders the real data, (seed, 1, host) the shard files and
  (seed, 2, host) the window shuffle; the batch mix derives its own per step.
  """
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def _files_for_host(paths, plan: batch_mix.BatchPlan, workers: int, what: str,
                    where: str) -> list[str]:
  needed = plan.process_count * max(1, workers)
  if len(paths) < needed:
    raise ValueError(
        f'{where}: {len(paths)} {what} shard files, but {plan.process_count} hosts x '
        f'{max(1, workers)} workers need at least {needed} (each reads whole '
        'files); re-shard the set with more files')
  return list(paths)[plan.process_index::plan.process_count]


def _generated_part(config, plan: batch_mix.BatchPlan, image_shape,
                    num_classes, workers: int) -> batch_mix.Stream:
  """Opens the manifest; returns the generated stream."""
  path = config.generated.path
  manifest = shards.load_manifest(path)
  inception = config.dataset.get('crop', 'pad') == 'inception'
  shards.validate_manifest(manifest, path,
                           image_shape=None if inception else image_shape,
                           num_classes=num_classes)
  if inception and image_shape and manifest['image_shape'][-1] != image_shape[-1]:
    raise shards.ManifestError(
        f'{path}: generated images have {manifest["image_shape"][-1]} channels, the '
        f'real ones {image_shape[-1]}')
  files = sorted(shards.shard_paths(path, manifest))
  h = plan.process_index
  records = record_dataset.TFRecordIterDataset(
      _files_for_host(files, plan, workers, 'generated', path),
      cycle_length=config.generated.cycle_length,
      shuffle_seed=_seed(config.seed, 1, h), num_epochs=None,
      on_corrupt=config.generated.on_corrupt, counts=shards.shard_counts(path, manifest),
      parse_fn=example_format.ExampleParser(manifest['image_shape'],
                                            manifest['num_classes'],
                                            manifest['image_encoding']))
  generated = records
  if config.generated.shuffle_window > 1:
    generated = window_shuffle.WindowShuffleIterDataset(
        records, window_size=config.generated.shuffle_window,
        seed=_seed(config.seed, 2, h))
  return batch_mix.Stream(generated, records, manifest['image_encoding'],
                          tuple(manifest['image_shape']), 'generated')


def _real_stream(config, plan: batch_mix.BatchPlan, split: streamed.StreamedSplit,
                 workers: int) -> batch_mix.Stream:
  """The streamed real training split: this host's files, interleaved, file
  order reshuffled per epoch (seed stream 4), window-shuffled (stream 5)."""
  d, h = config.dataset, plan.process_index
  records = record_dataset.TFRecordIterDataset(
      _files_for_host(split.files, plan, workers, 'real', split.name),
      cycle_length=d.get('cycle_length', 16), shuffle_seed=_seed(config.seed, 4, h),
      num_epochs=None, on_corrupt=d.get('on_corrupt', 'raise'),
      parse_fn=split.parser, with_position=True)
  stream = records
  if d.get('shuffle_window', 10_000) > 1:
    stream = window_shuffle.WindowShuffleIterDataset(
        records, window_size=d.get('shuffle_window', 10_000),
        seed=_seed(config.seed, 5, h))
  return batch_mix.Stream(stream, records, split.encoding, tuple(split.stored_shape),
                          'real')


def _batch_plan(config, process_index: int, process_count: int) -> batch_mix.BatchPlan:
  """The exact real count of every step: `generated.alpha`, or its schedule's phases (validated
  in trainer/robust/config_validation.py; data/input/alpha_schedule.py)."""
  batch_size, repeats = config.train.batch_size, config.dataset.real_repeats
  phases = [(step, batch_mix.real_count(batch_size, alpha, repeats))
            for step, alpha in alpha_schedule.phases(config)]
  if not config.generated.path and any(real < batch_size for _, real in phases):
    logging.warning('config.generated.path is empty: every batch is real '
                    '(%s ignored)', alpha_schedule.describe(config))
    phases = [(step, batch_size) for step, _ in phases[:1]]
  if len(phases) > 1:
    logging.info('Real share per batch: %s.', alpha_schedule.describe(config))
  return batch_mix.BatchPlan(batch_size, phases[0][1], process_index, process_count,
                             real_repeats=repeats, changes=tuple(phases[1:]))


def make_train_dataset(config, real_images, real_labels=None, real_ids=None, *,
                       process_index: int | None = None,
                       process_count: int | None = None,
                       num_classes: int | None = None) -> grain.IterDataset:
  """The Grain dataset behind `make_train_iterator` (same arguments)."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (not in Grain's worker processes)
    process_index = jax.process_index() if process_index is None else (
        process_index)
    process_count = jax.process_count() if process_count is None else (
        process_count)
  plan = _batch_plan(config, process_index, process_count)
  workers = config.loader.worker_count
  split = real_images if real_labels is None else {
      'image': real_images, 'label': real_labels, 'id': real_ids}
  if isinstance(split, streamed.StreamedSplit):
    image_shape = split.shape
    num_classes = num_classes or split.num_classes
    real = _real_stream(config, plan, split, workers) if plan.uses_real else None
  else:
    real_images, real_labels = np.asarray(split['image']), split['label']
    image_shape = real_images.shape[1:] if real_images.size else None
    if num_classes is None and np.size(real_labels):
      num_classes = int(np.max(real_labels)) + 1
    real = (batch_mix.real_data(real_images, real_labels, split['id'], plan,
                                 _seed(config.seed, 0))
            if plan.uses_real else None)
  generated = None
  if plan.uses_generated:
    generated = _generated_part(config, plan, image_shape, num_classes, workers)
    image_shape = image_shape or generated.shape
  ds = batch_mix.MixedBatchIterDataset(
      plan=plan, image_shape=image_shape, real=real, generated=generated,
      pad=config.dataset.pad, flip=config.dataset.flip, seed=config.seed,
      crop=config.dataset.get('crop', 'pad'))
  if workers > 0:
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags; outside an absl app (tests,
      # notebooks) take their defaults instead of failing in the worker.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers,
        per_worker_buffer_size=max(1, config.loader.prefetch)))
  if config.loader.prefetch > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=config.loader.prefetch)
  return _SkipCounted(ds)


class TrainIterator(grain.DatasetIterator):
  """Per-host batches; `skipped_records` counts the corrupt generated records
  skipped so far. Its state is the batch stream's, unchanged."""

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._skipped: dict[int, int] = {}   # stream -> records it skipped so far

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._parent)
    stream, count = batch.pop(batch_mix.SKIPPED_RECORDS)
    self._skipped[int(stream)] = int(count)
    return batch

  @property
  def skipped_records(self) -> int:
    return sum(self._skipped.values())

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state) -> None:
    self._parent.set_state(state)
    # Counts from before the restore may be ahead of it; each stream's restored
    # count comes with its next batch.
    self._skipped.clear()


class _SkipCounted(grain.IterDataset):
  """The training batches without the per-stream skip counts (`TrainIterator`)."""

  def __iter__(self) -> TrainIterator:
    return TrainIterator(self._parent.__iter__())


def make_train_iterator(config, real_images, real_labels=None, real_ids=None, *,
                        process_index: int | None = None,
                        process_count: int | None = None,
                        num_classes: int | None = None) -> TrainIterator:
  """Returns a `TrainIterator` (a grain DatasetIterator: get_state()/set_state())
  of per-host batches; see the module docstring.

  The real training data is given as arrays (images, labels, ids), or as the
  one training split `data.real.training_splits` returns (a dict of those
  arrays, or a `StreamedSplit` that the loader streams). `num_classes`
  defaults to the largest real label + 1 (a streamed split's classes) and must
  match the shard manifest."""
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
