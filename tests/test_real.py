"""Real datasets: digits offline, and the tfds path for CIFAR-10/100 and SVHN on mocked records."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import real


def test_digits_split_is_fixed_and_disjoint():
  train, test = real.load('digits', 'train'), real.load('digits', 'test')
  assert train['image'].shape == (1297, 8, 8, 1) and test['image'].shape == (500, 8, 8, 1)
  assert train['image'].dtype == np.uint8 and train['image'].max() == 255
  flat = lambda d: {x.tobytes() for x in d['image']}
  assert len(flat(train) & flat(test)) < 10  # sklearn's digits hold a few exact duplicates
  np.testing.assert_array_equal(real.load('digits', 'train')['label'], train['label'])


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'svhn'])
def test_tfds_datasets_load_through_tfds(name, tmp_path):
  # mock_data replaces the records tfds would read with generated ones of the dataset's own
  # features, so this runs our whole tfds path (load, batching, dtype and range checks) offline.
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    data = real.load(name, 'test', data_dir=str(tmp_path))
  assert data['image'].shape == (10, 32, 32, 3) and data['image'].dtype == np.uint8
  assert data['label'].min() >= 0 and data['label'].max() < real.info(name).num_classes


def test_bad_data_is_named():
  good = real.load('digits', 'test')
  with pytest.raises(ValueError, match='label 10 at index 3'):
    real.check({'image': good['image'], 'label': np.where(np.arange(500) == 3, 10,
                                                          good['label'])}, 'digits')
  with pytest.raises(ValueError, match=r'shape \(N, 8, 8, 1\)'):
    real.check({'image': good['image'][..., 0], 'label': good['label']}, 'digits')
  with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
    real.load('mnist', 'train')
