"""Compile time, step time, FLOP/s and MFU of the TRADES train step.

  python -m benchmarks.step --models=wrn-28-10,wrn-70-16 --per_device_batch=128 \
      --dtype=bfloat16 --peak_tflops=989

The step is the trainer's own (trainer/robust/step.py), jit-ed with the trainer's shardings over all
devices (a data × fsdp mesh, --fsdp), on random CIFAR-shaped batches (--dataset) and donated
state, exactly as trainer/train.py runs it. Defaults are the paper's: TRADES, 10 attack steps.

How FLOPs are counted. XLA's cost analysis of the compiled step,
`jax.jit(step).lower(state, batch).compile().cost_analysis()['flops']`, counts every convolution
and matmul multiply-add as 2 FLOPs plus the element-wise ops, per device (the partitioned
program). It counts the body of a while loop once, whatever its trip count, and on accelerators
the TRADES inner maximisation is a `fori_loop` of `attack_steps` iterations (on CPU it is
unrolled, see trainer/attacks/iterative.py, and counted whole), so the attack's remaining
`attack_steps - 1` iterations are added: each is counted as one gradient of the attack loss with
respect to the input (a forward and a backward pass of the model in training mode), compiled and
cost-analysed the same way on the same per-device batch; the optimiser and projection arithmetic
of an attack iteration (element-wise, well under 1% of it) is left out. Achieved FLOP/s is that
count over the measured step time, per device; MFU divides it by --peak_tflops (one device's peak
for the dtype used: e.g. H100 SXM dense bf16 989, fp32 67; TPU v4 bf16 275).

Step time is the mean over --steps steps after --warmup steps, dispatched back to back and
waited for at the end (the trainer's loop also lets steps queue). Compile time is tracing +
lowering + XLA compilation of the step alone.
"""
import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from data import real
from models import registry
from trainer.robust import objectives
from trainer.robust import optimizer
from trainer import sharding
from trainer.robust import step as step_lib
from trainer.robust import train_state
from trainer.attacks import compositions
from trainer.attacks import iterative


def _config(args, model_name, unroll):
  c = base.get_config()
  c.train.attack_unroll = unroll
  c.dataset.name = args.dataset
  c.model.name = model_name
  c.model.dtype = args.dtype
  c.train.loss = args.loss
  c.train.attack_steps = args.attack_steps
  c.train.batch_size = args.per_device_batch * jax.device_count()
  c.mesh.fsdp = args.fsdp
  return c


def _flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list on older jax
  return float(cost.get('flops', 0.0))


def _random_batch(config, info, mesh):
  rng = np.random.default_rng(0)
  b = config.train.batch_size // jax.process_count()
  local = {'image': rng.random((b, *info.shape), dtype=np.float32),
           'label': rng.integers(0, info.num_classes, b).astype(np.int32),
           'is_generated': rng.random(b) < 0.7,
           'id': np.arange(b, dtype=np.int64)}
  return sharding.global_batch(mesh, local)


def _attack_iteration_flops(config, model, state, batch, mesh, state_sh):
  """FLOPs (per device) of one gradient of the TRADES KL w.r.t. the input, as in the attack."""
  num_classes = real.info(config.dataset).num_classes

  def input_gradient(state, batch):
    def kl(x):
      logits, _ = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x,
                              train=True, mutable=['batch_stats'])
      targets = jax.nn.one_hot(batch['label'], num_classes)
      return jnp.sum(targets * -jax.nn.log_softmax(logits.astype(jnp.float32)))
    return jax.grad(kl)(batch['image'])

  fn = jax.jit(input_gradient, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
               out_shardings=sharding.batch_sharding(mesh))
  return _flops(fn.lower(state, batch).compile())


