"""Tests for streaming class-balanced top-K selection (data/topk.py)."""
import logging
import tracemalloc

import numpy as np
import pytest

from data.generation import topk


def _stream(num, batch_size, num_classes, seed, tie_levels=None, image_shape=(4, 4, 3)):
  """Lazily generated batches; each image is filled with its id (mod 251) to check alignment."""
  rng = np.random.default_rng(seed)
  for lo in range(0, num, batch_size):
    b = min(batch_size, num - lo)
    labels = rng.integers(0, num_classes, b)
    if tie_levels is None:
      scores = rng.random(b)
    else:
      scores = rng.integers(0, tie_levels, b) / tie_levels
    ids = np.arange(lo, lo + b, dtype=np.int64)
    images = np.broadcast_to((ids % 251).astype(np.uint8)[:, None, None, None],
                             (b,) + image_shape).copy()
    yield {'label': labels, 'score': scores, 'id': ids, 'image': images}


def _brute_force(batches, k, num_classes):
  """Reference: hold everything, sort each class by (score desc, stream position asc)."""
  labels = np.concatenate([b['label'] for b in batches])
  scores = np.concatenate([b['score'] for b in batches])
  kept = {}
  for c in range(num_classes):
    rows = np.nonzero(labels == c)[0]
    order = np.lexsort((rows, -scores[rows]))
    kept[c] = rows[order][:k]
  return kept


def _check_against_reference(result, reference, num_classes):
  for c in range(num_classes):
    ids = result.payload['id'][result.labels == c]
    np.testing.assert_array_equal(ids, reference[c])
    np.testing.assert_array_equal(result.positions[result.labels == c], reference[c])


@pytest.mark.parametrize('batch_size', [1, 7, 100, 1000])
def test_keeps_exactly_k_highest_per_class(batch_size):
  batches = list(_stream(3000, 100, 10, seed=0))  # the same samples, re-cut below
  flat = {n: np.concatenate([b[n] for b in batches]) for n in batches[0]}
  recut = ({n: v[lo:lo + batch_size] for n, v in flat.items()}
           for lo in range(0, 3000, batch_size))
  result = topk.top_k_per_class(recut, k=50, num_classes=10)
  assert result.counts.tolist() == [50] * 10 and result.short_classes == {}
  assert len(result.labels) == 500
  _check_against_reference(result, _brute_force(batches, 50, 10), 10)
  for c in range(10):
    scores = result.scores[result.labels == c]
    assert np.all(np.diff(scores) <= 0)  # best first
    kept_min = scores.min()
    assert np.all(flat['score'][(flat['label'] == c) & ~np.isin(flat['id'], result.payload['id'])]
                  <= kept_min)


def test_ties_go_to_the_earlier_sample_whatever_the_batching():
  batches = list(_stream(4000, 64, 5, seed=1, tie_levels=4))  # only 4 distinct scores
  reference = _brute_force(batches, 120, 5)
  for batch_size in (1, 64, 4000):
    flat = {n: np.concatenate([b[n] for b in batches]) for n in batches[0]}
    recut = [{n: v[lo:lo + batch_size] for n, v in flat.items()}
             for lo in range(0, 4000, batch_size)]
    _check_against_reference(topk.top_k_per_class(recut, 120, 5), reference, 5)


def test_payload_stays_aligned_with_scores_and_labels():
  result = topk.top_k_per_class(_stream(2000, 128, 4, seed=2), k=30, num_classes=4)
  np.testing.assert_array_equal(result.payload['image'][:, 0, 0, 0], result.payload['id'] % 251)
  assert result.payload['image'].shape == (120, 4, 4, 3)
  assert result.payload['image'].dtype == np.uint8


def test_never_holds_more_than_k_per_class():
  k, num_classes = 25, 10
  selector = topk.TopKPerClass(k, num_classes)
  item_bytes = 8 + 8 + 8 + 4 * 4 * 3  # score, position, id, image
  for batch in _stream(20000, 500, num_classes, seed=3):
    selector.add(batch['label'], batch['score'], id=batch['id'], image=batch['image'])
    assert selector.held_counts().max() <= k
    assert selector.held_nbytes() <= k * num_classes * item_bytes
  assert selector.seen == 20000
  assert selector.held_counts().tolist() == [k] * num_classes


def test_streams_a_large_source_without_holding_it():
  num, batch_size = 200_000, 1000
  source_bytes = num * (4 * 4 * 3 + 8 + 8 + 8)
  tracemalloc.start()
  try:
    result = topk.top_k_per_class(_stream(num, batch_size, 10, seed=4), k=100, num_classes=10)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert result.counts.tolist() == [100] * 10
  assert peak < source_bytes / 10, f'peak {peak} bytes for a {source_bytes}-byte source'


def test_short_classes_are_reported(caplog):
  rng = np.random.default_rng(5)
  labels = np.concatenate([np.repeat(np.arange(4), 20), np.full(3, 4)])  # class 4: 3 samples
  batch = {'label': labels, 'score': rng.random(labels.size), 'id': np.arange(labels.size)}
  with caplog.at_level(logging.WARNING):
    result = topk.top_k_per_class([batch], k=10, num_classes=6)
  assert result.counts.tolist() == [10, 10, 10, 10, 3, 0]
  assert result.short_classes == {4: 3, 5: 0}
  assert '{4: 3, 5: 0}' in caplog.text
  with pytest.raises(ValueError, match=r'fewer than K=10.*\{4: 3, 5: 0\}'):
    topk.top_k_per_class([batch], k=10, num_classes=6, require_full=True)


def test_rejects_bad_batches():
  selector = topk.TopKPerClass(3, 2)
  with pytest.raises(ValueError, match='label 2'):
    selector.add(np.array([0, 2]), np.array([0.1, 0.2]))
  with pytest.raises(ValueError, match='NaN at batch row 1'):
    selector.add(np.array([0, 1]), np.array([0.1, np.nan]))
  with pytest.raises(ValueError, match="payload 'id'"):
    selector.add(np.array([0, 1]), np.array([0.1, 0.2]), id=np.arange(3))
  selector.add(np.array([0, 1]), np.array([0.1, 0.2]), id=np.arange(2))
  with pytest.raises(ValueError, match='payload changed'):
    selector.add(np.array([0, 1]), np.array([0.1, 0.2]), id=np.arange(2.0))


def test_empty_result_keeps_payload_shapes():
  selector = topk.TopKPerClass(3, 2)
  selector.add(np.zeros(0, np.int64), np.zeros(0), image=np.zeros((0, 2, 2, 1), np.uint8))
  result = selector.result()
  assert result.payload['image'].shape == (0, 2, 2, 1)
  assert result.short_classes == {0: 0, 1: 0}


def test_infinite_scores_are_ordinary_values():
  labels = np.zeros(4, np.int64)
  result = topk.top_k_per_class(
      [{'label': labels, 'score': np.array([-np.inf, 0.5, np.inf, -np.inf])}], 3, 1)
  assert result.positions.tolist() == [2, 1, 0]
