"""The attacks the method runs, each built once from the config: the training attacks (the TRADES
inner maximisation, Madry's PGD) and the checkpoint-selection attack.

Each is an `attack(logits_fn, x, y, key) -> x_adv` (see `trainer.attacks.iterative`), so the
traced objectives close over it and never see the config.
"""
from typing import Mapping

import optax

from trainer.attacks import inits
from trainer.attacks import iterative
from trainer.attacks import losses
from trainer.attacks import projections
from trainer.attacks import steps
from trainer.attacks.pgd import pgd_attack

SELECTION_ATTACKS = ('pgd', 'reference')
UNROLL = {'auto': None, 'loop': False, 'unroll': True}  # train.attack_unroll → iterative_attack


def trades_schedule(lr: float, num_steps: int) -> optax.Schedule:
  """The paper's inner step size (App. A: Adam, 0.1), ×0.1 after half the steps as the
  reference code does (its {5: 0.1} for 10 steps)."""
  return optax.piecewise_constant_schedule(lr, {num_steps // 2: 0.1})


def trades_attack(config) -> iterative.Attack:
  """Adam on KL(p_clean ‖ p(x')) from a uniform start in the ball; the last iterate.

  `y` of the attack is p_clean. Adam's ε is `train.attack_adam_eps` (the reference code: 1e-9).
  """
  norm, eps, num_steps = config.threat.norm, config.threat.eps, config.train.attack_steps
  return iterative.iterative_attack(
      losses.kl_divergence, init=inits.uniform(norm, eps),
      step_rule=steps.adam(trades_schedule(config.train.attack_lr, num_steps),
                           eps=config.train.attack_adam_eps),
      project=projections.threat_model(norm, eps), num_steps=num_steps, keep='last',
      unroll=UNROLL[config.train.attack_unroll])


def madry_attack(config) -> iterative.Attack:
  """PGD on the cross-entropy, steps of 2.5·ε/steps, the last iterate."""
  return pgd_attack(norm=config.threat.norm, eps=config.threat.eps,
                    steps=config.train.attack_steps, loss='ce', keep='last',
                    unroll=UNROLL[config.train.attack_unroll])


def reference_schedule(num_steps: int, lr: float = 0.1) -> optax.Schedule:
  """The reference's selection schedule: lr, ×0.1 at half the steps, ×0.01 more at three
  quarters (for 40 steps: 0.1, then 0.01 from step 20, then 1e-4 from step 30)."""
  boundaries: Mapping[int, float] = {}
  for boundary, scale in ((num_steps // 2, 0.1), ((3 * num_steps) // 4, 0.01)):
    boundaries[boundary] = boundaries.get(boundary, 1.0) * scale
  return optax.piecewise_constant_schedule(lr, boundaries)


def reference_selection_attack(*, norm: str, eps: float, num_steps: int = 40,
                               adam_eps: float = 1e-9) -> iterative.Attack:
  """DeepMind's evaluation attack (adversarial_robustness/jax/experiment.py): Adam on the margin
  with `reference_schedule`, Adam ε 1e-9, from a uniform start; the last iterate. The reference
  is L∞ only; for L2 the same steps are projected onto the L2 ball."""
  return iterative.iterative_attack(
      losses.margin, init=inits.uniform(norm, eps),
      step_rule=steps.adam(reference_schedule(num_steps), eps=adam_eps),
      project=projections.threat_model(norm, eps), num_steps=num_steps, keep='last')


def selection_attack(config) -> iterative.Attack:
  """The held-out/test attack of `eval.selection_attack`, with `eval.pgd_steps` steps."""
  name, norm, eps = config.eval.selection_attack, config.threat.norm, config.threat.eps
  num_steps = config.eval.pgd_steps
  if name == 'pgd':
    return pgd_attack(norm=norm, eps=eps, steps=num_steps, loss='margin', keep='best')
  if name == 'reference':
    return reference_selection_attack(norm=norm, eps=eps, num_steps=num_steps)
  raise ValueError(f'config.eval.selection_attack={name!r}: expected one of {SELECTION_ATTACKS}.')
