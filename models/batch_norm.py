"""BatchNorm over the global batch or over fixed groups of consecutive examples (ghost batches).

DeepMind's reference (`adversarial_robustness/jax/experiment.py`) runs under `pmap` with a
`hk.BatchNorm` that has no cross-replica axis, so every TPU core normalises with the statistics of
its own slice of the batch: 32 images at batch 1024 on 32 cores. Our GSPMD step sees one global
batch, so by default it normalises over all of it. `group_size = G > 0` reproduces the reference:
the batch is cut into fixed groups of G consecutive examples and each group is normalised with its
own statistics. The groups depend on the example's position in the batch only, not on the mesh,
so a run gives the same numbers on any number of devices; when G divides the per-device batch the
normalisation needs no communication, as in the reference. Only the update of the (single) running
averages means the groups' statistics over the whole batch: one all-reduce of two vectors per
BatchNorm, where the reference keeps one unsynchronised copy per device (see `BatchNorm`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def moments(x: Array, group_size: int = 0) -> tuple[Array, Array]:
  """Per-channel mean and (biased) variance, over the batch or over each group of examples.

  Args:
    x: float32 activations, shape (batch, ..., channels).
    group_size: 0 for the whole batch; G > 0 for groups of G consecutive examples.

  Returns:
    (mean, var), each of shape (channels,) for the whole batch, or (batch // G, 1, ..., 1,
    channels) for groups, ready to broadcast against x reshaped to (batch // G, G, ...).

  Raises:
    ValueError: if G does not divide the batch.
  """
  if group_size:
    if x.shape[0] % group_size:
      raise ValueError(
          f'model.bn_group_size={group_size} does not divide the batch of {x.shape[0]} examples '
          'that reached a BatchNorm; choose a group size that divides every training batch.')
    x = x.reshape((x.shape[0] // group_size, group_size) + x.shape[1:])
    axes = tuple(range(1, x.ndim - 1))
    keep = True
  else:
    axes = tuple(range(x.ndim - 1))
    keep = False
  mean = jnp.mean(x, axes, keepdims=keep)
  # One pass over x for both moments, as nn.BatchNorm does by default.
  var = jnp.maximum(jnp.mean(jnp.square(x), axes, keepdims=keep) - jnp.square(mean), 0.)
  return mean, var


class BatchNorm(nn.Module):
  """BatchNorm whose running averages move only when `batch_stats` is mutable.

  `nn.BatchNorm` raises when batch statistics are used while the `batch_stats` collection is
  immutable. TRADES' clean pass and the attacks need exactly that (normalise with the batch's
  statistics, keep the running averages), so here a train-mode pass updates the averages only if
  the caller made `batch_stats` mutable. Statistics are always reduced in float32; the variable
  layout (`scale`, `bias`; `mean`, `var`) is flax's. Under `jax.jit` with a batch-sharded input
  they are the global batch's statistics (or each group's), with no `axis_name` needed.

  With groups, the running averages move towards the groups' mean statistics: the mean of the
  group means (which is the batch mean) and the mean of the group variances (the average
  within-group variance, smaller than the batch variance by the spread of the group means). The
  reference keeps one running average per device, each following its own group, and saves and
  evaluates device 0's; since the update is linear, ours is the average of those per-device
  averages: the same expected value, with less noise, and one set of statistics whatever the mesh.

  Attributes:
    momentum: decay of the running averages (0.99 in the paper).
    epsilon: added to the variance (1e-5 in the paper).
    group_size: 0 = statistics over the whole batch; G > 0 = over groups of G consecutive examples.
    dtype: dtype of the output.
  """
  momentum: float = 0.99
  epsilon: float = 1e-5
  group_size: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', nn.initializers.ones, features, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)

    x = x.astype(jnp.float32)
    group_size = 0 if use_running_average else self.group_size
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = moments(x, group_size)
      if self.is_mutable_collection('batch_stats') and not self.is_initializing():
        decay = self.momentum
        flat = (-1, features[0])
        ra_mean.value = decay * ra_mean.value + (1 - decay) * mean.reshape(flat).mean(0)
        ra_var.value = decay * ra_var.value + (1 - decay) * var.reshape(flat).mean(0)
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    if group_size:
      grouped = x.reshape((-1, group_size) + x.shape[1:])
      return (grouped * mul + (bias - mean * mul)).reshape(x.shape).astype(self.dtype)
    return (x * mul + (bias - mean * mul)).astype(self.dtype)
