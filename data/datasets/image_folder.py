"""Any image dataset laid out as torchvision's ImageFolder lays it out: one sub-folder per class.

  PATH/CLASS/*.png|jpg|jpeg                      one set: a seeded test split is drawn from it
  PATH/train/CLASS/…   PATH/test/CLASS/…         a split of its own

  --config.dataset.name=image_folder --config.dataset.path=PATH   (local or gs://)

Classes are the sub-folder names, sorted (torchvision's `find_classes` order), and the labels
index them; files other than PNG and JPEG are ignored. Without train/ and test/ folders,
`dataset.test_fraction` of the images, drawn with `dataset.split_seed`, make the test split.
All images must have the size of `dataset.image_size` (0: the size of the first training image,
by file name); an image of another size is refused with its file named, or, with
`dataset.resize`, resized (shorter side, then the centre square). Images are RGB unless the
first one is grey. The per-channel mean/std is measured once and stored beside the folder
(`statistics`); the training split streams from a packed copy (`packed`).
"""
from __future__ import annotations

import posixpath

import numpy as np

from data import files
from data import image_codec
from data.datasets import image_files
from data.datasets import path_dataset


def _class_files(root: str, classes=None) -> tuple[list[str], list[int], list[str]]:
  """(paths, labels, class names) under root/CLASS/; `classes` fixes the class list."""
  names = classes or [n for n in files.listdir(root) if files.isdir(posixpath.join(root, n))]
  if not names:
    raise ValueError(f'{root}: no class sub-folders (expected {root}/CLASS/IMAGE.png|jpg)')
  index = {name: i for i, name in enumerate(names)}
  paths, labels = [], []
  for name in files.listdir(root):
    folder = posixpath.join(root, name)
    if not files.isdir(folder):
      continue
    if name not in index:
      raise ValueError(f'{folder}: a class folder that the training split does not have')
    found = image_files.list_images(folder)
    paths += found
    labels += [index[name]] * len(found)
  if not paths:
    raise ValueError(f'{root}: no PNG or JPEG images in its class folders')
  return paths, labels, names


def shape_of(path: str, image_size: int, channels: int | None = None) -> tuple[int, int, int]:
  """The dataset's (H, W, C): `image_size` square, else the size of the image at `path`."""
  with files.open_file(path, 'rb') as f:
    try:
      h, w, c = image_codec.peek(f.read())
    except ValueError as e:
      raise ValueError(f'{path}: {e}') from e
  c = channels or c
  return (image_size, image_size, c) if image_size else (h, w, c)


class ImageFolder(path_dataset.PathDataset):

  def _find_splits(self):
    o, root = self.options, self.path.rstrip('/')
    own = (files.isdir(posixpath.join(root, 'train'))
           and files.isdir(posixpath.join(root, 'test')))
    if own:
      paths, labels, names = _class_files(posixpath.join(root, 'train'))
      test_paths, test_labels, _ = _class_files(posixpath.join(root, 'test'), names)
    else:
      all_paths, all_labels, names = _class_files(root)
      train, test = path_dataset.draw_test(len(all_paths), o.test_fraction, o.split_seed)
      paths, labels = [all_paths[i] for i in train], [all_labels[i] for i in train]
      test_paths, test_labels = [all_paths[i] for i in test], [all_labels[i] for i in test]
    shape = shape_of(paths[0], o.image_size)
    return path_dataset.Splits(
        train=_ordered(paths, labels, shape, o.resize, o.split_seed, 0),
        test=_ordered(test_paths, test_labels, shape, o.resize, o.split_seed, 1),
        class_names=tuple(names), shape=shape)


def _ordered(paths, labels, shape, resize, seed, stream):
  order = path_dataset.seeded_order(len(paths), seed, stream)
  return image_files.ImageFiles([paths[i] for i in order], np.asarray(labels)[order], shape,
                                resize)
