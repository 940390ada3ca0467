"""Projected gradient ascent (Madry et al. 2018): steepest-ascent steps from a uniform start.

    attack = pgd_attack(norm='linf', eps=8/255, steps=40, loss='margin')   # built once
    x_adv = attack(logits_fn, x, y, key)
    x_adv = pgd(logits_fn, x, y, norm='linf', eps=8/255, steps=40, key=key, loss='margin')

Steps of `step_size` (default 2.5·ε/steps) along sign(∇) for L∞ or ∇/‖∇‖₂ for L2, each iterate
projected onto the ε-ball ∩ [0, 1]; by default each example's highest-loss iterate is returned.
"""
from typing import Callable, Optional, Union

import jax

from trainer.attacks import inits
from trainer.attacks import iterative
from trainer.attacks import losses as losses_lib
from trainer.attacks import projections
from trainer.attacks import steps as steps_lib


def pgd_attack(*, norm: str, eps: float, steps: int, loss: Union[str, Callable] = 'ce',
               step_size: Optional[float] = None, keep: str = 'best',
               unroll: Optional[bool] = None) -> iterative.Attack:
  """PGD as an `attack(logits_fn, x, y, key) -> x_adv`; `loss` a name in losses.LOSSES or a fn."""
  projections.check_norm(norm)
  step_size = 2.5 * eps / steps if step_size is None else step_size
  return iterative.iterative_attack(
      losses_lib.get_loss(loss), init=inits.uniform(norm, eps),
      step_rule=steps_lib.steepest(norm, step_size),
      project=projections.threat_model(norm, eps), num_steps=steps, keep=keep, unroll=unroll)


def pgd(logits_fn, x, y, *, norm: str, eps: float, steps: int, key: jax.Array,
        loss: Union[str, Callable] = 'ce', step_size: Optional[float] = None,
        keep: str = 'best') -> jax.Array:
  """One call of `pgd_attack(...)`: maximises `loss(logits_fn(x_adv), y)`; returns x_adv."""
  attack = pgd_attack(norm=norm, eps=eps, steps=steps, loss=loss, step_size=step_size, keep=keep)
  return attack(logits_fn, x, y, key)
