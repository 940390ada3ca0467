"""The device mesh and where every array lives on it.

A 2-D mesh ('data', 'fsdp'). The batch is split over both axes (every device sees its own
examples). Parameters, optimiser state and EMA are replicated when fsdp = 1; with fsdp > 1 each
large leaf is split along its largest dimension divisible by the fsdp size (ZeRO-3 style) and
XLA's GSPMD inserts the all-gathers and reduce-scatters. Classic GSPMD: AxisType.Auto.
"""
import functools
import math
from typing import Callable

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from data import images as images_lib

BATCH_AXES = ('data', 'fsdp')
MIN_SHARDED_SIZE = 2 ** 14  # smaller leaves (BN vectors, biases) stay replicated


def make_mesh(config=None, devices=None):
  """The ('data', 'fsdp') mesh of `config.mesh` (or all devices on 'data' without a config)."""
  devices = jax.devices() if devices is None else devices
  fsdp = config.mesh.fsdp if config is not None else 1
  data = config.mesh.data if config is not None and config.mesh.data > 0 else len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f'mesh.data={config.mesh.data} × mesh.fsdp={fsdp} does not match the '
                     f'{len(devices)} devices.')
  return jax.make_mesh((data, fsdp), ('data', 'fsdp'), axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def leaf_spec(shape, fsdp_size):
  """Shards the largest dimension divisible by fsdp_size; replicates small or indivisible leaves."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


def state_shardings(mesh, abstract_state):
  """A NamedSharding for every leaf of a (possibly abstract) pytree."""
  fsdp = mesh.shape['fsdp']
  return jax.tree_util.tree_map(
      lambda leaf: NamedSharding(mesh, leaf_spec(leaf.shape, fsdp)), abstract_state)


def global_batch(mesh, local_batch):
  """Assembles each host's slice of the batch into one global array per key."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicated_batch(mesh, arrays):
  """Global batch-sharded arrays from data every host holds whole (evaluation sets)."""
  sharding = batch_sharding(mesh)
  return [jax.make_array_from_callback(a.shape, sharding, lambda idx, a=a: a[idx]) for a in arrays]


def batched_apply(fn: Callable, mesh, batch_size: int, with_params: bool = False) -> Callable:
  """`fn(x, *rest)` over batches sharded across the mesh, for data every host holds whole.

  Returns apply(x, *rest) -> numpy outputs of fn for all N rows; with `with_params`,
  apply(params, x, *rest) calls fn(params, x, *rest) with the same params (e.g. weights that
  change between calls) for every batch. Each batch is padded (by
  repeating its last row) to one fixed size, a multiple of the device count, so a single program
  is compiled whatever N; uint8 images cross to the devices as uint8 and become float in [0, 1]
  there. Outputs are replicated, so every host gets all of them. Serves evaluation, attacks,
  pseudo-labelling, data-metric features and sampling.
  """
  size = math.ceil(batch_size / mesh.size) * mesh.size
  if not with_params:
    return functools.partial(batched_apply(lambda _, *a: fn(*a), mesh, batch_size, True), None)
  jitted = jax.jit(lambda params, x, *rest: fn(params, images_lib.to_float(x), *rest),
                   out_shardings=replicated(mesh))

  def apply(params, x, *rest):
    n = len(x)
    if n == 0:
      raise ValueError('batched_apply: no rows to process.')
    outputs = []
    for start in range(0, n, size):
      stop = min(start + size, n)
      batch = [_pad_rows(np.asarray(a[start:stop]), size) for a in (x, *rest)]
      out = jitted(params, *replicated_batch(mesh, batch))
      outputs.append(jax.tree_util.tree_map(lambda o, k=stop - start: np.asarray(o)[:k], out))
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)
  return apply


def _pad_rows(a, size):
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])
