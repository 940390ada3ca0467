"""dataset.train_fraction: a class-balanced, fixed subset of the train split (the data-scarce
regime), cut after the held-out head so selection always sees the same images."""
import numpy as np
import pytest

from configs import demo
from data import real
from trainer.diffusion import generator
from trainer.pipeline import stages


def _config(fraction, seed=0):
  c = demo.get_config()
  c.dataset.train_fraction, c.seed = fraction, seed
  return c


def test_fraction_one_is_the_whole_split():
  train, holdout, _ = real.training_splits(_config(1.0))
  whole = real.load('digits', 'train')
  h = demo.get_config().dataset.holdout
  np.testing.assert_array_equal(train['id'], np.arange(h, len(whole['label'])))
  np.testing.assert_array_equal(train['image'], whole['image'][h:])
  np.testing.assert_array_equal(holdout['label'], whole['label'][:h])


@pytest.mark.parametrize('fraction', [0.1, 0.25, 0.5])
def test_subset_is_class_balanced_and_taken_after_the_holdout(fraction):
  train, holdout, _ = real.training_splits(_config(fraction))
  whole = real.load('digits', 'train')
  h = demo.get_config().dataset.holdout
  per_class = round(fraction * (len(whole['label']) - h) / 10)
  np.testing.assert_array_equal(np.bincount(train['label'], minlength=10), [per_class] * 10)
  assert len(np.unique(train['id'])) == len(train['id']) and train['id'].min() >= h
  np.testing.assert_array_equal(train['image'], whole['image'][train['id']])  # ids name images
  np.testing.assert_array_equal(train['label'], whole['label'][train['id']])
  np.testing.assert_array_equal(holdout['image'], whole['image'][:h])


def test_one_subset_per_fraction_whatever_the_run_seed():
  a, _, _ = real.training_splits(_config(0.25, seed=0))
  b, _, _ = real.training_splits(_config(0.25, seed=7))
  np.testing.assert_array_equal(a['id'], b['id'])
  c, _, _ = real.training_splits(_config(0.5))
  assert len(c['id']) > len(a['id'])


@pytest.mark.parametrize('fraction,message', [
    (0.0, r'train_fraction=0.0: must lie in \(0, 1\]'),
    (1.5, r'train_fraction=1.5: must lie in \(0, 1\]'),
    (0.001, r'train_fraction=0.001: 0 images per class'),
    (0.95, r'train_fraction=0.95: 111 images per class of 1169, but the classes hold 104'),
])
def test_bad_fractions_are_named(fraction, message):
  with pytest.raises(ValueError, match=message):
    real.training_splits(_config(fraction))


def test_the_methods_ddpm_trains_on_the_same_subset():
  c = _config(0.25)
  ddpm_train, _, _ = real.training_splits(stages.generator_config(c))
  robust_train, _, _ = real.training_splits(c)
  np.testing.assert_array_equal(ddpm_train['id'], robust_train['id'])
  assert len(robust_train['id']) == 290


def test_a_ddpm_batch_larger_than_the_subset_holds_whole_permutations():
  batch = generator.batch_indices(0, 5, 120, 128)     # 10% of digits: 120 images, batch 128
  np.testing.assert_array_equal(batch, generator.batch_indices(0, 5, 120, 128))
  assert len(batch) == 128 and set(batch.tolist()) == set(range(120))
  assert np.bincount(batch).max() == 2
  assert not np.array_equal(batch, generator.batch_indices(0, 6, 120, 128))
  big = generator.batch_indices(0, 3, 50, 128)          # k = 3 permutations
  assert np.bincount(big, minlength=50).min() >= 2 and np.bincount(big).max() == 3
