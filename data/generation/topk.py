"""Class-balanced top-K selection by score over a stream of batches (Carmon et al., 2019).

After pseudo-labelling, only the K highest-scoring samples of each predicted class are kept, so
the generated set is class-balanced and its labels are the most confident. The source can be far
larger than memory (100M images), so the selector sees it one batch at a time and holds at most K
samples per class: memory is O(K x classes + one batch), independent of the source size.

Ties. Among samples with equal scores, the one that arrived earlier in the stream wins. The result
therefore depends only on the order of the samples, not on how the stream is cut into batches.

How it stays cheap. Once a class holds K samples, a new sample can only enter if its score beats
the class's current K-th score (a tie loses: it arrived later), so most samples of a long stream
are discarded by one vectorised comparison. The rare entrants are merged with a linear-time
partition and written into the slots of the samples they evict; nothing is sorted until `result`.
"""
import dataclasses
import logging
from typing import Iterable, Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class TopKResult:
  """Kept samples, grouped by class in increasing class order, best first within a class.

  Attributes:
    labels: (M,) int64 class of each kept sample.
    scores: (M,) float64 score of each kept sample.
    positions: (M,) int64 position of each kept sample in the stream (0-based).
    payload: arrays passed to `add` (images, ids, ...), each (M, ...), aligned with `labels`.
    counts: (classes,) int64 samples kept per class; K unless the class was short.
    k: the requested number per class.
  """
  labels: np.ndarray
  scores: np.ndarray
  positions: np.ndarray
  payload: Mapping[str, np.ndarray]
  counts: np.ndarray
  k: int

  @property
  def short_classes(self) -> dict:
    """{class: samples kept} for every class that had fewer than K samples in the source."""
    return {int(c): int(n) for c, n in enumerate(self.counts) if n < self.k}


class _ClassBuffer:
  """At most K samples of one class: scores, stream positions and payload rows in fixed slots."""

  def __init__(self, k):
    self.k = k
    self.size = 0
    self.scores = np.empty(k, np.float64)
    self.positions = np.empty(k, np.int64)
    self.payload = None  # name -> (K, ...) array, allocated on the first batch.

  def admits(self, scores):
    """Which newcomers could enter: all while there is room, else those beating the worst held
    score (an equal score loses, having arrived later)."""
    return np.full(scores.shape, True) if self.size < self.k else scores > self.scores.min()

  def add(self, scores, positions, payload):
    if self.payload is None:
      self.payload = {name: np.empty((self.k,) + v.shape[1:], v.dtype)
                      for name, v in payload.items()}
    room = min(self.k - self.size, scores.size)
    self._write(np.arange(self.size, self.size + room), scores[:room], positions[:room],
                {n: v[:room] for n, v in payload.items()})
    self.size += room
    if room < scores.size:
      self._merge(scores[room:], positions[room:], {n: v[room:] for n, v in payload.items()})

  def _merge(self, scores, positions, payload):
    """Keeps the best K of buffer + newcomers; newcomers overwrite the slots of evicted samples."""
    all_scores = np.concatenate([self.scores, scores])
    all_positions = np.concatenate([self.positions, positions])
    keep = _best(all_scores, all_positions, self.k)
    stays = np.zeros(self.k, bool)
    stays[keep[keep < self.k]] = True
    evicted = np.nonzero(~stays)[0]
    entering = keep[keep >= self.k] - self.k
    self._write(evicted, scores[entering], positions[entering],
                {n: v[entering] for n, v in payload.items()})

  def _write(self, slots, scores, positions, payload):
    self.scores[slots] = scores
    self.positions[slots] = positions
    for name, values in payload.items():
      self.payload[name][slots] = values


def _best(scores, positions, k):
  """Indices of the k best entries: highest score first, earlier position on ties. O(n)."""
  if scores.size <= k:
    return np.arange(scores.size)
  cut = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th largest score
  above = np.nonzero(scores > cut)[0]
  tied = np.nonzero(scores == cut)[0]
  tied = tied[np.argsort(positions[tied], kind='stable')[:k - above.size]]
  return np.concatenate([above, tied])


