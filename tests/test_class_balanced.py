"""Class-balanced generated sets (the paper's "sample until 100K per class"): exact counts per
class, the very first K of each class of the sample stream, exact after a crash and a rerun,
across hosts, and for a conditional generator drawn class by class.

The generator is numpy (batch b from a generator seeded with b, 4x4x1 images) and the labeller
is skewed on purpose (classes 0/1/2 about 59/31/10% of samples) so the stream must run far past
num to fill the rare class; the machinery under test (host plans, first-K, shard commits,
resume, manifests) is the real one.
"""
import json
import os

import numpy as np
import pytest

from data.generation import balanced
from data.generation import sampling
from data.records import shards

from toy_sampler import BATCH, CLASSES, SHAPE, Killed, label_batch, sample_batch  # noqa: F401


def write(out, num=60, shards_=4, sample=sample_batch, **kw):
  return sampling.write_samples(sample, label_batch, out, num=num, batch_size=BATCH,
                                num_shards=shards_, image_shape=SHAPE, num_classes=CLASSES,
                                generator='toy', sampler='ddim', steps=4, seed=7,
                                class_balanced=True, progress=False, **kw)


def read(manifest):
  batch = next(shards.read_examples(manifest, batch_size=10 ** 6))
  order = np.argsort(batch['id'])
  return {k: v[order] for k, v in batch.items()}


def first_k_of_stream(k, batches):
  """The reference: label the stream sample by sample, keep a sample while its class has < k."""
  counts, kept = np.zeros(CLASSES, int), []
  for b in batches:
    images = sample_batch(None, b)
    labels, _ = label_batch(images)
    for row, label in enumerate(labels):
      if counts[label] < k:
        counts[label] += 1
        kept.append((b * BATCH + row, label, images[row]))
      if counts.min() == k:
        return kept
  raise AssertionError('stream too short')


def test_first_k_keeps_the_first_of_each_class_in_stream_order():
  counts = np.array([0, 2, 3])
  keep = balanced.first_k(np.array([1, 0, 1, 2, 1, 0, 0]), counts, 3)
  np.testing.assert_array_equal(keep, [True, True, False, False, False, True, True])
  np.testing.assert_array_equal(counts, [3, 3, 3])
  with pytest.raises(ValueError, match='61 samples: not a multiple of the 3 classes'):
    balanced.per_class(61, 3)


def test_the_set_is_exactly_the_first_k_of_each_class(tmp_path):
  result = write(str(tmp_path / 'toy'))
  data = read(result.manifest)
  np.testing.assert_array_equal(np.bincount(data['label'], minlength=CLASSES), [20] * CLASSES)
  ref = first_k_of_stream(20, range(10 ** 4))
  np.testing.assert_array_equal(data['id'], [r[0] for r in ref])
  np.testing.assert_array_equal(data['label'], [r[1] for r in ref])
  np.testing.assert_array_equal(data['image'], np.stack([r[2] for r in ref]))
  manifest = json.load(open(result.manifest))
  assert manifest['count'] == 60 and manifest['label_counts'] == [20] * CLASSES
  assert manifest['metadata']['selection'] == 'class-balanced'
  assert manifest['metadata']['sampling']['class_balanced'] is True
  # Every candidate up to the last kept one was drawn: the rare class needs ~200 of them.
  assert manifest['metadata']['class_balance'] == {'per_class': 20, 'candidates': ref[-1][0] + 1}
  assert ref[-1][0] + 1 > 150 and result.peak_selector_bytes == 0
  assert not [f for f in os.listdir(tmp_path) if 'tmp' in f or 'progress' in f]
  assert write(str(tmp_path / 'toy')).sampled == 0   # done: nothing drawn again


def test_a_crash_and_a_rerun_give_exactly_the_uninterrupted_set(tmp_path):
  out = str(tmp_path / 'crashed' / 'toy')
  with pytest.raises(Killed):
    write(out, num=120, shards_=6, sample=lambda key, b: sample_batch(key, b, kill_at=30))
  state = json.load(open(out + '.progress.json'))
  assert len(state['committed']) >= 2 and len(state['last_ids']) == len(state['committed'])
  again = write(out, num=120, shards_=6)
  whole = write(str(tmp_path / 'whole' / 'toy'), num=120, shards_=6)
  assert 0 < again.sampled < whole.sampled        # it went on, not from the start
  got, want = read(again.manifest), read(whole.manifest)
  for key in ('id', 'image', 'label', 'score'):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  np.testing.assert_array_equal(np.bincount(got['label']), [40] * CLASSES)
  assert (json.load(open(again.manifest))['metadata']['class_balance'] ==
          json.load(open(whole.manifest))['metadata']['class_balance'])


def test_too_few_candidates_stop_with_the_short_classes_and_a_larger_bound_goes_on(tmp_path):
  out = str(tmp_path / 'toy')
  with pytest.raises(ValueError, match=r'96 candidates gave fewer than 20 of some classes '
                                       r'\(\{class: count\} = \{2: \d+\}\).*--max_candidates'):
    write(out, max_candidates=96)
  assert not os.path.exists(out + '.json')
  assert json.load(open(out + '.progress.json'))['committed']   # kept: a rerun goes on
  data = read(write(out, max_candidates=600).manifest)
  np.testing.assert_array_equal(data['id'], [r[0] for r in first_k_of_stream(20, range(75))])
  with pytest.raises(ValueError, match=r'max_candidates=30: must lie in \[num=60'):
    write(str(tmp_path / 'other'), max_candidates=30)


