"""TRADES (Zhang et al. 2019) as used by Gowal, Rebuffi et al. 2021.

    loss = CE(f(x), y) + β · KL(p(x) ‖ p(x_adv)),   x_adv ≈ argmax_{x' ∈ B_ε(x) ∩ [0,1]} KL(p(x) ‖ p(x'))

The inner maximisation follows the paper's App. A: 10 steps of Adam (lr 0.1, ×0.1 after half the
steps) on the KL from a uniform start in the ε-ball, each iterate projected onto the ball ∩ [0, 1].
BatchNorm: the clean pass and the attack use the batch's statistics without updating the running
averages; only the adversarial pass updates them.
"""
import jax
import jax.numpy as jnp
import optax

from trainer.attacks import losses
from trainer.attacks.pgd import pgd


def inner_optimizer(config):
  steps = config.train.attack_steps
  schedule = optax.piecewise_constant_schedule(config.train.attack_lr, {steps // 2: 0.1})
  return optax.adam(schedule)


def adversarial_examples(logits_fn, x, p_clean, *, config, key):
  """The TRADES inner maximisation of KL(p_clean ‖ p(x'))."""
  return pgd(logits_fn, x, p_clean, norm=config.threat.norm, eps=config.threat.eps,
                 steps=config.train.attack_steps, key=key, loss='kl',
                 optimizer=inner_optimizer(config), raw_gradient=True, init='uniform',
                 keep_best=False)


def loss(forward, params, batch, targets, *, config, key):
  """Returns (loss, (new_batch_stats, metrics)); `forward(params, x) -> (logits, batch_stats)`."""
  x = batch['image']
  logits_clean, _ = forward(params, x)  # the statistics update of the clean pass is dropped
  p_clean = jax.nn.softmax(logits_clean)
  frozen = jax.lax.stop_gradient(params)
  x_adv = adversarial_examples(lambda z: forward(frozen, z)[0], x,
                               jax.lax.stop_gradient(p_clean), config=config, key=key)
  logits_adv, batch_stats = forward(params, jax.lax.stop_gradient(x_adv))
  natural = jnp.mean(optax.softmax_cross_entropy(logits_clean, targets))
  robust = jnp.mean(losses.kl_divergence(logits_adv, p_clean))
  total = natural + config.train.beta * robust
  return total, (batch_stats, {'loss_natural': natural, 'loss_robust': robust,
                               'logits_clean': logits_clean, 'logits_adv': logits_adv})
