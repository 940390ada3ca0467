"""Tests for the class-conditional Gaussian fit (data/gaussian_fit.py)."""
import types
import tracemalloc

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from data.generation import gaussian_fit


@pytest.fixture(scope='module')
def digits():
  d = load_digits()
  return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)


@pytest.fixture(scope='module')
def digits_fit(digits):
  return gaussian_fit.fit(*digits, num_classes=10)


def _synthetic(num_classes=3, per_class=200, shape=(4, 4, 3), seed=0):
  """Correlated Gaussian images around mid-grey, far enough from 0 and 1 that nothing clips."""
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  images, labels = [], []
  for c in range(num_classes):
    mixing = rng.normal(size=(d, d)) * 0.03 / np.sqrt(d)
    x = rng.uniform(0.4, 0.6, d) + rng.normal(size=(per_class, d)) @ mixing.T
    images.append(x.reshape((per_class,) + shape))
    labels.append(np.full(per_class, c))
  return np.concatenate(images).astype(np.float32), np.concatenate(labels)


# ------------------------------------------------------------------------------------------------
# PCA against scikit-learn
# ------------------------------------------------------------------------------------------------

def _assert_matches_sklearn(x, n_components):
  centre, components, variance = gaussian_fit.pca(x, n_components)
  ref = PCA(n_components=components.shape[0], svd_solver='full').fit(x.astype(np.float64))
  np.testing.assert_allclose(centre, ref.mean_, atol=1e-12)
  np.testing.assert_allclose(variance, ref.explained_variance_, rtol=1e-8, atol=1e-12)
  # A direction is only defined up to sign, and only when its variance is non-zero and distinct
  # from its neighbours'; compare those one by one and the whole non-degenerate subspace at once.
  informative = variance > 1e-9 * variance[0]
  gaps = np.abs(np.diff(variance)) > 1e-6 * variance[0]
  distinct = informative & np.r_[True, gaps] & np.r_[gaps, True]
  dots = np.abs(np.sum(components * ref.components_, axis=1))
  np.testing.assert_allclose(dots[distinct], 1.0, atol=1e-7)
  ours, theirs = components[informative], ref.components_[informative]
  np.testing.assert_allclose(ours.T @ ours, theirs.T @ theirs, atol=1e-7)
  np.testing.assert_allclose(components @ components.T, np.eye(len(components)), atol=1e-10)


def test_pca_matches_sklearn_per_class_svd_route(digits):
  images, labels = digits
  for c in range(10):  # about 180 images x 64 pixels: the SVD route.
    _assert_matches_sklearn(images[labels == c].reshape(-1, 64), 200)


def test_pca_matches_sklearn_scatter_route(digits):
  images, _ = digits  # 1797 x 64, more than 4 rows per dimension: the scatter-matrix route.
  _assert_matches_sklearn(images.reshape(-1, 64), 40)


def test_pca_sign_convention_is_deterministic(digits):
  _, components, _ = gaussian_fit.pca(digits[0].reshape(-1, 64), 10)
  rows = np.arange(10)
  assert np.all(components[rows, np.argmax(np.abs(components), axis=1)] > 0)


def test_component_count_is_capped_by_dims_and_class_size(digits, digits_fit):
  images, labels = digits
  assert digits_fit.num_components.tolist() == [64] * 10  # about 180 images of 64 pixels each
  assert gaussian_fit.fit(images, labels, 10, n_components=20).num_components.tolist() == [20] * 10
  keep = np.concatenate([np.nonzero(labels == 0)[0][:5], np.nonzero(labels == 1)[0]])
  small = gaussian_fit.fit(images[keep], labels[keep], 2)
  assert small.num_components.tolist() == [4, 64]  # 5 images span 4 dimensions.
  assert small.components.shape == (2, 64, 64)
  assert not small.components[0, 4:].any()


# ------------------------------------------------------------------------------------------------
# Sampling statistics
# ------------------------------------------------------------------------------------------------

def _assert_within_sampling_error(z, mean, cov, mean_sigmas=5.0, cov_sigmas=6.0):
  """Sample mean and covariance of z (n, k) against the Gaussian they were drawn from.

  Standard errors: Var(mean_j) = cov_jj / n and, for a Gaussian, Var(S_ij) = (cov_ij^2 +
  cov_ii cov_jj) / (n - 1). With 10 classes x 64 means the largest of 640 |N(0, 1)| is about 3.5;
  5 sigmas keeps a false alarm below 1e-3. The 10 x 2080 covariance entries get 6 sigmas
  (false alarm below 1e-4 even as if independent). Zero-variance axes must stay at zero.
  """
  n = z.shape[0]
  diag = np.diag(cov)
  mean_se = np.sqrt(diag / n)
  cov_se = np.sqrt((cov ** 2 + np.outer(diag, diag)) / (n - 1))
  floor = 1e-9 * diag.max()  # rounding on axes whose variance is zero
  assert np.all(np.abs(z.mean(0) - mean) <= mean_sigmas * mean_se + floor)
  assert np.all(np.abs(np.cov(z, rowvar=False) - cov) <= cov_sigmas * cov_se + floor)


def test_latent_samples_reproduce_class_mean_and_covariance(digits_fit):
  rng = np.random.default_rng(0)
  factors = gaussian_fit.sampling_factors(digits_fit)
  for c in range(10):
    k = digits_fit.num_components[c]
    z = gaussian_fit.sample_latent(digits_fit, c, 20000, rng, factors)
    _assert_within_sampling_error(z, digits_fit.mean[c, :k], digits_fit.covariance[c, :k, :k])


