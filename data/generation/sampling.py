"""Sampling a generator at scale into a pseudo-labelled shard set, exactly once, resumably.

  result = write_samples(sample_batch, label_batch, 'gs://bucket/gen/ddpm', num=100_000_000,
                         batch_size=1024, num_shards=512, image_shape=(32, 32, 3),
                         num_classes=10, generator='ddpm-cifar10', sampler='ddim', steps=100,
                         seed=0, process_index=jax.process_index(),
                         process_count=jax.process_count(), barrier=sync_hosts)

`encoding='png'` (lossless) or `'jpeg'` (with `jpeg_quality`, lossy) stores each image encoded,
as `data.records.shard_writer` describes; the default keeps raw pixels.

The callables come jitted and placed on the devices by the caller (trainer/sample.py):
`sample_batch(key, b)` returns the `batch_size` images of global batch b (uint8 NHWC, a device
array is fine) and must be a pure function of (key, b), where key = jax.random.key(seed);
`label_batch(images) -> (labels, scores)` is the pseudo-labeller. With `label_batch=None`,
`sample_batch` returns `(images, labels)` itself (a class-conditional generator) and scores are NaN.

Layout. Sample ids are 0 … num-1; global batch b holds ids [b B, (b+1) B) (the last batch is cut
at num). Host h of P takes the batches b = h, h + P, … and writes its own shard set
`OUT-host{h:05d}` (just `OUT` on one host) of its share of the `num_shards` files; process 0
then writes `OUT.json`, one manifest listing every host's shards, which is what training reads.
Hosts never wait for one another until that final barrier, so one slow or preempted host does
not stall the rest.

Exactly once. A shard is written under a temporary name and renamed when complete (the shard
writer's commit); after each commit the host's `OUT….progress.json` records the committed shards
and their label counts. A restarted run with the same arguments removes temporary leftovers,
regenerates from the first sample of the first uncommitted shard (batches are pure functions of
(seed, b), so it gets the very same samples) and goes on; a run with other arguments is refused
by name rather than mixed in. With `top_k`, the per-class selector (at most K × classes samples)
is saved atomically every `checkpoint_every` batches to `OUT….topk.npz` and restored on restart;
the kept samples are written once all batches are seen.

Class-balanced (`class_balanced=True`, the paper's "until we have 100K images for each class"):
the set holds num / classes of each class. A conditional generator draws them directly (sample i
is of class i mod classes). With a labeller the host's sample stream runs on past num: each
sample is kept while its class has fewer than its share (balanced.first_k), written as it comes,
so memory is one batch and the per-class counts; each shard commit also records the id of its
last record, and a restarted run goes on from the sample after it with the committed counts,
ending with exactly the set an uninterrupted run writes. The stream is bounded (max_candidates);
a class the labeller rarely predicts stops the run with its count, committed shards kept, and a
run with a larger bound goes on. Host h fills its own share of each class (as top-K's K_h); the
manifest records the selection and how many candidates were drawn.

Top-K across hosts: host h keeps the best K_h of each class among its own samples, K_h = K // P
(+1 for the first K % P hosts), so the whole set holds K per class. This is the global top-K only
in distribution (the hosts' streams are exchangeable); it needs no cross-host traffic.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import posixpath
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tqdm

from data import files
from data.generation import balanced
from data.generation import topk
from data.records import shard_writer
from data.records import shards

_CHECKPOINT_EVERY = 50   # batches between top-K selector saves


@dataclasses.dataclass(frozen=True)
class HostPlan:
  """What host `process_index` samples: its global batch indices and the rows of each."""
  batches: np.ndarray      # (n,) global batch indices, increasing
  counts: np.ndarray       # (n,) rows kept of each (batch_size, but the global last batch)
  batch_size: int
  num_shards: int          # this host's shards

  @property
  def total(self) -> int:
    return int(self.counts.sum())

  def ids(self, i: int) -> np.ndarray:
    first = int(self.batches[i]) * self.batch_size
    return np.arange(first, first + int(self.counts[i]), dtype=np.int64)


def host_plan(num: int, batch_size: int, num_shards: int, process_index: int = 0,
              process_count: int = 1) -> HostPlan:
  """The batches and shards of one host; see the module docstring."""
  if num < 1 or batch_size < 1:
    raise ValueError(f'need num >= 1 and batch_size >= 1, got num={num}, '
                     f'batch_size={batch_size}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} outside [0, {process_count})')
  if num_shards < process_count:
    raise ValueError(f'num_shards={num_shards} must be at least the number of hosts '
                     f'({process_count}): each host writes its own shards')
  num_batches = -(-num // batch_size)
  batches = np.arange(process_index, num_batches, process_count, dtype=np.int64)
  counts = np.minimum(batch_size, num - batches * batch_size)
  host_shards = num_shards // process_count + (process_index < num_shards % process_count)
  plan = HostPlan(batches, counts, batch_size, host_shards)
  if plan.total < host_shards:
    raise ValueError(f'host {process_index} gets {plan.total} samples, fewer than its '
                     f'{host_shards} shards: lower num_shards or batch_size')
  return plan


def host_prefix(out: str, process_index: int, process_count: int) -> str:
  return out if process_count == 1 else f'{out}-host{process_index:05d}'


@dataclasses.dataclass(frozen=True)
class SamplingResult:
  manifest: str            # OUT.json: the whole set
  host_manifest: str       # this host's set
  written: int             # records in this host's set
  sampled: int             # samples drawn by this call (0 when everything was on disk)
  peak_selector_bytes: int  # top-K buffers at their largest (0 without top-K)


# ------------------------------------------------------------------------------------------------
# Small files, and what a killed run leaves.
# ------------------------------------------------------------------------------------------------


def _read(path: str) -> bytes | None:
  if not files.exists(path):
    return None
  with files.open_file(path, 'rb') as f:
    return f.read()


def _remove_leftovers(prefix: str) -> None:
  """Temporary files of a killed run of this set (partial shards, half-written state), and
  nothing of another set in the same folder."""
  directory, name = posixpath.split(prefix)
  patterns = [f'{name}-[0-9]*-of-[0-9]*.tfrecord{files.TMP}*'] + [
      f'{name}{suffix}{files.TMP}*' for suffix in ('.json', '.progress.json', '.topk.npz')]
  for pattern in patterns:
    for path in files.glob(posixpath.join(directory or '.', pattern)):
      logging.info('Removing leftover %s', path)
      files.remove(path)


# ------------------------------------------------------------------------------------------------
# The shard writer, resumed at a committed shard.
# ------------------------------------------------------------------------------------------------


class _ResumableWriter(shard_writer.ShardWriter):
  """ShardWriter that starts after `committed` shards already on disk and reports each commit.

  It sets the writer's position to the first uncommitted shard (the base class always starts at
  shard 0); everything else (framing, temporary names, renames, the manifest) is the base
  class's. Each commit reports the shards' label counts and the id of each shard's last record
  (where a class-balanced stream resumes). Never used as a context manager: an exception must
  keep the committed shards.
  """

  def __init__(self, prefix: str, *, committed: list[list[int]], last_ids: list[int],
               on_commit: Callable, **kwargs):
    super().__init__(prefix, **kwargs)
    self._on_commit = on_commit
    self._last_ids = list(last_ids)
    self._batch_ids, self._batch_start = np.zeros(0, np.int64), 0
    self._shard_counts = [list(c) for c in committed]
    self._shard = len(committed) - 1
    self._written = self._bounds(len(committed))[0] if committed else 0
    self._done = [self._path(i) for i in range(len(committed))]
    if committed:
      self._label_counts = np.sum(np.asarray(committed, np.int64), axis=0)
    self._shard_start_counts = self._label_counts.copy()

  @property
  def label_counts(self) -> np.ndarray:
    return self._label_counts

  @property
  def last_ids(self) -> list[int]:
    return list(self._last_ids)

  @property
  def metadata(self) -> dict:
    return self._metadata   # written into the manifest by close()

  def write_batch(self, images, labels, scores=None, ids=None) -> None:
    """The base class's write, one shard's part of the batch at a time: it adds a whole batch's
    labels to the counts before writing, so a batch across a shard boundary would credit the
    committed shard with labels of the next (and a resumed set would count them twice)."""
    start, n = 0, len(labels)
    while start < n:
      shard = self._shard + (self._file is None)   # the open shard, or the next one
      stop = min(n, start + self._bounds(shard)[1] - self._written)
      self._batch_ids, self._batch_start = np.asarray(ids[start:stop]), self._written
      super().write_batch(images[start:stop], labels[start:stop],
                          None if scores is None else scores[start:stop], ids[start:stop])
      start = stop

  def _finish_shard(self) -> None:
    super()._finish_shard()
    self._shard_counts.append((self._label_counts - self._shard_start_counts).tolist())
    self._shard_start_counts = self._label_counts.copy()
    self._last_ids.append(int(self._batch_ids[self._written - 1 - self._batch_start]))
    self._on_commit(self._shard_counts, self._last_ids)


# ------------------------------------------------------------------------------------------------
# Sampling.
# ------------------------------------------------------------------------------------------------


def _batches(sample_batch, label_batch, key, plan: HostPlan, start: int):
  """(i, images, labels, scores) for host batches start, start+1, …; the next batch is
  dispatched before the current one is fetched, so device work overlaps host writing."""
  def dispatch(i):
    out = sample_batch(key, int(plan.batches[i]))
    if label_batch is None:
      images, labels = out
      return images, labels, None
    return (out,) + tuple(label_batch(out))

  pending = dispatch(start) if start < len(plan.batches) else None
  for i in range(start, len(plan.batches)):
    current = pending
    pending = dispatch(i + 1) if i + 1 < len(plan.batches) else None
    n = int(plan.counts[i])
    images, labels, scores = (None if a is None else np.asarray(a)[:n] for a in current)
    if scores is None:
      scores = np.full(n, np.nan, np.float32)
    yield i, images, labels.astype(np.int64), scores.astype(np.float32)


def _progress(total, done, enabled, desc):
  return tqdm.tqdm(total=total, initial=done, unit='img', desc=desc, smoothing=0.1,
                   disable=not enabled, dynamic_ncols=True)


def _check_state(path: str, saved: dict, want: dict) -> None:
  if saved != want:
    diff = {k: (saved.get(k), want.get(k)) for k in set(saved) | set(want)
            if saved.get(k) != want.get(k)}
    raise ValueError(f'{path}: an unfinished run with other settings is here ({{key: (on disk, '
                     f'asked)}} = {diff}); finish it with its own arguments or choose another '
                     f'--out')


def _resumable_writer(prefix, total, writer_args, settings):
  """The host's writer, after the shards its `.progress.json` says are committed."""
  state_path = f'{prefix}.progress.json'
  text = _read(state_path)
  state = {'committed': [], 'last_ids': []}
  if text is not None:
    state = json.loads(text)
    _check_state(state_path, state['settings'], settings)

  def on_commit(shard_counts, last_ids):
    files.write_atomic(state_path, json.dumps({'settings': settings, 'committed': shard_counts,
                                               'last_ids': last_ids}).encode())

  return _ResumableWriter(prefix, committed=state['committed'],
                          last_ids=state.get('last_ids', []), on_commit=on_commit, total=total,
                          **writer_args)


