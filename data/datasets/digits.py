"""scikit-learn's built-in 8x8 digits: 1,797 images, offline, for the demo and the tests.

sklearn ships no split: a fixed shuffle (seed 0) puts the last 500 images in the test split.
Pixels 0..16 become 0..255.
"""
from __future__ import annotations

import numpy as np

from data.datasets import dataset

TEST_SIZE = 500
# Mean/std of the training split, measured once.
INFO = dataset.DatasetInfo(10, (8, 8, 1), (0.3054,), (0.3758,))


class Digits(dataset.Dataset):

  def _make_info(self):
    return INFO

  def size(self, split):
    dataset.check_split(split)
    return 1797 - TEST_SIZE if split == 'train' else TEST_SIZE

  def _load(self, split, start, stop):
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = np.round(digits.images[order] * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target[order].astype(np.int64)
    cut = len(labels) - TEST_SIZE
    first = 0 if split == 'train' else cut
    start, stop = dataset.bounds(self.size(split), start, stop)
    return {'image': images[first + start:first + stop],
            'label': labels[first + start:first + stop]}
