"""Data metrics for a generated set: complementarity, coverage and a per-class sample grid.

The paper argues that generated data helps robust training when it is complementary to the
training set (it adds points the training set does not already contain) and covers the real
distribution (it reaches the parts of it that held-out real data occupy). It measures both with
nearest neighbours in a feature space (its Algorithm 1).

Source of the definitions. They are reconstructed from the nearest-neighbour analysis that
Algorithm 1 formalises, as described for the paper's ICLR 2021 workshop version ("Doing More with
Less: Improving Robustness using Generated Data"): for each generated image, find its nearest
neighbour (LPIPS features there) among the training set, the test set and the generated set
itself; an ideal generator gives equal shares, while augmentations land mostly next to training
images. `provenance` reproduces that analysis. Complementarity and coverage are the two ratios it
motivates, each between two equally sized pools so that an ideal generator scores 1/2. Check them
against the text of Algorithm 1 before comparing numbers with the paper's.

  complementarity = share of generated points whose nearest neighbour in (train ∪ test) is a
                    test point.  A generator that copies its training set scores 0.
  coverage        = share of test points whose nearest neighbour in (train ∪ generated) is a
                    generated point.  A generator that misses modes or drifts off the data
                    scores near 0.

Protocol shared by all three: the train, test and generated feature sets are subsampled (seeded,
without replacement) to a common size n, since each ratio compares pool sizes; distances are
Euclidean; a query equidistant from two pools is credited to the one listed first (train before
test before generated), so ties never inflate either metric. The default features are the
non-robust classifier's penultimate activations reduced to 100 principal components fitted on
the real (train and test) features; any other feature function (e.g. Inception) can be plugged in.
"""
import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from data.generation import gaussian_fit

_BLOCK = 1024


# ------------------------------------------------------------------------------------------------
# Nearest neighbours
# ------------------------------------------------------------------------------------------------

def nearest_pool(queries, pools: Sequence[np.ndarray], *, self_pool=None, block_size=_BLOCK):
  """For each query, the index of the pool that holds its nearest neighbour.

  Args:
    queries: (n, d) features.
    pools: sequence of (m_i, d) features.
    self_pool: index of a pool that is the query set itself; each query then skips its own row
      there (a point is not its own neighbour).
    block_size: rows per distance block; memory is O(block_size^2).

  Returns:
    (n,) int64; ties go to the lowest pool index.
  """
  queries = _as_features(queries, 'queries')
  best = np.stack([
      _min_sq_dist(queries, _as_features(p, f'pool {i}'), i == self_pool, block_size)
      for i, p in enumerate(pools)])
  return np.argmin(best, axis=0).astype(np.int64)


def _min_sq_dist(queries, pool, skip_diagonal, block_size):
  """Squared distance from each query to its nearest row of `pool`, computed in blocks."""
  if skip_diagonal and pool.shape != queries.shape:
    raise ValueError('self_pool must be the query set itself (same shape)')
  out = np.full(queries.shape[0], np.inf)
  pool_sq = np.einsum('ij,ij->i', pool, pool)
  for qlo in range(0, queries.shape[0], block_size):
    q = queries[qlo:qlo + block_size]
    q_sq = np.einsum('ij,ij->i', q, q)
    for plo in range(0, pool.shape[0], block_size):
      p = pool[plo:plo + block_size]
      d = q_sq[:, None] - 2.0 * q @ p.T + pool_sq[None, plo:plo + block_size]
      if skip_diagonal:
        rows = np.arange(q.shape[0])
        cols = rows + qlo - plo
        inside = (cols >= 0) & (cols < p.shape[0])
        d[rows[inside], cols[inside]] = np.inf
      np.minimum(out[qlo:qlo + q.shape[0]], d.min(axis=1), out=out[qlo:qlo + q.shape[0]])
  return np.maximum(out, 0.0)


def _as_features(x, name):
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name}: features must be a 2-D (n, d) array, got shape {x.shape}')
  return x


def equal_size(arrays, n=None, seed=0):
  """Subsamples each array (rows, without replacement, order kept) to a common size n.

  n defaults to the smallest size. Arrays already of size n are returned unchanged.
  """
  sizes = [len(a) for a in arrays]
  n = min(sizes) if n is None else int(n)
  if n < 1 or n > min(sizes):
    raise ValueError(f'n must be in [1, {min(sizes)}] for set sizes {sizes}, got {n}')
  rng = np.random.default_rng(seed)
  return [a if len(a) == n else np.asarray(a)[np.sort(rng.choice(len(a), n, replace=False))]
          for a in arrays]


# ------------------------------------------------------------------------------------------------
# Algorithm 1: complementarity and coverage
# ------------------------------------------------------------------------------------------------

def complementarity(train, test, generated, *, n=None, seed=0) -> float:
  """Share of generated points whose nearest real neighbour is a test point (ideal 1/2)."""
  train, test, generated = equal_size([train, test, generated], n, seed)
  return float(np.mean(nearest_pool(generated, [train, test]) == 1))


