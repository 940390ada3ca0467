"""The DDPM UNet itself: contract, bfloat16, class conditioning, dropout, our checkpoint format."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from models.diffusion import checkpoint
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib


def _random_params(model, seed=0):
  """Random float32 params, none zero, drawn in numpy from the abstract tree (no compile)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, leaf in checkpoint.expected_shapes(model.cfg).items():
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if key.endswith('/kernel'):
      flat[key] = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    elif key.endswith('/scale'):
      flat[key] = 1 + 0.1 * noise
    else:
      flat[key] = 0.1 * noise
  return traverse_util.unflatten_dict({k: v.astype(np.float32) for k, v in flat.items()}, sep='/')


def _digits(num_classes=None, dropout=0.0, dtype=jnp.float32, seed=0):
  cfg = unet_lib.digits_config(num_classes, dropout)
  model = unet_lib.UNet(cfg, dtype=dtype)
  return cfg, model, _random_params(model, seed)


def _inputs(cfg, batch=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch,) + cfg.image_shape).astype(np.float32)
  t = rng.integers(0, 1000, batch)
  return x, t


# One compiled eps_fn per model, shared by the tests (compiling is what costs time on a CPU).
@pytest.fixture(scope='module')
def uncond():
  cfg, model, params = _digits()
  return cfg, model, params, jax.jit(unet_lib.make_eps_fn(model))


@pytest.fixture(scope='module')
def cond():
  cfg, model, params = _digits(num_classes=10)
  return cfg, model, params, jax.jit(unet_lib.make_eps_fn(model))


def test_eps_fn_contract(uncond):
  cfg, _, params, eps_fn = uncond
  x, t = _inputs(cfg)
  eps = eps_fn(params, x, t)
  assert eps.shape == x.shape and eps.dtype == jnp.float32
  assert np.all(np.isfinite(eps))
  # A scalar t means the same step for the whole batch; t matters.
  np.testing.assert_allclose(eps_fn(params, x, 7), eps_fn(params, x, np.full(4, 7)), rtol=1e-6)
  assert np.abs(eps_fn(params, x, 7) - eps_fn(params, x, 900)).max() > 1e-3


def test_bfloat16_close_to_float32(uncond):
  """bf16 compute on float32 params: relative L2 error of eps below 3% (8 mantissa bits)."""
  cfg, _, params, eps_fn = uncond
  model16 = unet_lib.UNet(cfg, dtype=jnp.bfloat16)
  x, t = _inputs(cfg, batch=8)
  e32 = np.asarray(eps_fn(params, x, t))
  e16 = jax.jit(unet_lib.make_eps_fn(model16))(params, x, t)
  assert e16.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(e16) - e32) / np.linalg.norm(e32)
  print(f'bf16 vs f32 eps: relative L2 error {rel:.2e} (digits UNet, batch 8, random t)')
  assert 1e-5 < rel < 3e-2
  assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32


def test_class_conditional(cond, uncond):
  cfg, model, params, eps_fn = cond
  assert params['class_embedding']['embedding'].shape == (10, 128)
  x, t = _inputs(cfg)
  a = eps_fn(params, x, t, np.array([0, 1, 2, 3]))
  b = eps_fn(params, x, t, np.array([0, 1, 2, 9]))
  np.testing.assert_allclose(a[:3], b[:3], rtol=1e-5, atol=1e-6)  # examples are independent
  assert np.abs(a[3] - b[3]).max() > 1e-3
  with pytest.raises(ValueError, match='required by a class-conditional UNet'):
    unet_lib.make_eps_fn(model)(params, x, t)
  _, _, uparams, ueps_fn = uncond
  with pytest.raises(ValueError, match='refused by an unconditional one'):
    ueps_fn(uparams, x, t, np.zeros(4, np.int32))


