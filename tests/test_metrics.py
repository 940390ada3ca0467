"""Tests for Algorithm 1 (complementarity and coverage) and the sample grid (metrics.py)."""
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
  return [images[p].reshape(len(p), -1) for p in parts], [labels[p] for p in parts]


# ------------------------------------------------------------------------------------------------
# Algorithm 1 on hand-built feature sets
# ------------------------------------------------------------------------------------------------

# One-dimensional features; every answer below is worked out by hand.
TRAIN = np.array([[0.0], [10.0], [20.0], [30.0]])
TEST = np.array([[5.0], [15.0], [25.0], [35.0]])
GENERATED = np.array([[1.0], [3.5], [26.0], [26.5]])


def test_algorithm1_by_hand():
  # Complementarity: nearest train / test / other generated point of each generated point.
  #   1    -> train 0 (1)    test 5 (4)     self 3.5 (2.5)  => train
  #   3.5  -> train 0 (3.5)  test 5 (1.5)   self 1 (2.5)    => test
  #   26   -> train 30 (4)   test 25 (1)    self 26.5 (0.5) => self
  #   26.5 -> train 30 (3.5) test 25 (1.5)  self 26 (0.5)   => self
  # Coverage, each set searched alone: train neighbours 0, 0, 30, 30 (2 unique of 4);
  # test neighbours 5, 5, 25, 25 (2 unique of 4).
  assert metrics.algorithm1(TRAIN, TEST, GENERATED) == {
      'c_train': 0.25, 'c_test': 0.25, 'c_self': 0.5, 'v_train': 0.5, 'v_test': 0.5}


def test_coverage_searches_train_and_test_separately_not_their_union():
  # Over train ∪ test the neighbours would be train 0, test 5, test 25, test 25: v_train 1/4.
  # Algorithm 1's lines 10-11 search D̄_train alone, where 3.5 finds train 0 again: still 2/4,
  # and train 30 (for 26 and 26.5) counts although test 25 is nearer.
  out = metrics.algorithm1(TRAIN, TEST, GENERATED)
  assert out['v_train'] == 2 / 4 and out['v_test'] == 2 / 4
  assert out['v_train'] + out['v_test'] > 0.75   # impossible for the union reading


def test_generated_points_that_cluster_find_each_other():
  train = np.array([[0.0, 0.0], [10.0, 0.0]])
  test = np.array([[0.0, 10.0], [10.0, 10.0]])
  generated = np.array([[4.0, 6.0], [4.0, 6.5]])  # 0.5 apart; reals are >= sqrt(28.25) away
  # Squared distances to train (0, 0): 52 and 58.25 (< 72, 78.25 to (10, 0)); to test (0, 10):
  # 32 and 28.25 (< 52, 48.25): both land on the first point of each set.
  assert metrics.algorithm1(train, test, generated) == {
      'c_train': 0.0, 'c_test': 0.0, 'c_self': 1.0, 'v_train': 0.5, 'v_test': 0.5}


def test_ties_go_to_train_then_test_then_self_and_to_the_lowest_index():
  train, test, generated = np.array([[0.0], [100.0]]), np.array([[2.0], [102.0]]), np.array(
      [[1.0], [50.0]])
  # 1: train 0 and test 2 both at 1 => train. 50: train 0 and 100 both at 50 => index 0;
  # test 2 at 48 beats them and self (49) => test.
  assert metrics.algorithm1(train, test, generated) == {
      'c_train': 0.5, 'c_test': 0.5, 'c_self': 0.0, 'v_train': 0.5, 'v_test': 0.5}
  twin = np.array([[0.0], [0.0]])   # self and train tie at distance 0
  assert metrics.algorithm1(twin, np.array([[5.0], [6.0]]), twin)['c_train'] == 1.0


