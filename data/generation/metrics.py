"""Algorithm 1 of the paper (complementarity and coverage) and a per-class sample grid.

The paper (Gowal, Rebuffi et al., 2021, App. D, "Diversity and complementarity") measures how a
generated set sits relative to the real data by nearest neighbours in a feature space:

  "we also decide to compute the proportion of nearest neighbors in perceptual space: given equal
  Inception metrics, a better generative model would produce samples that are equally likely to be
  close to training, testing or generated images. In an attempt to estimate the coverage of the
  real data distribution, we also compute the proportion of nearest neighbors that are unique"

and describes the protocol in the paragraph before Algorithm 1:

  "First, we sample 10K images from the train set of CIFAR-10 (uniformly across classes) and take
  the full test set of CIFAR-10. [...] We use the activations from the last pooling operation and
  compute their top-100 PCA components [...]. Finally, for each generative model, we sample 10K
  images from their 1M dataset (class-balanced as well) and pass them through the pipeline composed
  of the Inception network and the PCA projection computed on the original data. The left-most
  three columns (entitled "complementarity") are computed by finding, for each generated sample,
  its closest neighbor in the PCA-reduced feature space to any image from the set of 30K - 1 images
  composed of train, test and generated sets. [...] The middle set of two columns (entitled
  "coverage") is computed by finding, for each generated sample, its closest neighbor [...] We
  then measure the number of unique neighbors matched in both sets."

Algorithm 1, as printed (inputs D_train, D_test, the distribution D^, N and features g):

   1: D_self <- {x_i ~ D^}_{i=1..N}                    pick N samples from D^
   2: D̄_train ⊆ D_train, |D̄_train| = N                 pick N samples from D_train
   3: D̄_test ⊆ D_test, |D̄_test| = N                    (printed "⊆ Dtrain": a typo)
   4: c_train, c_test, c_self <- 0;  5: V_train, V_test <- {}
   6: for x_i in D_self do
   7:   D̄_self = D_self \\ {x_i}
   8:   s* = argmin_{s in {train, test, self}} min_{x' in D̄_s} ||g(x_i) - g(x')||_2
   9:   c_s* <- c_s* + 1/N
  10:   V_train <- V_train ∪ {argmin_{x' in D̄_train} ||g(x_i) - g(x')||_2}
  11:   V_test <- V_test ∪ {argmin_{x' in D̄_test} ||g(x_i) - g(x')||_2}
  13: v_train = |V_train| / N,  v_test = |V_test| / N

So the coverage search of lines 10-11 is within D̄_train alone and within D̄_test alone, not in
their union; that is what `algorithm1` does. (The prose's "closest neighbor [...] to any image
from the train and test sets" could be read as the union, but then v_train + v_test <= 1, which
Table 1's mixup row, 90.43% + 45.61%, rules out.) Ties, which the paper leaves open, go to the
first set in the order train, test, self, and to the lowest index inside a set.

Footnote 15: "sampling 2 sets of 10K points from a uniform distribution U[0,1] between 0 and 1
yields in average a proportion of unique nearest neighbors equal to 55.6%" -- one-dimensional
points; the exact large-N value is 5/9 (a reference point's Voronoi cell has length (G1 + G2) / 2
with exponential gaps, and it is hit by none of N queries with probability E[exp(-(E1 + E2)/2)] =
(2/3)^2). Footnote 16: "the CIFAR-10 train set covers 52.27% of the test set, while the test set
covers 52.08% of the train set."

Defaults here follow the paragraph above: N samples per set drawn class-balanced
(`class_balanced_indices`), features g = any callable (the method uses the non-robust classifier's
penultimate activations, `models/features.py`), reduced to 100 principal components fitted on the
2N real feature vectors (`FeaturePCA`), Euclidean distance.
"""
import dataclasses
import io
import os
from typing import Callable, Optional

import numpy as np
from PIL import Image

from data import files
from data.generation import gaussian_fit

_BLOCK = 2048
KEYS = ('c_train', 'c_test', 'c_self', 'v_train', 'v_test')


# ------------------------------------------------------------------------------------------------
# Nearest neighbours
# ------------------------------------------------------------------------------------------------

