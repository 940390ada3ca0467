"""Class-conditional Gaussian fit of an image set (Gowal et al., 2021, App. D).

The paper's cheapest "generator": per class, project the images onto their leading principal
components, fit a Gaussian there, sample it, map back to pixels and clip to [0, 1]. The samples are
blurry and unrealistic, yet mixed with real data (α = 0.8 real) they still improve robustness
(Fig. 3(a)), which is why the fit is part of the method and of the one-command pipeline.

Number of components. Each class uses k = min(n_components, D, n_c - 1) components, where D is the
number of pixel values per image and n_c the class's sample count: n_c centred points span at most
n_c - 1 dimensions, so further components would have zero variance and an arbitrary direction.

Class balance. `sample` assigns classes round-robin over the global sample index (sample i gets
class i mod C), so every class gets floor(n / C) or ceil(n / C) samples exactly, rather than only
in expectation as with uniform class draws; the order inside each batch is shuffled.

Storage is a plain .npz of numeric arrays (no pickle), read back with allow_pickle=False.
"""
import dataclasses
import io
import os
from typing import Iterator

import numpy as np

from data import files

_FORMAT_VERSION = 1
_FIELDS = ('image_shape', 'centres', 'components', 'num_components', 'mean', 'covariance',
           'explained_variance', 'counts')
# Above this many samples per dimension, the PCA diagonalises the D x D scatter matrix (built
# blockwise) instead of taking the SVD of the n x D data, whose left factor would cost n x D memory.
_SCATTER_RATIO = 4
_SCATTER_BLOCK = 8192


@dataclasses.dataclass(frozen=True)
class GaussianFit:
  """Per-class PCA and Gaussian; arrays are indexed by class first.

  Classes may use fewer than K = components.shape[1] components; the unused rows and columns are
  zero and `num_components[c]` says how many are real.

  Attributes:
    image_shape: (H, W, C) of one image.
    centres: (classes, D) float64 class means in [0, 1] pixel space (the PCA centre).
    components: (classes, K, D) float32 orthonormal principal axes, one per row (float32 halves
      the file: 200 axes x 3072 pixels x 100 classes is 250 MB for CIFAR-100).
    num_components: (classes,) int64 components used by each class.
    mean: (classes, K) float64 mean of the projected training images (zero up to rounding).
    covariance: (classes, K, K) float64 covariance of the projected images (ddof 1).
    explained_variance: (classes, K) float64 variance along each axis, as scikit-learn reports it.
    counts: (classes,) int64 training images per class.
  """
  image_shape: tuple
  centres: np.ndarray
  components: np.ndarray
  num_components: np.ndarray
  mean: np.ndarray
  covariance: np.ndarray
  explained_variance: np.ndarray
  counts: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(self.centres.shape[0])


# ------------------------------------------------------------------------------------------------
# PCA
# ------------------------------------------------------------------------------------------------

def pca(x, n_components):
  """Principal components of the rows of `x`.

  Args:
    x: (n, d) array, n >= 2.
    n_components: upper bound on the components kept; the result has min(n_components, d, n - 1).

  Returns:
    (centre (d,), components (k, d) orthonormal rows, explained_variance (k,)), in decreasing order
    of variance. Each component's sign is fixed so that its largest-magnitude entry is positive,
    which makes the output deterministic (scikit-learn's convention differs only by sign).
  """
  x = np.asarray(x)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f'pca needs an (n >= 2, d) array, got shape {x.shape}')
  n, d = x.shape
  k = min(int(n_components), d, n - 1)
  if k < 1:
    raise ValueError(f'n_components must be >= 1, got {n_components}')
  centre = x.mean(axis=0, dtype=np.float64)
  if n > _SCATTER_RATIO * d:
    components, variance = _pca_scatter(x, centre, k)
  else:
    components, variance = _pca_svd(x, centre, k)
  return centre, _fix_signs(components), variance


def _pca_svd(x, centre, k):
  """SVD of the centred data: the most accurate route when n is not much larger than d."""
  _, s, vt = np.linalg.svd(np.asarray(x, np.float64) - centre, full_matrices=False)
  return vt[:k], s[:k] ** 2 / (x.shape[0] - 1)


def _pca_scatter(x, centre, k):
  """Eigenvectors of the covariance, accumulated in blocks so memory stays O(d^2 + block * d)."""
  d = x.shape[1]
  scatter = np.zeros((d, d), np.float64)
  for lo in range(0, x.shape[0], _SCATTER_BLOCK):
    block = np.asarray(x[lo:lo + _SCATTER_BLOCK], np.float64) - centre
    scatter += block.T @ block
  eigval, eigvec = np.linalg.eigh(scatter / (x.shape[0] - 1))
  order = np.argsort(eigval)[::-1][:k]
  return eigvec[:, order].T, np.maximum(eigval[order], 0.0)


