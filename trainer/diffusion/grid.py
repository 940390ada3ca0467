"""The sample grid a generator run writes to TensorBoard at every evaluation.

`eval.grid_samples` EMA samples of the objective's sampler (`eval.grid_sampler` with
`eval.grid_sampler_steps`: e.g. DPM-Solver++ for a DDPM, Heun for EDM) from the same noise at every
step, so the grids of one run are comparable, one row per class for a class-conditional UNet. The
noise is a stream of its own, never the training key, and the state is only read, so resume stays
bitwise exact.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data.generation import metrics as grid_lib
from trainer import sharding
from trainer.generation import mesh_sampler

# Folded into key(seed) for the grid's noise: a stream of its own, apart from init (key(seed))
# and the train steps (key(seed + 1)).
_GRID_STREAM = 0x67726964


def check_config(config: ml_collections.ConfigDict, num_classes) -> None:
  """Refuses grid settings that cannot make a grid, by key, before any training (the sampler's
  own settings are the objective's to check)."""
  e = config.eval
  if e.every_steps < 0:
    raise ValueError(f'config.eval.every_steps={e.every_steps}: use 0 for no grids.')
  if e.every_steps == 0:
    return
  if e.grid_samples < 1:
    raise ValueError(f'config.eval.grid_samples={e.grid_samples} must be >= 1 (or set '
                     'eval.every_steps=0 for no grids).')
  if num_classes and e.grid_samples % num_classes:
    raise ValueError(f'config.eval.grid_samples={e.grid_samples} must be a multiple of the '
                     f'{num_classes} classes: the grid has one row per class.')


def labels(n: int, num_classes: int | None) -> np.ndarray | None:
  """Class of grid sample i: n // C consecutive samples per class (one grid row each)."""
  return None if not num_classes else np.arange(n) // (n // num_classes)


def make_sampler(config, objective, mesh, ema_shardings):
  """`sample(ema) -> (n, H, W, C) uint8` from fixed noise, one jit over the whole mesh.

  Every process takes part (the EMA may be sharded over hosts); the samples come back replicated.
  Padding n to the device count changes no sample (mesh_sampler draws by id).
  """
  n, num_classes = config.eval.grid_samples, objective.num_classes
  padded = math.ceil(n / mesh.size) * mesh.size
  y = labels(n, num_classes)
  y = None if y is None else np.concatenate([y, np.zeros(padded - n, np.int64)])
  key = jax.random.fold_in(jax.random.key(config.seed), _GRID_STREAM)

  def sample(ema):
    return mesh_sampler.sample_ids(
        objective.grid_sampler(ema), key, jnp.arange(padded), objective.image_shape, mesh=mesh,
        y=None if y is None else jnp.asarray(y, jnp.int32))

  jitted = jax.jit(sample, in_shardings=(ema_shardings,), out_shardings=sharding.replicated(mesh))
  return lambda ema: np.asarray(jitted(ema).addressable_data(0))[:n]


def tile(images: np.ndarray, num_classes: int | None) -> np.ndarray:
  """(H', W', 3) uint8: a row per class (conditional) or a near-square tiling; tiles >= 32 px."""
  n, h = images.shape[:2]
  scale = max(1, 32 // h)
  if num_classes:
    return grid_lib.sample_grid(images, labels(n, num_classes), num_classes,
                                n // num_classes, scale=scale)
  cols = math.ceil(math.sqrt(n))
  return grid_lib.sample_grid(images, np.arange(n) // cols, math.ceil(n / cols), cols,
                              scale=scale)
