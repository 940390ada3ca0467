"""AutoAttack "standard" against fra31/auto-attack's own code, side by side in one process.

  python -m benchmarks.attacks_reference --reference=DIR [--n 100] [--eps 0.1] [--norm linf]
      [--batch_size 100] [--torch_threads N] [--no_warm] [--no_cached]

DIR is a checkout of github.com/fra31/auto-attack (the directory holding the `autoattack`
package); it is put on sys.path at run time and never copied here. Both sides attack the same
model: a small CNN for 28×28×1 inputs (4 convolutions and 3 dense layers, the classic MNIST
architecture of Carlini & Wagner), defined once in torch with fixed-seed He-normal weights (no
one trained it; the default torch init would give near-constant logits) and ported to a JAX
`logits_fn` (the logits are checked to agree). The points are scikit-learn's `digits` images
resized to 28×28, labelled with the model's own predictions; ε is chosen so that the model is
neither 0% nor 100% robust.

The reference runs `AutoAttack(version='standard').run_standard_evaluation(bs=batch_size)`;
its per-stage seconds are read from its own log lines ("robust accuracy after …, total time …").
Ours runs `autoattack(version='standard', batch_size=batch_size)`, first cold (including XLA
compilation), then warm, then "cached": JAX's in-memory caches cleared, as in a new process, with
its persistent compilation cache (a fresh temporary directory, written by the cold run) on, so
that every program is traced again and read from disk rather than compiled, which is what a
second evaluation costs with `JAX_COMPILATION_CACHE_DIR` set; each reports `stage_seconds`.
The table prints seconds and robust accuracy per stage and the ratio reference / ours.
"""
import argparse
import os
import platform
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from trainer.attacks.autoattack import autoattack

STAGES = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
SIDE = 28


# ---------------------------------------------------------------------------------------------
# The model, in torch and in JAX.
# ---------------------------------------------------------------------------------------------

