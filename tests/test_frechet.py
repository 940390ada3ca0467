"""Tests for the Fréchet distance between feature sets (data/generation/frechet.py)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data import real
from data.generation import frechet
from data.generation import metrics
from models import features
from models import registry


def _gaussian(rng, n, mean, scales):
  """n draws of N(mean, diag(scales^2)) rotated by a fixed random orthogonal matrix."""
  d = len(scales)
  rotation = np.linalg.qr(np.random.default_rng(99).normal(size=(d, d)))[0]
  return mean + (rng.normal(size=(n, d)) * scales) @ rotation.T


# ------------------------------------------------------------------------------------------------
# Statistics and closed forms
# ------------------------------------------------------------------------------------------------

def test_statistics_are_float64_mean_and_unbiased_covariance():
  x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
  mu, sigma = frechet.statistics(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (3, 3)
  centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
  np.testing.assert_allclose(mu, x.astype(np.float64).sum(0) / 7, rtol=1e-12)
  np.testing.assert_allclose(sigma, centred.T @ centred / 6, rtol=1e-12)   # n - 1
  one = frechet.statistics(x[:, :1])
  assert one[0].shape == (1,) and one[1].shape == (1, 1)


def test_diagonal_gaussians_match_the_closed_form():
  # Commuting covariances: (S1 S2)^{1/2} = diag(sqrt(a b)), so the trace term is
  # sum (sqrt(a) - sqrt(b))^2, summed here coordinate by coordinate.
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  a, b = rng.uniform(0.1, 4.0, size=6), rng.uniform(0.1, 4.0, size=6)
  expected = sum((m1 - m2) ** 2 + (np.sqrt(v1) - np.sqrt(v2)) ** 2
                 for m1, m2, v1, v2 in zip(mu1, mu2, a, b))
  got = frechet.distance_from_statistics(mu1, np.diag(a), mu2, np.diag(b))
  assert got == pytest.approx(expected, rel=1e-10)
  # One dimension by hand: N(0, 4) against N(3, 1): 9 + (2 - 1)^2.
  assert frechet.distance_from_statistics([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(10.0)


def test_full_covariances_match_the_symmetric_form():
  # Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the right side is a symmetric PSD matrix
  # whose root is the square root of its eigenvalues, computed here by eigh alone.
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) * [1, 2, 3, 0.5, 1] + 1.0
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
  diff = a.mean(0) - b.mean(0)
  expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
  assert frechet.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
  assert frechet.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------------------
# Samples
# ------------------------------------------------------------------------------------------------

def test_two_draws_of_one_gaussian_are_close_and_a_shift_is_not():
  rng = np.random.default_rng(3)
  scales, mean = np.linspace(0.5, 2.0, 16), np.zeros(16)
  first, second = _gaussian(rng, 5000, mean, scales), _gaussian(rng, 5000, mean, scales)
  shifted = _gaussian(rng, 5000, mean + 1.0, scales)   # ||shift||^2 = 16
  same, apart = frechet.frechet_distance(first, second), frechet.frechet_distance(first, shifted)
  assert apart == pytest.approx(16.0, rel=0.05)
  # The finite-sample bias is about Tr(S) d / n ~ 0.08 here: well under 2% of the shift.
  assert 0 < same < 0.02 * apart


def test_a_set_against_itself_is_zero():
  x = _gaussian(np.random.default_rng(4), 300, np.arange(32.0), np.linspace(0.1, 3.0, 32))
  mu, sigma = frechet.statistics(x)
  assert abs(frechet.frechet_distance(x, x)) < 1e-6 * np.trace(sigma)
  assert frechet.distance_from_statistics(mu, sigma, mu, sigma) == frechet.frechet_distance(x, x)


def test_fewer_samples_than_dimensions_still_give_a_finite_distance():
  # Rank-deficient covariances (n = 5 < d = 20), the case pytorch-fid's eps * I retry exists for.
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(5, 20)), rng.normal(size=(5, 20)) + 0.5
  d = frechet.frechet_distance(a, b)
  assert np.isfinite(d) and d > 0
  assert abs(frechet.frechet_distance(a, a)) < 1e-4 * np.trace(np.cov(a, rowvar=False))


# ------------------------------------------------------------------------------------------------
# Classifier features of real digits
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def digits_features():
  """A wrn-10-1 trained for 60 Adam steps on the digits training split, its feature function
  (models/features.py, the head's input) and [0, 1] images: the test split's 500 and the first
  1,250 training images (multiples of one batch of 250, so the features compile once)."""
  train, test = real.load('digits', 'train'), real.load('digits', 'test')
  info = real.info('digits')
  model = registry.get_model('wrn-10-1', num_classes=10, mean=info.mean, std=info.std)
  key = jax.random.key(0, impl='rbg')   # RBG keys compile far faster on CPU
  variables = jax.jit(functools.partial(model.init, train=False))(key, jnp.zeros((1, 8, 8, 1)))
  tx = optax.adam(3e-3)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss(params):
      logits, new = model.apply({**variables, 'params': params}, x, train=True,
                                mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (value, new), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(variables['params'], updates)
    return {**variables, **new, 'params': params}, opt_state, value

  images, labels = train['image'].astype(np.float32) / 255.0, train['label']
  opt_state, rng = tx.init(variables['params']), np.random.default_rng(0)
  for _ in range(60):
    i = rng.choice(len(labels), 64, replace=False)
    variables, opt_state, loss = step(variables, opt_state, images[i], labels[i])
  assert float(loss) < 0.5   # it has learnt something: the features are a classifier's (2.3 at 0)
  fn = features.make_feature_fn(model, variables)
  test_images = test['image'].astype(np.float32) / 255.0
  return lambda x: metrics.batched_features(fn, x, batch_size=250), images[:1250], test_images


@pytest.mark.integration
def test_distance_grows_with_gaussian_noise_on_the_images(digits_features):
  """Heusel et al.'s sanity check (their Fig. 3, Gaussian noise): the test split's features
  against those of training digits with more and more pixel noise (one noise draw, scaled)."""
  featurize, clean, test = digits_features
  reference = featurize(test)
  noise = np.random.default_rng(6).normal(size=clean.shape).astype(np.float32)
  levels = (0.0, 0.05, 0.1, 0.2, 0.4)
  dists = [frechet.frechet_distance(reference, featurize(np.clip(clean + s * noise, 0, 1)))
           for s in levels]
  print('Fréchet distance (wrn-10-1 features) per noise level', dict(zip(levels, dists)))
  assert np.all(np.diff(dists) > 0), dists
  assert dists[-1] > 10 * dists[0]


def test_distance_grows_with_gaussian_noise_on_the_features(digits_features):
  featurize, train, test = digits_features
  reference, real_features = featurize(test), featurize(train)
  scale = real_features.std()
  noise = np.random.default_rng(7).normal(size=real_features.shape)
  dists = [frechet.frechet_distance(reference, real_features + s * scale * noise)
           for s in (0.0, 0.1, 0.3, 1.0)]
  assert np.all(np.diff(dists) > 0), dists


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def test_mismatched_feature_dimensions_are_named():
  rng = np.random.default_rng(8)
  with pytest.raises(ValueError, match='feature dimensions differ: a has 4, b has 5'):
    frechet.frechet_distance(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
  with pytest.raises(ValueError, match='mu1 has 4, mu2 3'):
    frechet.distance_from_statistics(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match=r'sigma2 \(d, d\)'):
    frechet.distance_from_statistics(np.zeros(4), np.eye(4), np.zeros(4), np.eye(3))


def test_too_few_samples_and_wrong_shapes_are_refused():
  with pytest.raises(ValueError, match='b: a covariance needs at least 2 feature vectors, got 1'):
    frechet.frechet_distance(np.zeros((3, 2)), np.zeros((1, 2)))
  with pytest.raises(ValueError, match='got 0'):
    frechet.statistics(np.zeros((0, 2)))
  with pytest.raises(ValueError, match=r'2-D \(n, d\) array, got shape \(5,\)'):
    frechet.statistics(np.zeros(5))


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_where_they_are(bad):
  x = np.random.default_rng(9).normal(size=(6, 3))
  x[4, 1] = bad
  with pytest.raises(ValueError, match=r'a: 1 non-finite values \(NaN or inf\), the first at '
                     r'index \(4, 1\)'):
    frechet.frechet_distance(x, x[:5] + 1)
  with pytest.raises(ValueError, match='sigma2: 1 non-finite'):
    frechet.distance_from_statistics(np.zeros(2), np.eye(2), np.zeros(2), [[1.0, bad], [0, 1]])
