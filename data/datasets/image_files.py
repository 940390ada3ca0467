"""Image files (PNG or JPEG, local or gs://) with labels, in a fixed order, decoded to one size.

  files = ImageFiles(paths, labels, shape=(64, 64, 3), resize=False)
  files.load(0, 1000)          # dict(image=uint8 (1000, 64, 64, 3), label=int64)
  files.take([5, 2, 9])        # the same for any indices
  files.read(7)                # the file's bytes, as stored

An image of another size is refused with its file named, unless `resize` is set: then its
shorter side is resized to the dataset's side and the centre square kept (`crops`). A grey
image in an RGB dataset becomes RGB. Files are read and decoded by a few threads (Pillow and
file reads release the GIL).
"""
from __future__ import annotations

import concurrent.futures
import posixpath

import numpy as np

from data import files
from data import image_codec
from data.input import crops

EXTENSIONS = ('.png', '.jpg', '.jpeg')
_THREADS = 8


def is_image(name: str) -> bool:
  return name.lower().endswith(EXTENSIONS)


def list_images(folder: str) -> list[str]:
  """The image files directly in `folder`, sorted by name."""
  return [posixpath.join(folder, n) for n in files.listdir(folder) if is_image(n)]


def to_shape(data: bytes, shape: tuple[int, int, int], resize: bool, where: str) -> np.ndarray:
  """Decodes one file's bytes to uint8 `shape`; see the module docstring."""
  try:
    pil = image_codec.open_image(data)
    if (pil.height, pil.width) == tuple(shape[:2]):
      return image_codec.to_array(pil, shape[2])
    if not resize:
      raise ValueError(f'image is {pil.height}x{pil.width}, the dataset\'s images are '
                       f'{shape[0]}x{shape[1]}; set --config.dataset.resize=True to resize '
                       'such images (shorter side, then the centre square)')
    if shape[0] != shape[1]:
      raise ValueError(f'resizing needs square images, the dataset\'s are {shape[0]}x{shape[1]}')
    return crops.resize_center_crop(pil, shape[0], resize=shape[0], channels=shape[2])
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from e


class ImageFiles:
  """See the module docstring."""

  def __init__(self, paths, labels, shape, resize: bool = False):
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int64)
    self.shape = tuple(shape)
    self.resize = resize
    if len(self.labels) != len(self.paths):
      raise ValueError(f'{len(self.paths)} files but {len(self.labels)} labels')

  def __len__(self) -> int:
    return len(self.paths)

  def labels_at(self, indices) -> np.ndarray:
    return self.labels[np.asarray(indices, np.int64)]

  def read(self, i: int) -> bytes:
    with files.open_file(self.paths[i], 'rb') as f:
      return f.read()

  def encoded(self, i: int) -> bytes:
    """Image i as PNG or JPEG bytes: the file as it is when it already has the dataset's size
    and channels, else its decoded (resized) pixels as a PNG."""
    data = self.read(i)
    try:
      fits = image_codec.peek(data) == self.shape
    except ValueError as e:
      raise ValueError(f'{self.paths[i]}: {e}') from e
    if fits:
      return data
    return image_codec.encode(to_shape(data, self.shape, self.resize, self.paths[i]), 'png')

  def image(self, i: int) -> np.ndarray:
    return to_shape(self.read(i), self.shape, self.resize, self.paths[i])

  def take(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    out = np.empty((len(indices), *self.shape), np.uint8)

    def fill(row):
      out[row] = self.image(int(indices[row]))

    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
      list(pool.map(fill, range(len(indices))))
    return {'image': out, 'label': self.labels[indices]}

  def load(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    stop = len(self) if stop is None else min(stop, len(self))
    return self.take(np.arange(min(start, stop), stop))
