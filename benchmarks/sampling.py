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

--edm_models=digits,cifar10 adds EDM's DDPM++ (models/diffusion/edm/network.py: a digits
configuration, and `CIFAR10_DDPMPP`, the 55.7M-parameter network of the released
edm-cifar10-32x32-cond-vp) as its denoiser D(x, sigma, y) under VP preconditioning: the same
columns per NFE, images/s for Heun with 18 and 20 steps (35 and 39 NFE: EDM's CIFAR-10 setting
and DM-Improves-AT's), and device-days for 50M and 100M CIFAR-10 images at those NFE against
the DDPM UNet at 1,000 (`--models=` with no DDPM skips the DDPM's timing; its FLOPs are then
counted from its compilation alone).

ADM (the paper's TinyImageNet and ImageNet generators, guided-diffusion's 64x64_diffusion.pt and
256x256_diffusion.pt; configs/adm/) has a table of its own:

  python -m benchmarks.sampling --models= --adm_models=adm64,adm256 [--adm_evals=0]

parameters, GFLOPs per image per NFE from XLA (compiled on abstract parameters, nothing
materialised), and device-days for --adm_num images (the paper's 5M ImageNet samples) at 250 /
50 / 25 NFE (guided-diffusion's respaced DDPM-250, and 50 / 25 steps); with --adm_evals > 0 the
evaluation is also timed at --adm_batch, as above (random weights, class labels 0..B-1).

--whole=digits:64 times each sampler end to end instead, in this one process: the class-
conditional digits UNet (the trained generator's architecture, random weights), one jitted
program per sampler (compiled first, then one call timed, waited for): seconds per batch,
images/s, and images/s x NFE, which is the same for every sampler when the network's evaluations
are all its cost.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from configs.adm import imagenet64, imagenet256
from models.diffusion.edm import precond as edm_precond
from models.interop import guided_diffusion as guided_diffusion_import
from models.diffusion.edm import network as song_unet
from models.diffusion import samplers as samplers_lib
from models.diffusion import schedule
from models.diffusion import unet as unet_lib

PEAKS_TFLOPS = {'H100 (989 TFLOP/s bf16)': 989.0, 'TPU v4 (275 TFLOP/s bf16)': 275.0}
SAMPLERS = (('DDPM-1000', 1000), ('DDIM-100', 100), ('DPM-Solver++(2M)-20', 20))
ADM_SAMPLERS = (('DDPM-250 (respaced)', 250), ('50 steps', 50), ('25 steps', 25))


def _configs():
  return {'digits': unet_lib.digits_config(), 'cifar10': unet_lib.CIFAR10_DDPM}


def _adm_configs():
  """ADM's released architectures, and a tiny one of the same shape to check the script."""
  tiny = dict(image_size=16, num_channels=32, channel_mult='1,2', num_res_blocks=1,
              attention_resolutions='8', class_cond=True, num_head_channels=16, learn_sigma=True,
              resblock_updown=True, use_new_attention_order=True)
  return {name: guided_diffusion_import.unet_config(flags) for name, flags in (
      ('adm64', imagenet64.get_config()), ('adm256', imagenet256.get_config()),
      ('adm_tiny', tiny))}


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


def _random_params(shapes, sharding):
  """N(0, 0.02^2) float32 parameters of `shapes`, drawn on the host (numpy) and placed: no
  compile at all (flax's init of the model is a second compile as long as the evaluation's, and
  XLA:CPU compiles hundreds of threefry draws slowly)."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda p: jax.device_put(0.02 * rng.standard_normal(p.shape, np.float32), sharding), shapes)


def measure_adm(name, cfg, batch, evals, dtype):
  """(params, FLOPs per image per NFE, seconds per NFE call or None) of an ADM UNet.

  Compiled on abstract parameters, so the FLOPs of the 554M-parameter model cost no memory;
  with evals > 0 the parameters are materialised (random) and the call timed.
  """
  model = unet_lib.UNet(cfg, dtype=jnp.dtype(dtype))
  eps_fn = unet_lib.make_eps_fn(model)
  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)
  rows, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  shapes = unet_lib.param_shapes(model)
  n_params = unet_lib.count_params(shapes)
  spec = lambda shape, dt, sh: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
  abstract = (jax.tree_util.tree_map(lambda p: spec(p.shape, p.dtype, replicated), shapes),
              spec((batch,) + cfg.image_shape, jnp.float32, rows),
              spec((batch,), jnp.int32, rows), spec((batch,), jnp.int32, rows))
  start = time.perf_counter()
  compiled = jax.jit(eps_fn, out_shardings=rows).lower(*abstract).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(compiled) * len(devices) / batch
  seconds = None
  if evals:
    params = _random_params(shapes, replicated)
    x = jax.device_put(jax.random.normal(jax.random.key(1), (batch,) + cfg.image_shape), rows)
    t = jax.device_put(jnp.arange(batch, dtype=jnp.int32) % 1000, rows)
    y = jax.device_put(jnp.arange(batch, dtype=jnp.int32) % cfg.num_class_embeds, rows)
    compiled(params, x, t, y).block_until_ready()
    times = []
    for _ in range(evals):
      start = time.perf_counter()
      compiled(params, x, t, y).block_until_ready()
      times.append(time.perf_counter() - start)
    seconds = float(np.mean(times))
    print(f'  {name}: NFE times {[round(s, 3) for s in times]}', flush=True)
  print(f'  {name}: {n_params / 1e6:.2f}M params, compiled in {compile_s:.1f}s', flush=True)
  return n_params, flops, seconds


def adm_tables(names, batches, evals, dtype, num, utilisation, peak_tflops):
  """ADM's parameters, FLOPs, (measured rate) and device-days for `num` images."""
  configs = _adm_configs()
  n_dev = jax.local_device_count()
  results = {n: measure_adm(n, configs[n], batches.get(n, n_dev), evals, dtype) for n in names}
  print('\n| ADM UNet | params | GFLOPs / image / NFE | batch | s / NFE call | images/s/device '
        '/ NFE | ' + ' | '.join(f'images/s/device {s}' for s, _ in ADM_SAMPLERS) + ' |')
  print('|' + '---|' * (6 + len(ADM_SAMPLERS)))
  for name, (params, flops, seconds) in results.items():
    size = configs[name].sample_size
    rate = batches.get(name, n_dev) / seconds / n_dev if seconds else None
    cells = [f'{rate / nfe:.3g}' if rate else '-' for _, nfe in ADM_SAMPLERS]
    print(f'| {name} ({size}x{size}x3) | {params / 1e6:.2f}M | {flops / 1e9:.2f} | '
          f'{batches.get(name, n_dev) if seconds else "-"} | '
          f'{f"{seconds:.3f}" if seconds else "-"} | {f"{rate:.3g}" if rate else "-"} | '
          + ' | '.join(cells) + ' |')
    if rate and peak_tflops:
      print(f'  {name}: MFU {flops * rate / (peak_tflops * 1e12):.1%} of {peak_tflops} TFLOP/s')
  print(f'\nProjection: device-days to sample {num:.3g} images at {utilisation:.0%} of peak '
        '(from the XLA FLOP count)')
  for name, (_, flops, seconds) in results.items():
    print(f'\n{name} ({flops / 1e9:.2f} GFLOPs / image / NFE)\n')
    devices = list(PEAKS_TFLOPS) + (['this device (measured rate)'] if seconds else [])
    print('| sampler | NFE | ' + ' | '.join(devices) + ' |')
    print('|' + '---|' * (2 + len(devices)))
    for sampler, nfe in ADM_SAMPLERS:
      days = [num * nfe * flops / (utilisation * peak * 1e12) / 86400
              for peak in PEAKS_TFLOPS.values()]
      if seconds:
        days.append(num * nfe * seconds * n_dev / batches.get(name, n_dev) / 86400)
      print(f'| {sampler} | {nfe} | ' + ' | '.join(f'{d:,.3g}' for d in days) + ' |')


def measure_whole(name, batch, dtype):
  """Each sampler of SAMPLERS end to end on `batch` images of the conditional `name` UNet."""
  cfg = unet_lib.digits_config(num_classes=10) if name == 'digits' else unet_lib.CIFAR10_DDPM
  model = unet_lib.UNet(cfg, dtype=jnp.dtype(dtype))
  params = unet_lib.init_params(model, jax.random.key(0))
  eps_fn, ac = unet_lib.make_eps_fn(model), schedule.ho_linear().alphas_cumprod
  y = jnp.arange(batch, dtype=jnp.int32) % 10 if cfg.num_class_embeds else None
  print(f'\n| sampler ({name}, batch {batch}, {dtype}) | NFE | s per batch | images/s | '
        'images/s x NFE |\n|---|---:|---:|---:|---:|')
  for label, nfe in SAMPLERS:
    kind = {'DDPM': 'ddpm', 'DDIM': 'ddim'}.get(label.split('-')[0], 'dpm++2m')
    fn = jax.jit(lambda p, k, kind=kind, nfe=nfe: samplers_lib.sample(
        eps_fn, p, ac, k, (batch,) + cfg.image_shape, sampler=kind, steps=nfe, y=y))
    compiled = fn.lower(params, jax.random.key(1)).compile()
    start = time.perf_counter()
    compiled(params, jax.random.key(1)).block_until_ready()
    seconds = time.perf_counter() - start
    print(f'| {label} | {nfe} | {seconds:.1f} | {batch / seconds:.3g} | '
          f'{batch * nfe / seconds:.1f} |', flush=True)


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
  parser.add_argument('--edm_models', default='',
                      help='EDM DDPM++ networks to measure too: digits,cifar10 (see edm_report)')
  parser.add_argument('--edm_batch', default='digits:256,cifar10:8',
                      help='images per NFE call, per EDM network')
  parser.add_argument('--adm_models', default='',
                      help='ADM table: adm64, adm256, adm_tiny (empty: no ADM table)')
  parser.add_argument('--adm_batch', default='', help='images per NFE call, per ADM model')
  parser.add_argument('--adm_evals', type=int, default=0, help='timed ADM calls (0: FLOPs only)')
  parser.add_argument('--adm_num', type=float, default=5e6,
                      help='ADM images to project for (the paper: 5M ImageNet samples)')
  parser.add_argument('--whole', default='',
                      help='NAME:BATCH: time each sampler end to end on BATCH images instead')
  args = parser.parse_args(argv)
  if args.whole:
    name, batch = args.whole.split(':')
    measure_whole(name, int(batch), args.dtype)
    return
  batches = dict((k, int(v)) for k, v in (kv.split(':') for kv in args.batch.split(',') if kv))
  configs = _configs()
  n_dev = jax.local_device_count()
  print(f'devices: {n_dev} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'dtype {args.dtype}')
  if args.adm_models:
    adm_batches = dict((k, int(v)) for k, v in (kv.split(':') for kv in args.adm_batch.split(',')
                                                if kv))
    adm_tables(args.adm_models.split(','), adm_batches, args.adm_evals, args.dtype, args.adm_num,
               args.utilisation, args.peak_tflops)
  results = {}
  for name in filter(None, args.models.split(',')):
    results[name] = measure(name, configs[name], batches[name], args.evals, args.dtype)
  if args.edm_models:
    edm_report(args, results.get('cifar10'))
  if not results:
    return

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


# ------------------------------------------------------------------------------------------------
# EDM's DDPM++ (models/diffusion/edm/network.py) under its preconditioning, sampled with Heun.
# ------------------------------------------------------------------------------------------------

EDM_SAMPLERS = (('EDM Heun-18', 35), ('EDM Heun-20 (DM-Improves-AT)', 39))
EDM_NUMS = (5e7, 1e8)


def _edm_configs():
  return {'digits': song_unet.digits_config(label_dim=10),
          'cifar10': song_unet.CIFAR10_DDPMPP}


def _batches(flag):
  """{'name': images per NFE call} of a 'name:B,name:B' flag."""
  return dict((k, int(v)) for k, v in (kv.split(':') for kv in flag.split(',')))


def measure_edm(name, cfg, batch, evals, dtype):
  """(params, FLOPs per image per NFE, seconds per NFE call) of one EDM denoiser D(x, sigma, y).

  Parameters are drawn in numpy from the abstract tree (an init of the 55.7M-parameter network
  would compile for minutes on a CPU); the timing does not depend on their values.
  """
  model = song_unet.SongUNet(cfg, dtype=jnp.dtype(dtype))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (0.02 * rng.standard_normal(s.shape)).astype(np.float32),
      song_unet.param_shapes(cfg))
  denoise = edm_precond.make_denoiser(model, edm_precond.Precond('vp'))
  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)
  rows = NamedSharding(mesh, P('data'))
  params = jax.device_put(params, NamedSharding(mesh, P()))
  x = jax.device_put(jax.random.normal(jax.random.key(1), (batch,) + cfg.image_shape), rows)
  sigma = jax.device_put(jnp.geomspace(0.002, 80.0, batch), rows)
  y = jax.device_put(jnp.arange(batch, dtype=jnp.int32) % max(cfg.label_dim, 1), rows)
  start = time.perf_counter()
  compiled = jax.jit(denoise, out_shardings=rows).lower(params, x, sigma, y).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(compiled) * len(devices) / batch
  compiled(params, x, sigma, y).block_until_ready()
  times = []
  for _ in range(evals):
    start = time.perf_counter()
    compiled(params, x, sigma, y).block_until_ready()
    times.append(time.perf_counter() - start)
  print(f'  edm-{name}: {song_unet.count_params(params) / 1e6:.2f}M params, compiled in '
        f'{compile_s:.1f}s, NFE times {[round(s, 3) for s in times]}', flush=True)
  return song_unet.count_params(params), flops, float(np.mean(times))


def _ddpm_flops():
  """FLOPs per image per NFE of the paper's CIFAR-10 DDPM UNet, from compiling it alone."""
  model = unet_lib.UNet(unet_lib.CIFAR10_DDPM)
  params = unet_lib.param_shapes(model)
  x = jax.ShapeDtypeStruct((1,) + unet_lib.CIFAR10_DDPM.image_shape, jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  return _flops(jax.jit(unet_lib.make_eps_fn(model)).lower(params, x, t).compile())


def edm_report(args, ddpm=None):
  """The EDM networks' table and the cost of 50M / 100M images at 35-39 NFE against the
  DDPM's 1,000 (`ddpm`: the CIFAR-10 DDPM's measured (params, flops, seconds), if any)."""
  batches = _batches(args.edm_batch)
  configs, n_dev = _edm_configs(), jax.local_device_count()
  results = {name: measure_edm(name, configs[name], batches[name], args.evals, args.dtype)
             for name in args.edm_models.split(',')}
  print('\n| EDM DDPM++ | params | GFLOPs / image / NFE | batch | s / NFE call | images/s/device '
        '/ NFE | achieved GFLOP/s/device | ' + ' | '.join(f'images/s/device {s} ({n} NFE)'
                                                        for s, n in EDM_SAMPLERS) + ' |')
  print('|' + '---|' * (7 + len(EDM_SAMPLERS)))
  for name, (params, flops, seconds) in results.items():
    per_nfe = batches[name] / seconds / n_dev
    print(f'| {name} | {params / 1e6:.2f}M | {flops / 1e9:.3f} | {batches[name]} | '
          f'{seconds:.3f} | {per_nfe:.1f} | {flops * per_nfe / 1e9:.1f} | '
          + ' | '.join(f'{per_nfe / nfe:.3g}' for _, nfe in EDM_SAMPLERS) + ' |')
    if args.peak_tflops:
      print(f'  edm-{name}: MFU {flops * per_nfe / (args.peak_tflops * 1e12):.1%} of '
            f'{args.peak_tflops} TFLOP/s')
  if 'cifar10' not in results:
    return
  ddpm_flops = ddpm[1] if ddpm else _ddpm_flops()
  edm_flops, edm_seconds = results['cifar10'][1], results['cifar10'][2]
  rows = [(f'{s}, EDM DDPM++', nfe, edm_flops, batches['cifar10'] / edm_seconds / n_dev)
          for s, nfe in EDM_SAMPLERS]
  ddpm_rate = _batches(args.batch)['cifar10'] / ddpm[2] / n_dev if ddpm else None
  rows.append(('DDPM-1000 (the paper\'s), Ho et al. UNet', 1000, ddpm_flops, ddpm_rate))
  print(f'\nCIFAR-10 generation cost: device-days at {args.utilisation:.0%} of peak (from the XLA '
        f'FLOP counts; EDM {edm_flops / 1e9:.3f}, DDPM {ddpm_flops / 1e9:.3f} GFLOPs / image / '
        'NFE)\n')
  cols = [f'{num / 1e6:.0f}M on {dev.split(" (")[0]}' for num in EDM_NUMS for dev in PEAKS_TFLOPS]
  cols += [f'{num / 1e6:.0f}M on this CPU device (measured)' for num in EDM_NUMS]
  print('| sampler | NFE | ' + ' | '.join(cols) + ' |')
  print('|' + '---|' * (2 + len(cols)))
  for label, nfe, flops, rate in rows:
    days = [num * nfe * flops / (args.utilisation * peak * 1e12) / 86400
            for num in EDM_NUMS for peak in PEAKS_TFLOPS.values()]
    days += [num * nfe / rate / 86400 if rate else float('nan') for num in EDM_NUMS]
    print(f'| {label} | {nfe} | ' + ' | '.join(f'{d:,.3g}' for d in days) + ' |')


if __name__ == '__main__':
  main()