def test_dropout_only_in_training(uncond):
  cfg, _, params, eps_fn = uncond
  model = unet_lib.UNet(dataclasses.replace(cfg, dropout=0.3))  # dropout adds no parameters
  x, t = _inputs(cfg)
  train = jax.jit(lambda rng: model.apply({'params': params}, x, t, train=True,
                                          rngs={'dropout': rng}))
  a, b = train(jax.random.key(0)), train(jax.random.key(1))
  assert np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(a, train(jax.random.key(0)))
  assert np.abs(eps_fn(params, x, t) - a).max() > 1e-3  # the eps_fn of the contract has none


@pytest.mark.integration
def test_gradients_reach_every_parameter(cond):
  cfg, model, params, _ = cond
  x, t = _inputs(cfg)
  y = np.array([0, 1, 2, 0])
  grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({'params': p}, x, t, y) ** 2)))(params)
  zero = [k for k, g in checkpoint.flatten(grads).items() if not np.any(g)]
  assert not zero, zero


def test_checkpoint_round_trip(tmp_path, cond):
  cfg, _, params, eps_fn = cond
  sched = schedule_lib.ho_linear(200)
  checkpoint.save(str(tmp_path / 'g'), cfg, sched, params, name='digits-ddpm', source='test')
  gen = checkpoint.load(str(tmp_path / 'g'))
  assert gen.unet == cfg and gen.name == 'digits-ddpm'
  assert gen.num_classes == 10 and gen.image_shape == (8, 8, 1)
  np.testing.assert_array_equal(gen.alphas_cumprod, sched.alphas_cumprod)
  for k, v in checkpoint.flatten(params).items():
    np.testing.assert_array_equal(checkpoint.flatten(gen.params)[k], v, err_msg=k)
  x, t = _inputs(cfg)
  y = np.arange(4)
  np.testing.assert_array_equal(jax.jit(gen.eps_fn)(gen.params, x, t, y),
                                eps_fn(params, x, t, y))
  manifest = json.loads((tmp_path / 'g' / 'manifest.json').read_text())
  assert manifest['num_params'] == unet_lib.count_params(params)
  bf16 = checkpoint.load(str(tmp_path / 'g'), dtype='bfloat16')
  assert bf16.model.dtype == jnp.bfloat16


def test_checkpoint_of_another_architecture_names_the_key(tmp_path, uncond):
  cfg, _, params, _ = uncond
  checkpoint.save(str(tmp_path / 'g'), cfg, schedule_lib.ho_linear(), params)
  unet_json = tmp_path / 'g' / 'unet.json'
  arch = json.loads(unet_json.read_text())
  arch['block_out_channels'] = [32, 128]
  unet_json.write_text(json.dumps(arch))
  with pytest.raises(ValueError, match=r'params\.safetensors .*wrong shapes .*down_blocks_1/'):
    checkpoint.load(str(tmp_path / 'g'))
  arch['block_out_channels'] = [32, 64]
  arch['num_class_embeds'] = 10
  unet_json.write_text(json.dumps(arch))
  with pytest.raises(ValueError, match=r'missing keys \(1\): class_embedding/embedding'):
    checkpoint.load(str(tmp_path / 'g'))
  arch['no_such_field'] = 1
  unet_json.write_text(json.dumps(arch))
  with pytest.raises(ValueError, match=r"unet\.json: unknown UNet config keys \['no_such_field'"):
    checkpoint.load(str(tmp_path / 'g'))
  (tmp_path / 'g' / 'manifest.json').unlink()
  with pytest.raises(FileNotFoundError, match='manifest.json not found'):
    checkpoint.load(str(tmp_path / 'g'))


def test_save_refuses_params_of_another_architecture(tmp_path, uncond):
  _, _, params, _ = uncond
  other = unet_lib.digits_config(num_classes=10)
  with pytest.raises(ValueError, match=r'missing keys \(1\): class_embedding/embedding'):
    checkpoint.save(str(tmp_path / 'g'), other, schedule_lib.ho_linear(), params)


