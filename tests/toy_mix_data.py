"""The toy data of the batch-mixing tests: a generated shard set and a real split, both seeded."""
import numpy as np

from data.records import shard_writer


def generated_set(directory, shape, *, num_classes=10, seed=1, labels=None) -> str:
  """64 generated images (ids 0..63) in 8 shards under `directory`; the manifest's path."""
  rng = np.random.default_rng(seed)
  with shard_writer.ShardWriter(str(directory / 'gen'), num_shards=8, total=64,
                                image_shape=shape, num_classes=num_classes, source='test',
                                seed=0) as writer:
    images = rng.integers(0, 256, (64, *shape), dtype=np.uint8)
    writer.write_batch(images, rng.integers(0, num_classes, 64) if labels is None else labels)
  return writer.manifest_path


def real_split(shape, n=40):
  """(images, labels with every class among the first ten, ids 1000..)."""
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 10, n)
  labels[:10] = np.arange(10)
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8), labels, 1000 + np.arange(n)
