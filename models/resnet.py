"""Bottleneck ResNets for ImageNet-sized images (He et al. 2016), in torchvision's layout.

The paper's ImageNet model is a ResNet-152 "with SiLU/Swish activations" (App. B); RobustBench's
ImageNet ResNet-50s are torchvision `resnet50` state_dicts (ReLU). Both are this module, with the
activation as an attribute. The layout is torchvision's (`torchvision/models/resnet.py`, "ResNet
V1.5"):

* stem: 7x7 convolution of stride 2 and padding 3 (64 channels), BN, activation, 3x3 max-pool of
  stride 2 and padding 1;
* four stages of bottleneck blocks (3, 4, 6, 3 for ResNet-50; 3, 8, 36, 3 for ResNet-152) of
  widths 64, 128, 256, 512 and outputs 4x as wide; each block is conv1x1-BN-act, conv3x3-BN-act,
  conv1x1-BN, plus the shortcut, then the activation. The first block of stages 2-4 halves the
  resolution with the stride on its 3x3 convolution (V1.5; the original V1 put it on the first
  1x1), and the first block of every stage has a projection shortcut: a 1x1 convolution with the
  block's stride, then BN (torchvision's `downsample`);
* global average pool over whatever spatial size is left, then a dense head.

Padding is explicit and symmetric (k // 2 on each side), as PyTorch's, not XLA's 'SAME': a
stride-2 7x7 or 3x3 'SAME' convolution of an even-sized input pads less before than after,
which shifts every window by one pixel against torchvision's weights.

The conventions of `preact_resnet.py` hold here too: inputs are NHWC in [0, 1], normalised by the
dataset mean/std inside the model; parameters and logits are float32; every BatchNorm (our
`batch_norm.BatchNorm`, with ghost-batch groups) is named `bn*`; the head is named `head`.
Initialisation follows torchvision where the paper says nothing: He-normal convolutions
(fan-out), BN scale 1 and bias 0; the head starts at zero as in all our classifiers (the paper's
App. A), where torchvision draws it uniformly.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.batch_norm import BatchNorm
from models.preact_resnet import REMAT
from models.preact_resnet import normalize

# Blocks per stage of torchvision's bottleneck ResNets.
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
ACTIVATIONS = {'relu': nn.relu, 'swish': nn.swish}
EXPANSION = 4  # a bottleneck block's output is 4x its width

Array = jax.Array
Dtype = Any

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu'), an untruncated normal.
_HE_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, name: str) -> nn.Conv:
  """A bias-free k x k convolution padded k // 2 on every side, as PyTorch's."""
  return nn.Conv(features, (kernel, kernel), strides, padding=kernel // 2, use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=_HE_FAN_OUT, name=name)


class Bottleneck(nn.Module):
  """conv1x1-BN-act, conv3x3 (strided)-BN-act, conv1x1-BN, plus the shortcut, then act.

  Attributes:
    features: width of the block (its 3x3 convolution); the output has 4x as many channels.
    strides: stride of the 3x3 convolution and of the projection.
    project: a 1x1 convolution + BN shortcut (torchvision's `downsample`) instead of the
      identity.
    activation: nonlinearity.
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    bn_group_size: BatchNorm statistics over groups of this many examples (0 = whole batch).
    dtype: compute dtype.
  """
  features: int
  strides: int = 1
  project: bool = False
  activation: Callable[[Array], Array] = nn.relu
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  bn_group_size: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    out = self.features * EXPANSION
    if not self.project and (self.strides != 1 or x.shape[-1] != out):
      raise ValueError(f'{self.name}: an identity shortcut cannot map {x.shape[-1]} channels to '
                       f'{out} with stride {self.strides}.')
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             group_size=self.bn_group_size, dtype=self.dtype)
    y = _conv(self.features, 1, 1, self.dtype, 'conv_0')(x)
    y = self.activation(norm(name='bn_0')(y, not train))
    y = _conv(self.features, 3, self.strides, self.dtype, 'conv_1')(y)
    y = self.activation(norm(name='bn_1')(y, not train))
    y = _conv(out, 1, 1, self.dtype, 'conv_2')(y)
    y = norm(name='bn_2')(y, not train)
    shortcut = x
    if self.project:
      shortcut = _conv(out, 1, self.strides, self.dtype, 'shortcut')(x)
      shortcut = norm(name='bn_shortcut')(shortcut, not train)
    return self.activation(y + shortcut)