def _write_all(sample_batch, label_batch, key, plan, prefix, writer_args, settings, progress):
  """Every sample of the host, resumed at the first uncommitted shard."""
  state_path = f'{prefix}.progress.json'
  writer = _resumable_writer(prefix, plan.total, writer_args, settings)
  position = writer.written
  first = position // plan.batch_size      # every host batch but the last is full
  skip = position - first * plan.batch_size
  bar = _progress(plan.total, position, progress, f'sample {posixpath.basename(prefix)}')
  sampled = 0
  for i, images, labels, scores in _batches(sample_batch, label_batch, key, plan, first):
    ids = plan.ids(i)
    if i == first and skip:
      images, labels, scores, ids = images[skip:], labels[skip:], scores[skip:], ids[skip:]
    writer.write_batch(images, labels, scores, ids=ids)
    sampled += len(ids)
    bar.update(len(ids))
  bar.close()
  manifest = writer.close()
  files.remove(state_path)
  return manifest, plan.total, sampled, 0


def _resume_point(plan, last_id):
  """(host batch, rows to skip in it) just after sample `last_id` (-1: the start)."""
  if last_id < 0:
    return 0, 0
  i = int(np.searchsorted(plan.batches, last_id // plan.batch_size))
  return i, last_id - int(plan.batches[i]) * plan.batch_size + 1


def _write_balanced(sample_batch, label_batch, key, plan, prefix, writer_args, settings, progress,
                    k, num_classes):
  """The first k of each class in the host's sample stream (balanced.py), written as they come;
  the stream goes on until every class has k or the plan's candidates are spent."""
  state_path = f'{prefix}.progress.json'
  writer = _resumable_writer(prefix, k * num_classes, writer_args, settings)
  counts = writer.label_counts.copy()
  last_ids = writer.last_ids
  first, skip = _resume_point(plan, last_ids[-1] if last_ids else -1)
  bar = _progress(k * num_classes, writer.written, progress,
                  f'sample {k}/class {posixpath.basename(prefix)}')
  sampled, last = 0, last_ids[-1] if last_ids else -1
  stream = _batches(sample_batch, label_batch, key, plan, first) if counts.min() < k else ()
  for i, images, labels, scores in stream:
    ids = plan.ids(i)
    if i == first and skip:
      images, labels, scores, ids = images[skip:], labels[skip:], scores[skip:], ids[skip:]
    keep = balanced.first_k(labels, counts, k)
    writer.write_batch(images[keep], labels[keep], scores[keep], ids=ids[keep])
    sampled += len(ids)
    bar.update(int(keep.sum()))
    last = int(ids[np.flatnonzero(keep)[-1]]) if keep.any() else last
    if counts.min() >= k:   # full: the batch dispatched ahead is not needed
      break
  bar.close()
  if counts.min() < k:
    raise ValueError(
        f'{prefix}: {plan.total:,} candidates gave fewer than {k} of some classes '
        f'({{class: count}} = {balanced.short_classes(counts, k)}); run again with more '
        f'candidates (--max_candidates) to go on from the last committed shard')
  writer.metadata['class_balance'] = {'per_class': k, 'candidates': _candidates(plan, last)}
  manifest = writer.close()
  files.remove(state_path)
  return manifest, k * num_classes, sampled, 0


def _candidates(plan, last_id):
  """How many samples of the host's stream came up to and including `last_id`."""
  i, rows = _resume_point(plan, last_id)
  return int(plan.counts[:i].sum()) + rows


def _save_selector(path, selector, batches_done, settings):
  kept = selector.result()
  order = np.argsort(kept.positions, kind='stable')   # stream order: ties resolve as before
  buffer = io.BytesIO()
  np.savez(buffer, image=kept.payload.get('image', np.zeros((0,), np.uint8))[order],
           id=kept.payload.get('id', np.zeros((0,), np.int64))[order],
           label=kept.labels[order], score=kept.scores[order],
           batches_done=np.int64(batches_done), settings=np.str_(json.dumps(settings)))
  files.write_atomic(path, buffer.getvalue())


def _load_selector(path, selector, settings) -> int:
  data = _read(path)
  if data is None:
    return 0
  with np.load(io.BytesIO(data), allow_pickle=False) as z:
    _check_state(path, json.loads(str(z['settings'])), settings)
    if len(z['label']):
      selector.add(z['label'], z['score'], image=z['image'], id=z['id'])
    return int(z['batches_done'])


def _write_top_k(sample_batch, label_batch, key, plan, prefix, writer_args, settings, progress,
                 k, num_classes, seed, checkpoint_every):
  """The best k of each class among the host's samples, shuffled, as one shard set."""
  state_path = f'{prefix}.topk.npz'
  selector = topk.TopKPerClass(k, num_classes)
  start = _load_selector(state_path, selector, settings)
  peak = selector.held_nbytes()
  bar = _progress(plan.total, int(plan.counts[:start].sum()), progress,
                  f'sample+top-{k} {posixpath.basename(prefix)}')
  sampled = 0
  for i, images, labels, scores in _batches(sample_batch, label_batch, key, plan, start):
    selector.add(labels, scores, image=images, id=plan.ids(i))
    peak = max(peak, selector.held_nbytes())
    sampled += len(labels)
    bar.update(len(labels))
    if (i + 1) % checkpoint_every == 0 and i + 1 < len(plan.batches):
      _save_selector(state_path, selector, i + 1, settings)
  bar.close()
  if sampled:
    _save_selector(state_path, selector, len(plan.batches), settings)
  kept = selector.result()
  order = np.random.default_rng([seed, 1]).permutation(len(kept.labels))
  if len(order) < writer_args['num_shards']:
    raise ValueError(f'{prefix}: top-K kept {len(order)} samples, fewer than the '
                     f'{writer_args["num_shards"]} shards')
  writer = shard_writer.ShardWriter(prefix, total=len(order), **writer_args)
  for begin in range(0, len(order), plan.batch_size):
    idx = order[begin:begin + plan.batch_size]
    writer.write_batch(kept.payload['image'][idx], kept.labels[idx], kept.scores[idx],
                       ids=kept.payload['id'][idx])
  manifest = writer.close()
  files.remove(state_path)
  logging.info('%s: kept %d of %d samples (%s per class).', prefix, len(order), plan.total,
               kept.counts.tolist())
  return manifest, len(order), sampled, peak


def write_samples(sample_batch: Callable, label_batch: Callable | None, out: str, *, num: int,
                  batch_size: int, num_shards: int, image_shape, num_classes: int,
                  generator: str, sampler: str, steps: int, seed: int, top_k: int = 0,
                  class_balanced: bool = False, max_candidates: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  barrier: Callable[[], None] | None = None, progress: bool = True,
                  checkpoint_every: int = _CHECKPOINT_EVERY,
                  metadata: dict[str, Any] | None = None, encoding: str = 'raw',
                  jpeg_quality: int = 95) -> SamplingResult:
  """Samples `num` images (or keeps the top-K of them) into OUT's shards; see module docstring.

  With `class_balanced`, the set holds num / classes samples of each class: a conditional
  generator (`label_batch=None`, sample i of class i mod classes) draws them directly; with a
  labeller, samples are drawn until each class has its share and the first of each class are
  kept (balanced.py), at most `max_candidates` of them (0: 10 x num); a run stopped short of
  them resumes with a larger bound. `barrier()` must return once every host has reached it
  (jax's sync_global_devices); it is needed, and only called, when process_count > 1.
  """
  import jax  # pylint: disable=g-import-not-at-top  (data/ stays importable without jax)
  if process_count > 1 and barrier is None:
    raise ValueError('write_samples: a barrier is needed with process_count > 1')
  if top_k and top_k < process_count:
    raise ValueError(f'top_k={top_k} is split over {process_count} hosts: it must be at least '
                     f'the number of hosts')
  if top_k and class_balanced:
    raise ValueError(f'top_k={top_k} and class_balanced: choose one (a top-K set is '
                     f'class-balanced already, by score)')
  first_of_class = class_balanced and label_batch is not None
  plan = host_plan(_candidate_count(num, num_classes, class_balanced, max_candidates,
                                    label_batch, process_count),
                   batch_size, num_shards, process_index, process_count)
  prefix = host_prefix(out, process_index, process_count)
  settings = dict(num=num, batch_size=batch_size, num_shards=num_shards, generator=generator,
                  sampler=sampler, steps=steps, seed=seed, top_k=top_k,
                  process_index=process_index, process_count=process_count,
                  image_shape=list(image_shape), num_classes=num_classes)
  if encoding != 'raw':   # absent for raw sets, so runs started before encodings still resume
    settings.update(encoding=encoding,
                    jpeg_quality=jpeg_quality if encoding == 'jpeg' else None)
  if class_balanced:   # only then: a set written before the option keeps its settings
    settings['class_balanced'] = True
  host_manifest = shards.manifest_path(prefix)
  files.makedirs(posixpath.dirname(prefix))
  if _finished(host_manifest, settings):
    written, sampled, peak = shards.load_manifest(host_manifest)['count'], 0, 0
    for state in ('.progress.json', '.topk.npz'):   # left when killed just after the manifest
      files.remove(prefix + state)
  else:
    _remove_leftovers(prefix)
    selection = ('top-k' if top_k else 'class-balanced' if class_balanced else 'all')
    writer_args = dict(num_shards=plan.num_shards, image_shape=image_shape,
                       num_classes=num_classes, source=generator, seed=seed,
                       metadata={**(metadata or {}), 'sampling': settings,
                                 'selection': selection},
                       encoding=encoding, jpeg_quality=jpeg_quality)
    key = jax.random.key(seed)
    start = time.time()
    if top_k:
      k = balanced.host_share(top_k, process_index, process_count)
      host_manifest, written, sampled, peak = _write_top_k(
          sample_batch, label_batch, key, plan, prefix, writer_args, settings, progress, k,
          num_classes, seed, checkpoint_every)
    elif first_of_class:
      k = balanced.host_share(num // num_classes, process_index, process_count)
      host_manifest, written, sampled, peak = _write_balanced(
          sample_batch, label_batch, key, plan, prefix, writer_args, settings, progress, k,
          num_classes)
    else:
      host_manifest, written, sampled, _ = _write_all(
          sample_batch, label_batch, key, plan, prefix, writer_args, settings, progress)
      peak = 0
    logging.info('%s: %d samples in %.1fs', prefix, sampled, time.time() - start)
  manifest = shards.manifest_path(out)
  if process_count > 1:
    barrier()
    if process_index == 0:
      _merge_manifests(out, process_count)
    barrier()
  return SamplingResult(manifest, host_manifest, written, sampled, peak)


def _candidate_count(num, num_classes, class_balanced, max_candidates, label_batch,
                     process_count):
  """Samples the plan may draw: num, or with a labelled class-balanced set the bound on its
  candidates (sample ids are 32-bit)."""
  if not class_balanced:
    return num
  k = balanced.per_class(num, num_classes)
  if label_batch is None:
    return num   # drawn class by class: sample i is of class i mod classes
  if k < process_count:
    raise ValueError(f'{k} per class is split over {process_count} hosts: it must be at least '
                     f'the number of hosts')
  bound = max_candidates or min(10 * num, 2 ** 32 - 1)
  if not num <= bound < 2 ** 32:
    raise ValueError(f'max_candidates={bound}: must lie in [num={num}, 2^32)')
  return bound


def _finished(manifest_path: str, settings: dict) -> bool:
  text = _read(manifest_path)
  if text is None:
    return False
  saved = json.loads(text).get('metadata', {}).get('sampling')
  _check_state(manifest_path, saved, settings)
  return True


def _merge_manifests(out: str, process_count: int) -> str:
  """OUT.json: one manifest over every host's shards (file names relative to OUT's folder)."""
  parts = [shards.load_manifest(shards.manifest_path(host_prefix(out, h, process_count)))
           for h in range(process_count)]
  merged = dict(parts[0])
  merged['name'] = posixpath.basename(out)
  merged['count'] = sum(p['count'] for p in parts)
  merged['label_counts'] = np.sum([p['label_counts'] for p in parts], axis=0).tolist()
  merged['shards'] = [s for p in parts for s in p['shards']]
  balance = [p.get('metadata', {}).get('class_balance') for p in parts]
  if all(balance):   # the whole set's K and the candidates every host drew
    merged['metadata'] = dict(merged['metadata'], class_balance={
        'per_class': sum(b['per_class'] for b in balance),
        'candidates': sum(b['candidates'] for b in balance)})
  merged['hosts'] = [posixpath.basename(host_prefix(out, h, process_count)) + '.json'
                     for h in range(process_count)]
  path = shards.manifest_path(out)
  files.write_atomic(path, json.dumps(merged, indent=1).encode())
  return path
