"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep ResNets").

This file holds the pieces every model of the project is made of: a
BatchNorm, the pre-activation residual block and a generic pre-activation
ResNet (stem, stages of blocks, final BN-activation, global average pool,
zero-initialised head). `wide_resnet.py` and `preact_resnet18` below only
choose the stage layout.

Conventions every model here keeps, because other parts rely on them:

* Inputs are NHWC float32 images in [0, 1]; the dataset mean/std
  normalisation happens inside the model, so attacks and their ε-balls live
  in pixel space.
* Parameters are float32 whatever the compute dtype; logits are float32.
* Every BatchNorm module is named `bn*` and no other module is, so the
  optimiser can exclude BN parameters from weight decay by name.
  Convolutions have no bias; the only `bias` outside BN is the head's.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def normalize(x: Array, mean: Sequence[float],
              std: Sequence[float]) -> Array:
  """(x - mean) / std per channel, in float32."""
  channels = x.shape[-1]
  if len(mean) != channels or len(std) != channels:
    raise ValueError(
        f'The model was built with mean={tuple(mean)} and std={tuple(std)} '
        f'but its input has {channels} channel(s) (shape {x.shape}); give '
        'one mean and one std per channel.')
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x.astype(jnp.float32) - mean) / std


class BatchNorm(nn.Module):
  """BatchNorm whose running averages move only when `batch_stats` is mutable.

  `nn.BatchNorm` raises when batch statistics are used while the
  `batch_stats` collection is immutable. TRADES' clean pass and the attacks
  need exactly that (normalise with the batch's statistics, keep the running
  averages), so here a train-mode pass updates the averages only if the
  caller made `batch_stats` mutable. Statistics are always reduced in
  float32; the variable layout (`scale`, `bias`; `mean`, `var`) is flax's.
  Under `jax.jit` with a batch-sharded input they are the global batch's
  statistics, with no `axis_name` needed.

  Attributes:
    momentum: decay of the running averages (0.99 in the paper).
    epsilon: added to the variance (1e-5 in the paper).
    dtype: dtype of the output.
  """
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool) -> Array:
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features,
                            jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features,
                           jnp.float32)
    scale = self.param('scale', nn.initializers.ones, features, jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, features, jnp.float32)

    x = x.astype(jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      # One pass over x for both moments, as nn.BatchNorm does by default.
      var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.)
      if (self.is_mutable_collection('batch_stats') and
          not self.is_initializing()):
        decay = self.momentum
        ra_mean.value = decay * ra_mean.value + (1 - decay) * mean
        ra_var.value = decay * ra_var.value + (1 - decay) * var
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    return (x * mul + (bias - mean * mul)).astype(self.dtype)


class PreActBlock(nn.Module):
  """BN-act-conv3x3-BN-act-conv3x3 plus a shortcut.

  The projection shortcut (a 1x1 convolution) reads the *activated* input,
  the same tensor the first 3x3 convolution reads; the identity shortcut
  reads the raw input.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 convolution and of the projection.
    project: use the 1x1 projection shortcut instead of the identity.
    activation: nonlinearity.
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    dtype: compute dtype.
  """
  features: int
  strides: int = 1
  project: bool = False
  activation: Callable[[Array], Array] = nn.swish
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    if not self.project and (self.strides != 1 or
                             x.shape[-1] != self.features):
      raise ValueError(
          f'{self.name}: an identity shortcut cannot map {x.shape[-1]} '
          f'channels to {self.features} with stride {self.strides}.')
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype)
    conv = functools.partial(nn.Conv, self.features, use_bias=False,
                             padding='SAME', dtype=self.dtype,
                             param_dtype=jnp.float32)

    y = self.activation(norm(name='bn_0')(x, not train))
    shortcut = x
    if self.project:
      shortcut = conv((1, 1), self.strides, name='shortcut')(y)
    y = conv((3, 3), self.strides, name='conv_0')(y)
    y = self.activation(norm(name='bn_1')(y, not train))
    y = conv((3, 3), name='conv_1')(y)
    return y + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet for small images, of any size and channel count.

  Stage `i` has `stage_sizes[i]` blocks of `stage_features[i]` channels; the
  first block of every stage but the first halves the resolution.

  Attributes:
    stage_sizes: blocks per stage.
    stage_features: channels per stage.
    num_classes: number of logits.
    mean: per-channel mean of the training images, in [0, 1] units.
    std: per-channel standard deviation of the training images.
    stem_features: channels of the 3x3 stem convolution.
    project_first_block: give the first block of every stage a projection
      shortcut even where the identity would fit (the WideResNet choice);
      otherwise project only where the shape changes.
    activation: nonlinearity.
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    dtype: compute dtype of the trunk; parameters stay float32.
  """
  stage_sizes: Sequence[int]
  stage_features: Sequence[int]
  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  stem_features: int = 64
  project_first_block: bool = False
  activation: Callable[[Array], Array] = nn.swish
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Logits (float32) of NHWC images in [0, 1].

    Args:
      x: images, shape (batch, height, width, channels).
      train: normalise with the batch's statistics (and update the running
        averages if `batch_stats` is mutable) rather than the running ones.

    Returns:
      float32 logits of shape (batch, num_classes).
    """
    x = normalize(x, self.mean, self.std).astype(self.dtype)
    x = nn.Conv(self.stem_features, (3, 3), use_bias=False, padding='SAME',
                dtype=self.dtype, param_dtype=jnp.float32, name='stem')(x)
    for i, (size, features) in enumerate(
        zip(self.stage_sizes, self.stage_features)):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        project = j == 0 and (self.project_first_block or strides != 1 or
                              x.shape[-1] != features)
        x = PreActBlock(features, strides, project,
                        activation=self.activation,
                        bn_momentum=self.bn_momentum,
                        bn_epsilon=self.bn_epsilon, dtype=self.dtype,
                        name=f'stage_{i}_block_{j}')(x, train)
    x = BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                  dtype=self.dtype, name='bn_final')(x, not train)
    x = self.activation(x)
    # The head runs in float32 whatever the trunk's dtype: it costs nothing,
    # and the losses and attacks read small differences between logits.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # A zero head starts every class at the same logit (paper, App. A).
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, dtype=jnp.float32,
                    param_dtype=jnp.float32, name='head')(x)


def preact_resnet18(*, num_classes: int, mean: Sequence[float],
                    std: Sequence[float], **kwargs) -> PreActResNet:
  """Pre-activation ResNet-18 for CIFAR (3x3 stem, 64/128/256/512 channels).

  Shortcuts are the identity except in the first block of the last three
  stages, where a 1x1 projection of the activated input changes the shape.

  Args:
    num_classes: number of logits.
    mean: per-channel dataset mean, in [0, 1] units.
    std: per-channel dataset standard deviation.
    **kwargs: other `PreActResNet` attributes (activation, bn_momentum,
      bn_epsilon, dtype).

  Returns:
    The (unbound) module.
  """
  return PreActResNet(stage_sizes=(2, 2, 2, 2),
                      stage_features=(64, 128, 256, 512),
                      num_classes=num_classes, mean=tuple(mean),
                      std=tuple(std), stem_features=64, **kwargs)
