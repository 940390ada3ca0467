"""Exponential moving average of the weights, with the warm-started decay min(τ, (1+t)/(10+t)).

The early ramp lets the average follow the fast-changing first steps instead of being dominated
by the random initialisation. BatchNorm statistics are averaged the same way as parameters.
"""
import jax
import jax.numpy as jnp


def decay(step, max_decay):
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(max_decay, (1.0 + step) / (10.0 + step))


def update(average, new, step, max_decay):
  d = decay(step, max_decay)
  return jax.tree_util.tree_map(lambda a, n: d * a + (1.0 - d) * n, average, new)
