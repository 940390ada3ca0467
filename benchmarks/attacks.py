"""AutoAttack "standard" speed: our JAX cascade against torchattacks, stage by stage.

  python -m benchmarks.attacks [--model wrn-10-1] [--n 16] [--eps 0.001] [--norm linf]
      [--torch_threads N] [--no_warm] [--accelerator_only]

Both sides attack the same model: a `models.registry` WideResNet (CIFAR shape, 32×32×3, random
weights with a random head instead of the zero one, so that the logits differ) and its weights
copied into an equivalent torch module (the logits are checked to agree). Both run the four
stages with the same settings: APGD-CE (100 steps, 1 restart), APGD-T (100 steps, 9 targets),
FAB-T (100 steps, 9 targets), Square (5,000 queries), each stage only on the points the previous
ones left robust. torchattacks' own AutoAttack wrapper hard-codes 10 APGD steps, so its stage
classes are chained here, as its MultiAttack does.

What is measured is the worst case, the cost per point that stays robust through every stage:
labels are the model's own predictions and ε is tiny, so (almost) no point is broken and every
stage runs all its iterations on every point; the table says how many points each stage left.
This is the cost that dominates when evaluating a robust model. Seconds are per 1,000 points,
scaled from --n points. Ours is timed twice: cold (the first call, including XLA compilation,
which does not grow with the number of points) and warm (compiled). A GPU column is added
when both JAX and torch see a GPU. --accelerator_only times only our cascade, cold and warm, on
the accelerator JAX sees (torch is not needed), for the accelerator figures
(`python -m benchmarks.accelerator`).
"""
import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from models.registry import get_model
from trainer.attacks.autoattack import autoattack

STAGES = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


# ---------------------------------------------------------------------------------------------
# The model, in JAX and in torch.
# ---------------------------------------------------------------------------------------------

def make_model(name, seed=0):
  """A WRN with random weights and a random (not zero) head, and its eval-mode logits_fn."""
  model = get_model(name, num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD)
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
  head = variables['params']['head']
  head['kernel'] = jax.random.normal(jax.random.key(seed + 1), head['kernel'].shape) * 0.5
  apply = lambda v, x: model.apply(v, x, train=False)
  return model, variables, jax.tree_util.Partial(apply, variables)


