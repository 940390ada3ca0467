"""Real datasets for the commands: what a run's dataset is, and which of it is held in RAM.

  info(config.dataset)             # DatasetInfo: classes, image shape, mean/std, class names
  load(config.dataset, 'test')     # dict(image=uint8 NHWC, label=int64), the whole split
  train, holdout, test = training_splits(config)

`config.dataset` (the config's dataset section) names the dataset and where it is; a built-in
name alone ('cifar10', 'digits', ...) works too. The sources live in `data.datasets`, one module
each: CIFAR-10/100 and SVHN through tensorflow_datasets, scikit-learn's digits (offline),
TinyImageNet, ImageNet, an image folder and an npz.

`training_splits` returns the training split without its held-out head (the first
`dataset.holdout` images, kept for checkpoint selection), the held-out images, and the first
`dataset.test_size` test images (0: all). The held-out and test images are always in RAM. The
training split is in RAM as a dict with `id` (the index in the split), or, when it streams, a
`datasets.streamed.StreamedSplit` that `data.input.pipeline` reads in its workers:
`dataset.storage` = 'ram' | 'stream' | 'auto' (stream when its pixels would take more than
`dataset.ram_limit_gb`, and always for ImageNet, whose training images keep their sizes).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from data import datasets
from data.datasets import dataset as dataset_lib
from data.datasets import digits
from data.datasets import tfds_sets

DatasetInfo = dataset_lib.DatasetInfo
DatasetNotPreparedError = tfds_sets.DatasetNotPreparedError
# The built-in datasets whose description needs no data.
DATASETS = {**{name: spec[0] for name, spec in tfds_sets.SETS.items()}, 'digits': digits.INFO}


def _options(dataset, data_dir: str = ''):
  options = dataset_lib.Options.of(dataset)
  if data_dir:
    options = dataclasses.replace(options, data_dir=data_dir)
  return options


def check_config(dataset) -> None:
  """Rejects a dataset section that cannot work, without reading any data."""
  datasets.check_options(_options(dataset))


def info(dataset) -> DatasetInfo:
  return datasets.get(_options(dataset)).info


def load(dataset, split: str, data_dir: str = '', stop: int | None = None):
  """A whole split (or its first `stop` images) as uint8 images and int64 labels."""
  return datasets.get(_options(dataset, data_dir)).load(split, 0, stop)


def streams(dataset) -> bool:
  """Whether the training split is streamed by the input workers (see the module docstring)."""
  ds = datasets.get(_options(dataset))
  storage = ds.options.storage
  if storage != 'auto':
    return storage == 'stream'
  if ds.varying_sizes():
    return True
  pixels = ds.size('train') * math.prod(ds.info.shape)
  return pixels > ds.options.ram_limit_gb * 2 ** 30


def training_splits(config):
  """Train split without the held-out head, the held-out head, and the (truncated) test split.

  With `dataset.train_fraction` < 1 the train split (after the held-out head is cut, so the
  held-out set never changes) keeps a class-balanced subset: `train_subset`.
  """
  ds = datasets.get(_options(config.dataset))
  h, n = config.dataset.holdout, ds.size('train')
  if h >= n:
    raise ValueError(f'config.dataset.holdout={h} leaves no training data ({n} images).')
  holdout = ds.load('train', 0, h)
  test = ds.load('test', 0, config.dataset.test_size or None)
  fraction = config.dataset.get('train_fraction', 1.0)
  if streams(ds.options):
    if fraction != 1.0:
      raise ValueError(f'config.dataset.train_fraction={fraction}: a subset of a streamed '
                       'training split is not built; set dataset.storage=ram')
    return ds.stream('train', skip=h), holdout, test
  train = ds.load('train', h, None)
  keep = train_subset(train['label'], fraction, ds.info.num_classes)
  train = {'image': train['image'][keep], 'label': train['label'][keep],
           'id': (h + keep).astype(np.int64)}
  return train, holdout, test


SUBSET_SEED = 0  # one subset per fraction, whatever the run's seed: generators and classifiers
                 # trained for a fraction all see the same images


def train_subset(labels, fraction, num_classes):
  """Indices (increasing) of a class-balanced subset: round(fraction * N / classes) images of
  every class, drawn without replacement by a generator seeded with SUBSET_SEED; fraction 1 keeps
  every index (the data-scarce regime of the paper's Sec. 2: `dataset.train_fraction`)."""
  n = len(labels)
  if not 0 < fraction <= 1:
    raise ValueError(f'config.dataset.train_fraction={fraction}: must lie in (0, 1]')
  if fraction == 1:
    return np.arange(n)
  per_class = round(fraction * n / num_classes)
  counts = np.bincount(labels, minlength=num_classes)
  if per_class < 1 or per_class > counts.min():
    raise ValueError(f'config.dataset.train_fraction={fraction}: {per_class} images per class '
                     f'of {n}, but the classes hold {counts.min()} to {counts.max()}')
  rng = np.random.default_rng(SUBSET_SEED)
  kept = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
          for c in range(num_classes)]
  return np.sort(np.concatenate(kept))


def check(data, dataset) -> None:
  """Rejects images or labels that do not match the dataset's declared shape and classes."""
  options = _options(dataset)
  dataset_lib.check(data, options.name, info(options))
