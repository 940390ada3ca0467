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
  """Rows split over every axis of the mesh: ('data', 'fsdp') here, or a caller's own mesh."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


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


def padded_size(n: int, batch_size: int, mesh, ladder: bool = False) -> int:
  """The rows a batch of n ≤ batch_size rows is padded to.

  Without `ladder`: batch_size rounded up to a multiple of the device count, whatever n, so one
  program serves every batch. With `ladder`: the smallest of batch_size·(3/4)^k (k = 0, 1, …,
  each rounded up to a multiple of lcm(devices, 8), so 1 and 8 devices see equal shapes) that
  holds n. The attack cascades take the ladder: a stage that attacks 39 points of a batch of
  100 computes on 40 rather than 100 (steps of 1/2 would give 56) for a few possible sizes, and
  each stage usually sees one size, so it still compiles once.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if not ladder:
    return math.ceil(batch_size / mesh.size) * mesh.size
  granule = math.lcm(mesh.size, 8)
  round_up = lambda m: -(-m // granule) * granule
  size = round_up(batch_size)
  while (smaller := round_up(size * 3 // 4)) < size and smaller >= n:
    size = smaller
  return size


def shard_rows(mesh, arrays, size: int):
  """Host arrays padded to `size` rows (repeating the last row) and split over the mesh."""
  return replicated_batch(mesh, [_pad_rows(np.asarray(a), size) for a in arrays])


def map_batches(fn: Callable, mesh, batch_size: int, arrays, ladder: bool = False):
  """fn(*batch) for consecutive batches of ≤ batch_size rows of `arrays`, sharded over the mesh.

  Each batch is padded to `padded_size` (see there for `ladder`); returns fn's outputs (a pytree
  of arrays with one row per input row) as numpy, the padding cut off, batches concatenated.
  fn runs on the host, so it may itself call jitted functions or loop.
  """
  n = len(arrays[0])
  if n == 0:
    raise ValueError('map_batches: no rows to process.')
  outputs = []
  for start in range(0, n, batch_size):
    rows = [a[start:start + batch_size] for a in arrays]
    size = padded_size(len(rows[0]), batch_size, mesh, ladder)
    out = fn(*shard_rows(mesh, rows, size))
    outputs.append(jax.tree_util.tree_map(lambda o, k=len(rows[0]): np.asarray(o)[:k], out))
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *outputs)


def batched_apply(fn: Callable, mesh, batch_size: int, with_params: bool = False) -> Callable:
  """`fn(x, *rest)` over batches sharded across the mesh, for data every host holds whole.

  Returns apply(x, *rest) -> numpy outputs of fn for all N rows; with `with_params`,
  apply(params, x, *rest) calls fn(params, x, *rest) with the same params (e.g. weights that
  change between calls) for every batch. Each batch is padded (by
  repeating its last row) to one fixed size, a multiple of the device count, so a single program
  is compiled whatever N; uint8 images cross to the devices as uint8 and become float in [0, 1]
  there. Outputs are replicated, so every host gets all of them. Serves evaluation,
  pseudo-labelling, data-metric features and sampling; the attack cascades take `map_batches`.
  """
  size = padded_size(batch_size, batch_size, mesh)
  if not with_params:
    return functools.partial(batched_apply(lambda _, *a: fn(*a), mesh, batch_size, True), None)
  jitted = jax.jit(lambda params, x, *rest: fn(params, images_lib.to_float(x), *rest),
                   out_shardings=replicated(mesh))

  def apply(params, x, *rest):
    return map_batches(functools.partial(jitted, params), mesh, size, (x, *rest))
  return apply


def host_copy(tree):
  """Host numpy copies of a pytree's (possibly multi-host, replicated) arrays, e.g. to place them
  on a mesh of this host's devices only."""
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else np.asarray(a),
      tree)


def _pad_rows(a, size):
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])
