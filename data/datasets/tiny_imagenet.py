"""TinyImageNet from the `tiny-imagenet-200` folder as it is distributed: 200 ImageNet classes,
500 training and 50 validation images each, 64 x 64 JPEGs (a few grey, read as RGB).

  tiny-imagenet-200/wnids.txt                     the 200 WNIDs
  tiny-imagenet-200/words.txt                     WNID <tab> names, for every WordNet synset
  tiny-imagenet-200/train/WNID/images/*.JPEG
  tiny-imagenet-200/val/images/*.JPEG + val/val_annotations.txt (file <tab> WNID <tab> box)

  --config.dataset.name=tiny_imagenet --config.dataset.path=.../tiny-imagenet-200

Class i is the i-th WNID in sorted order (torchvision's ImageFolder order over train/); the
validation images are the test split (the test/ images have no labels). `info.class_map[i]` is
class i's index among ImageNet's 1,000 classes (sorted WNIDs), which a class-conditional
ImageNet generator (the paper's ImageNet-64 DDPM, "restricted to the 200 classes") takes. The
class names (words.txt), the class map and the per-channel mean/std are measured once and stored
beside the folder (`statistics`). The training images come in a fixed seeded order
(`dataset.split_seed`), so the held-out head spans the classes.
"""
from __future__ import annotations

import posixpath

from data import files
from data.datasets import image_files
from data.datasets import imagenet
from data.datasets import path_dataset

SHAPE = (64, 64, 3)


def _read_text(path: str) -> str:
  if not files.exists(path):
    raise ValueError(f'{path} not found: dataset.path must be the tiny-imagenet-200 folder as '
                     'distributed (wnids.txt, words.txt, train/, val/)')
  with files.open_file(path, 'rb') as f:
    return f.read().decode()


class TinyImageNet(path_dataset.PathDataset):

  def _find_splits(self):
    o, root = self.options, self.path.rstrip('/')
    wnids = sorted(_read_text(posixpath.join(root, 'wnids.txt')).split())
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for w in wnids:
      found = image_files.list_images(posixpath.join(root, 'train', w, 'images'))
      if not found:
        raise ValueError(f'{root}/train/{w}/images: no images for class {w} of wnids.txt')
      paths += found
      labels += [index[w]] * len(found)
    test_paths, test_labels = [], []
    annotations = posixpath.join(root, 'val', 'val_annotations.txt')
    for n, line in enumerate(_read_text(annotations).splitlines(), 1):
      if not line.strip():
        continue
      name, wnid = line.split('\t')[:2]
      if wnid not in index:
        raise ValueError(f'{annotations}, line {n}: {wnid} is not in wnids.txt')
      test_paths.append(posixpath.join(root, 'val', 'images', name))
      test_labels.append(index[wnid])
    size = o.image_size or SHAPE[0]
    shape = (size, size, SHAPE[2])
    order = path_dataset.seeded_order(len(paths), o.split_seed, 0)
    return path_dataset.Splits(
        train=image_files.ImageFiles([paths[i] for i in order], [labels[i] for i in order],
                                     shape, o.resize),
        test=image_files.ImageFiles(test_paths, test_labels, shape, o.resize),
        class_names=tuple(wnids), shape=shape)

  def _more_facts(self, splits):
    words = {}
    for line in _read_text(posixpath.join(self.path.rstrip('/'), 'words.txt')).splitlines():
      if '\t' in line:
        wnid, names = line.split('\t', 1)
        words[wnid] = names.strip()
    known = {w: i for i, w in enumerate(imagenet.wnids())}
    missing = [w for w in splits.class_names if w not in known]
    if missing:
      raise ValueError(f'{self.path}: classes {missing[:5]} are not ImageNet-1k classes')
    return {'wnids': list(splits.class_names),
            'words': [words.get(w, '') for w in splits.class_names],
            'class_map': [known[w] for w in splits.class_names]}
