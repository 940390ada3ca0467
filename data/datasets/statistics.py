"""What a dataset given by a path takes a pass over its files to know, measured once and stored
beside it.

  facts = stored(path, depends_on={...}, measure=lambda: {...})

`PATH.info.json` (beside the folder or file) holds the per-channel mean and std of the training
images (`mean_std`: over every pixel of a seeded sample of at most 10,000 of them, all of them
when fewer), the image shape, the split sizes and the class names. It is written once,
atomically, the first time a run needs it; later runs read it, so every host and every restart
normalises with the same numbers. It records the options it depends on (image size, resize,
split seed, test fraction); a run with other options measures again and rewrites it. If it
cannot be written (a read-only bucket), the run goes on with what it measured and logs why.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from absl import logging
import numpy as np

from data import files

SAMPLE = 10_000
VERSION = 1


def sidecar_path(path: str) -> str:
  return path.rstrip('/') + '.info.json'


def mean_std(images_at: Callable[[np.ndarray], np.ndarray], n: int, seed: int = 0,
             sample: int = SAMPLE, chunk: int = 500) -> tuple[tuple, tuple]:
  """Per-channel mean and std in [0, 1] units over the pixels of up to `sample` of n images;
  `images_at(indices)` returns uint8 NHWC images."""
  rng = np.random.default_rng(seed)
  index = np.sort(rng.choice(n, min(n, sample), replace=False))
  total = squares = count = 0
  for begin in range(0, len(index), chunk):
    x = images_at(index[begin:begin + chunk]).astype(np.float64) / 255.0
    total = total + x.sum((0, 1, 2))
    squares = squares + (x * x).sum((0, 1, 2))
    count += x.shape[0] * x.shape[1] * x.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def stored(path: str, depends_on: dict[str, Any], measure: Callable[[], dict],
           valid: Callable[[dict], bool] = lambda facts: True) -> dict:
  """The facts stored beside `path` for these options, measured and stored if missing (or if
  `valid(facts)` says they no longer describe the data)."""
  sidecar = sidecar_path(path)
  if files.exists(sidecar):
    with files.open_file(sidecar, 'rb') as f:
      try:
        facts = json.loads(f.read())
      except ValueError:
        facts = {}
        logging.warning('%s is not valid JSON; measuring the dataset again', sidecar)
    if (facts.get('version') == VERSION and facts.get('depends_on') == depends_on
        and valid(facts)):
      return facts
  logging.info('Measuring %s once (class names, sizes, mean/std); stored in %s', path, sidecar)
  facts = {'version': VERSION, 'depends_on': depends_on, **measure()}
  try:
    files.write_atomic(sidecar, json.dumps(facts, indent=1))
  except Exception as e:  # pylint: disable=broad-except  (OSError, or gfile's own errors)
    logging.warning('Could not store %s (%s); using the measured values in this run only',
                    sidecar, e)
  return facts
