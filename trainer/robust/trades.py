"""TRADES (Zhang et al. 2019) as used by Gowal, Rebuffi et al. 2021.

    loss = CE(f(x), y) + β · KL(p(x) ‖ p(x_adv)),
    x_adv ≈ argmax_{x' ∈ B_ε(x) ∩ [0,1]} KL(p(x) ‖ p(x'))

The inner maximisation is an attack built once (`compositions.trades_attack`: the paper's App. A,
10 steps of Adam, lr 0.1 ×0.1 after half the steps, on the KL from a uniform start in the ε-ball).
BatchNorm: the clean pass and the attack use the batch's statistics without updating the running
averages; only the adversarial pass updates them.
"""
import jax
import jax.numpy as jnp
import optax

from trainer.attacks import losses


def make_loss(attack, *, beta: float):
  """Returns `loss(forward, params, batch, targets, key) -> (loss, (new_batch_stats, metrics))`.

  `forward(params, x) -> (logits, batch_stats)`; `attack(logits_fn, x, p_clean, key) -> x_adv`
  maximises KL(p_clean ‖ p(x')) and returns a result without gradient.
  """
  def loss(forward, params, batch, targets, key):
    x = batch['image']
    logits_clean, _ = forward(params, x)  # the statistics update of the clean pass is dropped
    p_clean = jax.nn.softmax(logits_clean)
    frozen = jax.lax.stop_gradient(params)
    x_adv = attack(lambda z: forward(frozen, z)[0], x, jax.lax.stop_gradient(p_clean), key)
    logits_adv, batch_stats = forward(params, x_adv)
    natural = jnp.mean(optax.softmax_cross_entropy(logits_clean, targets))
    robust = jnp.mean(losses.kl_divergence(logits_adv, p_clean))
    total = natural + beta * robust
    return total, (batch_stats, {'loss_natural': natural, 'loss_robust': robust,
                                 'logits_clean': logits_clean, 'logits_adv': logits_adv})
  return loss
