"""Per-device memory of the compiled train step (XLA memory_analysis), compiled, never run.

  nice -n 10 python -m benchmarks.memory --models=wrn-28-10 --per_device_batch=16,64 \
      --dtypes=float32,bfloat16 --remat=none --fsdp=1,8
  nice -n 10 python -m benchmarks.memory --models=resnet-152-swish --loss=madry \
      --image_size=224 --num_classes=1000 --per_device_batch=16,32,64

The step is the trainer's own (trainer/robust/step.py, model from `models.registry.from_config`),
jit-ed with the trainer's shardings and donated state over a data × fsdp mesh of --devices virtual
CPU devices (default 8), on abstract inputs: nothing is allocated or run, so a WRN-70-16 costs only
its compile time. Every row of the grid (models × per-device batches × dtypes × remat × fsdp) is one
lower + compile; pick the grid with the flags, the full one is 96 compiles. --loss picks the
objective (TRADES by default; the paper's ImageNet ResNet-152 is trained with Madry et al.'s, App.
B), and --image_size / --num_classes give the dataset's shape and classes where `data.real` does
not know the dataset (ImageNet's 224 x 224 x 3 and 1,000 classes): the memory of a step depends
on them only. The batch is uint8 images, as the input pipeline hands them over.

Columns, per device, from `compiled.memory_analysis()`: arguments (state + batch), outputs (new
state + metrics), alias (outputs written in place of donated arguments), temp (XLA's scratch:
activations kept for the backward pass, the attack's buffers, gradients) and peak = arguments +
outputs - alias + temp, the figure to compare with a chip's memory. The program is XLA:CPU's
partition of the step: an estimate of an accelerator's, whose fusion, layouts and scheduler differ
(and XLA:CPU drops `jax.checkpoint`'s recomputation, so remat shows no saving here).
"""
import argparse
import dataclasses
import functools
import os
import sys
import time


def _parse():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='wrn-28-10,wrn-70-16')
  parser.add_argument('--per_device_batch', default='16,32,64,128')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--remat', default='none,block')
  parser.add_argument('--fsdp', default='1,4,8')
  parser.add_argument('--devices', type=int, default=8, help='virtual CPU devices')
  parser.add_argument('--attack_steps', type=int, default=10)
  parser.add_argument('--dataset', default='cifar10')
  parser.add_argument('--image_size', type=int, default=0,
                      help="square images of this size (0: the dataset's shape)")
  parser.add_argument('--num_classes', type=int, default=0, help="0: the dataset's classes")
  parser.add_argument('--loss', default='trades', help='train.loss: trades | madry | standard')
  return parser.parse_args()


ARGS = _parse() if __name__ == '__main__' else None
if ARGS is not None:  # virtual devices must be set before jax is imported
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={ARGS.devices}').strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import base  # pylint: disable=g-import-not-at-top,wrong-import-position
from data import real  # pylint: disable=g-import-not-at-top,wrong-import-position
from models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.robust import optimizer  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer import sharding  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.robust import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from trainer.robust import train_state  # pylint: disable=g-import-not-at-top,wrong-import-position

GIB = 2 ** 30


def _config(model, per_device_batch, dtype, remat, fsdp, attack_steps, dataset, loss='trades'):
  c = base.get_config()
  c.dataset.name = dataset
  c.model.name, c.model.dtype, c.model.remat = model, dtype, remat
  c.train.loss = loss
  c.train.attack_steps = attack_steps
  c.train.attack_unroll = 'loop'  # the accelerators' program, not CPU's unrolled one
  c.train.batch_size = per_device_batch * jax.device_count()
  c.mesh.fsdp = fsdp
  return c


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def dataset_info(name, image_size=0, num_classes=0):
  """`data.real`'s description of `name`, with square images of `image_size` and `num_classes`
  classes where they are given (> 0)."""
  info = real.info(name)
  if image_size:
    info = dataclasses.replace(info, shape=(image_size, image_size, info.shape[-1]))
  return dataclasses.replace(info, num_classes=num_classes or info.num_classes)


def measure(config, info=None):
  """memory_analysis() of the compiled train step, per device, and its compile time, for images
  and classes as `info` says (default: the config's dataset)."""
  mesh = sharding.make_mesh(config)
  info = info or real.info(config.dataset)
  m = config.model
  model = registry.get_model(m.name, num_classes=info.num_classes, mean=info.mean, std=info.std,
                             dtype=m.dtype, bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon,
                             bn_group_size=m.bn_group_size, remat=m.remat)
  tx = optimizer.make_optimizer(config)
  create = functools.partial(train_state.create, model, tx, info.shape, config.seed)
  shapes = jax.eval_shape(create)
  state_sh = sharding.state_shardings(mesh, shapes)
  b = config.train.batch_size
  batch_sh = sharding.batch_sharding(mesh)
  batch = {'image': jax.ShapeDtypeStruct((b, *info.shape), jnp.uint8, sharding=batch_sh),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=batch_sh),
           'is_generated': jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=batch_sh)}
  step = jax.jit(step_lib.make_train_step(config, model, tx, info.num_classes),
                 in_shardings=(state_sh, batch_sh),
                 out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(_abstract(shapes, state_sh), batch).compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  return {'args': m.argument_size_in_bytes, 'out': m.output_size_in_bytes,
          'alias': m.alias_size_in_bytes, 'temp': m.temp_size_in_bytes, 'peak': peak,
          'compile_s': seconds}


HEADER = ('| model | batch/device | dtype | remat | fsdp | args GiB | out GiB | alias GiB | '
          'temp GiB | peak GiB | compile s |\n|---|---|---|---|---|---|---|---|---|---|---|')


def row(key, r):
  model, batch, dtype, remat, fsdp = key
  gib = ' | '.join(f'{r[k] / GIB:.2f}' for k in ('args', 'out', 'alias', 'temp', 'peak'))
  return (f'| {model} | {batch} | {dtype} | {remat} | {fsdp} | {gib} | '
          f'{r["compile_s"]:.0f} |')


def main(args):
  info = dataset_info(args.dataset, args.image_size, args.num_classes)
  shape = 'x'.join(map(str, info.shape))
  data = (f'{shape} images, {info.num_classes} classes' if args.image_size or args.num_classes
          else args.dataset)
  print(f'{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
        f'jax {jax.__version__}; {args.loss}, {args.attack_steps} attack steps, {data}; '
        'compiled, not run', flush=True)
  print(HEADER, flush=True)
  for model in args.models.split(','):
    for batch in map(int, args.per_device_batch.split(',')):
      for dtype in args.dtypes.split(','):
        for remat in args.remat.split(','):
          for fsdp in map(int, args.fsdp.split(',')):
            key = (model, batch, dtype, remat, fsdp)
            config = _config(model, batch, dtype, remat, fsdp, args.attack_steps, args.dataset,
                             args.loss)
            print(row(key, measure(config, info)), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(ARGS))
