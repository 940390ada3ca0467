"""Pad-and-random-crop plus optional horizontal flip, on a whole batch at once.

  out = pad_crop_flip(images, rng, pad=4, flip=True)

`images` is NHWC, uint8 or float; the result is a new array of the same shape
and dtype. Padding is with zeros (as `tf.pad` in the paper's pipeline).

Why it is shaped like this: a crop row of one image is a contiguous run of
W*C values inside the padded image, so the padded batch is viewed as an array
of such runs indexed by (image, dy, dx, row), and every crop of the batch is a
single gather of whole runs. The flip reverses pixels (C values each, viewed as
one opaque item) of the chosen images in one strided copy. Per-element index
arrays as large as the batch, or a Python loop over images, are 5-10x slower.
"""
from __future__ import annotations

import numpy as np


def pad_crop_flip(images: np.ndarray, rng: np.random.Generator, *,
                  pad: int = 4, flip: bool = True) -> np.ndarray:
  """Randomly shifts each image by up to `pad` pixels and maybe mirrors it."""
  if images.ndim != 4:
    raise ValueError(f'expected NHWC images, got shape {images.shape}')
  if pad < 0:
    raise ValueError(f'pad must be >= 0, got {pad}')
  n, h, w, c = images.shape
  if n == 0 or not pad:
    out = np.array(images, order='C', copy=True)
  else:
    out = _random_crop(images, rng, pad)  # a new array
  if flip:
    mirrored = np.flatnonzero(rng.random(n) < 0.5)
    pixels = out.view(np.dtype((np.void, c * out.itemsize))).reshape(n, h, w)
    pixels[mirrored] = pixels[mirrored, :, ::-1]
  return out


def _random_crop(images: np.ndarray, rng: np.random.Generator,
                 pad: int) -> np.ndarray:
  n, h, w, c = images.shape
  k = 2 * pad + 1
  dy = rng.integers(0, k, size=n)
  dx = rng.integers(0, k, size=n)
  padded = np.zeros((n, h + 2 * pad, w + 2 * pad, c), images.dtype)
  padded[:, pad:pad + h, pad:pad + w] = images
  s = padded.strides
  run = np.dtype((np.void, w * s[2]))   # one crop row: W pixels
  runs = np.ndarray((n, k, k, h), run, buffer=padded,
                    strides=(s[0], s[1], s[2], s[1]))
  crops = runs[np.arange(n), dy, dx]    # (n, h) runs, copied
  return crops.view(images.dtype).reshape(n, h, w, c)
