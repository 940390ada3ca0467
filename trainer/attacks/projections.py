"""The threat model: the ε-ball around the clean image intersected with the [0, 1] pixel box.

An attack works on the perturbation δ = x_adv − x; these helpers keep it feasible. For L2 the
ball projection is followed by a clip to [0, 1]; clipping moves every coordinate towards the clean
image (which lies in the box), so the result stays inside the ball.
"""
import jax
import jax.numpy as jnp

NORMS = ('linf', 'l2')


def check_norm(norm):
  if norm not in NORMS:
    raise ValueError(f'Unknown norm {norm!r}; expected one of {NORMS}.')


def per_example_norm(v, norm):
  """Norm of each example's perturbation, shape (batch,)."""
  flat = v.reshape(v.shape[0], -1)
  if norm == 'linf':
    return jnp.max(jnp.abs(flat), axis=1)
  return jnp.sqrt(jnp.sum(flat * flat, axis=1))


def _bcast(v, like):
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def project(x_adv, x, *, norm, eps):
  """Projects x_adv onto {z : ‖z − x‖ ≤ eps} ∩ [0, 1]^d, per example."""
  check_norm(norm)
  delta = x_adv - x
  if norm == 'linf':
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = per_example_norm(delta, 'l2')
    delta = delta * _bcast(jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12)), delta)
  return jnp.clip(x + delta, 0.0, 1.0)


def normalize(g, norm):
  """Steepest-ascent direction for the norm: sign(g) for L∞, g/‖g‖₂ for L2."""
  if norm == 'linf':
    return jnp.sign(g)
  return g / _bcast(jnp.maximum(per_example_norm(g, 'l2'), 1e-12), g)


def random_init(key, x, *, norm, eps):
  """A point drawn uniformly from the ε-ball around x (then clipped to [0, 1])."""
  check_norm(norm)
  if norm == 'linf':
    delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  else:
    k1, k2 = jax.random.split(key)
    direction = normalize(jax.random.normal(k1, x.shape, x.dtype), 'l2')
    d = x[0].size
    radius = eps * jax.random.uniform(k2, (x.shape[0],), x.dtype) ** (1.0 / d)
    delta = direction * _bcast(radius, x)
  return jnp.clip(x + delta, 0.0, 1.0)
