"""Pre-activation WideResNet-d-w (Zagoruyko & Komodakis 2016).

The variant of Gowal, Rebuffi et al. (2021), App. A: Swish, BatchNorm decay
0.99 and epsilon 1e-5, a 1x1 projection shortcut on the activated input in
the first block of every group, a zero-initialised head. Three groups of
n = (d - 4) / 6 blocks with 16w, 32w and 64w channels at strides 1, 2, 2
after a 16-channel stem; WRN-28-10 has 36.5M parameters, WRN-70-16 267M.
"""

from typing import Sequence

from models import preact_resnet


def check_depth(depth: int) -> int:
  """Blocks per group of a WRN of this depth; a clear error if there is none.

  Args:
    depth: d = 6n + 4, for n blocks of two 3x3 convolutions per group.

  Returns:
    n = (d - 4) / 6.

  Raises:
    ValueError: if d is not 6n + 4 with n >= 1.
  """
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(
        f'A WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, '
        f'40, ..., 70), got {depth}.')
  return (depth - 4) // 6


def wide_resnet(depth: int, width: int, *, num_classes: int,
                mean: Sequence[float], std: Sequence[float],
                **kwargs) -> preact_resnet.PreActResNet:
  """WRN-`depth`-`width`.

  Unlike the PyTorch port of the reference, which projects only where the
  channel count changes, every group's first block projects (as the JAX
  reference does), so WRN-d-1's first group has a 16-to-16 projection too.

  Args:
    depth: d = 6n + 4.
    width: widening factor w >= 1.
    num_classes: number of logits.
    mean: per-channel dataset mean, in [0, 1] units.
    std: per-channel dataset standard deviation.
    **kwargs: other `PreActResNet` attributes (activation, bn_momentum,
      bn_epsilon, dtype).

  Returns:
    The (unbound) module.

  Raises:
    ValueError: for a depth that is not 6n + 4 or a width below 1.
  """
  n = check_depth(depth)
  if width < 1:
    raise ValueError(f'A WideResNet width must be >= 1, got {width}.')
  return preact_resnet.PreActResNet(
      stage_sizes=(n, n, n),
      stage_features=(16 * width, 32 * width, 64 * width),
      num_classes=num_classes, mean=tuple(mean), std=tuple(std),
      stem_features=16, project_first_block=True, **kwargs)