def _fix_signs(components):
  rows = np.arange(components.shape[0])
  signs = np.sign(components[rows, np.argmax(np.abs(components), axis=1)])
  signs[signs == 0] = 1.0
  return components * signs[:, None]


# ------------------------------------------------------------------------------------------------
# Fit
# ------------------------------------------------------------------------------------------------

def fit(images, labels, num_classes, n_components=200) -> GaussianFit:
  """Fits one PCA + Gaussian per class.

  Args:
    images: (N, H, W, C) uint8 in [0, 255] or float in [0, 1].
    labels: (N,) integer labels in [0, num_classes).
    num_classes: number of classes; every class needs at least 2 images.
    n_components: components per class before the min(D, n_c - 1) cap (paper: 200).

  Returns:
    The fit, ready for `save` and `sample`.
  """
  images, labels, scale = _check_inputs(images, labels, num_classes)
  flat = images.reshape(images.shape[0], -1)
  # Converting one class at a time keeps the float copy to a single class's images.
  per_class = [_fit_class(flat[labels == c].astype(np.float64) * scale, n_components)
               for c in range(num_classes)]
  return _stack(per_class, images.shape[1:])


def _check_inputs(images, labels, num_classes):
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise ValueError(f'images must be NHWC (4 dimensions), got shape {images.shape}')
  if labels.shape != (images.shape[0],):
    raise ValueError(f'labels must have shape ({images.shape[0]},), got {labels.shape}')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {labels.dtype}')
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f'label {bad[0]} is outside [0, {num_classes})')
  if images.dtype == np.uint8:
    scale = 1.0 / 255.0
  elif np.issubdtype(images.dtype, np.floating):
    scale = 1.0
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
      raise ValueError(f'float images must lie in [0, 1], found values in [{lo}, {hi}]')
  else:
    raise ValueError(f'images must be uint8 or float, got dtype {images.dtype}')
  counts = np.bincount(labels, minlength=num_classes)
  if np.any(counts < 2):
    c = int(np.argmax(counts < 2))
    raise ValueError(f'class {c} has {counts[c]} images; the fit needs at least 2 per class')
  return images, labels, scale


def _fit_class(x, n_components):
  centre, components, variance = pca(x, n_components)
  z = (x - centre) @ components.T
  covariance = np.atleast_2d(np.cov(z, rowvar=False))
  return dict(centre=centre, components=components, variance=variance, mean=z.mean(axis=0),
              covariance=covariance, count=x.shape[0])


def _stack(per_class, image_shape):
  """Zero-pads classes to a common number of components so the fit is a few dense arrays."""
  num_classes, d = len(per_class), per_class[0]['centre'].shape[0]
  k_max = max(p['components'].shape[0] for p in per_class)
  components = np.zeros((num_classes, k_max, d), np.float32)
  mean = np.zeros((num_classes, k_max))
  covariance = np.zeros((num_classes, k_max, k_max))
  variance = np.zeros((num_classes, k_max))
  for c, p in enumerate(per_class):
    k = p['components'].shape[0]
    components[c, :k] = p['components']
    mean[c, :k] = p['mean']
    covariance[c, :k, :k] = p['covariance']
    variance[c, :k] = p['variance']
  return GaussianFit(
      image_shape=tuple(int(s) for s in image_shape),
      centres=np.stack([p['centre'] for p in per_class]),
      components=components,
      num_components=np.array([p['components'].shape[0] for p in per_class], np.int64),
      mean=mean, covariance=covariance, explained_variance=variance,
      counts=np.array([p['count'] for p in per_class], np.int64))


# ------------------------------------------------------------------------------------------------
# Save / load
# ------------------------------------------------------------------------------------------------

def save(gaussian_fit: GaussianFit, path) -> None:
  """Writes the fit as an .npz of plain arrays, atomically (a crash leaves no half file); local
  or gs://."""
  path = os.fspath(path)
  arrays = {name: np.asarray(getattr(gaussian_fit, name)) for name in _FIELDS}
  arrays['format_version'] = np.array(_FORMAT_VERSION)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.write_atomic(path, buffer.getvalue())


