"""bfloat16 compute with float32 parameters, and rematerialised blocks (`model.remat`).

bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2% per operation); through a WRN's
convolutions the logits move by about a percent of their scale, which is what the tolerance below
allows. Rematerialisation recomputes the same float32 operations, so its gradients must equal the
plain model's to float32 rounding. Its memory saving is not tested here: XLA:CPU undoes
`jax.checkpoint` (see BENCHMARKS.md, "Memory plan"), so only an accelerator's compiler can show it.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from data import real
from models import registry
from trainer.robust import optimizer
from trainer.robust import step as step_lib
from trainer.robust import train_state

# Largest |bf16 - f32| logit difference as a share of the largest |f32| logit (measured 0.3-0.6%
# on the models below; see the printed figures).
BF16_LOGIT_TOLERANCE = 0.03


def _config(name='wrn-10-1', dtype='float32', remat='none', **train):
  c = base.get_config()
  c.dataset.name = 'digits'
  c.model.name, c.model.dtype, c.model.remat = name, dtype, remat
  c.train.batch_size = 32
  c.train.attack_steps = 3
  c.train.num_epochs = 1
  c.train.epoch_size = 32 * 8
  c.optim.warmup_epochs = 0.
  c.optim.lr_per_256 = 1.6
  c.generated.label_smoothing = 0.
  for key, value in train.items():
    setattr(c.train, key, value)
  return c


def _random_variables(model, shape, seed=0):
  """Initial parameters with a random head and random running averages (logits not all zero)."""
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(seed, impl='rbg'), jnp.zeros((1,) + shape))
  rng = np.random.default_rng(seed)
  def randomise(path, leaf):
    names = [k.key for k in path]
    if names[-1] == 'mean':
      return rng.normal(0., 0.1, leaf.shape).astype(np.float32)
    if names[-1] == 'var':
      return rng.uniform(0.5, 2., leaf.shape).astype(np.float32)
    if names[0] == 'head' and names[-1] == 'kernel':
      return rng.normal(0., 1., leaf.shape).astype(np.float32)
    return leaf
  return {'params': jax.tree_util.tree_map_with_path(randomise, variables['params']),
          'batch_stats': jax.tree_util.tree_map_with_path(randomise, variables['batch_stats'])}


@pytest.mark.parametrize('name, shape', [('wrn-10-2', (8, 8, 1)), ('wrn-10-2', (16, 16, 3))])
@pytest.mark.parametrize('train', [False, True])
def test_bfloat16_logits_close_to_float32(name, shape, train):
  f32 = registry.get_model(name, num_classes=10, mean=(0.4,) * shape[-1], std=(0.3,) * shape[-1])
  bf16 = f32.clone(dtype=jnp.bfloat16)
  variables = _random_variables(f32, shape)
  x = jax.random.uniform(jax.random.key(1, impl='rbg'), (16,) + shape)
  apply = lambda m: np.asarray(jax.jit(functools.partial(m.apply, train=train))(variables, x))
  ref, low = apply(f32), apply(bf16)
  share = np.abs(low - ref).max() / np.abs(ref).max()
  print(f'{name} {shape} train={train}: max |bf16 - f32| = {share:.2%} of max |f32 logit| '
        f'({np.abs(ref).max():.2f})')
  assert low.dtype == np.float32
  assert share < BF16_LOGIT_TOLERANCE
  assert np.mean(low.argmax(1) == ref.argmax(1)) >= 0.9


def _digits_batches(n_steps, batch_size=32):
  data = real.load('digits', 'train')
  rng = np.random.default_rng(0)
  for _ in range(n_steps):
    idx = rng.choice(len(data['label']), batch_size, replace=False)
    yield {'image': data['image'][idx].astype(np.float32) / 255.,
           'label': data['label'][idx].astype(np.int32),
           'is_generated': np.zeros(batch_size, bool)}


def _trades_losses(config, n_steps=8):
  model = registry.from_config(config)
  tx = optimizer.make_optimizer(config)
  state = jax.jit(functools.partial(train_state.create, model, tx, (8, 8, 1), 0))()
  step = jax.jit(step_lib.make_train_step(config, model, tx, 10))
  losses = []
  for batch in _digits_batches(n_steps):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  return np.array(losses), state


@pytest.mark.integration
def test_bfloat16_trades_steps_reduce_the_loss_like_float32():
  """Eight TRADES steps (3-step inner attack, WRN-10-1) on digits, float32 and bfloat16."""
  f32, _ = _trades_losses(_config())
  bf16, state = _trades_losses(_config(dtype='bfloat16'))
  print('TRADES loss per step, float32: ', np.round(f32, 3))
  print('TRADES loss per step, bfloat16:', np.round(bf16, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
  assert np.all(np.isfinite(bf16))
  assert f32[-3:].mean() < 0.9 * f32[:3].mean()  # float32 learns in eight steps
  assert bf16[-3:].mean() < 0.9 * bf16[:3].mean()  # and so does bfloat16
  np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.02)


def _loss_and_grads(model, variables, x, labels):
  def loss(params):
    logits, new = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), new
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(variables['params'])


@pytest.mark.integration
@pytest.mark.parametrize('name', ['wrn-10-2'])
def test_remat_gradients_equal_plain_model(name):
  plain = registry.get_model(name, num_classes=10, mean=(0.4,), std=(0.3,))
  remat = registry.get_model(name, num_classes=10, mean=(0.4,), std=(0.3,), remat='block')
  variables = _random_variables(plain, (8, 8, 1))
  x = jax.random.uniform(jax.random.key(1, impl='rbg'), (8, 8, 8, 1))
  labels = jnp.arange(8) % 10
  (loss, new), grads = _loss_and_grads(plain, variables, x, labels)
  (loss_r, new_r), grads_r = _loss_and_grads(remat, variables, x, labels)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_r)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7)
  jax.tree.map(close, grads_r, grads)
  jax.tree.map(close, new_r, new)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_eval_dtype_defaults_to_float32_and_overrides_the_model():
  config = _config(dtype='bfloat16')
  assert config.eval.dtype == 'float32'
  assert registry.from_config(config).dtype == jnp.bfloat16
  assert registry.from_config(config, dtype=config.eval.dtype).dtype == jnp.float32


def test_bad_remat_is_rejected():
  with pytest.raises(ValueError, match="model.remat 'blocks'"):
    registry.from_config(_config(remat='blocks'))
