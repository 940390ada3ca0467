"""The NVlabs/edm reference numbers of tests/fixtures/edm, in our layout (NHWC, our params)."""
import functools
import json
import os

import numpy as np
from flax import traverse_util

from models.interop import edm as edm_import

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'edm')
WEIGHTS = os.path.join(FIXTURE, 'weights.safetensors')


def nhwc(a: np.ndarray) -> np.ndarray:
  """NCHW (or steps x NCHW) -> NHWC (steps x NHWC)."""
  return np.moveaxis(a, -3, -1)


@functools.lru_cache(maxsize=None)
def reference() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURE, 'reference.npz')) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def config() -> dict:
  with open(os.path.join(FIXTURE, 'config.json')) as f:
    return json.load(f)


@functools.lru_cache(maxsize=None)
def network_and_params():
  """(SongUNetConfig, params) read from the reference state_dict by our import."""
  state = edm_import.read_state_dict(WEIGHTS)
  network = edm_import.infer_network(state)
  return network, traverse_util.unflatten_dict(edm_import.convert_weights(state, network),
                                               sep='/')


def assert_close(actual, expected, rel: float, what: str) -> float:
  """max |actual - expected| <= rel * max |expected|; returns that error over max |expected|."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  err = float(np.abs(actual - expected).max() / np.abs(expected).max())
  print(f'{what}: max error / max |reference| = {err:.2e}')
  assert err <= rel, f'{what}: {err:.2e} > {rel:.0e}'
  return err
