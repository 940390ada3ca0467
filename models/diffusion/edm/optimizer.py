"""EDM's optimiser: Adam with a learning-rate ramp counted in images, on sanitised gradients.

NVlabs/edm `train.py` and `training/training_loop.py`: torch.optim.Adam(lr = 10e-4, betas =
(0.9, 0.999), eps = 1e-8); before each step lr = lr_max * min(cur_nimg / (lr_rampup_kimg *
1000), 1) with cur_nimg the images seen before it (so the first step has lr 0) and
lr_rampup_kimg 10,000; gradients pass through nan_to_num(nan=0, posinf=1e5, neginf=-1e5).
optax's Adam is torch's (bias-corrected moments, eps added to the root of the second).
"""
import jax
import jax.numpy as jnp
import optax

LR = 1e-3
RAMPUP_KIMG = 10_000


def learning_rate(batch_size: int, lr: float = LR,
                  rampup_kimg: float = RAMPUP_KIMG) -> optax.Schedule:
  """step -> lr * min(step * batch_size / (rampup_kimg * 1000), 1)."""
  def schedule(step):
    seen = jnp.asarray(step, jnp.float32) * batch_size
    return lr * jnp.minimum(seen / max(rampup_kimg * 1000.0, 1e-8), 1.0)
  return schedule


def nan_to_num() -> optax.GradientTransformation:
  """The reference's gradient clean-up: NaN -> 0, +inf -> 1e5, -inf -> -1e5."""
  return optax.stateless(lambda updates, params=None: jax.tree_util.tree_map(
      lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), updates))


def adam(batch_size: int, lr: float = LR,
         rampup_kimg: float = RAMPUP_KIMG) -> optax.GradientTransformation:
  """EDM's Adam for a global batch of `batch_size` images."""
  return optax.chain(nan_to_num(), optax.adam(learning_rate(batch_size, lr, rampup_kimg),
                                              b1=0.9, b2=0.999, eps=1e-8))
