"""One iterative attack that every gradient attack of the method is an instance of.

    attack = iterative_attack(losses.margin, init=inits.uniform('linf', eps),
                              step_rule=steps.sign(eps / 4), project=projections.threat_model(
                                  'linf', eps), num_steps=10)
    x_adv = attack(logits_fn, x, y, key)

Built once from its pieces (a per-example loss to maximise, an init, an optax step rule, a
projection), the attack can then be called inside traced code any number of times. Each step:
g = ∇ Σ loss(logits_fn(z), y); z ← project(z + step_rule(−g), x). The result carries no gradient.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from trainer.attacks import inits as inits_lib
from trainer.attacks import projections

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Attack = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]

KEEP = ('last', 'best')


def iterative_attack(loss: LossFn, *, init: inits_lib.InitFn,
                     step_rule: optax.GradientTransformation, project: projections.ProjectFn,
                     num_steps: int, keep: str = 'last') -> Attack:
  """Returns `attack(logits_fn, x, y, key) -> x_adv`, maximising `loss(logits, y)` (batch,).

  keep: 'last' returns the final iterate (as DeepMind's PGD does); 'best' each example's
  highest-loss iterate, the final one included.
  """
  if keep not in KEEP:
    raise ValueError(f'Unknown keep={keep!r}; expected one of {KEEP}.')

  def attack(logits_fn, x, y, key):
    def objective(z):
      per_example = loss(logits_fn(z).astype(jnp.float32), y)
      return jnp.sum(per_example), per_example

    grad_fn = jax.grad(objective, has_aux=True)
    x0 = init(key, x)
    if keep == 'last':
      z = _last(grad_fn, step_rule, project, x, x0, num_steps)
    else:
      z = _best(grad_fn, objective, step_rule, project, x, x0, num_steps)
    return jax.lax.stop_gradient(z)

  return attack


def _step(grad_fn, step_rule, project, x, z, opt_state):
  g, current = grad_fn(z)
  updates, opt_state = step_rule.update(-g, opt_state, z)  # optax minimises
  return project(z + updates, x), opt_state, current


def _last(grad_fn, step_rule, project, x, x0, num_steps):
  def body(_, carry):
    z, opt_state = carry
    z, opt_state, _ = _step(grad_fn, step_rule, project, x, z, opt_state)
    return z, opt_state
  return jax.lax.fori_loop(0, num_steps, body, (x0, step_rule.init(x0)))[0]


def _best(grad_fn, objective, step_rule, project, x, x0, num_steps):
  bcast = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def body(_, carry):
    z, opt_state, best, best_loss = carry
    new_z, opt_state, current = _step(grad_fn, step_rule, project, x, z, opt_state)
    best = jnp.where(bcast(current > best_loss), z, best)
    return new_z, opt_state, best, jnp.maximum(current, best_loss)

  carry = (x0, step_rule.init(x0), x0, jnp.full((x.shape[0],), -jnp.inf))
  z, _, best, best_loss = jax.lax.fori_loop(0, num_steps, body, carry)
  _, final = objective(z)
  return jnp.where(bcast(final > best_loss), z, best)
