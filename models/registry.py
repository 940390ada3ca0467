"""Models by name, so that a config can say `model.name = 'wrn-70-16'`.

Names:
  `wrn-{depth}-{width}`: any pre-activation WideResNet with depth 6n + 4,
    e.g. `wrn-28-10` and `wrn-70-16` from the paper. Tests and the demo use
    tiny ones such as `wrn-10-1` (78k parameters) or `wrn-10-2`; there is no
    separate tiny architecture.
  `preact-resnet-18`: pre-activation ResNet-18.
"""

import re
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from models import preact_resnet
from models import wide_resnet

KNOWN_NAMES = ('wrn-{depth}-{width} (depth = 6n + 4, e.g. wrn-28-10, '
               'wrn-70-16, wrn-10-1)', 'preact-resnet-18')
_WRN = re.compile(r'wrn-(\d+)-(\d+)')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def get_model(name: str, *, num_classes: int, mean: Sequence[float],
              std: Sequence[float], dtype: str = 'float32',
              bn_momentum: float = 0.99,
              bn_epsilon: float = 1e-5) -> nn.Module:
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

  Returns:
    The (unbound) flax module.

  Raises:
    ValueError: for an unknown name or dtype, or a WRN depth not 6n + 4.
  """
  if dtype not in _DTYPES:
    raise ValueError(
        f'Unknown model dtype {dtype!r}; use one of {sorted(_DTYPES)}.')
  kwargs = dict(num_classes=num_classes, mean=mean, std=std,
                dtype=_DTYPES[dtype], bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon)
  if name == 'preact-resnet-18':
    return preact_resnet.preact_resnet18(**kwargs)
  match = _WRN.fullmatch(name)
  if match:
    depth, width = map(int, match.groups())
    return wide_resnet.wide_resnet(depth, width, **kwargs)
  raise ValueError(
      f'Unknown model {name!r}; known: {", ".join(KNOWN_NAMES)}.')