def torch_port(model, variables):
  """The same pre-activation ResNet in torch (NCHW), with the weights copied over."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  params, stats = variables['params'], variables['batch_stats']
  tensor = lambda a: torch.tensor(np.asarray(a))

  def batch_norm(p, s):
    bn = nn.BatchNorm2d(p['scale'].shape[0], eps=model.bn_epsilon)
    with torch.no_grad():
      bn.weight.copy_(tensor(p['scale']))
      bn.bias.copy_(tensor(p['bias']))
      bn.running_mean.copy_(tensor(s['mean']))
      bn.running_var.copy_(tensor(s['var']))
    return bn

  def conv(kernel, stride):
    kh, kw, cin, cout = kernel.shape
    c = nn.Conv2d(cin, cout, (kh, kw), stride, bias=False)
    with torch.no_grad():
      c.weight.copy_(tensor(kernel).permute(3, 2, 0, 1))
    c.same_padding = (kh // 2, kh // 2)
    if stride == 2:   # flax 'SAME' with stride 2 on even sizes pads only after: (0, 1)
      c.same_padding = (0, 1) if kh == 3 else (0, 0)
    return c

  def run_conv(c, x):
    lo, hi = c.same_padding
    return c(F.pad(x, (lo, hi, lo, hi)))

  class Block(nn.Module):

    def __init__(self, p, s, stride):
      super().__init__()
      self.bn_0, self.bn_1 = batch_norm(p['bn_0'], s['bn_0']), batch_norm(p['bn_1'], s['bn_1'])
      self.conv_0 = conv(p['conv_0']['kernel'], stride)
      self.conv_1 = conv(p['conv_1']['kernel'], 1)
      self.shortcut = conv(p['shortcut']['kernel'], stride) if 'shortcut' in p else None

    def forward(self, x):
      y = F.silu(self.bn_0(x))
      shortcut = run_conv(self.shortcut, y) if self.shortcut is not None else x
      y = run_conv(self.conv_0, y)
      y = run_conv(self.conv_1, F.silu(self.bn_1(y)))
      return y + shortcut

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.register_buffer('mean', torch.tensor(model.mean).view(1, -1, 1, 1))
      self.register_buffer('std', torch.tensor(model.std).view(1, -1, 1, 1))
      self.stem = conv(params['stem']['kernel'], 1)
      blocks = []
      for i, size in enumerate(model.stage_sizes):
        for j in range(size):
          name = f'stage_{i}_block_{j}'
          blocks.append(Block(params[name], stats[name], 2 if i > 0 and j == 0 else 1))
      self.blocks = nn.Sequential(*blocks)
      self.bn_final = batch_norm(params['bn_final'], stats['bn_final'])
      self.head = nn.Linear(*params['head']['kernel'].shape)
      with torch.no_grad():
        self.head.weight.copy_(tensor(params['head']['kernel']).T)
        self.head.bias.copy_(tensor(params['head']['bias']))

    def forward(self, x):
      x = run_conv(self.stem, (x - self.mean) / self.std)
      x = F.silu(self.bn_final(self.blocks(x)))
      return self.head(x.mean(dim=(2, 3)))

  return Net().eval()


# ---------------------------------------------------------------------------------------------
# The two cascades.
# ---------------------------------------------------------------------------------------------

def run_ours(logits_fn, x, y, *, norm, eps, mesh=None):
  """Seconds and points left robust after each stage."""
  result = autoattack(logits_fn, x, y, norm=norm, eps=eps, version='standard', seed=0,
                      batch_size=len(x), mesh=mesh)
  left = {k: int(round(v * len(x))) for k, v in result.stage_accuracy.items()}
  return dict(result.stage_seconds), left


def run_torchattacks(model, x, y, *, norm, eps, device):
  """torchattacks' stage classes, each with AutoAttack-standard settings, run as a cascade."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchattacks  # pylint: disable=g-import-not-at-top

  tnorm = {'linf': 'Linf', 'l2': 'L2'}[norm]
  attacks = {
      'apgd-ce': torchattacks.APGD(model, norm=tnorm, eps=eps, steps=100, n_restarts=1,
                                   loss='ce', seed=0),
      'apgd-t': torchattacks.APGDT(model, norm=tnorm, eps=eps, steps=100, n_restarts=1,
                                   n_classes=10, seed=0),
      'fab-t': torchattacks.FAB(model, norm=tnorm, eps=eps, steps=100, n_restarts=1,
                                multi_targeted=True, n_classes=10, seed=0),
      'square': torchattacks.Square(model, norm=tnorm, eps=eps, n_queries=5000, n_restarts=1,
                                    seed=0),
  }
  # Contiguous NCHW: torchattacks' FAB reshapes input gradients with .view, and a gradient
  # keeps the strides of its input.
  x = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), device=device)
  y = torch.tensor(y, dtype=torch.long, device=device)
  with torch.no_grad():
    robust = model(x).argmax(1) == y
  seconds, left = {}, {}
  for name in STAGES:
    start = time.time()
    todo = robust.nonzero().flatten()
    if len(todo):
      x_adv = attacks[name](x[todo], y[todo])
      with torch.no_grad():
        robust[todo] = model(x_adv).argmax(1) == y[todo]
    if device != 'cpu':
      torch.cuda.synchronize()
    seconds[name], left[name] = time.time() - start, int(robust.sum())
    print(f'  torchattacks {name}: {seconds[name]:.1f} s, {left[name]} left', flush=True)
  return seconds, left


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------

def _table(columns, n):
  """columns: list of (title, seconds dict, left dict)."""
  width = max(16, *(len(title) + 2 for title, _, _ in columns))
  lines = ['stage'.ljust(10) + ''.join(title.rjust(width) for title, _, _ in columns)]
  for name in STAGES + ('total',):
    cells = []
    for _, seconds, left in columns:
      s = sum(seconds.values()) if name == 'total' else seconds.get(name, 0.0)
      robust = '' if name == 'total' else f' ({left.get(name, "-")})'
      cells.append(f'{1000 * s / n:,.0f}{robust}'.rjust(width))
    lines.append(name.ljust(10) + ''.join(cells))
  return '\n'.join(lines)


