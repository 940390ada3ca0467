"""Tests for the data metrics and the sample grid (data/metrics.py)."""
import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from data.generation import gaussian_fit
from data.generation import metrics


@pytest.fixture(scope='module')
def digits():
  d = load_digits()
  return (d.images / 16.0).astype(np.float32)[..., None], d.target.astype(np.int64)


@pytest.fixture(scope='module')
def digit_thirds(digits):
  """Three disjoint random thirds of digits: train, test and an ideal 'generated' set."""
  images, labels = digits
  order = np.random.default_rng(0).permutation(len(images))[:1797 // 3 * 3]
  parts = np.split(order, 3)
  return [images[p] for p in parts], [labels[p] for p in parts]


# ------------------------------------------------------------------------------------------------
# Algorithm 1 on hand-built feature sets
# ------------------------------------------------------------------------------------------------

# One-dimensional features; every answer below is worked out by hand.
TRAIN = np.array([[0.0], [10.0], [20.0], [30.0]])
TEST = np.array([[2.0], [12.0], [22.0], [32.0]])
GENERATED = np.array([[1.5], [9.0], [23.0], [40.0]])


def test_complementarity_by_hand():
  # Nearest real point of each generated point:
  #   1.5 -> test 2 (0.5 vs train 0 at 1.5)      9 -> train 10 (1 vs test 12 at 3)
  #   23 -> test 22 (1 vs train 20 at 3)         40 -> test 32 (8 vs train 30 at 10)
  assert metrics.complementarity(TRAIN, TEST, GENERATED) == 3 / 4


def test_coverage_by_hand():
  # Nearest point in train ∪ generated of each test point:
  #   2 -> generated 1.5 (0.5 vs 2)    12 -> train 10 (2 vs generated 9 at 3)
  #   22 -> generated 23 (1 vs 2)      32 -> train 30 (2 vs generated 40 at 8)
  assert metrics.coverage(TRAIN, TEST, GENERATED) == 2 / 4


def test_provenance_by_hand():
  # As complementarity, plus the other generated points; 40's nearest is test 32 (8), not 23 (17).
  shares = metrics.provenance(TRAIN, TEST, GENERATED)
  assert shares == {'train': 1 / 4, 'test': 3 / 4, 'generated': 0.0}


def test_generated_points_that_cluster_find_each_other():
  train = np.array([[0.0, 0.0], [10.0, 0.0]])
  test = np.array([[0.0, 10.0], [10.0, 10.0]])
  generated = np.array([[4.0, 6.0], [4.0, 6.5]])  # 0.5 apart, at least 28 (squared) from reals
  assert metrics.provenance(train, test, generated) == {'train': 0.0, 'test': 0.0,
                                                        'generated': 1.0}
  # Without themselves as candidates both are nearest to test (0, 10): squared 32 and 28.25.
  assert metrics.complementarity(train, test, generated) == 1.0
  # Test (0, 10) -> generated (4, 6) at 32 < 100; test (10, 10) -> (4, 6.5) at 48.25 < 100.
  assert metrics.coverage(train, test, generated) == 1.0


def test_ties_are_credited_to_train():
  train, test, generated = np.array([[0.0]]), np.array([[2.0]]), np.array([[1.0]])
  assert metrics.complementarity(train, test, generated) == 0.0  # 1 is equidistant
  assert metrics.coverage(train, np.array([[1.0]]), np.array([[2.0]])) == 0.0


def test_data_metrics_bundles_everything():
  out = metrics.data_metrics(TRAIN, TEST, GENERATED)
  assert out == {'complementarity': 0.75, 'coverage': 0.5, 'nn_share_train': 0.25,
                 'nn_share_test': 0.75, 'nn_share_generated': 0.0, 'num_per_set': 4.0}


def test_sets_are_subsampled_to_a_common_size():
  rng = np.random.default_rng(0)
  train, test, generated = rng.normal(size=(50, 3)), rng.normal(size=(20, 3)), rng.normal(
      size=(30, 3))
  a = metrics.data_metrics(train, test, generated, seed=1)
  assert a['num_per_set'] == 20.0
  assert a == metrics.data_metrics(train, test, generated, seed=1)
  assert metrics.data_metrics(train, test, generated, n=10)['num_per_set'] == 10.0
  with pytest.raises(ValueError, match='n must be in'):
    metrics.data_metrics(train, test, generated, n=21)


def test_nearest_pool_matches_brute_force_across_block_sizes():
  rng = np.random.default_rng(1)
  queries, a, b = rng.normal(size=(37, 5)), rng.normal(size=(23, 5)), rng.normal(size=(41, 5))
  expected = (cdist(queries, b).min(1) < cdist(queries, a).min(1)).astype(np.int64)
  for block in (1, 7, 1024):
    np.testing.assert_array_equal(metrics.nearest_pool(queries, [a, b], block_size=block),
                                  expected)
  # With the query set as a pool, a point's own row is skipped.
  own = cdist(queries, queries) + np.diag(np.full(37, np.inf))
  expected = (own.min(1) < cdist(queries, a).min(1)).astype(np.int64)
  for block in (1, 5, 1024):
    np.testing.assert_array_equal(
        metrics.nearest_pool(queries, [a, queries], self_pool=1, block_size=block), expected)


# ------------------------------------------------------------------------------------------------
# Real data: digits
# ------------------------------------------------------------------------------------------------

def test_real_held_out_data_scores_the_ideal_half(digit_thirds):
  (train, test, generated), _ = digit_thirds
  out = metrics.data_metrics(*(x.reshape(len(x), -1) for x in (train, test, generated)))
  # n = 599 per set: a binomial share of 1/2 has standard deviation 0.02; allow 4 of them.
  assert abs(out['complementarity'] - 0.5) < 0.08
  assert abs(out['coverage'] - 0.5) < 0.08
  for key in ('nn_share_train', 'nn_share_test', 'nn_share_generated'):
    assert abs(out[key] - 1 / 3) < 0.08


def test_memorising_generator_has_no_complementarity(digit_thirds):
  (train, test, _), _ = digit_thirds
  train, test = train.reshape(len(train), -1), test.reshape(len(test), -1)
  copies = train + np.random.default_rng(0).normal(0, 1e-3, train.shape)
  assert metrics.complementarity(train, test, copies) == 0.0


def test_gaussian_fit_covers_less_than_real_data(digit_thirds):
  (train, test, held_out), (train_labels, _, _) = digit_thirds
  fit = gaussian_fit.fit(train, train_labels, 10)
  samples = next(gaussian_fit.sample(fit, len(train), seed=0, batch_size=len(train)))[0]
  flat = [x.reshape(len(x), -1).astype(np.float64) for x in (train, test, held_out)]
  generated = samples.reshape(len(samples), -1) / 255.0
  assert (metrics.coverage(flat[0], flat[1], generated)
          < metrics.coverage(flat[0], flat[1], flat[2]) - 0.1)


# ------------------------------------------------------------------------------------------------
# Default feature pipeline
# ------------------------------------------------------------------------------------------------

def test_feature_pca_matches_sklearn_projection(digits):
  features = digits[0].reshape(-1, 64).astype(np.float64)
  project = metrics.FeaturePCA.fit(features[:1000], n_components=100)
  assert project.components.shape == (64, 64)  # capped by the feature dimension
  ref = PCA(n_components=20, svd_solver='full').fit(features[:1000])
  ours = metrics.FeaturePCA.fit(features[:1000], n_components=20)(features[1000:])
  theirs = ref.transform(features[1000:])
  np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)


