"""One iterative attack that every gradient attack of the method is an instance of.

    attack = iterative_attack(losses.margin, init=inits.uniform('linf', eps),
                              step_rule=steps.sign(eps / 4), project=projections.threat_model(
                                  'linf', eps), num_steps=10)
    x_adv = attack(logits_fn, x, y, key)

Built once from its pieces (a per-example loss to maximise, an init, an optax step rule, a
projection), the attack can then be called inside traced code any number of times. Each step:
g = ∇ Σ loss(logits_fn(z), y); z ← project(z + step_rule(−g), x). The result carries no gradient.
"""
import dataclasses
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
                     num_steps: int, keep: str = 'last',
                     unroll: Optional[bool] = None) -> 'IterativeAttack':
  """Returns `attack(logits_fn, x, y, key) -> x_adv`, maximising `loss(logits, y)` (batch,).

  keep: 'last' returns the final iterate (as DeepMind's PGD does); 'best' each example's
  highest-loss iterate, the final one included.
  unroll: write the steps out one after the other instead of a loop; None (default) unrolls on
  CPU only. XLA:CPU runs a convolution's input gradient on a naive kernel inside a loop body
  (trainer/attacks/common.py), and these attacks run inside traced code (the train step, the
  held-out evaluation), where the loop cannot be driven from the host; unrolled, every step gets
  the fast kernels, at the price of a longer compile. Either way the same arithmetic. A caller on
  the host can instead drive `start`, `step` and `finish` itself, one jitted call each.
  """
  if keep not in KEEP:
    raise ValueError(f'Unknown keep={keep!r}; expected one of {KEEP}.')
  return IterativeAttack(loss, init, step_rule, project, num_steps, keep, unroll)


@dataclasses.dataclass(frozen=True)
class IterativeAttack:
  """The attack and its three pieces; carry = (z, optimiser state[, best z, its loss])."""
  loss: LossFn
  init: inits_lib.InitFn
  step_rule: optax.GradientTransformation
  project: projections.ProjectFn
  num_steps: int
  keep: str = 'last'
  unroll: Optional[bool] = None

  def __call__(self, logits_fn, x, y, key):
    carry = self.start(x, key)
    loop = functools.partial(jax.lax.fori_loop, 0, self.num_steps,
                             unroll=unrolls(self.unroll) and self.num_steps > 0)
    carry = loop(lambda _, c: self.step(logits_fn, x, y, c), carry)
    return self.finish(logits_fn, y, carry)

  def start(self, x, key):
    z = self.init(key, x)
    carry = (z, self.step_rule.init(z))
    if self.keep == 'best':
      carry += (z, jnp.full((x.shape[0],), -jnp.inf))
    return carry

  def step(self, logits_fn, x, y, carry):
    """g = ∇ Σ loss at z; z ← project(z + step_rule(−g), x); 'best' also keeps the best z."""
    z, opt_state = carry[:2]
    g, current = jax.grad(self._objective(logits_fn, y), has_aux=True)(z)
    updates, opt_state = self.step_rule.update(-g, opt_state, z)  # optax minimises
    new_z = self.project(z + updates, x)
    if self.keep == 'last':
      return new_z, opt_state
    best, best_loss = carry[2:]
    return (new_z, opt_state, jnp.where(bcast(current > best_loss, z), z, best),
            jnp.maximum(current, best_loss))

  def finish(self, logits_fn, y, carry):
    z = carry[0]
    if self.keep == 'best':
      _, final = self._objective(logits_fn, y)(z)
      best, best_loss = carry[2:]
      z = jnp.where(bcast(final > best_loss, z), z, best)
    return jax.lax.stop_gradient(z)

  def _objective(self, logits_fn, y):
    def objective(z):
      per_example = self.loss(logits_fn(z).astype(jnp.float32), y)
      return jnp.sum(per_example), per_example
    return objective


def drive_on_host(attack: IterativeAttack, logits_fn, x, y, key):
  """`attack(logits_fn, x, y, key)` with its steps driven from the host, one jitted call each.

  For attacks called from the host on CPU (the evaluation cascades), where a loop body would get
  the naive kernels and the steps written out take long to compile. `attack` must be hashable
  (the same object for the same settings) to reuse the compiled steps; pass the model as
  `jax.tree_util.Partial` (see `trainer.attacks.common.as_jit_arg`).
  """
  carry = _start(attack, x, key)
  for _ in range(attack.num_steps):
    carry = _step(attack, logits_fn, x, y, carry)
  return _finish(attack, logits_fn, y, carry)


_start = jax.jit(lambda attack, x, key: attack.start(x, key), static_argnums=0)
_step = jax.jit(lambda attack, *args: attack.step(*args), static_argnums=0)
_finish = jax.jit(lambda attack, *args: attack.finish(*args), static_argnums=0)


def unrolls(unroll: Optional[bool] = None) -> bool:
  """Whether `iterative_attack(..., unroll=unroll)` writes its steps out (None: on CPU)."""
  return jax.default_backend() == 'cpu' if unroll is None else unroll
