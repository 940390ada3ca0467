"""ImageNet's crops: the evaluation transform is RobustBench's (torchvision's Resize(256) +
CenterCrop(224) on Pillow images) to the pixel, the training crop torchvision's RandomResizedCrop
for the box it draws."""
import math

import numpy as np
import pytest
from PIL import Image

from data.input import crops


@pytest.mark.parametrize('h,w', [(375, 500), (500, 333), (224, 224), (300, 301), (257, 1000)])
def test_the_evaluation_transform_is_robustbenchs(h, w):
  transforms = pytest.importorskip('torchvision.transforms')
  image = Image.fromarray(np.random.default_rng(h + w).integers(0, 256, (h, w, 3), np.uint8))
  want = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(image)
  np.testing.assert_array_equal(crops.resize_center_crop(image, 224), np.asarray(want))
  small = transforms.Compose([transforms.Resize(37), transforms.CenterCrop(32)])(image)
  np.testing.assert_array_equal(crops.resize_center_crop(image, 32), np.asarray(small))


def test_the_training_crop_resizes_the_box_as_torchvision_does():
  functional = pytest.importorskip('torchvision.transforms.functional')
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8))
  for seed in range(5):
    left, top, w, h = crops.crop_box(120, 90, np.random.default_rng(seed))
    want = functional.resized_crop(image, top, left, h, w, [32, 32],
                                   functional.InterpolationMode.BILINEAR)
    got = crops.random_resized_crop(image, np.random.default_rng(seed), 32)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_crop_boxes_follow_the_inception_ranges():
  rng = np.random.default_rng(1)
  areas, ratios = [], []
  for _ in range(2000):
    left, top, w, h = crops.crop_box(200, 150, rng)
    assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 150
    areas.append(w * h / (200 * 150))
    ratios.append(w / h)
  areas, ratios = np.array(areas), np.array(ratios)
  assert 0.07 < areas.min() < 0.1 and areas.max() > 0.9
  assert ratios.min() > 0.74 and ratios.max() < 1.35
  transforms = pytest.importorskip('torchvision.transforms')
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  image = Image.new('RGB', (200, 150))
  boxes = [transforms.RandomResizedCrop.get_params(image, crops.SCALE, crops.RATIO)
           for _ in range(2000)]
  theirs = np.array([h * w / (200 * 150) for _, _, h, w in boxes])
  # The same distribution (tries that do not fit favour small areas: mean ~0.44, not 0.54).
  np.testing.assert_allclose(np.quantile(areas, [0.1, 0.25, 0.5, 0.75, 0.9]),
                             np.quantile(theirs, [0.1, 0.25, 0.5, 0.75, 0.9]), atol=0.035)
  their_ratios = np.array([w / h for _, _, h, w in boxes])
  np.testing.assert_allclose(np.quantile(ratios, [0.1, 0.25, 0.5, 0.75, 0.9]),
                             np.quantile(their_ratios, [0.1, 0.25, 0.5, 0.75, 0.9]), atol=0.04)

def test_when_no_try_fits_the_centred_crop_of_the_nearest_ratio():
  # 1000 x 10: a crop of 8% or more of the area with aspect <= 4/3 would need h > 10.
  assert crops.crop_box(1000, 10, np.random.default_rng(0)) == (493, 0, 13, 10)
  assert math.isclose(13 / 10, 4 / 3, rel_tol=0.05)


def test_grey_and_array_inputs():
  grey = Image.fromarray(np.full((40, 60), 77, np.uint8))
  out = crops.random_resized_crop(grey, np.random.default_rng(0), 16)
  assert out.shape == (16, 16, 3) and (out == 77).all()
  array = np.full((40, 60, 1), 9, np.uint8)
  assert crops.resize_center_crop(array, 16, channels=1).shape == (16, 16, 1)
  with pytest.raises(ValueError, match='smaller than the 32x32 crop'):
    crops.resize_center_crop(array, 32, resize=20, channels=1)