def coverage(train, test, generated, *, n=None, seed=0) -> float:
  """Share of test points whose nearest neighbour in train ∪ generated is generated (ideal 1/2).
  """
  train, test, generated = equal_size([train, test, generated], n, seed)
  return float(np.mean(nearest_pool(test, [train, generated]) == 1))


def provenance(train, test, generated, *, n=None, seed=0) -> dict:
  """Where generated points find their nearest neighbour: shares of train, test, generated.

  The generated set excludes the query itself. An ideal generator gives about 1/3 each.
  """
  train, test, generated = equal_size([train, test, generated], n, seed)
  where = nearest_pool(generated, [train, test, generated], self_pool=2)
  shares = np.bincount(where, minlength=3) / where.size
  return {'train': float(shares[0]), 'test': float(shares[1]), 'generated': float(shares[2])}


def data_metrics(train, test, generated, *, n=None, seed=0) -> dict:
  """All the nearest-neighbour metrics on one common subsample, as a flat dict of floats."""
  train, test, generated = equal_size([train, test, generated], n, seed)
  shares = provenance(train, test, generated)
  return {
      'complementarity': complementarity(train, test, generated),
      'coverage': coverage(train, test, generated),
      'nn_share_train': shares['train'],
      'nn_share_test': shares['test'],
      'nn_share_generated': shares['generated'],
      'num_per_set': float(len(train)),
  }


# ------------------------------------------------------------------------------------------------
# Default feature pipeline
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeaturePCA:
  """Projection onto principal components fitted on real features."""
  centre: np.ndarray
  components: np.ndarray

  @classmethod
  def fit(cls, real_features, n_components=100):
    centre, components, _ = gaussian_fit.pca(_as_features(real_features, 'real features'),
                                             n_components)
    return cls(centre=centre, components=components)

  def __call__(self, features, block_size=8192):
    features = np.asarray(features)
    out = np.empty((features.shape[0], self.components.shape[0]), np.float64)
    for lo in range(0, features.shape[0], block_size):
      block = np.asarray(features[lo:lo + block_size], np.float64)
      out[lo:lo + block_size] = (block - self.centre) @ self.components.T
    return out


def batched_features(feature_fn: Callable, images, batch_size=256):
  """Applies feature_fn (a batch of images -> (b, d) features) in batches, e.g. a classifier's
  penultimate layer; returns (n, d) float32."""
  outs = []
  for lo in range(0, len(images), batch_size):
    chunk = images[lo:lo + batch_size]
    outs.append(np.asarray(feature_fn(chunk), np.float32).reshape(len(chunk), -1))
  return np.concatenate(outs)


def metrics_from_features(train, test, generated, *, n_components=100, n=None, seed=0) -> dict:
  """The default pipeline: PCA fitted on the real features (train and test together, so neither
  real set is favoured by the projection), then `data_metrics` in the reduced space."""
  train, test, generated = equal_size([train, test, generated], n, seed)
  project = FeaturePCA.fit(np.concatenate([train, test]), n_components)
  return data_metrics(project(train), project(test), project(generated))


# ------------------------------------------------------------------------------------------------
# Sample grid (Fig. 12)
# ------------------------------------------------------------------------------------------------

def sample_grid(images, labels, num_classes, per_class=10, *, pad=1, scale=1, path=None):
  """One row per class with the first `per_class` images of that class, like the paper's Fig. 12.

  Args:
    images: (N, H, W, C) uint8, or float in [0, 1]; C is 1 or 3.
    labels: (N,) integer labels.
    num_classes: number of rows.
    per_class: images per row; a class with fewer leaves its row's tail blank.
    pad: white pixels between and around tiles (before scaling).
    scale: integer nearest-neighbour upscaling, for tiny images such as 8x8 digits.
    path: if given, the grid is also written there as PNG.

  Returns:
    (rows * (H + pad) + pad, per_class * (W + pad) + pad, 3) uint8 scaled by `scale`, ready for
    a TensorBoard image summary (add a leading batch axis).
  """
  images = _to_uint8_rgb(np.asarray(images))
  labels = np.asarray(labels)
  _, h, w, _ = images.shape
  grid = np.full((num_classes * (h + pad) + pad, per_class * (w + pad) + pad, 3), 255, np.uint8)
  for c in range(num_classes):
    for j, i in enumerate(np.nonzero(labels == c)[0][:per_class]):
      top, left = pad + c * (h + pad), pad + j * (w + pad)
      grid[top:top + h, left:left + w] = images[i]
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  if path is not None:
    _write_png(grid, path)
  return grid


def _to_uint8_rgb(images):
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'images must be NHWC with 1 or 3 channels, got shape {images.shape}')
  if images.dtype != np.uint8:
    images = gaussian_fit.quantise(images)
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _write_png(grid, path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  Image.fromarray(grid).save(path, format='PNG')
