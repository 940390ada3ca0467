"""A resumed shard set's manifest counts each label once (in-process: a numpy generator and a
crash raised from its batch function, so the test runs in the fast tier)."""
import json

import numpy as np
import pytest

from data.generation import sampling
from data.records import shards

from toy_sampler import BATCH, CLASSES, SHAPE, Killed, label_batch, sample_batch  # noqa: F401


def write(out, sample=sample_batch):
  return sampling.write_samples(sample, label_batch, out, num=100, batch_size=BATCH,
                                num_shards=6, image_shape=SHAPE, num_classes=CLASSES,
                                generator='toy', sampler='ddim', steps=4, seed=7, progress=False)


def test_a_resumed_set_counts_each_label_once(tmp_path):
  """A batch across a shard boundary once credited the committed shard with the next shard's
  labels, so a resumed set's manifest counted them twice."""
  out = str(tmp_path / 'toy')
  with pytest.raises(Killed):
    write(out, sample=lambda key, b: sample_batch(key, b, kill_at=9))
  result = write(out)
  assert 0 < result.sampled < 100
  data = next(shards.read_examples(result.manifest, batch_size=10 ** 6))
  np.testing.assert_array_equal(np.sort(data['id']), np.arange(100))
  assert (json.load(open(result.manifest))['label_counts'] ==
          np.bincount(data['label'], minlength=CLASSES).tolist())
