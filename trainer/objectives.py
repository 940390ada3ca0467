"""The training objectives by name, and the targets they share.

Every objective has the signature `loss(forward, params, batch, targets, *, config, key)` and
returns `(loss, (new_batch_stats, aux))`; aux may carry 'logits_clean' / 'logits_adv' for the
accuracy metrics and any scalar loss terms.
"""
import jax
import jax.numpy as jnp
import optax

from trainer import madry
from trainer import trades


def standard_loss(forward, params, batch, targets, *, config, key):
  """No attack: the non-robust classifier that pseudo-labels generated data."""
  del config, key
  logits, batch_stats = forward(params, batch['image'])
  total = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return total, (batch_stats, {'logits_clean': logits})


OBJECTIVES = {'trades': trades.loss, 'madry': madry.loss, 'standard': standard_loss}


def get(name):
  if name not in OBJECTIVES:
    raise ValueError(f'Unknown train.loss {name!r}; expected one of {sorted(OBJECTIVES)}.')
  return OBJECTIVES[name]


def targets(labels, is_generated, num_classes, smoothing):
  """One-hot targets, smoothed by `smoothing` on generated examples only (paper App. A)."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  smoothed = one_hot * (1.0 - smoothing) + smoothing / num_classes
  return jnp.where(is_generated[:, None], smoothed, one_hot)