def test_fitted_covariance_is_the_explained_variance(digits_fit):
  # Per-class PCA scores are centred and decorrelated by construction.
  for c in range(10):
    np.testing.assert_allclose(digits_fit.mean[c], 0.0, atol=1e-12)
    np.testing.assert_allclose(digits_fit.covariance[c],
                               np.diag(digits_fit.explained_variance[c]), atol=1e-12)


def test_uint8_samples_reproduce_statistics_in_pca_space():
  """End to end through decode, clip and uint8: project the stored images back per class."""
  images, labels = _synthetic()
  fit = gaussian_fit.fit(images, labels, 3, n_components=10)
  assert fit.num_components.tolist() == [10, 10, 10]
  batches = list(gaussian_fit.sample(fit, 30000, seed=3, batch_size=4096))
  out = np.concatenate([b[0] for b in batches]).reshape(30000, -1) / 255.0
  out_labels = np.concatenate([b[1] for b in batches])
  assert 0 < out.min() and out.max() < 1  # no clipping here, so only rounding adds noise.
  rounding_var = (1 / 255) ** 2 / 12  # uniform rounding error, isotropic after projection.
  for c in range(3):
    z = (out[out_labels == c] - fit.centres[c]) @ fit.components[c].T
    _assert_within_sampling_error(z, fit.mean[c], fit.covariance[c] + rounding_var * np.eye(10))


def test_digit_samples_are_recognisably_class_conditional(digits, digits_fit):
  images, labels = digits
  centroids = np.stack([images[labels == c].reshape(-1, 64).mean(0) for c in range(10)])
  x, y = next(gaussian_fit.sample(digits_fit, 2000, seed=0, batch_size=2000))
  x = x.reshape(2000, 64) / 255.0
  nearest = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
  assert np.mean(nearest == y) > 0.8


# ------------------------------------------------------------------------------------------------
# Streaming, balance, determinism, memory
# ------------------------------------------------------------------------------------------------

def test_sample_batches_shapes_and_class_balance(digits_fit):
  stream = gaussian_fit.sample(digits_fit, 1003, seed=1, batch_size=256)
  assert isinstance(stream, types.GeneratorType)
  batches = list(stream)
  assert [len(b[1]) for b in batches] == [256, 256, 256, 235]
  for images, labels in batches:
    assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
    assert labels.dtype == np.int64 and images.shape[0] == labels.shape[0]
  counts = np.bincount(np.concatenate([b[1] for b in batches]), minlength=10)
  assert counts.sum() == 1003 and set(counts.tolist()) <= {100, 101}


def test_sample_is_deterministic_and_batches_regenerate_alone(digits_fit):
  def take(n, seed):
    return list(gaussian_fit.sample(digits_fit, n, seed=seed, batch_size=100))
  a, b, c = take(300, 7), take(1000, 7), take(300, 8)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert not np.array_equal(a[0][0], c[0][0])


def test_sampling_100k_stays_in_bounded_memory(digits_fit):
  n, batch_size = 100_000, 1000
  whole = n * 64  # bytes of the full uint8 set, which must never exist at once.
  tracemalloc.start()
  try:
    count = 0
    for images, labels in gaussian_fit.sample(digits_fit, n, seed=0, batch_size=batch_size):
      assert len(labels) <= batch_size
      count += len(labels)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert count == n
  assert peak < whole / 4, f'peak {peak} bytes for a {whole}-byte set'


# ------------------------------------------------------------------------------------------------
# Save / load and input checks
# ------------------------------------------------------------------------------------------------

def test_save_load_round_trip_without_pickle(tmp_path, digits_fit):
  path = tmp_path / 'fit.npz'
  gaussian_fit.save(digits_fit, path)
  with np.load(path, allow_pickle=False) as raw:
    assert all(raw[k].dtype.kind != 'O' for k in raw.files)
  loaded = gaussian_fit.load(path)
  assert loaded.image_shape == (8, 8, 1)
  for name in ('centres', 'components', 'num_components', 'mean', 'covariance',
               'explained_variance', 'counts'):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(digits_fit, name))
  first = next(gaussian_fit.sample(digits_fit, 64, seed=0))
  again = next(gaussian_fit.sample(loaded, 64, seed=0))
  np.testing.assert_array_equal(first[0], again[0])
  assert sorted(p.name for p in tmp_path.iterdir()) == ['fit.npz']  # no temp file left.


def test_load_names_file_and_missing_key(tmp_path):
  path = tmp_path / 'bad.npz'
  np.savez(path, centres=np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r'bad\.npz.*missing key'):
    gaussian_fit.load(path)


def test_fit_rejects_bad_inputs(digits):
  images, labels = digits
  with pytest.raises(ValueError, match='class 1 has 1 images'):
    gaussian_fit.fit(images[:3], np.array([0, 0, 1]), 2)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    gaussian_fit.fit(images * 16, labels, 10)
  with pytest.raises(ValueError, match='NHWC'):
    gaussian_fit.fit(images[..., 0], labels, 10)
  with pytest.raises(ValueError, match='label 10'):
    gaussian_fit.fit(images, np.where(labels == 9, 10, labels), 10)


def test_fit_accepts_uint8(digits):
  images, labels = digits
  keep = labels < 2
  as_uint8 = np.rint(images[keep] * 255).astype(np.uint8)
  fit = gaussian_fit.fit(as_uint8, labels[keep], 2, n_components=5)
  as_float = gaussian_fit.fit(as_uint8 / np.float32(255), labels[keep], 2, n_components=5)
  np.testing.assert_allclose(fit.centres[0], as_uint8[labels[keep] == 0].reshape(-1, 64).mean(0)
                             / 255)
  np.testing.assert_allclose(fit.explained_variance, as_float.explained_variance, rtol=1e-5)
