"""Small copies of the real datasets' layouts, made in a test: a `tiny-imagenet-200` tree of JPEGs,
an image folder, npz files, and a prepared tfds `imagenet2012` (built by tfds's own builder from
fake ILSVRC2012 tar files).

Images are smooth class-coloured gradients with some noise, so JPEG keeps them recognisable and
a classifier can learn the classes in a few steps.
"""
import io
import os
import tarfile

import numpy as np
from PIL import Image


def image(label, h, w, rng, channels=3):
  """A uint8 (h, w, channels) image whose colour says its class."""
  y, x = np.mgrid[0:h, 0:w]
  hue = np.array([np.sin(label * 1.7), np.cos(label * 2.3), np.sin(label * 0.9 + 1)])
  base = 128 + 90 * hue[None, None, :] * (0.6 + 0.4 * np.sin(x / (3 + w / 8))[..., None])
  base = base + 20 * np.cos(y / (2 + h / 6))[..., None] + rng.normal(0, 6, (h, w, 3))
  out = np.clip(base, 0, 255).astype(np.uint8)
  return out.mean(-1, keepdims=True).astype(np.uint8) if channels == 1 else out


def encode(array, fmt):
  out = io.BytesIO()
  Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(out, fmt, quality=90)
  return out.getvalue()


def imagenet_wnids(n):
  from data.datasets import imagenet  # pylint: disable=g-import-not-at-top
  return list(imagenet.wnids()[10:10 + 7 * n:7])   # spread over the 1,000 classes


def tiny_imagenet(root, classes=4, per_class=6, val=8, seed=0, grey=True):
  """A `tiny-imagenet-200` tree; returns its path. Class c's first image is grey if `grey`."""
  rng = np.random.default_rng(seed)
  root = os.path.join(root, 'tiny-imagenet-200')
  wnids = imagenet_wnids(classes)[::-1]   # wnids.txt is not sorted in the real one either
  os.makedirs(os.path.join(root, 'val', 'images'))
  with open(os.path.join(root, 'wnids.txt'), 'w') as f:
    f.write('\n'.join(wnids) + '\n')
  with open(os.path.join(root, 'words.txt'), 'w') as f:
    f.write('n00001740\tentity\n')
    f.write(''.join(f'{w}\tthing {w}, other name\n' for w in wnids))
  for w in wnids:
    label = sorted(wnids).index(w)
    folder = os.path.join(root, 'train', w, 'images')
    os.makedirs(folder)
    with open(os.path.join(root, 'train', w, f'{w}_boxes.txt'), 'w') as f:
      f.write('')
    for k in range(per_class):
      channels = 1 if grey and k == 0 else 3
      data = encode(image(label, 64, 64, rng, channels), 'JPEG')
      with open(os.path.join(folder, f'{w}_{k}.JPEG'), 'wb') as f:
        f.write(data)
  lines = []
  for k in range(val):
    w = wnids[k % classes]
    with open(os.path.join(root, 'val', 'images', f'val_{k}.JPEG'), 'wb') as f:
      f.write(encode(image(sorted(wnids).index(w), 64, 64, rng), 'JPEG'))
    lines.append(f'val_{k}.JPEG\t{w}\t0\t0\t63\t63\n')
  with open(os.path.join(root, 'val', 'val_annotations.txt'), 'w') as f:
    f.write(''.join(lines))
  return root


def image_folder(root, classes=('cat', 'dog', 'emu'), per_class=5, size=16, split=False,
                 seed=0, fmt='PNG'):
  """PATH/CLASS/*.png (or PATH/train/CLASS, PATH/test/CLASS with `split`); returns PATH."""
  rng = np.random.default_rng(seed)
  root = os.path.join(root, 'folder')
  parts = [('train', per_class), ('test', 2)] if split else [('', per_class)]
  for part, count in parts:
    for label, name in enumerate(classes):
      folder = os.path.join(root, part, name)
      os.makedirs(folder)
      for k in range(count):
        ext = 'png' if fmt == 'PNG' else 'jpg'
        with open(os.path.join(folder, f'{name}{k:02d}.{ext}'), 'wb') as f:
          f.write(encode(image(label, size, size, rng), fmt))
      with open(os.path.join(folder, 'notes.txt'), 'w') as f:
        f.write('not an image')
  return root


def arrays(n, size=8, classes=3, seed=0, channels=3):
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % classes
  rng.shuffle(labels)
  images = np.stack([image(int(c), size, size, rng, channels) for c in labels])
  return (images[..., 0] if channels == 1 else images), labels.astype(np.int64)


def imagenet2012(root, classes=3, per_class=4, val=5, seed=0):
  """A prepared tfds imagenet2012 (TFRecords) in ROOT/data; returns (data_dir, wnids).

  tfds's own builder prepares it from fake ILSVRC2012_img_train.tar / _val.tar: per-class tars
  of JPEGs of varying sizes; validation labels come from tfds's bundled list by file order.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  manual = os.path.join(root, 'manual')
  os.makedirs(manual)
  wnids = imagenet_wnids(classes)
  labels = tfds.core.tfds_path('datasets/imagenet2012/labels.txt').read_text().split()

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_train.tar'), 'w') as outer:
    for w in wnids:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode='w') as inner:
        for k in range(per_class):
          h, w_ = int(rng.integers(40, 90)), int(rng.integers(40, 90))
          add(inner, f'{w}_{k}.JPEG', encode(image(labels.index(w), h, w_, rng), 'JPEG'))
      add(outer, f'{w}.tar', inner_bytes.getvalue())
  with tarfile.open(os.path.join(manual, 'ILSVRC2012_img_val.tar'), 'w') as tar:
    for k in range(1, val + 1):
      add(tar, f'ILSVRC2012_val_{k:08d}.JPEG', encode(image(0, 50, 70, rng), 'JPEG'))
  data_dir = os.path.join(root, 'data')
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual),
      file_format='tfrecord')
  return data_dir, wnids
