"""Real datasets: CIFAR-10/100 and SVHN through tensorflow_datasets, and sklearn's built-in digits.

`load(name, split, data_dir)` returns `dict(image=uint8 NHWC, label=int64)` held in memory — the
real sets are small (≤ 73K images); only generated data is streamed. `digits` ships inside
scikit-learn, so the demo and the tests run offline.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  shape: tuple  # (H, W, C)
  mean: tuple   # per channel, in [0, 1] pixel units
  std: tuple
  tfds_name: str = ''


DATASETS = {
    'cifar10': DatasetInfo(10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                           'cifar10'),
    'cifar100': DatasetInfo(100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            'cifar100'),
    'svhn': DatasetInfo(10, (32, 32, 3), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                        'svhn_cropped'),
    # Mean/std of the digits training split below, measured once.
    'digits': DatasetInfo(10, (8, 8, 1), (0.3054,), (0.3758,)),
}

DIGITS_TEST_SIZE = 500  # of 1,797 images; a fixed shuffled split since sklearn ships no split


def info(name):
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.')
  return DATASETS[name]


def load(name, split, data_dir=''):
  """Loads a whole split ('train' or 'test') as uint8 images and int64 labels."""
  info(name)
  if split not in ('train', 'test'):
    raise ValueError(f'Unknown split {split!r}; expected train or test.')
  if name == 'digits':
    data = _load_digits(split)
  else:
    data = _load_tfds(DATASETS[name].tfds_name, split, data_dir)
  check(data, name)
  return data


def training_splits(config):
  """Train split without the held-out head, the held-out head, and the (truncated) test split.

  With `dataset.train_fraction` < 1 the train split (after the held-out head is cut, so the
  held-out set never changes) keeps a class-balanced subset: `train_subset`.
  """
  train = load(config.dataset.name, 'train', config.dataset.data_dir)
  test = load(config.dataset.name, 'test', config.dataset.data_dir)
  h = config.dataset.holdout
  if h >= len(train['label']):
    raise ValueError(f'config.dataset.holdout={h} leaves no training data '
                     f'({len(train["label"])} images).')
  n_test = config.dataset.test_size or len(test['label'])
  keep = h + train_subset(train['label'][h:], config.dataset.get('train_fraction', 1.0),
                          info(config.dataset.name).num_classes)
  return ({'image': train['image'][keep], 'label': train['label'][keep],
           'id': keep.astype(np.int64)},
          {'image': train['image'][:h], 'label': train['label'][:h]},
          {'image': test['image'][:n_test], 'label': test['label'][:n_test]})


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


def check(data, name):
  """Rejects images or labels that do not match the dataset's declared shape and classes."""
  spec = DATASETS[name]
  image, label = data['image'], data['label']
  if image.dtype != np.uint8 or image.shape[1:] != spec.shape:
    shape = ', '.join(map(str, spec.shape))
    raise ValueError(f'{name}: expected uint8 images of shape (N, {shape})'
                     f', got {image.dtype} {image.shape}.')
  if len(label) != len(image):
    raise ValueError(f'{name}: {len(image)} images but {len(label)} labels.')
  bad = (label < 0) | (label >= spec.num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f'{name}: label {label[i]} at index {i} is outside [0, {spec.num_classes}).')


def _load_digits(split):
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  images = np.round(digits.images[order] * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target[order].astype(np.int64)
  cut = len(labels) - DIGITS_TEST_SIZE
  sl = slice(0, cut) if split == 'train' else slice(cut, None)
  return {'image': images[sl], 'label': labels[sl]}


class DatasetNotPreparedError(FileNotFoundError):
  """A tfds dataset that is not on disk: training never downloads (TPU workers may be offline)."""


def _load_tfds(tfds_name, split, data_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    ds = tfds.load(tfds_name, split=split, data_dir=data_dir or None, as_supervised=True,
                   download=False)
  except AssertionError as e:  # tfds's way of saying "could not find data in DIR"
    where = data_dir or 'the tfds default folder'
    prepare = (f"tfds.builder('{tfds_name}', data_dir='DIR').download_and_prepare()")
    raise DatasetNotPreparedError(
        f'the tfds dataset {tfds_name!r} is not prepared in {where}: prepare it once on a machine '
        f'with internet (python -c "import tensorflow_datasets as tfds; {prepare}") and pass '
        '--config.dataset.data_dir=DIR (a local folder or gs://)') from e
  images, labels = [], []
  for image, label in tfds.as_numpy(ds.batch(4096)):
    images.append(image)
    labels.append(label)
  return {'image': np.concatenate(images).astype(np.uint8),
          'label': np.concatenate(labels).astype(np.int64)}
