"""Where an iterative attack starts: `init(key, x) -> x0`, a feasible point (inside the threat
model), so the attack need not project it."""
from typing import Callable

import jax
import jax.numpy as jnp

from trainer.attacks import projections
from trainer.attacks.common import bcast

InitFn = Callable[[jax.Array, jax.Array], jax.Array]


def zero() -> InitFn:
  """Start at the clean image."""
  def init(key, x):
    del key
    return x
  return init


def uniform(norm: str, eps: float) -> InitFn:
  """A point drawn uniformly from the ε-ball around x, then clipped to [0, 1].

  L∞: each coordinate uniform in [−ε, ε]. L2: a Gaussian direction scaled to unit length and a
  radius ε·u^(1/d), which is uniform in the ball's volume.
  """
  projections.check_norm(norm)

  def init(key, x):
    if norm == 'linf':
      delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
    else:
      k1, k2 = jax.random.split(key)
      direction = projections.normalize(jax.random.normal(k1, x.shape, x.dtype), 'l2')
      d = x[0].size
      radius = eps * jax.random.uniform(k2, (x.shape[0],), x.dtype) ** (1.0 / d)
      delta = direction * bcast(radius, x)
    return jnp.clip(x + delta, 0.0, 1.0)
  return init
