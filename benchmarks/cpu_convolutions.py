"""The input gradient that the attacks are made of, on XLA:CPU with and without our flag, and torch.

  python -m benchmarks.cpu_convolutions [--batches 32,100] [--repeats 20] [--torch_threads 1]

`import trainer` sets `trainer.CPU_CONVOLUTION_FLAG` (YNNPACK keeps its fusions around matrix
products but no longer takes the convolutions of a gradient one at a time). This script compares,
in one process, jaxlib's default (`compiler_options` puts the fusion types back for those
compilations) with the flag, and torch, on the reference CNN of `benchmarks.attacks_reference`
(4 VALID 3×3 convolutions, 2 max-pools, 3 dense layers; 28×28×1): milliseconds per forward pass
and per input gradient of the summed cross-entropy, the mean of --repeats calls after a warm-up
call, each run to completion. Ratios are default / flag and torch / flag.
"""
import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import trainer
from benchmarks import attacks_reference as reference

# What jaxlib 0.10 fuses into YNNPACK when the flag is not given (the compiled programs are the
# same as with no option at all).
JAXLIB_DEFAULT = {'xla_cpu_experimental_ynn_fusion_type': ','.join(
    'LIBRARY_FUSION_TYPE_' + t for t in ('INDIVIDUAL_DOT', 'INDIVIDUAL_CONVOLUTION', 'DOT',
                                          'REDUCE'))}


def _ms(fn, x, repeats):
  fn(x)
  start = time.perf_counter()
  for _ in range(repeats):
    out = fn(x)
  if hasattr(out, 'block_until_ready'):
    out.block_until_ready()
  return (time.perf_counter() - start) / repeats * 1e3


def _jax_pair(logits_fn, x, y, options):
  loss = lambda z: jnp.sum(jax.nn.log_softmax(logits_fn(z))[jnp.arange(len(y)), y])
  forward = jax.jit(logits_fn, compiler_options=options)
  gradient = jax.jit(jax.grad(loss), compiler_options=options)
  return forward, gradient


def _torch_pair(model, y):
  import torch  # pylint: disable=g-import-not-at-top
  y = torch.tensor(y)

  def forward(x):
    with torch.no_grad():
      return model(x)

  def gradient(x):
    z = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(z), y, reduction='sum')
    return torch.autograd.grad(loss, z)[0]
  return forward, gradient


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', default='32,100')
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--torch_threads', type=int, default=1)
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.torch_threads)
  model = reference.reference_cnn()
  logits_fn = reference.jax_port(model)
  flags = os.environ.get('XLA_FLAGS', '')
  print(f'reference CNN 28x28x1; jax {jax.__version__}, torch {torch.__version__} '
        f'({args.torch_threads} threads); {platform.machine()}, {os.cpu_count()} CPUs, load '
        f'average {os.getloadavg()[0]:.2f}; XLA_FLAGS={flags!r} '
        f'(flag {"set" if trainer.CPU_CONVOLUTION_FLAG in flags else "NOT set"})')
  print(f'{"batch":>5} {"pass":>8} {"jaxlib default":>15} {"with flag":>10} {"torch":>8} '
        f'{"default/flag":>13} {"torch/flag":>11}   (ms per call)')
  for batch in (int(b) for b in args.batches.split(',')):
    x = reference.digits_28(batch)
    y = np.asarray(logits_fn(x)).argmax(1)
    x_torch = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    sides = [_jax_pair(logits_fn, x, y, JAXLIB_DEFAULT), _jax_pair(logits_fn, x, y, None)]
    torch_side = _torch_pair(model, y)
    for p, name in enumerate(('forward', 'gradient')):
      default, flag = (_ms(s[p], jnp.asarray(x), args.repeats) for s in sides)
      torch_ms = _ms(torch_side[p], x_torch, args.repeats)
      print(f'{batch:5d} {name:>8} {default:15.1f} {flag:10.1f} {torch_ms:8.1f} '
            f'{default / flag:12.2f}x {torch_ms / flag:10.2f}x', flush=True)


if __name__ == '__main__':
  main()
