"""The training objectives by name, built once from the config, and the targets they share.

    objective = objectives.build(config, num_classes)
    (loss, (new_batch_stats, aux)) = objective(forward, params, batch, key)

`forward(params, x) -> (logits, batch_stats)`; the attack and every constant are closed over, so
no config is traced. aux may carry 'logits_clean' / 'logits_adv' for the accuracy metrics and any
scalar loss terms.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from trainer.robust import madry
from trainer.robust import trades
from trainer.attacks import compositions

Objective = Callable[..., Any]


def standard_loss(forward, params, batch, targets, key):
  """No attack: the non-robust classifier that pseudo-labels generated data."""
  del key
  logits, batch_stats = forward(params, batch['image'])
  total = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return total, (batch_stats, {'logits_clean': logits})


# name -> config -> loss(forward, params, batch, targets, key)
OBJECTIVES = {
    'trades': lambda c: trades.make_loss(compositions.trades_attack(c), beta=c.train.beta),
    'madry': lambda c: madry.make_loss(compositions.madry_attack(c)),
    'standard': lambda c: standard_loss,
}


def get(name: str):
  """The builder of objective `name` (config -> loss with targets)."""
  if name not in OBJECTIVES:
    raise ValueError(f'Unknown train.loss {name!r}; expected one of {sorted(OBJECTIVES)}.')
  return OBJECTIVES[name]


def build(config, num_classes: int) -> Objective:
  """`objective(forward, params, batch, key)` for `train.loss`, targets from the batch's labels."""
  loss = get(config.train.loss)(config)
  smoothing = config.generated.label_smoothing
  real_too = config.generated.get('smooth_real_labels', False)

  def objective(forward, params, batch, key):
    one_hot = targets(batch['label'], batch['is_generated'], num_classes, smoothing, real_too)
    return loss(forward, params, batch, one_hot, key)
  return objective


def targets(labels, is_generated, num_classes, smoothing, real_too=False):
  """One-hot targets, smoothed by `smoothing` on generated examples only (paper App. A), or on
  every row with `real_too` (DM-Improves-AT's and Bartoldson et al.'s code)."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  smoothed = one_hot * (1.0 - smoothing) + smoothing / num_classes
  return jnp.where(is_generated[:, None] | real_too, smoothed, one_hot)
