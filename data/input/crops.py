"""Crops of images of any size to the model's size: Inception-style for training, centred for
evaluation (ImageNet).

  out = random_resized_crop(image, rng, size=224)     # training: uint8 (224, 224, C)
  out = resize_center_crop(image, resize=256, size=224)  # evaluation: RobustBench's protocol

`image` is a Pillow image (decoded lazily from a file's bytes: `image_codec.open_image`) or a
uint8 HWC array. Both resize with Pillow's bilinear filter, which widens its support when it
shrinks (antialiased), as torchvision does on Pillow images.

The training crop is torchvision's `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`,
the Inception crop of Szegedy et al. (2015): up to 10 tries of an area uniform in 8-100% of the
image and an aspect ratio log-uniform in [3/4, 4/3], placed uniformly; if none fits, the largest
centred crop with the ratio clipped to that range. The evaluation transform is RobustBench's
ImageNet preprocessing `Resize(256)` (shorter side to 256, the other side
int(256 * long / short)) then `CenterCrop(224)` (offsets int(round((H - 224) / 2)) and likewise
for W); with another `size` the resize keeps the ratio 256/224.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
EVAL_RESIZE_RATIO = 256 / 224


def _pil(image, channels: int) -> Image.Image:
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  mode = 'L' if channels == 1 else 'RGB'
  return image if image.mode == mode else image.convert(mode)


def _array(pil: Image.Image) -> np.ndarray:
  array = np.asarray(pil, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
  """(left, top, width, height) of one Inception-style crop; see the module docstring."""
  area = width * height
  log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
  for _ in range(10):
    target = area * rng.uniform(*SCALE)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  ratio = width / height
  if ratio < RATIO[0]:
    w, h = width, int(round(width / RATIO[0]))
  elif ratio > RATIO[1]:
    h, w = height, int(round(height * RATIO[1]))
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image, rng: np.random.Generator, size: int,
                        channels: int = 3) -> np.ndarray:
  """One Inception-style crop of `image`, resized to (size, size, channels) uint8."""
  pil = _pil(image, channels)
  left, top, w, h = crop_box(pil.width, pil.height, rng)
  # Crop, then resize, as torchvision does (resize(box=...) would filter across the box's edge).
  out = pil.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
  return _array(out)


def resize_center_crop(image, size: int, resize: int | None = None,
                       channels: int = 3) -> np.ndarray:
  """Shorter side to `resize` (default size * 256 / 224), then the centred size x size crop."""
  pil = _pil(image, channels)
  resize = resize or int(round(size * EVAL_RESIZE_RATIO))
  w, h = pil.width, pil.height
  if w <= h:
    new = (resize, int(resize * h / w))
  else:
    new = (int(resize * w / h), resize)
  if new != (w, h):
    pil = pil.resize(new, Image.BILINEAR)
  top = int(round((new[1] - size) / 2.0))
  left = int(round((new[0] - size) / 2.0))
  if top < 0 or left < 0:
    raise ValueError(f'a {w}x{h} image resized to {new[0]}x{new[1]} is smaller than the '
                     f'{size}x{size} crop')
  return _array(pil.crop((left, top, left + size, top + size)))