def nearest(queries, pool, *, exclude_self: bool = False, block_size: int = _BLOCK):
  """Each query's nearest row of `pool`: (squared distance (n,) float64, index (n,) int64).

  The search runs over (block_size x block_size) float64 tiles of |p|^2 - 2 q.p (|q|^2 does not
  change a query's argmin), so memory is O(block_size^2) and 10K x 10K points in 100 dimensions
  take a few seconds; the returned distance is then recomputed directly from the chosen pair.
  float32 tiles would be twice as fast but lose the neighbour order when neighbours are much
  closer than the points' norms (10K points in [0, 1]: spacings of 1e-4), so they are not used.
  Ties go to the lowest pool index. `exclude_self`: the pool is the query set itself
  and a point may not be its own neighbour.
  """
  queries, pool = _as_features(queries, 'queries'), _as_features(pool, 'pool')
  if queries.shape[1] != pool.shape[1]:
    raise ValueError(f'queries have {queries.shape[1]} features, pool {pool.shape[1]}')
  if exclude_self and pool.shape != queries.shape:
    raise ValueError('exclude_self needs the pool to be the query set itself (same shape)')
  if not len(pool) or (exclude_self and len(pool) < 2):
    raise ValueError(f'pool of {len(pool)} points has no neighbour to offer')
  p_sq = np.einsum('ij,ij->i', pool, pool)
  best = np.full(len(queries), np.inf)
  where = np.zeros(len(queries), np.int64)
  for qlo in range(0, len(queries), block_size):
    q = queries[qlo:qlo + block_size]
    rows = np.arange(len(q))
    for plo in range(0, len(pool), block_size):
      d = q @ pool[plo:plo + block_size].T
      d *= -2.0
      d += p_sq[None, plo:plo + d.shape[1]]
      if exclude_self:
        cols = rows + qlo - plo
        inside = (cols >= 0) & (cols < d.shape[1])
        d[rows[inside], cols[inside]] = np.inf
      j = np.argmin(d, axis=1)
      dj = d[rows, j]
      better = dj < best[qlo:qlo + len(q)]   # strict: an earlier (lower) index keeps a tie
      best[qlo:qlo + len(q)][better] = dj[better]
      where[qlo:qlo + len(q)][better] = j[better] + plo
  exact = np.einsum('ij,ij->i', queries - pool[where], queries - pool[where])
  return exact, where


def _equal_size(arrays, seed):
  n = min(len(a) for a in arrays)
  rng = np.random.default_rng(seed)
  return [a if len(a) == n else a[np.sort(rng.choice(len(a), n, replace=False))] for a in arrays]


def _as_features(x, name):
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name}: features must be a 2-D (n, d) array, got shape {x.shape}')
  return x


# ------------------------------------------------------------------------------------------------
# Algorithm 1
# ------------------------------------------------------------------------------------------------

def algorithm1(train, test, generated, *, block_size: int = _BLOCK) -> dict:
  """The paper's Algorithm 1 on feature vectors g(x) of N points from each set.

  Args:
    train: (N, d) features of D̄_train.
    test: (N, d) features of D̄_test.
    generated: (N, d) features of D_self.
    block_size: tile size of the nearest-neighbour search.

  Returns:
    {'c_train', 'c_test', 'c_self'}: the share of generated points whose nearest neighbour lies in
    D̄_train, D̄_test or D_self without the point itself (they sum to 1; ideal 1/3 each), and
    {'v_train', 'v_test'}: the number of distinct points of D̄_train (D̄_test) that are the
    nearest neighbour, within that set, of some generated point, divided by N.
  """
  train, test = _as_features(train, 'train'), _as_features(test, 'test')
  generated = _as_features(generated, 'generated')
  n = len(generated)
  if len(train) != n or len(test) != n:
    raise ValueError('Algorithm 1 takes N points from each set; got train '
                     f'{len(train)}, test {len(test)}, generated {n}')
  if n < 2:
    raise ValueError(f'Algorithm 1 needs N >= 2 points per set, got {n}')
  d_train, nn_train = nearest(generated, train, block_size=block_size)
  d_test, nn_test = nearest(generated, test, block_size=block_size)
  d_self, _ = nearest(generated, generated, exclude_self=True, block_size=block_size)
  closest = np.argmin(np.stack([d_train, d_test, d_self]), axis=0)  # ties: train, test, self
  c = np.bincount(closest, minlength=3) / n
  return {'c_train': float(c[0]), 'c_test': float(c[1]), 'c_self': float(c[2]),
          'v_train': len(np.unique(nn_train)) / n, 'v_test': len(np.unique(nn_test)) / n}