def reference_cnn(seed=0):
  """Conv 32-32, max-pool, conv 64-64, max-pool, dense 200-200-10; ReLU; He-normal weights."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  model = nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(1024, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
      nn.Linear(200, 10))
  torch.manual_seed(seed)
  for layer in model:
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(layer.weight, nonlinearity='relu')
      nn.init.normal_(layer.bias, std=0.1)
  return model.eval()


def _cnn_apply(params, x):
  h = x
  for i, (kernel, bias) in enumerate(params['conv']):
    h = jax.lax.conv_general_dilated(h, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    h = jax.nn.relu(h + bias)
    if i % 2 == 1:
      h = h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, h.shape[3]).max(axis=(2, 4))
  h = h.reshape(h.shape[0], -1)
  for i, (kernel, bias) in enumerate(params['dense']):
    h = h @ kernel + bias
    if i < len(params['dense']) - 1:
      h = jax.nn.relu(h)
  return h


def jax_port(model):
  """The torch CNN as `Partial(apply, params)` on NHWC inputs (kernels HWIO, dense (in, out))."""
  from torch import nn  # pylint: disable=g-import-not-at-top
  arr = lambda t: jnp.asarray(t.detach().numpy())
  convs = [m for m in model if isinstance(m, nn.Conv2d)]
  dense = [m for m in model if isinstance(m, nn.Linear)]
  # torch flattens (C, H, W); reorder the first dense layer's inputs to our (H, W, C).
  channels = convs[-1].out_channels
  side = int(round((dense[0].in_features // channels) ** 0.5))
  first = arr(dense[0].weight).reshape(-1, channels, side, side).transpose(2, 3, 1, 0)
  params = {
      'conv': [(arr(c.weight).transpose(2, 3, 1, 0), arr(c.bias)) for c in convs],
      'dense': [(first.reshape(-1, first.shape[-1]), arr(dense[0].bias))]
               + [(arr(d.weight).T, arr(d.bias)) for d in dense[1:]],
  }
  return jax.tree_util.Partial(_cnn_apply, params)


def digits_28(n):
  """The first n scikit-learn digits, bilinearly resized from 8×8 to 28×28, NHWC in [0, 1]."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  images = load_digits().images[:n, :, :, None] / 16.0
  x = jax.image.resize(jnp.asarray(images, jnp.float32), (len(images), SIDE, SIDE, 1), 'linear')
  return np.clip(np.asarray(x), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# The two cascades.
# ---------------------------------------------------------------------------------------------

_AFTER = re.compile(r'robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)')


def run_reference(reference_dir, model, x, y, *, norm, eps, batch_size):
  """fra31's AutoAttack 'standard'; per-stage seconds and robust accuracy from its log."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.abspath(reference_dir))
  from autoattack import AutoAttack  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  adversary = AutoAttack(model, norm={'linf': 'Linf', 'l2': 'L2'}[norm], eps=eps,
                         version='standard', seed=0, device='cpu')
  seconds, accuracy, previous = {}, {}, [0.0]
  log = adversary.logger.log

  def record(message):
    log(message)
    match = _AFTER.search(message)
    if match:
      name, acc, total = match.group(1).lower(), float(match.group(2)), float(match.group(3))
      seconds[name], accuracy[name] = total - previous[0], acc / 100
      previous[0] = total

  adversary.logger.log = record
  x_t = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  y_t = torch.tensor(y, dtype=torch.long)
  start = time.time()
  adversary.run_standard_evaluation(x_t, y_t, bs=batch_size)
  return seconds, accuracy, time.time() - start


def use_compilation_cache(directory):
  """JAX's persistent compilation cache in `directory`, for every program however fast it
  compiles: the cascade's programs compile in under a second each."""
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def run_ours(logits_fn, x, y, *, norm, eps, batch_size):
  start = time.time()
  result = autoattack(logits_fn, x, y, norm=norm, eps=eps, version='standard', seed=0,
                      batch_size=batch_size)
  return dict(result.stage_seconds), dict(result.stage_accuracy), time.time() - start


# ---------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------

def _table(reference, columns):
  """reference, columns[i]: (title, seconds, accuracy, wall); ratios are reference / column."""
  titles = [reference[0]] + [c[0] for c in columns]
  head = 'stage'.ljust(9) + ''.join(f'{t:>22}' for t in titles)
  head += ''.join(f'{"ratio " + c[0].split()[-1]:>13}' for c in columns)
  lines = [head]
  for name in STAGES + ('total',):
    cells, ratios = [], []
    for _, seconds, accuracy, wall in [reference] + columns:
      if name == 'total':
        cells.append(f'{wall:9.1f} s'.rjust(22))
      else:
        acc = f'{100 * accuracy[name]:.0f}%' if name in accuracy else '-'
        cells.append(f'{seconds.get(name, 0.0):9.1f} s {acc:>6}'.rjust(22))
    ref_s = reference[3] if name == 'total' else reference[1].get(name, 0.0)
    for _, seconds, _, wall in columns:
      ours = wall if name == 'total' else seconds.get(name, 0.0)
      ratios.append(f'{ref_s / ours:12.2f}x' if ours > 0 else ' ' * 12 + '-')
    lines.append(name.ljust(9) + ''.join(cells) + ''.join(ratios))
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reference', required=True,
                      help='a checkout of fra31/auto-attack (the directory above autoattack/)')
  parser.add_argument('--n', type=int, default=100, help='points attacked')
  parser.add_argument('--eps', type=float, default=0.1)
  parser.add_argument('--norm', default='linf', choices=('linf', 'l2'))
  parser.add_argument('--batch_size', type=int, default=100)
  parser.add_argument('--torch_threads', type=int, default=os.cpu_count())
  parser.add_argument('--no_warm', action='store_true', help='skip the second (warm) JAX run')
  parser.add_argument('--no_cached', action='store_true',
                      help="skip the third JAX run, whose programs come from XLA's compilation "
                           'cache on disk')
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.reference, 'autoattack', 'autoattack.py')):
    raise SystemExit(f'--reference={args.reference}: no autoattack/autoattack.py there.')

  cache = tempfile.TemporaryDirectory(prefix='xla-cache-')  # removed when main returns
  if not args.no_cached:
    # Before the first compilation, which fixes whether the process uses the cache.
    use_compilation_cache(cache.name)
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  model = reference_cnn()
  logits_fn = jax_port(model)
  x = digits_28(args.n)
  logits = np.asarray(logits_fn(x))
  with torch.no_grad():
    torch_logits = model(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  gap = np.abs(logits - torch_logits).max()
  if gap > 1e-4 * max(1.0, np.abs(logits).max()):
    raise AssertionError(f'The JAX port disagrees with the torch model: max logit gap {gap}.')
  y = logits.argmax(1).astype(np.int32)
  print(f'reference CNN, {args.n} digits at 28x28x1, {args.norm} eps={args.eps}, '
        f'batch_size={args.batch_size}, labels = predictions; jax {jax.__version__}, '
        f'torch {torch.__version__} ({args.torch_threads} threads); '
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.2f}; max logit gap jax/torch {gap:.1e}', flush=True)

  kwargs = dict(norm=args.norm, eps=args.eps, batch_size=args.batch_size)
  reference = ('fra31 (torch)',) + run_reference(args.reference, model, x, y, **kwargs)
  columns = [('ours cold',) + run_ours(logits_fn, x, y, **kwargs)]
  print(_table(reference, columns), flush=True)
  if not args.no_warm:
    columns.append(('ours warm',) + run_ours(logits_fn, x, y, **kwargs))
  if not args.no_cached:
    jax.clear_caches()  # what a new process has: every program traced again, none compiled
    columns.append(('ours cached',) + run_ours(logits_fn, x, y, **kwargs))
  print(f'\nseconds and robust accuracy after each stage; ratio = fra31 seconds / ours; '
        f'load average {os.getloadavg()[0]:.2f}\n' + _table(reference, columns), flush=True)


if __name__ == '__main__':
  main()
