"""What the datasets given by a path (`dataset.path`: an image folder, an npz, TinyImageNet) share:
splits in a fixed seeded order, facts measured once and stored beside the data, and a packed
copy to stream from.

A subclass says how to find its splits (`_find_splits`: a source per split, each with
`len(source)`, `take(indices)` and `load(start, stop)` giving uint8 images of one shape,
`labels_at(indices)`, and `encoded(i)` giving one image as PNG or JPEG bytes) and may add facts
of its own (`_more_facts`: class names, a class map). Stored facts whose split sizes no longer
match the files (images added or removed) are measured again. The order of each split is fixed by
`dataset.split_seed`, so the first `holdout` training images (held out for selection) and the
first `test_size` test images span the classes however the files are named.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from data.datasets import dataset
from data.datasets import statistics


@dataclasses.dataclass
class Splits:
  train: object
  test: object
  class_names: tuple
  shape: tuple


class PathDataset(dataset.Dataset):
  """Base of the datasets given by `dataset.path`; see the module docstring."""

  def __init__(self, options):
    super().__init__(options)
    if not options.path:
      raise ValueError(f'config.dataset.path is empty: the {options.name} dataset is read from '
                       'a path (a folder or file, local or gs://)')
    self.path = options.path
    self._splits = None
    self._facts = None

  def _find_splits(self) -> Splits:
    raise NotImplementedError

  def _more_facts(self, splits: Splits) -> dict:
    del splits
    return {}

  @property
  def splits(self) -> Splits:
    if self._splits is None:
      self._splits = self._find_splits()
    return self._splits

  def depends_on(self) -> dict:
    """The options the stored facts (and a packed copy) depend on."""
    o = self.options
    return {'image_size': o.image_size, 'resize': o.resize, 'split_seed': o.split_seed,
            'test_fraction': o.test_fraction}

  @property
  def facts(self) -> dict:
    if self._facts is None:
      sizes = {'train': len(self.splits.train), 'test': len(self.splits.test)}
      self._facts = statistics.stored(self.path, self.depends_on(), self._measure,
                                      valid=lambda facts: facts.get('sizes') == sizes)
    return self._facts

  def _measure(self) -> dict:
    s = self.splits
    mean, std = statistics.mean_std(lambda i: s.train.take(i)['image'], len(s.train))
    return {'name': self.name, 'shape': list(s.shape), 'class_names': list(s.class_names),
            'sizes': {'train': len(s.train), 'test': len(s.test)}, 'mean': mean, 'std': std,
            **self._more_facts(s)}

  def _make_info(self):
    f = self.facts
    return dataset.DatasetInfo(
        num_classes=len(f['class_names']), shape=tuple(f['shape']), mean=tuple(f['mean']),
        std=tuple(f['std']), class_names=tuple(f['class_names']),
        class_map=tuple(f.get('class_map', ())))

  def size(self, split):
    return len(self.source(split))

  def source(self, split):
    dataset.check_split(split)
    return self.splits.train if split == 'train' else self.splits.test

  def _load(self, split, start, stop):
    return self.source(split).load(start, stop)

  def stream(self, split, skip=0):
    from data.datasets import packed  # pylint: disable=g-import-not-at-top
    return packed.streamed_split(self, split, skip)


def seeded_order(n: int, seed: int, stream: int) -> np.ndarray:
  """The fixed order of a split of n items (stream 0: train, 1: test, 2: the drawn split)."""
  return np.random.default_rng([seed, stream]).permutation(n)


def draw_test(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) indices of a seeded split of n items, `fraction` of them for the test."""
  if not 0 < fraction < 1:
    raise ValueError(f'config.dataset.test_fraction={fraction}: the dataset has no test split '
                     'of its own, so a share in (0, 1) of its images is drawn for one')
  order = seeded_order(n, seed, 2)
  cut = n - max(1, int(round(fraction * n)))
  if cut < 1:
    raise ValueError(f'{n} images are too few to draw a test split from')
  return np.sort(order[:cut]), np.sort(order[cut:])
