"""A toy sampler for the sampling-loop tests: deterministic uint8 batches per batch index, a kill
switch at a chosen batch (a preemption), and labels read off the first pixel."""
import numpy as np

SHAPE = (4, 4, 1)
CLASSES = 3
BATCH = 8


class Killed(Exception):
  pass


def sample_batch(key, b, kill_at=None):
  del key
  if kill_at is not None and b >= kill_at:
    raise Killed(f'batch {b}')
  return np.random.default_rng([7, int(b)]).integers(0, 256, (BATCH,) + SHAPE, dtype=np.uint8)


def label_batch(images):
  """(labels in [0, CLASSES), scores): the class by the first pixel's value."""
  first = images.reshape(len(images), -1)[:, 0].astype(np.int64)
  return np.digitize(first, [150, 230]), images.mean((1, 2, 3)) / 255.0
