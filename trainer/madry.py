"""Madry et al. adversarial training: cross-entropy on PGD examples (the alternative to TRADES).

The attack is PGD on the cross-entropy with sign steps of 2.5·ε/steps from a uniform start; like
TRADES, the attack uses batch statistics without updating them and the adversarial pass updates.
"""
import jax
import jax.numpy as jnp
import optax

from trainer.attacks.pgd import pgd


def loss(forward, params, batch, targets, *, config, key):
  x, y = batch['image'], batch['label']
  frozen = jax.lax.stop_gradient(params)
  x_adv = pgd(lambda z: forward(frozen, z)[0], x, y, norm=config.threat.norm,
                  eps=config.threat.eps, steps=config.train.attack_steps, key=key, loss='ce',
                  optimizer='sign', keep_best=False)
  logits_adv, batch_stats = forward(params, jax.lax.stop_gradient(x_adv))
  total = jnp.mean(optax.softmax_cross_entropy(logits_adv, targets))
  return total, (batch_stats, {'logits_adv': logits_adv})
