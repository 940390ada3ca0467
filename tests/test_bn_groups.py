"""Ghost-batch BatchNorm (`model.bn_group_size`): per-group statistics, the same on any mesh."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from configs import base
from models import batch_norm
from models import registry

EPS = 1e-5
DECAY = 0.9


def _mesh(n):
  # Auto axes, as trainer/sharding.py: GSPMD places the reshaped groups itself.
  return jax.make_mesh((n,), ('batch',), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def _x(batch=32):
  rng = np.random.default_rng(0)
  # Each example its own offset and scale, so that every group has different statistics.
  offsets = rng.normal(0., 2., (batch, 1, 1, 1))
  return (rng.normal(size=(batch, 4, 4, 3)) * rng.uniform(0.5, 2., (batch, 1, 1, 1))
          + offsets).astype(np.float32)


def _variables(channels=3):
  rng = np.random.default_rng(1)
  return {'params': {'scale': rng.uniform(0.5, 1.5, channels).astype(np.float32),
                     'bias': rng.normal(size=channels).astype(np.float32)},
          'batch_stats': {'mean': np.zeros(channels, np.float32),
                          'var': np.ones(channels, np.float32)}}


def _reference(x, variables, g):
  """Each group of g consecutive examples normalised with its own float64 statistics."""
  x = x.astype(np.float64)
  p = variables['params']
  out, means, variances = np.empty_like(x), [], []
  for start in range(0, len(x), g):
    group = x[start:start + g]
    mean, var = group.mean((0, 1, 2)), group.var((0, 1, 2))
    out[start:start + g] = (group - mean) / np.sqrt(var + EPS) * p['scale'] + p['bias']
    means.append(mean)
    variances.append(var)
  new_mean = (1 - DECAY) * np.mean(means, 0)
  new_var = DECAY + (1 - DECAY) * np.mean(variances, 0)
  return out, new_mean, new_var


def _apply_on_mesh(x, variables, g, n_devices, mutable=('batch_stats',)):
  module = batch_norm.BatchNorm(momentum=DECAY, epsilon=EPS, group_size=g)
  mesh = _mesh(n_devices)
  fn = jax.jit(functools.partial(module.apply, use_running_average=False,
                                 mutable=list(mutable)),
               in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('batch'))))
  x = jax.device_put(x, NamedSharding(mesh, P('batch')))
  return fn, x


@pytest.mark.parametrize('g', [2, 4, 8, 16])
def test_group_statistics_equal_per_group_reference_on_8_devices(g):
  """Groups within a device (2, 4 = the per-device batch) and across devices (8, 16)."""
  x, variables = _x(), _variables()
  fn, x_sharded = _apply_on_mesh(x, variables, g, 8)
  y, new = fn(variables, x_sharded)
  expected, new_mean, new_var = _reference(x, variables, g)
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(new['batch_stats']['mean'], new_mean, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(new['batch_stats']['var'], new_var, atol=1e-6, rtol=1e-5)
  # The whole batch's statistics are not the groups' (the test could tell them apart).
  whole, _, _ = _reference(x, variables, len(x))
  assert np.abs(whole - expected).max() > 0.1


def _collectives(g):
  x, variables = _x(), _variables()
  fn, x_sharded = _apply_on_mesh(x, variables, g, 8, mutable=())
  hlo = fn.lower(variables, x_sharded).compile().as_text()
  return [op for op in ('all-reduce', 'all-gather', 'all-to-all', 'collective-permute')
          if op in hlo]


def test_groups_within_a_device_need_no_communication():
  """Groups of the per-device batch (4 of 32 on 8 devices) are normalised where they live.

  Only the normalisation: updating the one set of running averages means the group statistics
  over the whole batch, an all-reduce of two vectors per BatchNorm.
  """
  assert _collectives(4) == []
  assert _collectives(2) == []
  assert _collectives(0)  # the global batch's statistics need an all-reduce


def _train_logits(config, n_devices):
  model = registry.from_config(config)
  x = _x(16)[..., :1]
  x = (x - x.min()) / (x.max() - x.min())
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl='rbg'), x[:1])
  head = variables['params']['head']
  rng = np.random.default_rng(2)
  head = {'kernel': rng.normal(size=head['kernel'].shape).astype(np.float32),
          'bias': head['bias']}
  variables = {**variables, 'params': {**variables['params'], 'head': head}}
  mesh = _mesh(n_devices)
  fn = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']),
               in_shardings=(NamedSharding(mesh, P()), NamedSharding(mesh, P('batch'))))
  logits, new = fn(variables, jax.device_put(x, NamedSharding(mesh, P('batch'))))
  return np.asarray(logits), new['batch_stats']


def _digits_config(g):
  c = base.get_config()
  c.dataset.name = 'digits'
  c.model.name = 'wrn-10-1'
  c.model.bn_group_size = g
  return c


@pytest.mark.integration
def test_model_with_groups_is_invariant_to_the_mesh():
  """A WRN with groups of 4 gives the same logits and running averages on 1, 2 and 8 devices."""
  ref_logits, ref_stats = _train_logits(_digits_config(4), 1)
  for n in (2, 8):
    logits, stats = _train_logits(_digits_config(4), n)
    # Float32 sums in another order: logits of order 5 agree to 1e-4.
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=1e-5),
                 stats, ref_stats)
  whole, _ = _train_logits(_digits_config(0), 8)
  assert np.abs(whole - ref_logits).max() > 1e-3


def test_eval_mode_ignores_groups():
  """Running averages do not depend on how the training batch was grouped."""
  x, variables = _x(), _variables()
  outs = [batch_norm.BatchNorm(group_size=g).apply(variables, x, use_running_average=True)
          for g in (0, 4)]
  np.testing.assert_array_equal(outs[0], outs[1])


def test_group_size_must_divide_the_batch():
  module = batch_norm.BatchNorm(group_size=5)
  with pytest.raises(ValueError, match='model.bn_group_size=5 does not divide the batch of 32'):
    module.apply(_variables(), _x(), use_running_average=False)


def test_negative_group_size_is_rejected():
  with pytest.raises(ValueError, match='model.bn_group_size'):
    registry.from_config(_digits_config(-1))


def test_moments_without_groups_match_numpy():
  x = _x()
  mean, var = batch_norm.moments(jnp.asarray(x))
  np.testing.assert_allclose(mean, x.astype(np.float64).mean((0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(var, x.astype(np.float64).var((0, 1, 2)), rtol=1e-4)


def _step_metrics(config, devices):
  from trainer.robust import optimizer  # pylint: disable=g-import-not-at-top
  from trainer import sharding  # pylint: disable=g-import-not-at-top
  from trainer.robust import step as step_lib  # pylint: disable=g-import-not-at-top
  from trainer.robust import train_state  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config, devices)
  model = registry.from_config(config)
  tx = optimizer.make_optimizer(config)
  create = functools.partial(train_state.create, model, tx, (8, 8, 1), 0)
  state_sh = sharding.state_shardings(mesh, jax.eval_shape(create))
  state = jax.jit(create, out_shardings=state_sh)()
  step = jax.jit(step_lib.make_train_step(config, model, tx, 10),
                 in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sh, sharding.replicated(mesh)))
  rng = np.random.default_rng(0)
  batch = sharding.global_batch(mesh, {
      'image': rng.random((16, 8, 8, 1), dtype=np.float32),
      'label': rng.integers(0, 10, 16).astype(np.int32),
      'is_generated': rng.random(16) < 0.5})
  state, metrics = step(state, batch)
  return float(metrics['loss']), jax.device_get(state.batch_stats)


@pytest.mark.integration
def test_train_step_with_groups_equals_single_device_on_a_data_fsdp_mesh():
  """The real TRADES step with groups of 2 on a 4 × 2 (data × fsdp) mesh and on one device."""
  config = _digits_config(2)
  config.train.batch_size, config.train.attack_steps = 16, 1
  config.train.num_epochs, config.train.epoch_size, config.optim.warmup_epochs = 1, 160, 0.2
  config.mesh.data, config.mesh.fsdp = 1, 1
  ref_loss, ref_stats = _step_metrics(config, jax.devices()[:1])
  config.mesh.data, config.mesh.fsdp = 4, 2
  loss, stats = _step_metrics(config, jax.devices())
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6, rtol=1e-5),
               stats, ref_stats)