def test_hosts_fill_their_shares_and_the_set_has_exactly_k_per_class(tmp_path):
  out = str(tmp_path / 'toy')
  results = [write(out, num=63, shards_=4, process_index=h, process_count=2, barrier=lambda: None)
             for h in (1, 0)]    # host 0 merges the manifests once host 1's is there
  data = read(results[1].manifest)
  np.testing.assert_array_equal(np.bincount(data['label']), [21] * CLASSES)
  for h, share in ((0, 11), (1, 10)):
    host = read(results[1 - h].host_manifest)
    ref = first_k_of_stream(share, range(h, 10 ** 4, 2))
    np.testing.assert_array_equal(host['id'], sorted(r[0] for r in ref))
  manifest = json.load(open(results[1].manifest))
  assert manifest['count'] == 63 and manifest['metadata']['class_balance']['per_class'] == 21


def test_a_conditional_generator_draws_each_class_directly(tmp_path):
  def conditional(key, b):
    ids = b * BATCH + np.arange(BATCH)
    return sample_batch(key, b), ids % CLASSES
  result = sampling.write_samples(
      conditional, None, str(tmp_path / 'cond'), num=60, batch_size=BATCH, num_shards=2,
      image_shape=SHAPE, num_classes=CLASSES, generator='toy', sampler='ddim', steps=4, seed=7,
      class_balanced=True, progress=False)
  data = read(result.manifest)
  np.testing.assert_array_equal(data['id'], np.arange(60))     # no candidate wasted
  np.testing.assert_array_equal(np.bincount(data['label']), [20] * CLASSES)
  with pytest.raises(ValueError, match='61 samples: not a multiple of the 3 classes'):
    sampling.write_samples(conditional, None, str(tmp_path / 'odd'), num=61, batch_size=BATCH,
                           num_shards=2, image_shape=SHAPE, num_classes=CLASSES, generator='toy',
                           sampler='ddim', steps=4, seed=7, class_balanced=True, progress=False)


def test_top_k_and_class_balanced_are_refused_together(tmp_path):
  with pytest.raises(ValueError, match='top_k=5 and class_balanced: choose one'):
    write(str(tmp_path / 'toy'), top_k=5)



def test_the_methods_gaussian_set_is_the_first_of_each_pseudo_label(tmp_path, monkeypatch):
  """The method's samples stage with pipeline.class_balanced and the Gaussian fit: its stream
  (gaussian_fit.sample_batch), pseudo-labelled, the first num / classes of each label kept."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  from data import real  # pylint: disable=g-import-not-at-top
  from data.generation import gaussian_fit  # pylint: disable=g-import-not-at-top
  from trainer.generation import sample as sample_lib  # pylint: disable=g-import-not-at-top
  from trainer.pipeline import console  # pylint: disable=g-import-not-at-top
  from trainer.pipeline import stages  # pylint: disable=g-import-not-at-top
  train = real.load('digits', 'train')
  fit = gaussian_fit.fit(train['image'], train['label'], 10, n_components=16)
  gaussian_fit.save(fit, str(tmp_path / 'fit.npz'))
  def pseudo_label(images):   # skewed: class 9 takes 4 of 13 pixel sums, the others one each
    total = images.reshape(len(images), -1).astype(np.int64).sum(1)
    return np.minimum(total % 13, 9), total / total.max()
  monkeypatch.setattr(sample_lib.classifier_lib, 'load', lambda path: (None, None, None))
  monkeypatch.setattr(sample_lib.labeller, 'on_host', lambda *args: pseudo_label)
  config = demo.get_config()
  config.pipeline.num_generated, config.pipeline.num_shards = 200, 2
  lines = []
  manifest = stages.stage_samples(config, str(tmp_path), str(tmp_path / 'fit.npz'), 'clf',
                                  console.Console(lines.append))
  assert 'the first 20 of each class' in lines[0] and 'among' in lines[1]
  data = read(manifest)
  np.testing.assert_array_equal(np.bincount(data['label'], minlength=10), [20] * 10)
  counts, want = np.zeros(10, int), []
  for b in range(100):
    images, _ = gaussian_fit.sample_batch(fit, b, seed=config.seed, batch_size=1024)
    labels, _ = pseudo_label(images)
    keep = balanced.first_k(labels, counts, 20)
    want += (b * 1024 + np.flatnonzero(keep)).tolist()
    if counts.min() == 20:
      break
  np.testing.assert_array_equal(data['id'], want)
  assert json.load(open(manifest))['metadata']['selection'] == 'class-balanced'


def test_the_method_refuses_a_set_size_the_classes_do_not_divide():
  from configs import demo  # pylint: disable=g-import-not-at-top
  from trainer.robust import config_validation  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  config.pipeline.num_generated = 10_001
  with pytest.raises(ValueError, match=r'pipeline.num_generated=10001: a class-balanced set .* '
                                       r'multiple of the 10 classes'):
    config_validation.validate_pipeline(config)
  config.pipeline.top_k = 100          # top-K takes candidates: any count
  config_validation.validate_pipeline(config)
  config.pipeline.top_k, config.pipeline.class_balanced = 0, False
  config_validation.validate_pipeline(config)