def test_algorithm1_matches_a_direct_reading_of_the_pseudo_code():
  rng = np.random.default_rng(1)
  train, test, generated = (rng.normal(size=(37, 5)) for _ in range(3))
  c, v_train, v_test = np.zeros(3), set(), set()
  for i, x in enumerate(generated):
    others = np.delete(generated, i, axis=0)
    dists = [cdist(x[None], s)[0] for s in (train, test, others)]
    c[np.argmin([d.min() for d in dists])] += 1 / 37
    v_train.add(int(np.argmin(dists[0])))
    v_test.add(int(np.argmin(dists[1])))
  expected = {'c_train': c[0], 'c_test': c[1], 'c_self': c[2], 'v_train': len(v_train) / 37,
              'v_test': len(v_test) / 37}
  for block in (1, 5, 2048):
    out = metrics.algorithm1(train, test, generated, block_size=block)
    assert out.keys() == expected.keys()
    np.testing.assert_allclose([out[k] for k in out], [expected[k] for k in out], atol=1e-12)
  assert abs(sum(out[k] for k in ('c_train', 'c_test', 'c_self')) - 1) < 1e-12


def test_nearest_matches_brute_force_across_block_sizes():
  rng = np.random.default_rng(2)
  queries, pool = rng.normal(size=(29, 4)), rng.normal(size=(41, 4))
  full = cdist(queries, pool, 'sqeuclidean')
  own = cdist(queries, queries, 'sqeuclidean') + np.diag(np.full(29, np.inf))
  for block in (1, 7, 2048):
    dist, index = metrics.nearest(queries, pool, block_size=block)
    np.testing.assert_array_equal(index, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-12)
    dist, index = metrics.nearest(queries, queries, exclude_self=True, block_size=block)
    np.testing.assert_array_equal(index, own.argmin(1))


def test_algorithm1_rejects_sets_of_different_sizes():
  with pytest.raises(ValueError, match='N points from each set'):
    metrics.algorithm1(TRAIN, TEST[:3], GENERATED)
  with pytest.raises(ValueError, match='2-D'):
    metrics.algorithm1(TRAIN[:, 0], TEST, GENERATED)


# ------------------------------------------------------------------------------------------------
# The paper's reference points
# ------------------------------------------------------------------------------------------------

def test_footnote_15_uniform_points_have_556_percent_unique_neighbours():
  # "sampling 2 sets of 10K points from a uniform distribution U[0,1] between 0 and 1 yields in
  # average a proportion of unique nearest neighbors equal to 55.6%" (1-D; exactly 5/9 for large
  # N). Over seeds 0-4 the share has standard deviation 0.003 here; 0.015 is five of them.
  rng = np.random.default_rng(0)
  train, test, generated = (rng.random((10_000, 1)) for _ in range(3))
  out = metrics.algorithm1(train, test, generated)
  assert abs(out['v_train'] - 5 / 9) < 0.015 and abs(out['v_test'] - 5 / 9) < 0.015
  for key in ('c_train', 'c_test', 'c_self'):   # three samples of one distribution
    assert abs(out[key] - 1 / 3) < 0.02


def test_a_generator_that_copies_the_training_set(digit_thirds):
  (train, test, _), _ = digit_thirds
  copies = train[np.random.default_rng(0).permutation(len(train))]
  out = metrics.algorithm1(train, test, copies)
  # Every copy finds its original at distance 0 (a duplicate digit inside the generated set ties
  # at 0 too, and ties go to train). Coverage: duplicate digits in the training third share one
  # lowest-index neighbour, hence "about" 1.
  assert out['c_train'] == 1.0 and out['c_test'] == 0.0 and out['c_self'] == 0.0
  assert out['v_train'] >= 0.99
  assert out['v_test'] < 0.7


def test_held_out_real_data_is_the_ideal_generator(digit_thirds):
  (train, test, held_out), _ = digit_thirds
  out = metrics.algorithm1(train, test, held_out)
  # n = 599: a share of 1/3 has standard deviation 0.019; allow four of them.
  for key in ('c_train', 'c_test', 'c_self'):
    assert abs(out[key] - 1 / 3) < 0.08
  assert abs(out['v_train'] - out['v_test']) < 0.08


