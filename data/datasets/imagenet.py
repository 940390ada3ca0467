"""ImageNet (ILSVRC 2012) through tensorflow-datasets' `imagenet2012`, prepared once from the
manual download, as App. B of the paper trains on it.

Prepare once, with ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in MANUAL:

  python -c "import tensorflow_datasets as tfds; tfds.builder('imagenet2012', data_dir='DIR')
      .download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='MANUAL'))"

then train with --config.dataset.data_dir=DIR (local or gs://). The prepared TFRecord files are
read without TensorFlow (`tfds_records` says why them rather than `tfds.data_source`).

- train: 1,281,167 images of their own sizes, always streamed (each training image is cropped
  from the whole, so they are not held at one size): an Inception-style random-resized crop to
  `dataset.image_size` (224) and a flip (`dataset.crop = 'inception'`), in the input workers.
- test: the validation split (50,000 images), resized to 256 on the shorter side and cropped to
  the centre 224 x 224 (RobustBench's ImageNet protocol, `crops.resize_center_crop`);
  RobustBench evaluates the first 5,000 of its own list (`dataset.test_size` bounds ours).
- held out for selection: the first `dataset.holdout` training images, with the test transform.
- mean/std: torchvision's ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225),
  which RobustBench's ImageNet models normalise with; class i is the i-th WNID in sorted order
  (tfds's labels.txt, the order of torchvision's ImageFolder and of RobustBench).
"""
from __future__ import annotations

import functools

import numpy as np

from data import image_codec
from data.datasets import dataset
from data.datasets import tfds_records
from data.input import crops

TFDS_NAME = 'imagenet2012'
TFDS_SPLITS = {'train': 'train', 'test': 'validation'}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
IMAGE_SIZE = 224


@functools.cache
def wnids() -> tuple[str, ...]:
  """The 1,000 ImageNet class WNIDs in label order (tfds ships the list)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = tfds.core.tfds_path('datasets/imagenet2012/labels.txt')
  return tuple(path.read_text().split())


class ImageNet(dataset.Dataset):

  @property
  def image_size(self) -> int:
    return self.options.image_size or IMAGE_SIZE

  def _make_info(self):
    s = self.image_size
    return dataset.DatasetInfo(1000, (s, s, 3), MEAN, STD, TFDS_NAME, class_names=wnids())

  def size(self, split):
    dataset.check_split(split)
    return tfds_records.size(TFDS_NAME, TFDS_SPLITS[split], self.options.data_dir)

  def varying_sizes(self):
    return True

  def _load(self, split, start, stop):
    """Images [start, stop) with the evaluation transform (resize 256, centre crop 224)."""
    images, labels = [], []
    for data, label, _ in tfds_records.read(TFDS_NAME, TFDS_SPLITS[split], self.options.data_dir,
                                            self.info, start, stop, shape=(0, 0, 3)):
      images.append(crops.resize_center_crop(image_codec.open_image(data), self.image_size))
      labels.append(label)
    if not images:
      return {'image': np.zeros((0, *self.info.shape), np.uint8),
              'label': np.zeros((0,), np.int64)}
    return {'image': np.stack(images), 'label': np.asarray(labels, np.int64)}

  def stream(self, split, skip=0):
    return tfds_records.streamed_split(TFDS_NAME, TFDS_SPLITS[split], self.options.data_dir,
                                       self.info, skip=skip, shape=(0, 0, 3))