def load(path) -> GaussianFit:
  """Reads a fit written by `save`; never unpickles."""
  path = os.fspath(path)
  with files.open_file(path, 'rb') as f:
    raw = f.read()
  with np.load(io.BytesIO(raw), allow_pickle=False) as data:
    missing = [k for k in _FIELDS + ('format_version',) if k not in data.files]
    if missing:
      raise ValueError(f'{path}: not a Gaussian fit, missing key(s) {missing}')
    version = int(data['format_version'])
    if version != _FORMAT_VERSION:
      raise ValueError(f'{path}: format_version {version}, expected {_FORMAT_VERSION}')
    fields = {k: data[k] for k in _FIELDS}
  fields['image_shape'] = tuple(int(s) for s in fields['image_shape'])
  _check_loaded(path, fields)
  return GaussianFit(**fields)


def _check_loaded(path, f):
  classes, k, d = f['components'].shape
  expected = {'centres': (classes, d), 'num_components': (classes,), 'mean': (classes, k),
              'covariance': (classes, k, k), 'explained_variance': (classes, k),
              'counts': (classes,)}
  for key, shape in expected.items():
    if f[key].shape != shape:
      raise ValueError(f'{path}: key {key!r} has shape {f[key].shape}, expected {shape}')
  if int(np.prod(f['image_shape'])) != d:
    raise ValueError(f'{path}: key \'image_shape\' {f["image_shape"]} does not hold {d} values')


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------

def sampling_factors(gaussian_fit: GaussianFit):
  """Per class, a matrix L with L L^T = covariance (via eigh, robust to singular covariances)."""
  factors = []
  for c in range(gaussian_fit.num_classes):
    k = int(gaussian_fit.num_components[c])
    eigval, eigvec = np.linalg.eigh(gaussian_fit.covariance[c, :k, :k])
    # Eigenvalues at rounding level (constant pixels give exactly-zero variance) become zero.
    eigval[eigval < 1e-12 * max(eigval.max(), 0.0)] = 0.0
    factors.append(eigvec * np.sqrt(eigval))
  return factors


def sample_latent(gaussian_fit: GaussianFit, label, n, rng, factors=None):
  """Draws n points of class `label` from its Gaussian in the reduced (PCA) space: (n, k)."""
  factors = sampling_factors(gaussian_fit) if factors is None else factors
  k = int(gaussian_fit.num_components[label])
  eps = rng.standard_normal((n, k))
  return gaussian_fit.mean[label, :k] + eps @ factors[label].T


def decode(gaussian_fit: GaussianFit, label, z):
  """Inverts the PCA: (n, k) reduced points of one class -> (n, D) float pixels, unclipped."""
  k = int(gaussian_fit.num_components[label])
  return gaussian_fit.centres[label] + z @ gaussian_fit.components[label, :k]


def sample(gaussian_fit: GaussianFit, n, *, seed, batch_size=1024) -> Iterator[tuple]:
  """Streams n class-balanced samples as (uint8 NHWC images, int64 labels) batches.

  Only one batch is alive at a time, so any n fits in memory. Batch b draws from its own
  generator seeded with (seed, b): a batch can be regenerated alone (`sample_batch`), e.g. when
  an interrupted shard writer resumes, but the stream depends on batch_size as well as on seed.

  Args:
    gaussian_fit: the fit.
    n: total number of samples.
    seed: non-negative integer.
    batch_size: samples per yielded batch (the last one may be smaller).
  """
  if n < 0 or batch_size < 1 or seed < 0:
    raise ValueError(f'need n >= 0, batch_size >= 1 and seed >= 0; got {n}, {batch_size}, {seed}')
  factors = sampling_factors(gaussian_fit)
  for b in range(-(-n // batch_size)):
    yield sample_batch(gaussian_fit, b, seed=seed, batch_size=batch_size, factors=factors,
                       count=min(batch_size, n - b * batch_size))


def sample_batch(gaussian_fit: GaussianFit, b, *, seed, batch_size, factors=None, count=None):
  """Batch b of the stream `sample` draws (`count` of its rows; all by default): samples
  b * batch_size + i of class (b * batch_size + i) mod classes, shuffled, from the generator
  seeded with (seed, b)."""
  factors = sampling_factors(gaussian_fit) if factors is None else factors
  lo = b * batch_size
  rng = np.random.default_rng([seed, b])
  labels = np.arange(lo, lo + (batch_size if count is None else count),
                     dtype=np.int64) % gaussian_fit.num_classes
  rng.shuffle(labels)
  images = np.empty((labels.size, gaussian_fit.centres.shape[1]), np.uint8)
  for c in range(gaussian_fit.num_classes):
    where = np.nonzero(labels == c)[0]
    if where.size:
      z = sample_latent(gaussian_fit, c, where.size, rng, factors)
      images[where] = quantise(decode(gaussian_fit, c, z))
  return images.reshape((labels.size,) + gaussian_fit.image_shape), labels


def quantise(x):
  """Clips float pixels to [0, 1] and rounds to the nearest uint8 level."""
  return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