def benchmark(args, model_name, unroll):
  config = _config(args, model_name, unroll)
  mesh = sharding.make_mesh(config)
  info = real.info(config.dataset)
  model = registry.from_config(config)
  tx = optimizer.make_optimizer(config)
  create = functools.partial(train_state.create, model, tx, info.shape, config.seed)
  state_sh = sharding.state_shardings(mesh, jax.eval_shape(create))
  state = jax.jit(create, out_shardings=state_sh)()
  batch = _random_batch(config, info, mesh)
  step = jax.jit(step_lib.make_train_step(config, model, tx, info.num_classes),
                 in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(compiled)
  looped = config.train.loss != 'standard' and not iterative.unrolls(
      compositions.UNROLL[config.train.attack_unroll])
  extra_iterations = config.train.attack_steps - 1 if looped else 0
  if extra_iterations > 0:
    flops += extra_iterations * _attack_iteration_flops(config, model, state, batch, mesh,
                                                        state_sh)

  for _ in range(args.warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / args.steps

  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  achieved = flops / step_s
  return {'model': model_name, 'params_m': n_params / 1e6, 'devices': jax.device_count(),
          'mesh': f"{mesh.shape['data']}x{mesh.shape['fsdp']}", 'batch': args.per_device_batch,
          'dtype': args.dtype, 'unroll': unroll, 'compile_s': compile_s, 'step_ms': 1e3 * step_s,
          'img_s': config.train.batch_size / step_s, 'gflop': flops / 1e9,
          'tflops': achieved / 1e12,
          'mfu': achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None}


COLUMNS = (('model', 'model', '{}'), ('params (M)', 'params_m', '{:.2f}'),
           ('devices', 'devices', '{}'), ('mesh', 'mesh', '{}'),
           ('batch/device', 'batch', '{}'), ('dtype', 'dtype', '{}'),
           ('attack_unroll', 'unroll', '{}'),
           ('compile (s)', 'compile_s', '{:.1f}'), ('step (ms)', 'step_ms', '{:.1f}'),
           ('images/s', 'img_s', '{:.1f}'), ('GFLOP/step/device', 'gflop', '{:.2f}'),
           ('TFLOP/s/device', 'tflops', '{:.4f}'), ('MFU', 'mfu', '{:.1%}'))


def table(rows):
  lines = ['| ' + ' | '.join(c[0] for c in COLUMNS) + ' |',
           '|' + '|'.join('---' for _ in COLUMNS) + '|']
  for r in rows:
    cells = ['n/a' if r[key] is None else fmt.format(r[key]) for _, key, fmt in COLUMNS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='wrn-28-10,wrn-70-16',
                      help='comma-separated names from models/registry.py')
  parser.add_argument('--per_device_batch', type=int, default=32)
  parser.add_argument('--dtype', default='bfloat16', choices=('float32', 'bfloat16'))
  parser.add_argument('--attack_steps', type=int, default=10)
  parser.add_argument('--loss', default='trades', choices=sorted(objectives.OBJECTIVES))
  parser.add_argument('--dataset', default='cifar10', choices=sorted(real.DATASETS),
                      help='sets the image shape and class count (no data is read)')
  parser.add_argument('--attack_unroll', default='auto',
                      help='comma-separated train.attack_unroll values, timed side by side '
                      '(auto | loop | unroll)')
  parser.add_argument('--fsdp', type=int, default=1, help='size of the fsdp mesh axis')
  parser.add_argument('--steps', type=int, default=10, help='timed steps')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--peak_tflops', type=float, default=None,
                      help="one device's peak TFLOP/s for --dtype (MFU is n/a without it)")
  args = parser.parse_args()
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'jax {jax.__version__}; {args.loss}, {args.attack_steps} attack steps, '
        f'peak {args.peak_tflops} TFLOP/s per device', flush=True)
  rows = []
  for name in args.models.split(','):
    for unroll in args.attack_unroll.split(','):
      rows.append(benchmark(args, name, unroll))
    print(table(rows[-1:]).splitlines()[-1], flush=True)
  print()
  print(table(rows))


if __name__ == '__main__':
  main()