def _points(n):
  return np.random.default_rng(0).uniform(0.0, 1.0, (n, 32, 32, 3)).astype(np.float32)


def accelerator_only(args):
  """Our cascade alone on the default backend, cold and warm: torch and the CPU are not timed."""
  if jax.default_backend() == 'cpu':
    raise SystemExit('--accelerator_only: JAX sees no accelerator (its default backend is cpu).')
  _, _, logits_fn = make_model(args.model)
  x = _points(args.n)
  y = np.asarray(jnp.argmax(logits_fn(x), axis=1)).astype(np.int32)
  kind = jax.devices()[0].device_kind
  print(f'{args.model}, {args.n} points of 32x32x3, {args.norm} eps={args.eps}, labels = '
        f'predictions; jax {jax.__version__}; {jax.device_count()} x {kind}', flush=True)
  columns = []
  for title in ('cold',) if args.no_warm else ('cold', 'warm'):
    columns.append((f'ours {title}',) + run_ours(logits_fn, x, y, norm=args.norm, eps=args.eps))
    print(f'\nseconds per 1,000 points (points left robust after the stage, of {args.n}):\n'
          + _table(columns, args.n), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='wrn-10-1')
  parser.add_argument('--n', type=int, default=16, help='points attacked')
  parser.add_argument('--eps', type=float, default=0.001)
  parser.add_argument('--norm', default='linf', choices=('linf', 'l2'))
  parser.add_argument('--torch_threads', type=int, default=os.cpu_count())
  parser.add_argument('--no_warm', action='store_true', help='skip the second (warm) JAX run')
  parser.add_argument('--accelerator_only', action='store_true',
                      help='only our cascade, on the accelerator JAX sees (no torch, no CPU)')
  args = parser.parse_args()
  if args.accelerator_only:
    return accelerator_only(args)

  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  model, variables, logits_fn = make_model(args.model)
  torch_model = torch_port(model, variables)

  x = _points(args.n)
  cpu = jax.devices('cpu')
  cpu_mesh = jax.make_mesh((len(cpu),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                           devices=cpu)
  with jax.default_device(cpu[0]):
    logits = np.asarray(logits_fn(x))
  with torch.no_grad():
    torch_logits = torch_model(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  torch_logits = torch_logits.numpy()
  gap = np.abs(logits - torch_logits).max()
  if gap > 1e-3 * max(1.0, np.abs(logits).max()):
    raise AssertionError(f'The torch port disagrees with the JAX model: max logit gap {gap}.')
  y = logits.argmax(1).astype(np.int32)

  print(f'{args.model}, {args.n} points of 32x32x3, {args.norm} eps={args.eps}, '
        f'labels = predictions; jax {jax.__version__}, torch {torch.__version__} '
        f'({args.torch_threads} threads); {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs; max logit gap jax/torch {gap:.1e}', flush=True)

  columns = []

  def add(title, seconds, left):
    columns.append((title, seconds, left))
    print(f'\nseconds per 1,000 points (points left robust after the stage, of {args.n}):\n'
          + _table(columns, args.n), flush=True)

  add('ours CPU cold', *run_ours(logits_fn, x, y, norm=args.norm, eps=args.eps, mesh=cpu_mesh))
  if not args.no_warm:
    add('ours CPU warm', *run_ours(logits_fn, x, y, norm=args.norm, eps=args.eps, mesh=cpu_mesh))
  add('torchattacks CPU', *run_torchattacks(torch_model, x, y, norm=args.norm, eps=args.eps,
                                            device='cpu'))

  if any(d.platform == 'gpu' for d in jax.devices()) and torch.cuda.is_available():
    run_ours(logits_fn, x, y, norm=args.norm, eps=args.eps)          # compile
    add('ours GPU warm', *run_ours(logits_fn, x, y, norm=args.norm, eps=args.eps))
    add('torchattacks GPU', *run_torchattacks(torch_model.cuda(), x, y, norm=args.norm,
                                              eps=args.eps, device='cuda'))


if __name__ == '__main__':
  main()
