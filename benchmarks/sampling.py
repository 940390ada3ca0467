"""Sampling throughput of the diffusion UNet, its FLOPs per evaluation, and the cost of 100M images.

  python -m benchmarks.sampling --models=digits,cifar10 --batch=digits:256,cifar10:16 \\
      --evals=3 --dtype=float32 [--peak_tflops=989]

For each UNet (models/diffusion/unet.py: `digits_config()`, and `CIFAR10_DDPM`, Ho et al.'s
35.7M-parameter CIFAR-10 model as google/ddpm-cifar10-32 defines it) on random weights:

- time per network evaluation (NFE): `eps_fn(params, x_t, t)` jit-ed over all local devices
  (batch split over a data mesh), the mean of --evals calls after one warm-up call, each waited
  for; images/s per device per NFE = batch / time / devices, and for a sampler of S evaluations
  that divided by S (a sampler step adds only element-wise work to the network call);
- FLOPs per image per NFE by XLA's cost analysis of the compiled evaluation,
  `jax.jit(f).lower(...).compile().cost_analysis()['flops']` over the batch (multiply-adds count 2);
- the projection: device-days to sample --num images with DDPM-1000, DDIM-100 and
  DPM-Solver++(2M)-20 at --utilisation of a device's dense bf16 peak (H100 SXM 989 TFLOP/s,
  TPU v4 275 TFLOP/s): num * S * FLOPs / (utilisation * peak) / 86400 s.

The CPU rows are measured; the accelerator rows are arithmetic from the XLA FLOP count, not
measurements.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from models.diffusion import unet as unet_lib

PEAKS_TFLOPS = {'H100 (989 TFLOP/s bf16)': 989.0, 'TPU v4 (275 TFLOP/s bf16)': 275.0}
SAMPLERS = (('DDPM-1000', 1000), ('DDIM-100', 100), ('DPM-Solver++(2M)-20', 20))


def _configs():
  return {'digits': unet_lib.digits_config(), 'cifar10': unet_lib.CIFAR10_DDPM}


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list on older jax
  return float(cost.get('flops', 0.0))


def measure(name, cfg, batch, evals, dtype):
  """(params, FLOPs per image per NFE, seconds per NFE call) of one UNet on this host."""
  model = unet_lib.UNet(cfg, dtype=jnp.dtype(dtype))
  params = unet_lib.init_params(model, jax.random.key(0))
  eps_fn = unet_lib.make_eps_fn(model)
  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)
  rows = NamedSharding(mesh, P('data'))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  x = jax.device_put(jax.random.normal(jax.random.key(1), (batch,) + cfg.image_shape), rows)
  t = jax.device_put(jnp.arange(batch, dtype=jnp.int32) % 1000, rows)
  start = time.perf_counter()
  compiled = jax.jit(eps_fn, out_shardings=rows).lower(params, x, t).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(compiled) * len(devices) / batch   # cost analysis is per device
  compiled(params, x, t).block_until_ready()
  times = []
  for _ in range(evals):
    start = time.perf_counter()
    compiled(params, x, t).block_until_ready()
    times.append(time.perf_counter() - start)
  print(f'  {name}: {unet_lib.count_params(params) / 1e6:.2f}M params, compiled in '
        f'{compile_s:.1f}s, NFE times {[round(s, 3) for s in times]}', flush=True)
  return unet_lib.count_params(params), flops, float(np.mean(times))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='digits,cifar10')
  parser.add_argument('--batch', default='digits:256,cifar10:16',
                      help='images per NFE call, per model')
  parser.add_argument('--evals', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--num', type=float, default=1e8, help='images to project for')
  parser.add_argument('--utilisation', type=float, default=0.5, help='share of the peak')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help="this device's peak for --dtype, to print MFU (0: no MFU)")
  args = parser.parse_args(argv)
  batches = dict((k, int(v)) for k, v in (kv.split(':') for kv in args.batch.split(',')))
  configs = _configs()
  n_dev = jax.local_device_count()
  print(f'devices: {n_dev} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'dtype {args.dtype}')
  results = {}
  for name in args.models.split(','):
    results[name] = measure(name, configs[name], batches[name], args.evals, args.dtype)

  print('\n| UNet | params | GFLOPs / image / NFE | batch | s / NFE call | images/s/device '
        '/ NFE | achieved GFLOP/s/device | ' + ' | '.join(f'images/s/device {s}'
                                                        for s, _ in SAMPLERS) + ' |')
  print('|' + '---|' * (7 + len(SAMPLERS)))
  for name, (params, flops, seconds) in results.items():
    per_nfe = batches[name] / seconds / n_dev
    cells = [f'{per_nfe / nfe:.3g}' for _, nfe in SAMPLERS]
    print(f'| {name} | {params / 1e6:.2f}M | {flops / 1e9:.3f} | {batches[name]} | '
          f'{seconds:.3f} | {per_nfe:.1f} | {flops * per_nfe / 1e9:.1f} | '
          + ' | '.join(cells) + ' |')
    if args.peak_tflops:
      print(f'  {name}: MFU {flops * per_nfe / (args.peak_tflops * 1e12):.1%} of '
            f'{args.peak_tflops} TFLOP/s')

  print(f'\nProjection: device-days to sample {args.num:.3g} images at '
        f'{args.utilisation:.0%} of peak (from the XLA FLOP count)')
  for name, (_, flops, seconds) in results.items():
    print(f'\n{name} UNet ({flops / 1e9:.3f} GFLOPs / image / NFE)\n')
    devices = list(PEAKS_TFLOPS) + ['this CPU device (measured rate)']
    print('| sampler | NFE | ' + ' | '.join(devices) + ' |')
    print('|' + '---|' * (2 + len(devices)))
    cpu_rate = batches[name] / seconds / n_dev    # images/s/device per NFE
    for sampler, nfe in SAMPLERS:
      days = [args.num * nfe * flops / (args.utilisation * peak * 1e12) / 86400
              for peak in PEAKS_TFLOPS.values()]
      days.append(args.num * nfe / cpu_rate / 86400)
      print(f'| {sampler} | {nfe} | ' + ' | '.join(f'{d:,.3g}' for d in days) + ' |')


if __name__ == '__main__':
  main()
