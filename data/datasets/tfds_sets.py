"""CIFAR-10, CIFAR-100 and SVHN (cropped digits) through tensorflow_datasets, prepared once.

Training never downloads (TPU workers may be offline): a set that is not prepared in
`dataset.data_dir` raises `DatasetNotPreparedError` with the command that prepares it. Held in RAM
by default (50K-73K images); `dataset.storage='stream'` reads tfds's prepared TFRecords in the
input workers instead (`tfds_records`).
"""
from __future__ import annotations

import numpy as np

from data.datasets import dataset
from data.datasets import tfds_records

SETS = {
    'cifar10': (dataset.DatasetInfo(10, (32, 32, 3), (0.4914, 0.4822, 0.4465),
                                    (0.2471, 0.2435, 0.2616), 'cifar10'), 50_000, 10_000),
    'cifar100': (dataset.DatasetInfo(100, (32, 32, 3), (0.5071, 0.4865, 0.4409),
                                     (0.2673, 0.2564, 0.2762), 'cifar100'), 50_000, 10_000),
    'svhn': (dataset.DatasetInfo(10, (32, 32, 3), (0.4377, 0.4438, 0.4728),
                                 (0.1980, 0.2010, 0.1970), 'svhn_cropped'), 73_257, 26_032),
}


class DatasetNotPreparedError(FileNotFoundError):
  """A tfds dataset that is not on disk: training never downloads (TPU workers may be offline)."""


def not_prepared(tfds_name: str, data_dir: str, how: str = '') -> DatasetNotPreparedError:
  where = data_dir or 'the tfds default folder'
  how = how or (f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}', "
                "data_dir='DIR').download_and_prepare()\"")
  return DatasetNotPreparedError(
      f'the tfds dataset {tfds_name!r} is not prepared in {where}: prepare it once on a machine '
      f'with internet ({how}) and pass --config.dataset.data_dir=DIR (a local folder or gs://)')


class TfdsSet(dataset.Dataset):
  """A small tfds image set of fixed-size images."""

  def _make_info(self):
    return SETS[self.name][0]

  def size(self, split):
    dataset.check_split(split)
    return SETS[self.name][1 if split == 'train' else 2]

  def _load(self, split, start, stop):
    start, stop = dataset.bounds(self.size(split), start, stop)
    return load_tfds(self.info.tfds_name, f'{split}[{start}:{stop}]', self.options.data_dir,
                     self.info.shape)

  def stream(self, split, skip=0):
    return tfds_records.streamed_split(self.info.tfds_name, split, self.options.data_dir,
                                       self.info, skip=skip)


def load_tfds(tfds_name: str, split: str, data_dir: str, shape) -> dict[str, np.ndarray]:
  """A tfds split (slicing syntax allowed) as uint8 images and int64 labels."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    ds = tfds.load(tfds_name, split=split, data_dir=data_dir or None, as_supervised=True,
                   download=False)
  except AssertionError as e:  # tfds's way of saying "could not find data in DIR"
    raise not_prepared(tfds_name, data_dir) from e
  images, labels = [], []
  for image, label in tfds.as_numpy(ds.batch(4096)):
    images.append(image)
    labels.append(label)
  if not images:
    return {'image': np.zeros((0, *shape), np.uint8), 'label': np.zeros((0,), np.int64)}
  return {'image': np.concatenate(images).astype(np.uint8),
          'label': np.concatenate(labels).astype(np.int64)}