@pytest.mark.parametrize('kwargs,match', [
    (dict(block_out_channels=(32, 64), down_block_types=('DownBlock2D',)), 'same length'),
    (dict(down_block_types=('CrossAttnDownBlock2D',) * 4), 'CrossAttnDownBlock2D'),
    (dict(act_fn='tanh'), "act_fn 'tanh'"),
    (dict(sample_size=36), 'multiple of'),
    (dict(norm_num_groups=24), 'not divisible by norm_num_groups'),
])
def test_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    unet_lib.UNetConfig(**kwargs)


def test_timestep_embedding_conventions():
  """Ho et al.: [sin, cos] of t * 10000^(-i / (half - shift)); flip gives [cos, sin]."""
  t = jnp.array([0, 3, 999])
  e = np.asarray(unet_lib.timestep_embedding(t, 8, False, 1))
  freqs = 10000.0 ** (-np.arange(4) / 3.0)
  np.testing.assert_allclose(e[:, :4], np.sin(np.outer([0, 3, 999], freqs)), atol=2e-4)
  np.testing.assert_allclose(e[:, 4:], np.cos(np.outer([0, 3, 999], freqs)), atol=2e-4)
  f = np.asarray(unet_lib.timestep_embedding(t, 8, True, 1))
  np.testing.assert_array_equal(f, np.concatenate([e[:, 4:], e[:, :4]], axis=1))


# ------------------------------------------------------------------------------------------------
# Initialisation: Ho et al.'s (init='ddpm') against flax's default.
# ------------------------------------------------------------------------------------------------

_ZERO_INIT = ('/conv2/kernel', '/to_out_0/kernel', 'conv_out/kernel')   # Ho et al.'s init_scale=0


def _fans(shape):
  receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  return shape[-2] * receptive, shape[-1] * receptive


def _kurtosis(w):
  w = w.ravel().astype(np.float64)
  return np.mean((w - w.mean()) ** 4) / np.var(w) ** 2


def test_ddpm_kernel_init_is_tf_variance_scaling_fan_avg_uniform():
  """The initialiser alone (the fast tier; the model's wiring is checked below): U(-l, l) with
  l = sqrt(3 scale / fan_avg), scale 1, or 1e-10 for a layer Ho et al. start at zero."""
  cfg = unet_lib.UNetConfig(init='ddpm')
  shape = (3, 3, 64, 128)
  fan_in, fan_out = _fans(shape)
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  w = np.asarray(unet_lib.kernel_init(cfg)(jax.random.key(0), shape))
  assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
  np.testing.assert_allclose(np.var(w), limit ** 2 / 3, rtol=0.02)
  assert abs(_kurtosis(w) - 1.8) < 0.05
  z = np.asarray(unet_lib.kernel_init(cfg, zero=True)(jax.random.key(0), shape))
  np.testing.assert_allclose(z, w * 1e-5, rtol=1e-4, atol=1e-12)   # sqrt(1e-10) of the same draw
  lecun = np.asarray(unet_lib.kernel_init(unet_lib.UNetConfig())(jax.random.key(0), shape))
  np.testing.assert_allclose(np.var(lecun), 1.0 / fan_in, rtol=0.05)


@pytest.fixture(scope='module')
def initial_weights():
  """Both initialisations of the class-conditional digits UNet, flattened, and its first eps."""
  out = {}
  for init in ('ddpm', 'lecun_normal'):
    cfg = dataclasses.replace(unet_lib.digits_config(10), init=init)
    model = unet_lib.UNet(cfg)
    x, t = _inputs(cfg)
    y = np.arange(4)

    @jax.jit
    def first(key, model=model, x=x, t=t, y=y):
      params = model.init(key, x, t, y)['params']
      return params, model.apply({'params': params}, x, t, y)
    params, eps = first(jax.random.key(0, impl='rbg'))   # compiles in half threefry's time
    out[init] = checkpoint.flatten(params)
    out[init + '/eps'] = np.asarray(eps)
  return out


