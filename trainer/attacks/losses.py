"""Per-example attack objectives, each to be MAXIMISED by the attacker.

All take logits (batch, classes) and return (batch,). `y` is an int label vector; for the KL
objective it is the clean probability vector instead.
"""
import jax
import jax.numpy as jnp


def cross_entropy(logits, y):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def _true_and_other_max(logits, y):
  true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
  return true, jnp.max(others, axis=1)


def margin(logits, y):
  """max_{j≠y} z_j − z_y: positive exactly when the example is misclassified."""
  true, other = _true_and_other_max(logits, y)
  return other - true


def dlr(logits, y):
  """Difference of Logits Ratio (Croce & Hein 2020): −(z_y − max_{j≠y} z_j)/(z_π1 − z_π3)."""
  true, other = _true_and_other_max(logits, y)
  top = jnp.sort(logits, axis=1)[:, ::-1]
  return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits, y, target):
  """Targeted DLR: −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2)."""
  true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  tgt = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
  top = jnp.sort(logits, axis=1)[:, ::-1]
  return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl_divergence(logits, p_clean):
  """KL(p_clean ‖ softmax(logits)), the TRADES inner objective."""
  log_p_clean = jnp.log(jnp.maximum(p_clean, 1e-30))
  return jnp.sum(p_clean * (log_p_clean - jax.nn.log_softmax(logits)), axis=1)


LOSSES = {'ce': cross_entropy, 'margin': margin, 'dlr': dlr, 'kl': kl_divergence}


def get_loss(name_or_fn):
  if callable(name_or_fn):
    return name_or_fn
  if name_or_fn not in LOSSES:
    raise ValueError(f'Unknown attack loss {name_or_fn!r}; expected one of {sorted(LOSSES)}.')
  return LOSSES[name_or_fn]
