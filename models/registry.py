"""Models by name, so that a config can say `model.name = 'wrn-70-16'`.

Names:
  `wrn-{depth}-{width}`: any pre-activation WideResNet with depth 6n + 4,
    e.g. `wrn-28-10` and `wrn-70-16` from the paper. Tests and the demo use
    tiny ones such as `wrn-10-1` (78k parameters) or `wrn-10-2`; there is no
    separate tiny architecture.
  `preact-resnet-18`: DeepMind's pre-activation ResNet-18.
  `resnet-{depth}` and `resnet-{depth}-swish`, depth 50, 101 or 152: torchvision's bottleneck
    ResNet (`models.resnet`) for ImageNet-sized images, with ReLU as torchvision (`resnet-50` is
    RobustBench's ImageNet ResNet-50) or with Swish as the paper's ImageNet `resnet-152-swish`
    (App. B). The activation is part of the name, not a config key, because it is part of the
    architecture a checkpoint was trained with: an evaluation rebuilds the model from the name
    stored in its workdir.

`from_config(config)` is the one place a model is built from a config; `get_model` takes the
same choices as arguments.
"""

import re
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from data import real
from models import preact_resnet
from models import resnet
from models import wide_resnet

KNOWN_NAMES = ('wrn-{depth}-{width} (depth = 6n + 4, e.g. wrn-28-10, '
               'wrn-70-16, wrn-10-1)', 'preact-resnet-18',
               'resnet-{depth}[-swish] (depth 50, 101 or 152, e.g. resnet-50, resnet-152-swish)')
_WRN = re.compile(r'wrn-(\d+)-(\d+)')
_RESNET = re.compile(r'resnet-(\d+)(-swish)?')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def get_model(name: str, *, num_classes: int, mean: Sequence[float],
              std: Sequence[float], dtype: str = 'float32',
              bn_momentum: float = 0.99, bn_epsilon: float = 1e-5,
              bn_group_size: int = 0, remat: str = 'none') -> nn.Module:
  """The named classifier, ready for `init` and `apply`.

  Call it as `model.apply(variables, x, train=..., mutable=...)` on NHWC
  float32 images in [0, 1]; it returns float32 logits.

  Args:
    name: see the module docstring.
    num_classes: number of logits.
    mean: per-channel dataset mean, in [0, 1] units.
    std: per-channel dataset standard deviation.
    dtype: compute dtype, 'float32' or 'bfloat16'; parameters are float32.
    bn_momentum: BatchNorm running-average decay.
    bn_epsilon: BatchNorm epsilon.
    bn_group_size: BatchNorm statistics over groups of this many consecutive
      examples (0 = the whole batch); see `models.batch_norm`.
    remat: 'none' or 'block' (recompute each residual block in the backward pass).

  Returns:
    The (unbound) flax module.

  Raises:
    ValueError: for an unknown name, dtype or remat, a negative group size,
      a WRN depth not 6n + 4 or a ResNet depth other than 50, 101, 152.
  """
  if dtype not in _DTYPES:
    raise ValueError(
        f'Unknown model dtype {dtype!r}; use one of {sorted(_DTYPES)}.')
  if remat not in preact_resnet.REMAT:
    raise ValueError(f'Unknown model.remat {remat!r}; use one of {preact_resnet.REMAT}.')
  if bn_group_size < 0:
    raise ValueError(f'model.bn_group_size must be >= 0 (0 = whole batch), got {bn_group_size}.')
  kwargs = dict(num_classes=num_classes, mean=mean, std=std,
                dtype=_DTYPES[dtype], bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon, bn_group_size=bn_group_size, remat=remat)
  if name == 'preact-resnet-18':
    return preact_resnet.preact_resnet18(**kwargs)
  match = _WRN.fullmatch(name)
  if match:
    depth, width = map(int, match.groups())
    return wide_resnet.wide_resnet(depth, width, **kwargs)
  match = _RESNET.fullmatch(name)
  if match:
    return resnet.resnet(int(match.group(1)), activation='swish' if match.group(2) else 'relu',
                         **kwargs)
  raise ValueError(
      f'Unknown model {name!r}; known: {", ".join(KNOWN_NAMES)}.')


def from_config(config: ml_collections.ConfigDict, *, name: Optional[str] = None,
                dtype: Optional[str] = None) -> nn.Module:
  """The classifier `config.model` describes, for `config.dataset`'s classes and statistics.

  Keys added after a run was saved fall back to their defaults, so that the config stored in an
  old workdir still builds its model.

  Args:
    config: a full config (`configs/base.py`).
    name: another architecture with the same settings (e.g. `pipeline.classifier_model`).
    dtype: overrides `model.dtype`. Evaluation attacks pass `config.eval.dtype`, float32 by
      default even when training in bfloat16: APGD's step-size checks, FAB's linearised
      boundary projections, Square's margin tests and the final "still misclassified?" decision
      read small differences of logits and signs of input gradients, which bfloat16's rounding
      (about 1% of the logits' scale through a WRN, see tests/test_precision.py) can flip near
      the boundary, and the reported robust accuracy is the quantity the paper compares.

  Returns:
    The (unbound) flax module.
  """
  info = real.info(config.dataset)
  m = config.model
  return get_model(name or m.name, num_classes=info.num_classes, mean=info.mean, std=info.std,
                   dtype=dtype or m.dtype, bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
                   bn_group_size=m.get('bn_group_size', 0), remat=m.get('remat', 'none'))
