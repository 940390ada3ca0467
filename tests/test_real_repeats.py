"""dataset.real_repeats: every real image r times per batch, each copy augmented on its own.

DeepMind's reference (adversarial_robustness/jax, `emulated_workers` = 4 and
datasets.py's `_repeat_batch`) repeats real images before the random crop and
flip and never repeats the generated data; these tests check the same here.
"""
import collections
import json

import numpy as np
import pytest

import toy_mix_data
from configs import base
from data.input import batch_mix
from data.input import pipeline

SHAPE = (8, 8, 3)
PAD = 2


@pytest.fixture(scope='module')
def gen_path(tmp_path_factory):
  """64 generated images (ids 0..63) in 8 shards."""
  return toy_mix_data.generated_set(tmp_path_factory.mktemp('gen'), SHAPE)


def _real(n=40):
  return toy_mix_data.real_split(SHAPE, n)


def _iterator(path, *, repeats, alpha=0.5, batch_size=16, host=0, hosts=1, prefetch=0):
  c = base.get_config()
  c.generated.path = path
  c.generated.alpha = alpha
  c.generated.shuffle_window = 16
  c.generated.cycle_length = 2
  c.train.batch_size = batch_size
  c.dataset.pad = PAD
  c.dataset.flip = True
  c.dataset.real_repeats = repeats
  c.loader.prefetch = prefetch
  c.loader.worker_count = 0
  images, labels, ids = _real()
  return pipeline.make_train_iterator(c, images, labels, ids, process_index=host,
                                      process_count=hosts)


def _all_augmentations(image):
  """Every pad-PAD crop of `image`, flipped and not, as uint8 arrays."""
  padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
  h, w, _ = image.shape
  crops = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * PAD + 1)
           for dx in range(2 * PAD + 1)]
  return crops + [c[:, ::-1] for c in crops]


def test_real_count_rounds_the_distinct_images():
  assert batch_mix.real_count(1024, 0.3, 4) == 308   # 4 x round(76.8)
  assert batch_mix.real_count(1024, 0.3) == 307
  assert batch_mix.real_count(16, 0.5, 4) == 8
  assert batch_mix.real_count(10, 1.0, 4) == 8        # at most 4 x (10 // 4)


def test_each_real_image_appears_r_times_and_generated_ones_once(gen_path):
  it = _iterator(gen_path, repeats=4)   # 8 real rows = 2 images x 4, 8 generated
  for _ in range(20):
    batch = next(it)
    real = ~batch['is_generated']
    assert real.sum() == 8
    assert sorted(collections.Counter(batch['id'][real]).values()) == [4, 4]
    generated_ids = batch['id'][batch['is_generated']]
    assert len(set(generated_ids)) == len(generated_ids) == 8
    for i in set(batch['id'][real]):    # the copies carry one label
      assert len(set(batch['label'][batch['id'] == i])) == 1
  it.close()


def test_copies_are_augmented_independently(gen_path):
  images, _, _ = _real()
  it = _iterator(gen_path, repeats=4)
  pairs = identical = 0
  for _ in range(20):
    batch = next(it)
    pixels = batch['image']
    for i in set(batch['id'][~batch['is_generated']]):
      copies = pixels[batch['id'] == i]
      candidates = _all_augmentations(images[i - 1000])
      for copy in copies:   # each copy is a crop (+ flip) of its source image
        assert any(np.array_equal(copy, c) for c in candidates)
      for a in range(4):
        for b in range(a + 1, 4):
          pairs += 1
          identical += np.array_equal(copies[a], copies[b])
  # 25 crops x 2 flips: two independent copies coincide with probability 1/50 (or a bit more
  # when an image's crops coincide); 240 pairs give about 5.
  assert identical < 0.1 * pairs
  it.close()


def test_an_epoch_of_real_data_counts_distinct_images(gen_path):
  it = _iterator(gen_path, repeats=4)   # 2 distinct per step: 20 steps per epoch of 40
  seen = []
  for _ in range(20):
    batch = next(it)
    seen.extend(set(batch['id'][~batch['is_generated']]))
  assert sorted(seen) == list(range(1000, 1040))
  it.close()


def test_hosts_keep_all_copies_of_an_image_together(gen_path):
  # 12 real rows = 3 images x 4 per global batch of 32 over 2 hosts: 2 and 1, alternating.
  its = [_iterator(gen_path, repeats=4, alpha=0.375, batch_size=32, host=h, hosts=2)
         for h in range(2)]
  for step in range(6):
    batches = [next(it) for it in its]
    counts = [collections.Counter(b['id'][~b['is_generated']]) for b in batches]
    assert sum(len(c) for c in counts) == 3
    assert [len(c) for c in counts] == ([2, 1] if step % 2 == 0 else [1, 2])
    assert all(set(c.values()) == {4} for c in counts)
    assert not set(counts[0]) & set(counts[1])
  for it in its:
    it.close()


def test_exact_resume_with_repeats(gen_path):
  it = _iterator(gen_path, repeats=4, prefetch=2)
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(5)]
  resumed = _iterator(gen_path, repeats=4, prefetch=2)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  it.close()
  resumed.close()


def test_repeats_that_do_not_fit_are_rejected(gen_path):
  with pytest.raises(ValueError, match='real_repeats = 3: must be >= 1 and divide the 16'):
    _iterator('', repeats=3, alpha=1.0)
  # 24 real rows = 3 images x 8 over 2 hosts of 12: one host would need 2 x 8.
  with pytest.raises(ValueError, match='real_repeats = 8: a host would need 16 real rows but its '
                     'batch has 12'):
    _iterator(gen_path, repeats=8, alpha=1.0, batch_size=24, hosts=2)
  with pytest.raises(ValueError, match='real_repeats = 0'):
    batch_mix.BatchPlan(16, 8, 0, 1, real_repeats=0)
