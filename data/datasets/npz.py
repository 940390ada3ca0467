"""An image dataset in one `.npz` file: uint8 images and integer labels.

  image (N, H, W[, C]) uint8, label (N,) int                 one set: a seeded test split is drawn
  train_image, train_label, test_image, test_label          a split of its own
  class_names (K,) str, optional

  --config.dataset.name=npz --config.dataset.path=FILE.npz     (local)

Members stored uncompressed (`np.savez`) are memory-mapped and read by rows, so a file larger
than RAM still works (and packs into shards for streaming); compressed ones (`np.savez_compressed`)
are read into RAM. Nothing is unpickled. Classes are 0 .. max label (or `class_names`). Images
of a size other than `dataset.image_size` (when set) are refused, or resized with
`dataset.resize` (shorter side, then the centre square). Mean/std is measured once and stored
beside the file (`statistics`).
"""
from __future__ import annotations

import zipfile

import numpy as np

from data import image_codec
from data.datasets import path_dataset
from data.generation import import_npz
from data.input import crops


class NpzImages:
  """Rows `index` of an npz member as a split: take / load / encoded, in a fixed order."""

  def __init__(self, member: import_npz.NpzMember, labels: np.ndarray, index: np.ndarray,
               shape, resize: bool, where: str):
    self.member, self.labels, self.index = member, labels, index
    self.shape, self.resize, self.where = tuple(shape), resize, where
    self._all = None

  def __len__(self):
    return len(self.index)

  def _rows(self, rows: np.ndarray) -> np.ndarray:
    if self.member.mapped:
      return self.member.take(rows)
    if self._all is None:   # compressed: read once, sequentially
      self._all = self.member.rows(0, len(self.member))
    return self._all[rows]

  def take(self, indices) -> dict[str, np.ndarray]:
    rows = self.index[np.asarray(indices, np.int64)]
    images = self._rows(rows)
    if images.ndim == 3:
      images = images[..., None]
    if images.shape[1:] != self.shape:
      images = np.stack([self._fit(image, row) for image, row in zip(images, rows)])
    return {'image': images.reshape(len(rows), *self.shape), 'label': self.labels[rows]}

  def _fit(self, image, row):
    if not self.resize:
      raise ValueError(f'{self.where}: row {row} is {image.shape[0]}x{image.shape[1]}, the '
                       f'dataset\'s images are {self.shape[0]}x{self.shape[1]}; set '
                       '--config.dataset.resize=True to resize them')
    return crops.resize_center_crop(image, self.shape[0], resize=self.shape[0],
                                    channels=self.shape[2])

  def load(self, start=0, stop=None):
    stop = len(self) if stop is None else min(stop, len(self))
    return self.take(np.arange(min(start, stop), stop))

  def labels_at(self, indices) -> np.ndarray:
    return self.labels[self.index[np.asarray(indices, np.int64)]]

  def encoded(self, i: int) -> bytes:
    return image_codec.encode(self.take([i])['image'][0], 'png')


def _labels(path, key, n):
  labels = np.asarray(import_npz.NpzMember(path, key).rows(0, n))
  if labels.shape != (n,) or labels.dtype.kind not in 'iu':
    raise ValueError(f'{path}: {key!r} must hold {n} integer labels, has {labels.dtype} '
                     f'{labels.shape}')
  if n and labels.min() < 0:
    raise ValueError(f'{path}: {key!r} has a negative label ({labels.min()})')
  return labels.astype(np.int64)


class Npz(path_dataset.PathDataset):

  def _find_splits(self):
    o, path = self.options, self.path
    with zipfile.ZipFile(path) as zf:
      keys = {n[:-4] for n in zf.namelist() if n.endswith('.npy')}
    own = {'train_image', 'train_label', 'test_image', 'test_label'} <= keys
    if not own and not {'image', 'label'} <= keys:
      raise ValueError(f'{path}: expected the arrays image and label (or train_image, '
                       f'train_label, test_image, test_label); it has {sorted(keys)}')
    parts = {}
    for split in ('train', 'test') if own else ('all',):
      prefix = f'{split}_' if own else ''
      member = import_npz.NpzMember(path, prefix + 'image')
      if member.dtype != np.uint8 or len(member.shape) not in (3, 4):
        raise ValueError(f'{path}: {prefix}image must be uint8 (N, H, W[, C]), got '
                         f'{member.dtype} {member.shape}')
      parts[split] = (member, _labels(path, prefix + 'label', len(member)))
    if own:
      (train_m, train_l), (test_m, test_l) = parts['train'], parts['test']
      train_i, test_i = np.arange(len(train_m)), np.arange(len(test_m))
    else:
      train_m, train_l = test_m, test_l = parts['all']
      train_i, test_i = path_dataset.draw_test(len(train_m), o.test_fraction, o.split_seed)
    h, w = train_m.shape[1:3]
    c = train_m.shape[3] if len(train_m.shape) == 4 else 1
    shape = (o.image_size, o.image_size, c) if o.image_size else (h, w, c)
    names = self._class_names(keys, max(train_l.max(initial=0), test_l.max(initial=0)) + 1)
    order = lambda n, stream: path_dataset.seeded_order(n, o.split_seed, stream)
    return path_dataset.Splits(
        train=NpzImages(train_m, train_l, train_i[order(len(train_i), 0)], shape, o.resize,
                        path),
        test=NpzImages(test_m, test_l, test_i[order(len(test_i), 1)], shape, o.resize, path),
        class_names=names, shape=shape)

  def _class_names(self, keys, num_classes):
    if 'class_names' not in keys:
      return tuple(str(i) for i in range(num_classes))
    with np.load(self.path, allow_pickle=False) as z:
      names = tuple(str(n) for n in z['class_names'])
    if len(names) < num_classes:
      raise ValueError(f'{self.path}: {len(names)} class_names but labels up to '
                       f'{num_classes - 1}')
    return names
