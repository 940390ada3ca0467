"""Madry et al. adversarial training: cross-entropy on PGD examples (the alternative to TRADES).

The attack is built once (`compositions.madry_attack`: PGD on the cross-entropy with sign steps of
2.5·ε/steps from a uniform start); like TRADES, the attack uses batch statistics without updating
them and the adversarial pass updates.
"""
import jax
import jax.numpy as jnp
import optax


def make_loss(attack):
  """Returns `loss(forward, params, batch, targets, key)`; `attack(logits_fn, x, y, key)`."""
  def loss(forward, params, batch, targets, key):
    frozen = jax.lax.stop_gradient(params)
    x_adv = attack(lambda z: forward(frozen, z)[0], batch['image'], batch['label'], key)
    logits_adv, batch_stats = forward(params, x_adv)
    total = jnp.mean(optax.softmax_cross_entropy(logits_adv, targets))
    return total, (batch_stats, {'logits_adv': logits_adv})
  return loss
