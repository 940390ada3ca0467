"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep ResNets").

This file holds the pieces every model of the project is made of: the
pre-activation residual block and a generic pre-activation ResNet (stem,
stages of blocks, final BN-activation, global average pool, zero-initialised
head), built on `batch_norm.BatchNorm`. `wide_resnet.py` and
`preact_resnet18` below only choose the stage layout.

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

from models.batch_norm import BatchNorm

# Shortcut kinds of a projecting block (see `PreActBlock`).
SHORTCUTS = ('activated_1x1', 'raw_3x3')
REMAT = ('none', 'block')

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


class PreActBlock(nn.Module):
  """BN-act-conv3x3-BN-act-conv3x3 plus a shortcut.

  The identity shortcut reads the raw input. A projecting block's shortcut is
  one of `SHORTCUTS`:

  * 'activated_1x1': a 1x1 convolution of the *activated* input, the tensor
    the first 3x3 convolution reads (the WideResNet of DeepMind's JAX and
    PyTorch code);
  * 'raw_3x3': a 3x3 convolution of the *raw* input, with the stride and
    padding of the first 3x3 convolution (the pre-activation ResNet-18/34 of
    DeepMind's `pytorch/model_zoo.py`, RobustBench's `DMPreActResNet`).

  Padding is 'SAME' (TF/XLA): a stride-2 3x3 convolution of an even-sized
  input pads one row and column at the bottom and right only, which is what
  DeepMind's PyTorch port does explicitly (`F.pad(x, (0, 1, 0, 1))`) to match
  its Haiku 'SAME' models. On an odd-sized input 'SAME' pads one on each side
  while the PyTorch port still pads (0, 1); ours follows the Haiku reference
  there. Every stride-2 input of the models here is even (32/16/8 for CIFAR,
  8/4/2 for digits), so both references agree with ours.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 convolution and of the projection.
    project: use a projection shortcut instead of the identity.
    shortcut: kind of projection, one of `SHORTCUTS`.
    activation: nonlinearity.
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    bn_group_size: BatchNorm statistics over groups of this many examples (0 = whole batch).
    dtype: compute dtype.
  """
  features: int
  strides: int = 1
  project: bool = False
  shortcut: str = 'activated_1x1'
  activation: Callable[[Array], Array] = nn.swish
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  bn_group_size: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    if not self.project and (self.strides != 1 or
                             x.shape[-1] != self.features):
      raise ValueError(
          f'{self.name}: an identity shortcut cannot map {x.shape[-1]} '
          f'channels to {self.features} with stride {self.strides}.')
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'{self.name}: unknown shortcut {self.shortcut!r}; '
                       f'expected one of {SHORTCUTS}.')
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon,
                             group_size=self.bn_group_size, dtype=self.dtype)
    conv = functools.partial(nn.Conv, self.features, use_bias=False,
                             padding='SAME', dtype=self.dtype,
                             param_dtype=jnp.float32)

    y = self.activation(norm(name='bn_0')(x, not train))
    shortcut = x
    if self.project and self.shortcut == 'activated_1x1':
      shortcut = conv((1, 1), self.strides, name='shortcut')(y)
    elif self.project:
      shortcut = conv((3, 3), self.strides, name='shortcut')(x)
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
    shortcut: kind of the projection shortcuts, one of `SHORTCUTS`.
    activation: nonlinearity.
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    bn_group_size: BatchNorm statistics over groups of this many consecutive
      examples (ghost batches, as DeepMind's per-device statistics); 0 = over
      the whole batch.
    remat: 'block' recomputes each residual block's activations in the
      backward pass instead of storing them (only block inputs are kept);
      'none' stores everything. The values are identical either way.
    dtype: compute dtype of the trunk; parameters stay float32.
  """
  stage_sizes: Sequence[int]
  stage_features: Sequence[int]
  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  stem_features: int = 64
  project_first_block: bool = False
  shortcut: str = 'activated_1x1'
  activation: Callable[[Array], Array] = nn.swish
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  bn_group_size: int = 0
  remat: str = 'none'
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
    if self.remat not in REMAT:
      raise ValueError(f'Unknown model.remat {self.remat!r}; expected one of {REMAT}.')
    # `train` (argument 2, counting self) selects the BN branch: static under remat.
    block = (nn.remat(PreActBlock, static_argnums=(2,)) if self.remat == 'block'
             else PreActBlock)
    x = normalize(x, self.mean, self.std).astype(self.dtype)
    x = nn.Conv(self.stem_features, (3, 3), use_bias=False, padding='SAME',
                dtype=self.dtype, param_dtype=jnp.float32, name='stem')(x)
    for i, (size, features) in enumerate(
        zip(self.stage_sizes, self.stage_features)):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        project = j == 0 and (self.project_first_block or strides != 1 or
                              x.shape[-1] != features)
        x = block(features, strides, project, shortcut=self.shortcut,
                  activation=self.activation, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon,
                  bn_group_size=self.bn_group_size, dtype=self.dtype,
                  name=f'stage_{i}_block_{j}')(x, train)
    x = BatchNorm(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                  group_size=self.bn_group_size, dtype=self.dtype,
                  name='bn_final')(x, not train)
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
  """Pre-activation ResNet-18 for CIFAR as DeepMind released it.

  3x3 stem of 64 channels, four stages of two blocks with 64/128/256/512
  channels. As in DeepMind's `pytorch/model_zoo.py` (`_PreActBlock`, also
  RobustBench's `DMPreActResNet`), the shortcut is the identity except in
  the first block of the last three stages, where a stride-2 3x3 convolution
  of the block's raw (not activated) input changes the shape: 12.55M
  parameters, against 11.17M with 1x1 projections.

  Args:
    num_classes: number of logits.
    mean: per-channel dataset mean, in [0, 1] units.
    std: per-channel dataset standard deviation.
    **kwargs: other `PreActResNet` attributes (activation, bn_momentum,
      bn_epsilon, bn_group_size, remat, dtype).

  Returns:
    The (unbound) module.
  """
  return PreActResNet(stage_sizes=(2, 2, 2, 2),
                      stage_features=(64, 128, 256, 512),
                      num_classes=num_classes, mean=tuple(mean),
                      std=tuple(std), stem_features=64, shortcut='raw_3x3',
                      **kwargs)