def test_metrics_from_features_runs_the_default_pipeline(digit_thirds):
  (train, test, generated), _ = digit_thirds
  flat = [x.reshape(len(x), -1) for x in (train, test, generated)]
  out = metrics.metrics_from_features(*flat, n_components=30)
  assert abs(out['complementarity'] - 0.5) < 0.08 and abs(out['coverage'] - 0.5) < 0.08


def test_batched_features_equals_one_call(digits):
  images = digits[0][:100]
  fn = lambda x: x.reshape(len(x), -1)[:, :10] * 2.0
  np.testing.assert_allclose(metrics.batched_features(fn, images, batch_size=32), fn(images))


# ------------------------------------------------------------------------------------------------
# Sample grid
# ------------------------------------------------------------------------------------------------

def test_sample_grid_png_has_one_row_per_class(tmp_path, digits):
  images, labels = digits
  path = tmp_path / 'grids' / 'samples.png'
  grid = metrics.sample_grid(images, labels, 10, per_class=5, pad=1, scale=2, path=path)
  height, width = 2 * (10 * (8 + 1) + 1), 2 * (5 * (8 + 1) + 1)
  assert grid.shape == (height, width, 3) and grid.dtype == np.uint8
  with Image.open(path) as png:
    assert png.format == 'PNG' and png.size == (width, height)
    np.testing.assert_array_equal(np.asarray(png.convert('RGB')), grid)
  # Row 3, column 2 holds the third image labelled 3.
  tile = grid[2 * (1 + 3 * 9):2 * (1 + 3 * 9 + 8):2, 2 * (1 + 2 * 9):2 * (1 + 2 * 9 + 8):2, 0]
  expected = gaussian_fit.quantise(images[np.nonzero(labels == 3)[0][2], ..., 0])
  np.testing.assert_array_equal(tile, expected)


def test_sample_grid_leaves_missing_samples_blank():
  images = np.zeros((3, 4, 4, 3), np.uint8)
  grid = metrics.sample_grid(images, np.array([0, 0, 1]), 3, per_class=2, pad=0)
  assert grid.shape == (12, 8, 3)
  assert (grid[:4] == 0).all() and (grid[4:8, :4] == 0).all()  # class 0: two, class 1: one
  assert (grid[4:8, 4:8] == 255).all() and (grid[8:] == 255).all()  # the rest stays white
