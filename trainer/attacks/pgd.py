"""Projected gradient ascent, composed DeepMind-style from a step rule, an init and a loss.

    x_adv = pgd(logits_fn, x, y, norm='linf', eps=8/255, steps=40, loss='margin', key=key)

The step rule is an optax transformation applied to the steepest-ascent direction (sign for L∞,
unit-L2 gradient for L2) or, for `raw_gradient=True`, to the gradient itself (TRADES uses Adam on
the gradient). Every iterate is projected onto the ε-ball ∩ [0, 1].
"""
import jax
import jax.numpy as jnp
import optax

from trainer.attacks import losses as losses_lib
from trainer.attacks import projections


def step_rule(name, step_size):
  """'sign'/'sgd' → plain steps of `step_size`; 'adam' → Adam with that learning rate."""
  if name in ('sign', 'sgd'):
    return optax.sgd(step_size)
  if name == 'adam':
    return optax.adam(step_size)
  raise ValueError(f'Unknown step rule {name!r}; expected sign, sgd or adam.')


def pgd(logits_fn, x, y, *, norm, eps, steps, key, loss='ce', optimizer='sign',
        step_size=None, raw_gradient=False, init='uniform', keep_best=True):
  """Maximises `loss(logits_fn(x_adv), y)` over the threat model; returns x_adv.

  Args:
    logits_fn: x (NHWC in [0, 1]) -> logits.
    y: labels, or any per-example target the loss takes (clean probabilities for 'kl').
    optimizer: 'sign' | 'sgd' | 'adam' or an optax.GradientTransformation (may hold a schedule).
    step_size: defaults to 2.5·eps/steps (Madry et al.).
    raw_gradient: feed the raw gradient to the optimiser instead of the steepest-ascent direction.
    init: 'uniform' in the ball, or 'zero' (start at the clean image).
    keep_best: return each example's highest-loss iterate rather than the last one.
  """
  projections.check_norm(norm)
  if init not in ('uniform', 'zero'):
    raise ValueError(f"Unknown init {init!r}; expected 'uniform' or 'zero'.")
  loss_fn = losses_lib.get_loss(loss)
  if isinstance(optimizer, str):
    optimizer = step_rule(optimizer, 2.5 * eps / steps if step_size is None else step_size)
  x_adv = projections.random_init(key, x, norm=norm, eps=eps) if init == 'uniform' else x

  def objective(z):
    per_example = loss_fn(logits_fn(z).astype(jnp.float32), y)
    return jnp.sum(per_example), per_example

  grad_fn = jax.grad(objective, has_aux=True)

  def body(_, carry):
    z, opt_state, best, best_loss = carry
    g, current = grad_fn(z)
    better = current > best_loss
    best = jnp.where(better.reshape((-1,) + (1,) * (z.ndim - 1)), z, best)
    best_loss = jnp.maximum(current, best_loss)
    direction = g if raw_gradient else projections.normalize(g, norm)
    updates, opt_state = optimizer.update(-direction, opt_state, z)  # optax minimises
    z = projections.project(z + updates, x, norm=norm, eps=eps)
    return z, opt_state, best, best_loss

  init_loss = jnp.full((x.shape[0],), -jnp.inf)
  carry = (x_adv, optimizer.init(x_adv), x_adv, init_loss)
  z, _, best, best_loss = jax.lax.fori_loop(0, steps, body, carry)
  if not keep_best:
    return z
  _, final = objective(z)
  return jnp.where((final > best_loss).reshape((-1,) + (1,) * (z.ndim - 1)), z, best)
