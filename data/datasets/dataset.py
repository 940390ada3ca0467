"""What every real dataset is: its description (`DatasetInfo`), its options from the config, and
the interface each source implements (`Dataset`).

  ds = datasets.get(config.dataset)       # a Dataset of the named source
  ds.info                                  # DatasetInfo (classes, image shape, mean/std, names)
  ds.load('train')                         # dict(image=uint8 NHWC, label=int64), whole split
  ds.load('test', stop=5000)               # the first 5,000 images only
  ds.size('train')                         # image count, without reading images
  ds.stream('train', skip=1024)            # the split as encoded shards for the input workers

A split's images come in a fixed order, the same on every host and every run: `load(split,
start, stop)` returns images [start, stop) of it, and `stream` skips the first `skip` of them
(the held-out head of the training split). Sources that cannot stream raise `StreamingError`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SPLITS = ('train', 'test')
STORAGE = ('auto', 'ram', 'stream')
CROPS = ('pad', 'inception')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  shape: tuple   # (H, W, C) of the images the model sees
  mean: tuple    # per channel, in [0, 1] pixel units
  std: tuple
  tfds_name: str = ''
  class_names: tuple = ()
  class_map: tuple = ()   # class -> index in another label space (TinyImageNet: ImageNet-1k)


@dataclasses.dataclass(frozen=True)
class Options:
  """The config's dataset section, with the defaults of keys older configs lack
  (configs/base.py documents each key)."""
  name: str
  data_dir: str = ''
  path: str = ''
  image_size: int = 0
  resize: bool = False
  test_fraction: float = 0.1
  split_seed: int = 0
  storage: str = 'auto'
  ram_limit_gb: float = 4.0
  crop: str = 'pad'
  shuffle_window: int = 10_000
  cycle_length: int = 16
  on_corrupt: str = 'raise'

  @classmethod
  def of(cls, dataset: Any) -> Options:
    """From a dataset name (a built-in set with its defaults) or the config's dataset section."""
    if isinstance(dataset, Options):
      return dataset
    if isinstance(dataset, str):
      return cls(name=dataset)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataset.items() if k in fields})


class StreamingError(ValueError):
  """A split that cannot be streamed, or whose streamed copy is missing."""


class Dataset:
  """One source of real images; subclasses implement `_info`, `size` and `_load`."""

  def __init__(self, options: Options):
    self.options = options
    self._info = None

  @property
  def name(self) -> str:
    return self.options.name

  @property
  def info(self) -> DatasetInfo:
    if self._info is None:
      self._info = self._make_info()
    return self._info

  def _make_info(self) -> DatasetInfo:
    raise NotImplementedError

  def size(self, split: str) -> int:
    """Number of images of `split`."""
    raise NotImplementedError

  def load(self, split: str, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Images [start, stop) of `split` in RAM: uint8 (N, H, W, C) of `info.shape`, int64 labels."""
    check_split(split)
    data = self._load(split, start, stop)
    check(data, self.name, self.info)
    return data

  def _load(self, split, start, stop):
    raise NotImplementedError

  def varying_sizes(self) -> bool:
    """True when training images keep their own sizes (ImageNet): they must be cropped."""
    return False

  def stream(self, split: str, skip: int = 0):
    """The split as a `streamed.StreamedSplit` without its first `skip` images."""
    raise StreamingError(f'dataset {self.name!r} cannot be streamed; use '
                         '--config.dataset.storage=ram')


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; expected train or test.')


def check(data: dict[str, np.ndarray], name: str, info: DatasetInfo) -> None:
  """Rejects images or labels that do not match the dataset's declared shape and classes."""
  image, label = data['image'], data['label']
  if image.dtype != np.uint8 or image.shape[1:] != tuple(info.shape):
    shape = ', '.join(map(str, info.shape))
    raise ValueError(f'{name}: expected uint8 images of shape (N, {shape})'
                     f', got {image.dtype} {image.shape}.')
  if len(label) != len(image):
    raise ValueError(f'{name}: {len(image)} images but {len(label)} labels.')
  bad = (label < 0) | (label >= info.num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f'{name}: label {label[i]} at index {i} is outside [0, {info.num_classes}).')


def bounds(n: int, start: int, stop: int | None) -> tuple[int, int]:
  """[start, stop) clipped to a split of n images."""
  stop = n if stop is None else min(stop, n)
  return min(start, stop), stop