# ------------------------------------------------------------------------------------------------
# Sampling and features
# ------------------------------------------------------------------------------------------------

def class_balanced_indices(labels, n: int, num_classes: int, *, seed: int = 0,
                           name: str = 'set') -> np.ndarray:
  """n indices into `labels`, drawn without replacement and spread evenly over the classes (App.
  D: "uniformly across classes"): n // C from every class, the n mod C left over going to classes
  of a seeded permutation. A class with fewer examples than its share gives all it has and the
  others share the rest equally (digits' test split has 39 to 58 per class: n = 500 takes it
  whole, as the paper takes the whole CIFAR-10 test set). Returned sorted."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'{name}: labels must be 1-D, got shape {labels.shape}')
  n, num_classes = int(n), int(num_classes)
  if not 1 <= n <= len(labels):
    raise ValueError(f'{name}: n = {n} samples asked from a set of {len(labels)}')
  rng = np.random.default_rng(seed)
  members = [np.flatnonzero(labels == c) for c in range(num_classes)]
  if sum(len(m) for m in members) < n:
    raise ValueError(f'{name}: only {sum(len(m) for m in members)} labels lie in '
                     f'[0, {num_classes}), {n} asked')
  quota = _balanced_quota(np.array([len(m) for m in members]), n, rng)
  chosen = [rng.choice(m, q, replace=False) for m, q in zip(members, quota)]
  return np.sort(np.concatenate(chosen))


def _balanced_quota(sizes, n, rng):
  """Per-class counts summing to n, each <= its class size, as equal as the sizes allow."""
  quota = np.zeros_like(sizes)
  open_ = np.ones(len(sizes), bool)
  while open_.any():
    share, extra = divmod(n - quota[~open_].sum(), open_.sum())
    small = open_ & (sizes <= share)
    if not small.any():
      quota[open_] = share
      quota[rng.permutation(np.flatnonzero(open_))[:extra]] += 1
      break
    quota[small], open_[small] = sizes[small], False
  return quota


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


def metrics_from_features(train, test, generated, *, n_components: int = 100, seed: int = 0,
                          block_size: int = _BLOCK) -> dict:
  """The paper's pipeline on N feature vectors per set (already sampled, e.g. with
  `class_balanced_indices`): PCA fitted on the 2N real vectors (train and test together, "the PCA
  projection computed on the original data"), then `algorithm1` in the reduced space. Returns
  the five numbers of `algorithm1` and 'num_per_set' (N).

  Sets of different sizes are first cut to the smallest by a uniform (not class-balanced)
  seeded subsample; pass class-balanced sets of equal size to follow App. D."""
  train, test = _as_features(train, 'train'), _as_features(test, 'test')
  generated = _as_features(generated, 'generated')
  train, test, generated = _equal_size([train, test, generated], seed)
  project = FeaturePCA.fit(np.concatenate([train, test]), n_components)
  out = algorithm1(project(train), project(test), project(generated), block_size=block_size)
  out['num_per_set'] = float(len(train))
  return out


def data_metrics(images: dict, labels: dict, feature_fn: Optional[Callable], num_classes: int,
                 n: int, *, n_components: int = 100, seed: int = 0) -> dict:
  """End to end on images: class-balanced N from each of images['train'], ['test'] and
  ['generated'] (labels[...] alike; generated ones are the pseudo-labels), features of only those
  3N images (`feature_fn`: a batch -> (b, d); None = raw pixels), then `metrics_from_features`."""
  feats = {}
  for offset, key in enumerate(('train', 'test', 'generated')):
    index = class_balanced_indices(labels[key], n, num_classes, seed=seed + offset, name=key)
    chosen = np.asarray(images[key])[index]
    feats[key] = (batched_features(feature_fn, chosen) if feature_fn is not None
                  else chosen.reshape(len(chosen), -1))
  return metrics_from_features(feats['train'], feats['test'], feats['generated'],
                               n_components=n_components)


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
  directory = os.path.dirname(os.fspath(path))
  if directory:
    files.makedirs(directory)
  buffer = io.BytesIO()  # PIL writes local files only; the path may be gs://
  Image.fromarray(grid).save(buffer, format='PNG')
  with files.open_file(os.fspath(path), 'wb') as f:
    f.write(buffer.getvalue())
