"""One iterative attack that every gradient attack of the method is an instance of.

    attack = iterative_attack(losses.margin, init=inits.uniform('linf', eps),
                              step_rule=steps.sign(eps / 4), project=projections.threat_model(
                                  'linf', eps), num_steps=10)
    x_adv = attack(logits_fn, x, y, key)

Built once from its pieces (a per-example loss to maximise, an init, an optax step rule, a
projection), the attack can then be called inside traced code any number of times. Each step:
g = ∇ Σ loss(logits_fn(z), y); z ← project(z + step_rule(−g), x). The result carries no gradient.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from trainer.attacks import inits as inits_lib
from trainer.attacks import projections
from trainer.attacks.common import bcast

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Attack = Callable[[Callable[[jax.Array], jax.Array], jax.Array, jax.Array, jax.Array], jax.Array]

KEEP = ('last', 'best')


def iterative_attack(loss: LossFn, *, init: inits_lib.InitFn,
                     step_rule: optax.GradientTransformation, project: projections.ProjectFn,
                     num_steps: int, keep: str = 'last', unroll: Optional[bool] = None) -> Attack:
  """Returns `attack(logits_fn, x, y, key) -> x_adv`, maximising `loss(logits, y)` (batch,).

  keep: 'last' returns the final iterate (as DeepMind's PGD does); 'best' each example's
  highest-loss iterate, the final one included.
  unroll: write the steps out one after the other instead of a loop; None (default) unrolls on
  CPU only. XLA:CPU runs a convolution's input gradient on a naive kernel inside a loop body
  (trainer/attacks/common.py), and these attacks run inside traced code (the train step, the
  held-out evaluation), where the loop cannot be driven from the host; unrolled, every step gets
  the fast kernels, at the price of a longer compile. Either way the same arithmetic.
  """
  if keep not in KEEP:
    raise ValueError(f'Unknown keep={keep!r}; expected one of {KEEP}.')

  def attack(logits_fn, x, y, key):
    def objective(z):
      per_example = loss(logits_fn(z).astype(jnp.float32), y)
      return jnp.sum(per_example), per_example

    grad_fn = jax.grad(objective, has_aux=True)
    x0 = init(key, x)
    loop = functools.partial(jax.lax.fori_loop, 0, num_steps,
                             unroll=unrolls(unroll) and num_steps > 0)
    if keep == 'last':
      z = _last(loop, grad_fn, step_rule, project, x, x0)
    else:
      z = _best(loop, grad_fn, objective, step_rule, project, x, x0)
    return jax.lax.stop_gradient(z)

  return attack


def _step(grad_fn, step_rule, project, x, z, opt_state):
  g, current = grad_fn(z)
  updates, opt_state = step_rule.update(-g, opt_state, z)  # optax minimises
  return project(z + updates, x), opt_state, current


def unrolls(unroll: Optional[bool] = None) -> bool:
  """Whether `iterative_attack(..., unroll=unroll)` writes its steps out (None: on CPU)."""
  return jax.default_backend() == 'cpu' if unroll is None else unroll


def _last(loop, grad_fn, step_rule, project, x, x0):
  def body(_, carry):
    z, opt_state = carry
    z, opt_state, _ = _step(grad_fn, step_rule, project, x, z, opt_state)
    return z, opt_state
  return loop(body, (x0, step_rule.init(x0)))[0]


def _best(loop, grad_fn, objective, step_rule, project, x, x0):
  def body(_, carry):
    z, opt_state, best, best_loss = carry
    new_z, opt_state, current = _step(grad_fn, step_rule, project, x, z, opt_state)
    best = jnp.where(bcast(current > best_loss, z), z, best)
    return new_z, opt_state, best, jnp.maximum(current, best_loss)

  carry = (x0, step_rule.init(x0), x0, jnp.full((x.shape[0],), -jnp.inf))
  z, _, best, best_loss = loop(body, carry)
  _, final = objective(z)
  return jnp.where(bcast(final > best_loss, z), z, best)