def test_gaussian_fit_samples_are_mostly_self_and_cover_less(digit_thirds):
  (train, test, held_out), (train_labels, _, _) = digit_thirds
  fit = gaussian_fit.fit(train.reshape(-1, 8, 8, 1), train_labels, 10, n_components=64)
  samples = next(gaussian_fit.sample(fit, len(train), seed=0, batch_size=len(train)))[0]
  generated = samples.reshape(len(samples), -1) / 255.0
  fake, real = metrics.algorithm1(train, test, generated), metrics.algorithm1(train, test,
                                                                             held_out)
  # Measured in pixel space (seed 0): c_self 0.59 against 0.35, v_test 0.47 against 0.57. The
  # direction is the paper's (Table 1: Gaussian fit 99.65% self, 12% coverage); the pixel space of
  # 8x8 digits is far kinder to a Gaussian than Inception features of CIFAR-10.
  assert fake['c_self'] > real['c_self'] + 0.15
  assert fake['v_test'] < real['v_test'] - 0.05


# ------------------------------------------------------------------------------------------------
# Class-balanced sampling, PCA, the end-to-end call
# ------------------------------------------------------------------------------------------------

def test_class_balanced_indices_take_equal_shares_without_replacement():
  labels = np.repeat(np.arange(4), [10, 20, 30, 40])
  index = metrics.class_balanced_indices(labels, 22, 4, seed=3)
  assert len(np.unique(index)) == 22 and np.all(np.diff(index) > 0)
  counts = np.bincount(labels[index], minlength=4)
  assert sorted(counts) == [5, 5, 6, 6]   # 22 = 4 x 5 + 2 extra
  np.testing.assert_array_equal(index, metrics.class_balanced_indices(labels, 22, 4, seed=3))


def test_a_small_class_gives_all_it_has_and_the_others_share_the_rest():
  labels = np.repeat(np.arange(3), [2, 50, 50])
  counts = np.bincount(labels[metrics.class_balanced_indices(labels, 30, 3)], minlength=3)
  np.testing.assert_array_equal(counts, [2, 14, 14])
  whole = metrics.class_balanced_indices(labels, 102, 3)
  np.testing.assert_array_equal(whole, np.arange(102))
  with pytest.raises(ValueError, match='test: n = 103 samples asked from a set of 102'):
    metrics.class_balanced_indices(labels, 103, 3, name='test')


def test_feature_pca_matches_sklearn_projection(digits):
  features = digits[0].reshape(-1, 64).astype(np.float64)
  project = metrics.FeaturePCA.fit(features[:1000], n_components=100)
  assert project.components.shape == (64, 64)  # capped by the feature dimension
  ref = PCA(n_components=20, svd_solver='full').fit(features[:1000])
  ours = metrics.FeaturePCA.fit(features[:1000], n_components=20)(features[1000:])
  theirs = ref.transform(features[1000:])
  np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)


def test_data_metrics_samples_balanced_features_and_runs_algorithm1(digit_thirds):
  (train, test, generated), (train_labels, test_labels, gen_labels) = digit_thirds
  images = {'train': train, 'test': test, 'generated': generated}
  labels = {'train': train_labels, 'test': test_labels, 'generated': gen_labels}
  calls = []

  def feature_fn(x):
    calls.append(len(x))
    return x * 2.0

  out = metrics.data_metrics(images, labels, feature_fn, 10, 300, n_components=30, seed=0)
  assert sum(calls) == 900   # only the 3 x 300 sampled images are featurised
  assert set(out) == set(metrics.KEYS) | {'num_per_set'} and out['num_per_set'] == 300
  for key in ('c_train', 'c_test', 'c_self'):
    assert abs(out[key] - 1 / 3) < 0.1
  # By hand: the same samples, PCA on the 600 real vectors, then Algorithm 1.
  picks = {k: images[k][metrics.class_balanced_indices(labels[k], 300, 10, seed=i)] * 2.0
           for i, k in enumerate(('train', 'test', 'generated'))}
  project = metrics.FeaturePCA.fit(np.concatenate([picks['train'], picks['test']]), 30)
  expected = metrics.algorithm1(*(project(picks[k]) for k in ('train', 'test', 'generated')))
  assert {k: out[k] for k in metrics.KEYS} == expected


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
