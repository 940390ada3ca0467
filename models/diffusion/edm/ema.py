"""EDM's weight averaging: an EMA whose half-life is counted in training images, with a ramp-up.

NVlabs/edm `training/training_loop.py`: after the optimiser step of a batch of B images, with
cur_nimg images seen before that batch,

  halflife = ema_halflife_kimg * 1000                  (500 kimg; 0.5 Mimg for CIFAR-10)
  halflife = min(halflife, cur_nimg * ema_rampup_ratio) (ramp-up 0.05; None turns it off)
  beta = 0.5 ^ (B / max(halflife, 1e-8))
  ema = params + beta (ema - params)                  (torch's params.lerp(ema, beta))

so the average forgets half of its past every `halflife` images whatever the batch size, and in
the first steps (cur_nimg = 0 gives beta = 0) it follows the weights closely. Unlike the
classifier's EMA (`min(decay, (1 + t) / (10 + t))` per step), this one depends on the batch.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp

HALFLIFE_KIMG = 500
RAMPUP_RATIO = 0.05


def ema_beta(cur_nimg, batch_size: int, halflife_kimg: float = HALFLIFE_KIMG,
             rampup_ratio: Optional[float] = RAMPUP_RATIO) -> jax.Array:
  """The decay of this step; `cur_nimg` (images seen before it) may be traced."""
  halflife = jnp.asarray(halflife_kimg * 1000.0, jnp.float32)
  if rampup_ratio is not None:
    halflife = jnp.minimum(halflife, jnp.asarray(cur_nimg, jnp.float32) * rampup_ratio)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))


def ema_update(ema: Any, params: Any, beta) -> Any:
  """params + beta (ema - params), leaf by leaf, in the EMA's dtype."""
  return jax.tree_util.tree_map(
      lambda e, p: (p + beta * (e - p)).astype(e.dtype), ema, params)
