"""One TRADES step on data × fsdp meshes of 8 virtual devices equals the step on one device; the
batching helpers pad, shard and unpad as the attack cascades and batched inference need."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from models import registry
from trainer.robust import optimizer
from trainer import sharding
from trainer.robust import step as step_lib
from trainer.robust import train_state


def _config(data, fsdp):
  c = base.get_config()
  c.dataset.name = 'digits'
  c.model.name = 'wrn-10-2'
  c.train.batch_size = 16
  c.train.attack_steps = 1
  c.train.num_epochs = 1
  c.train.epoch_size = 160
  c.optim.warmup_epochs = 0.2
  c.mesh.data, c.mesh.fsdp = data, fsdp
  return c


def _batch():
  rng = np.random.default_rng(0)
  return {'image': rng.random((16, 8, 8, 1), dtype=np.float32),
          'label': rng.integers(0, 10, 16).astype(np.int32),
          'is_generated': rng.random(16) < 0.5,
          'id': np.arange(16, dtype=np.int64)}


def _run(config, devices):
  mesh = sharding.make_mesh(config, devices)
  model = registry.get_model(config.model.name, num_classes=10, mean=(0.3,), std=(0.4,))
  tx = optimizer.make_optimizer(config)
  create = functools.partial(train_state.create, model, tx, (8, 8, 1), 0)
  state_sh = sharding.state_shardings(mesh, jax.eval_shape(create))
  state = jax.jit(create, out_shardings=state_sh)()
  step = jax.jit(step_lib.make_train_step(config, model, tx, 10),
                 in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)))
  batch = sharding.global_batch(mesh, _batch())
  for _ in range(2):
    state, metrics = step(state, batch)
  return state, metrics, state_sh


@pytest.fixture(scope='module')
def single():
  return _run(_config(1, 1), jax.devices()[:1])


@pytest.mark.integration
@pytest.mark.parametrize('data,fsdp', [(8, 1), (4, 2), (2, 4)])
def test_step_on_mesh_equals_single_device(single, data, fsdp):
  ref_state, ref_metrics, _ = single
  state, metrics, shardings = _run(_config(data, fsdp), jax.devices())
  np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], rtol=2e-5)
  for a, b in zip(jax.tree_util.tree_leaves(state.params),
                  jax.tree_util.tree_leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)
  specs = [s.spec for s in jax.tree_util.tree_leaves(shardings.params)]
  sharded = [sp for sp in specs if 'fsdp' in tuple(sp)]
  if fsdp > 1:
    assert sharded, 'no parameter is sharded on the fsdp axis'
    # The biggest kernels really are split: each device holds 1/fsdp of them.
    big = max(jax.tree_util.tree_leaves(state.params), key=lambda a: a.size)
    assert big.addressable_shards[0].data.size == big.size // fsdp
    assert jax.tree_util.tree_leaves(state.ema_params)[0].sharding.spec is not None
  else:
    assert not sharded
    assert all(sp == P() for sp in specs)


@pytest.mark.parametrize('devices', [1, 8])
def test_padding_ladder_is_the_same_on_one_and_eight_devices(devices):
  mesh = sharding.make_mesh(devices=jax.devices()[:devices])
  sizes = {n: sharding.padded_size(n, 100, mesh, ladder=True) for n in (100, 81, 80, 39, 30, 1)}
  # 104 · (3/4)^k rounded up to multiples of 8: 104, 80, 64, 48, 40, 32, 24.
  assert sizes == {100: 104, 81: 104, 80: 80, 39: 40, 30: 32, 1: 24}
  fixed = {sharding.padded_size(n, 100, mesh) for n in (100, 39, 1)}
  assert fixed == {100 if devices == 1 else 104}
  with pytest.raises(ValueError, match='batch_size must be positive'):
    sharding.padded_size(1, 0, mesh)


def test_map_batches_pads_with_the_last_row_shards_and_cuts_the_padding_off():
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  x = rng.random((100, 3), dtype=np.float32)
  y = np.arange(100, dtype=np.int32)
  seen = []

  def fn(xb, yb):
    seen.append((xb.shape[0], len(xb.sharding.device_set), np.asarray(xb), np.asarray(yb)))
    return {'sum': xb.sum(1), 'label': yb}

  out = sharding.map_batches(fn, mesh, 64, [x, y], ladder=True)
  assert [(size, devices) for size, devices, _, _ in seen] == [(64, 8), (40, 8)]
  _, _, last_x, last_y = seen[-1]
  np.testing.assert_array_equal(last_x[36:], np.repeat(x[-1:], 4, axis=0))
  np.testing.assert_array_equal(last_y[36:], [99] * 4)
  np.testing.assert_allclose(out['sum'], x.sum(1), rtol=1e-6)
  np.testing.assert_array_equal(out['label'], y)


def test_batched_apply_scales_uint8_on_device_and_keeps_row_order():
  mesh = sharding.make_mesh()
  images = np.random.default_rng(1).integers(0, 256, (21, 2, 2, 1), dtype=np.uint8)
  apply = sharding.batched_apply(lambda w, x, i: (w * x.reshape(len(x), -1).sum(1), i), mesh, 6,
                                 with_params=True)
  total, index = apply(3.0, images, np.arange(21))
  np.testing.assert_allclose(total, 3.0 * images.reshape(21, -1).sum(1) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(index, np.arange(21))