class TopKPerClass:
  """Streaming selector of the K highest-scoring samples per class.

  Usage:
    selector = TopKPerClass(k=5000, num_classes=10)
    for batch in batches:
      selector.add(batch['label'], batch['score'], image=batch['image'], id=batch['id'])
    result = selector.result()
  """

  def __init__(self, k, num_classes):
    if k < 1 or num_classes < 1:
      raise ValueError(f'need k >= 1 and num_classes >= 1, got k={k}, num_classes={num_classes}')
    self.k = int(k)
    self.num_classes = int(num_classes)
    self._buffers = [_ClassBuffer(self.k) for _ in range(self.num_classes)]
    self._seen = 0
    self._payload_spec = None

  @property
  def seen(self) -> int:
    """Samples offered so far."""
    return self._seen

  def held_counts(self) -> np.ndarray:
    """(classes,) samples currently held per class; never more than K."""
    return np.array([b.size for b in self._buffers], np.int64)

  def held_nbytes(self) -> int:
    """Bytes of the per-class buffers: what the selector keeps between batches."""
    total = 0
    for b in self._buffers:
      total += b.scores.nbytes + b.positions.nbytes
      total += sum(v.nbytes for v in (b.payload or {}).values())
    return total

  def add(self, labels, scores, **payload) -> None:
    """Offers one batch: labels (B,), scores (B,) and any payload arrays with leading size B."""
    labels, scores, payload = self._check_batch(labels, scores, payload)
    positions = self._seen + np.arange(labels.size, dtype=np.int64)
    self._seen += labels.size
    order = np.argsort(labels, kind='stable')  # groups classes, keeps stream order inside each
    bounds = np.searchsorted(labels[order], np.arange(self.num_classes + 1))
    for c in range(self.num_classes):
      rows = order[bounds[c]:bounds[c + 1]]
      if rows.size:
        self._add_class(c, rows, scores, positions, payload)

  def _add_class(self, c, rows, scores, positions, payload):
    buffer = self._buffers[c]
    rows = rows[buffer.admits(scores[rows])]
    if rows.size:
      buffer.add(scores[rows], positions[rows], {n: v[rows] for n, v in payload.items()})

  def _check_batch(self, labels, scores, payload):
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if labels.ndim != 1 or scores.shape != labels.shape:
      raise ValueError(f'labels and scores must be matching 1-D arrays, got shapes '
                       f'{labels.shape} and {scores.shape}')
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f'labels must be integers, got dtype {labels.dtype}')
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ValueError(f'label {bad[0]} is outside [0, {self.num_classes})')
    if np.isnan(scores).any():
      raise ValueError(f'score is NaN at batch row {int(np.argmax(np.isnan(scores)))}')
    payload = {n: np.asarray(v) for n, v in payload.items()}
    for name, v in payload.items():
      if v.shape[:1] != labels.shape:
        raise ValueError(f'payload {name!r} has leading size {v.shape[:1]}, expected {labels.size}')
    spec = {n: (v.shape[1:], v.dtype) for n, v in payload.items()}
    if self._payload_spec is None:
      self._payload_spec = spec
    elif spec != self._payload_spec:
      raise ValueError(f'payload changed between batches: {spec} vs {self._payload_spec}')
    return labels.astype(np.int64), scores, payload

  def result(self, require_full=False) -> TopKResult:
    """The kept samples; logs (or, with require_full, raises on) classes short of K."""
    parts = [self._sorted(c) for c in range(self.num_classes)]
    counts = self.held_counts()
    names = list(self._payload_spec or {})
    out = TopKResult(
        labels=np.concatenate([np.full(p[0].size, c, np.int64) for c, p in enumerate(parts)]),
        scores=np.concatenate([p[0] for p in parts]),
        positions=np.concatenate([p[1] for p in parts]),
        payload={n: self._concat_payload(n, parts) for n in names},
        counts=counts, k=self.k)
    if out.short_classes:
      message = (f'top-K: {len(out.short_classes)} class(es) had fewer than K={self.k} samples '
                 f'in {self._seen} seen, {{class: kept}} = {out.short_classes}')
      if require_full:
        raise ValueError(message)
      logging.warning(message)
    return out

  def _concat_payload(self, name, parts):
    shape, dtype = self._payload_spec[name]
    pieces = [p[2][name] for p in parts if name in p[2]]
    return np.concatenate(pieces) if pieces else np.empty((0,) + shape, dtype)

  def _sorted(self, c):
    b = self._buffers[c]
    order = np.lexsort((b.positions[:b.size], -b.scores[:b.size]))
    payload = {n: v[:b.size][order] for n, v in (b.payload or {}).items()}
    return b.scores[:b.size][order], b.positions[:b.size][order], payload


def top_k_per_class(batches: Iterable[Mapping[str, np.ndarray]], k, num_classes, *,
                    label_key='label', score_key='score', require_full=False) -> TopKResult:
  """Consumes an iterable of batch dicts once; every other key is carried along as payload."""
  selector = TopKPerClass(k, num_classes)
  for batch in batches:
    payload = {n: v for n, v in batch.items() if n not in (label_key, score_key)}
    selector.add(batch[label_key], batch[score_key], **payload)
  return selector.result(require_full=require_full)
