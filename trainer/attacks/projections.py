"""The threat model: the ε-ball around the clean image intersected with the [0, 1] pixel box.

A projection is `project(x_adv, x) -> x_adv`, with x the clean image; `threat_model(norm, eps)`
composes the ball and the box. For L2 the ball projection is followed by the clip to [0, 1];
clipping moves every coordinate towards the clean image (which lies in the box), so the result
stays inside the ball.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from trainer.attacks.common import bcast

NORMS = ('linf', 'l2')

ProjectFn = Callable[[jax.Array, jax.Array], jax.Array]


def check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f'Unknown norm {norm!r}; expected one of {NORMS}.')


def per_example_norm(v, norm):
  """Norm of each example's perturbation, shape (batch,)."""
  flat = v.reshape(v.shape[0], -1)
  if norm == 'linf':
    return jnp.max(jnp.abs(flat), axis=1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def linf_ball(eps: float) -> ProjectFn:
  """Clips each coordinate of the perturbation to [−eps, eps]."""
  def project_fn(x_adv, x):
    return x + jnp.clip(x_adv - x, -eps, eps)
  return project_fn


def l2_ball(eps: float) -> ProjectFn:
  """Rescales each example's perturbation to L2 norm at most eps."""
  def project_fn(x_adv, x):
    delta = x_adv - x
    n = per_example_norm(delta, 'l2')
    return x + delta * bcast(jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12)), delta)
  return project_fn


def box(low: float = 0.0, high: float = 1.0) -> ProjectFn:
  """Clips to the pixel range."""
  def project_fn(x_adv, x):
    del x
    return jnp.clip(x_adv, low, high)
  return project_fn


def compose(*fns: ProjectFn) -> ProjectFn:
  """Applies the projections in order."""
  def project_fn(x_adv, x):
    for fn in fns:
      x_adv = fn(x_adv, x)
    return x_adv
  return project_fn


def ball(norm: str, eps: float) -> ProjectFn:
  check_norm(norm)
  return linf_ball(eps) if norm == 'linf' else l2_ball(eps)


def threat_model(norm: str, eps: float) -> ProjectFn:
  """Onto {z : ‖z − x‖ ≤ eps} ∩ [0, 1]^d, per example: the ball, then the box."""
  return compose(ball(norm, eps), box(0.0, 1.0))


def project(x_adv, x, *, norm, eps):
  """Projects x_adv onto {z : ‖z − x‖ ≤ eps} ∩ [0, 1]^d, per example."""
  return threat_model(norm, eps)(x_adv, x)


def normalize(g, norm):
  """Steepest-ascent direction for the norm: sign(g) for L∞, g/‖g‖₂ for L2."""
  if norm == 'linf':
    return jnp.sign(g)
  return g / bcast(jnp.maximum(per_example_norm(g, 'l2'), 1e-12), g)