@pytest.mark.integration   # compiles two UNets
def test_ddpm_init_is_xavier_uniform_with_zero_residual_ends(initial_weights):
  """Every kernel U(-l, l), l = sqrt(6 / (fan_in + fan_out)) (TF's variance_scaling, fan_avg,
  uniform; receptive field included in both fans): inside the bound, variance l^2 / 3 within 5
  standard errors, a uniform's kurtosis 1.8 (a normal's is 3); the last conv of each residual
  branch, the attention output and the output conv at scale 1e-10; biases 0, norms (1, 0)."""
  flat = initial_weights['ddpm']
  zero = [k for k in flat if k.endswith(_ZERO_INIT)]
  assert len(zero) == 8 + 4 + 1   # 8 resnets (2 down, 2 middle, 4 up), 4 attentions, conv_out
  checked = 0
  for key, w in flat.items():
    if key.endswith('/bias'):
      assert not np.any(w), key
    elif key.endswith('/scale'):
      np.testing.assert_array_equal(w, 1.0, err_msg=key)
    elif key.endswith('/kernel'):
      fan_in, fan_out = _fans(w.shape)
      scale = 1e-10 if key in zero else 1.0
      limit = np.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
      assert np.abs(w).max() <= limit * (1 + 1e-6), key
      if key in zero:
        continue
      var, n = np.var(w), w.size
      se = np.sqrt(4.0 / 45.0) * limit ** 2 / np.sqrt(n)   # sd of a uniform's sample variance
      assert abs(var - limit ** 2 / 3) < 5 * se, (key, var, limit ** 2 / 3)
      if n >= 2000:
        assert abs(_kurtosis(w) - 1.8) < 0.15, (key, _kurtosis(w))
      checked += 1
  assert checked >= 20
  emb = flat['class_embedding/embedding']   # flax's Embed init: std 1 / sqrt(features)
  np.testing.assert_allclose(emb.std(), 1 / np.sqrt(emb.shape[1]), rtol=0.1)


@pytest.mark.integration   # compiles two UNets
def test_default_init_is_lecun_normal(initial_weights):
  """flax's default, kept for generators trained before the key: truncated normal of variance
  1 / fan_in everywhere (no zero layers), kurtosis ~2.36, so the two are told apart."""
  flat = initial_weights['lecun_normal']
  for key in ('down_blocks_1/resnets_0/conv1/kernel', 'down_blocks_0/resnets_0/conv2/kernel',
              'conv_out/kernel', 'mid_block/attentions_0/to_q/kernel'):
    w = flat[key]
    fan_in, _ = _fans(w.shape)
    np.testing.assert_allclose(np.var(w), 1.0 / fan_in, rtol=0.15, err_msg=key)
    if w.size >= 2000:
      assert _kurtosis(w) > 2.1, key   # a normal truncated at 2 sd: 2.36


@pytest.mark.integration   # compiles two UNets
def test_ddpm_init_starts_at_zero_output(initial_weights):
  """Ho et al.'s zero-initialised output conv: eps_theta = 0 everywhere at step 0."""
  assert 0 < np.abs(initial_weights['ddpm/eps']).max() < 1e-3
  assert np.abs(initial_weights['lecun_normal/eps']).max() > 0.1


def test_init_key_reaches_the_presets():
  """configs/ddpm_cifar10.py (Ho et al.'s setting) trains from Ho et al.'s init; the digits demo
  keeps flax's; the DDPM trainer passes the key through to the UNet."""
  from configs import ddpm_cifar10, ddpm_digits  # pylint: disable=g-import-not-at-top
  from trainer.diffusion import ddpm  # pylint: disable=g-import-not-at-top
  assert ddpm.unet_config(ddpm_cifar10.get_config()).init == 'ddpm'
  assert ddpm.unet_config(ddpm_digits.get_config()).init == 'lecun_normal'
  with pytest.raises(ValueError, match="init 'xavier' not in"):
    unet_lib.UNetConfig(init='xavier')