class ResNet(nn.Module):
  """Bottleneck ResNet of any stage layout, for NHWC images in [0, 1] of any size (224 x 224 on
  ImageNet).

  Attributes:
    stage_sizes: blocks per stage (`DEPTHS`).
    num_classes: number of logits.
    mean: per-channel mean of the training images, in [0, 1] units.
    std: per-channel standard deviation of the training images.
    activation: nonlinearity (ReLU in torchvision, Swish in the paper's ImageNet ResNet-152).
    stem_features: channels of the stem and width of the first stage (64).
    bn_momentum: BatchNorm running-average decay (torchvision's momentum=0.1 is decay 0.9).
    bn_epsilon: BatchNorm epsilon (1e-5, as torchvision).
    bn_group_size: BatchNorm statistics over groups of this many consecutive examples; 0 = over
      the whole batch. See `models.batch_norm`.
    remat: 'block' recomputes each bottleneck block's activations in the backward pass; 'none'
      stores everything. The values are identical either way.
    dtype: compute dtype of the trunk; parameters stay float32 and the head runs in float32.
  """
  stage_sizes: Sequence[int]
  num_classes: int
  mean: Sequence[float]
  std: Sequence[float]
  activation: Callable[[Array], Array] = nn.relu
  stem_features: int = 64
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-5
  bn_group_size: int = 0
  remat: str = 'none'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """float32 logits of shape (batch, num_classes) of images of shape (batch, H, W, C)."""
    if self.remat not in REMAT:
      raise ValueError(f'Unknown model.remat {self.remat!r}; expected one of {REMAT}.')
    # `train` (argument 2, counting self) selects the BN branch: static under remat.
    block = nn.remat(Bottleneck, static_argnums=(2,)) if self.remat == 'block' else Bottleneck
    norm = functools.partial(BatchNorm, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                             group_size=self.bn_group_size, dtype=self.dtype)
    x = normalize(x, self.mean, self.std).astype(self.dtype)
    x = _conv(self.stem_features, 7, 2, self.dtype, 'stem')(x)
    x = self.activation(norm(name='bn_stem')(x, not train))
    # Padding with -inf, as PyTorch's max-pool: a border pixel never loses to the padding.
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        x = block(self.stem_features * 2 ** i, 2 if i > 0 and j == 0 else 1, j == 0,
                  activation=self.activation, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, bn_group_size=self.bn_group_size,
                  dtype=self.dtype, name=f'stage_{i}_block_{j}')(x, train)
    # The head runs in float32 whatever the trunk's dtype, as in `preact_resnet`.
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, dtype=jnp.float32,
                    param_dtype=jnp.float32, name='head')(x)


def resnet(depth: int, *, num_classes: int, mean: Sequence[float], std: Sequence[float],
           activation: str = 'relu', **kwargs) -> ResNet:
  """ResNet-`depth` (50, 101 or 152) with `activation` ('relu' or 'swish').

  Args:
    depth: 50, 101 or 152.
    num_classes: number of logits.
    mean: per-channel dataset mean, in [0, 1] units.
    std: per-channel dataset standard deviation.
    activation: 'relu' (torchvision) or 'swish' (the paper's ImageNet ResNet-152, App. B).
    **kwargs: other `ResNet` attributes (bn_momentum, bn_epsilon, bn_group_size, remat, dtype).

  Returns:
    The (unbound) module.

  Raises:
    ValueError: for another depth or activation.
  """
  if depth not in DEPTHS:
    raise ValueError(f'A bottleneck ResNet has depth {", ".join(map(str, DEPTHS))}; got {depth}.')
  if activation not in ACTIVATIONS:
    raise ValueError(f'Unknown ResNet activation {activation!r}; use one of {sorted(ACTIVATIONS)}.')
  return ResNet(stage_sizes=DEPTHS[depth], num_classes=num_classes, mean=tuple(mean),
                std=tuple(std), activation=ACTIVATIONS[activation], **kwargs)
