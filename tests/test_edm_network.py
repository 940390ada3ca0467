"""EDM's DDPM++ network and preconditioning against NVlabs/edm's own outputs (float32 precision).

The reference numbers (tests/fixtures/edm, see its README) come from running NVlabs/edm's
SongUNet, EDMPrecond and VPPrecond on a small random configuration; our network gets the same
weights through our import and must give the same outputs to float32 rounding (1e-6 of the
largest output; a wrong block, scale or ordering gives errors of order 1).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models.diffusion import checkpoint
from models.diffusion.edm import precond as edm_precond
from models.diffusion.edm import network as song_unet
import edm_reference as ref_lib
from edm_reference import assert_close, nhwc

FLOAT32 = 2e-6   # of the largest output: float32 rounding through ~30 layers


@pytest.fixture(scope='module')
def net():
  network, params = ref_lib.network_and_params()
  return network, params, song_unet.SongUNet(network)


@pytest.fixture(scope='module')
def small():
  """A smaller conditional network (fewer blocks, so faster to compile) for the contracts."""
  network = song_unet.SongUNetConfig(
      img_resolution=4, in_channels=1, out_channels=1, label_dim=3, augment_dim=2,
      model_channels=8, channel_mult=(1, 1), num_blocks=1, attn_resolutions=(2,), dropout=0.0)
  model = song_unet.SongUNet(network)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(  # random, none zero, drawn without compiling anything
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(
          np.float32), song_unet.param_shapes(network))
  x = rng.standard_normal((4, 4, 4, 1)).astype(np.float32)
  sigma = np.array([0.01, 0.5, 2.0, 40.0], np.float32)
  return network, params, model, (x, sigma, np.array([0, 2, 1, 2]))


def _inputs():
  ref = ref_lib.reference()
  return nhwc(ref['in_x']), ref['in_sigma'], ref['in_labels']


def test_architecture_read_off_the_state_dict(net):
  network, params, _ = net
  cfg = ref_lib.config()
  for key in ('img_resolution', 'label_dim', 'augment_dim', 'model_channels', 'channel_mult',
              'channel_mult_emb', 'num_blocks', 'attn_resolutions'):
    value = getattr(network, key)
    assert (list(value) if isinstance(value, tuple) else value) == cfg[key], key
  assert network.in_channels == network.out_channels == cfg['img_channels']
  assert song_unet.count_params(params) == cfg['param_count']  # the reference's, all of them


def test_song_unet_equals_reference(net):
  _, params, model = net
  ref = ref_lib.reference()
  x, _, labels = _inputs()
  f = jax.jit(lambda p, x, c, y: model.apply({'params': p}, x, c, y))(
      params, x, ref['in_c_noise'], labels)
  assert f.dtype == jnp.float32
  assert_close(f, nhwc(ref['out_song_F']), FLOAT32, 'SongUNet F')


def test_edm_precond_equals_reference(net):
  """D with and without augmentation labels (zero ones add nothing: map_augment has no bias)."""
  _, params, model = net
  ref = ref_lib.reference()
  x, sigma, labels = _inputs()
  denoise = jax.jit(edm_precond.make_denoiser(model, edm_precond.Precond('edm')))
  aug = ref['in_augment_labels']
  d = denoise(params, x, sigma, labels, augment_labels=np.zeros_like(aug))
  assert_close(d, nhwc(ref['out_edm_D']), FLOAT32, 'EDMPrecond D')
  d_aug = denoise(params, x, sigma, labels, augment_labels=aug)
  assert_close(d_aug, nhwc(ref['out_edm_D_aug']), FLOAT32, 'EDMPrecond D, augment labels')
  assert np.abs(np.asarray(d_aug) - np.asarray(d)).max() > 1e-3


def test_vp_precond_equals_reference(net):
  """VPPrecond, also with the reference's zero label vectors for labels=None."""
  _, params, model = net
  ref = ref_lib.reference()
  x, sigma, labels = _inputs()
  denoise = jax.jit(edm_precond.make_denoiser(model, edm_precond.Precond('vp')))
  assert_close(denoise(params, x, sigma, labels), nhwc(ref['out_vp_D']), FLOAT32, 'VPPrecond D')
  assert_close(denoise(params, x, sigma, np.zeros_like(labels)), nhwc(ref['out_vp_D_nolabels']),
               FLOAT32, 'VPPrecond D, zero labels')


def test_vp_noise_levels():
  """sigma(t) and its inverse; the supported range is sigma(epsilon_t) .. sigma(1)."""
  p = edm_precond.Precond('vp')
  t = jnp.array([1e-5, 1e-3, 0.1, 0.5, 1.0])
  sigma = edm_precond.vp_sigma(p, t)
  np.testing.assert_allclose(sigma, np.sqrt(np.expm1(19.9 / 2 * t ** 2 + 0.1 * t)), rtol=1e-5)
  # float32 ln(1 + sigma^2), the reference's form, keeps 1e-4 only from t ~ 0.01 up.
  np.testing.assert_allclose(edm_precond.vp_sigma_inv(p, sigma)[2:], t[2:], rtol=1e-4)
  assert p.sigma_min == pytest.approx(np.sqrt(np.expm1(19.9 / 2 * 1e-10 + 0.1 * 1e-5)))
  assert p.sigma_max == pytest.approx(np.sqrt(np.expm1(10.05)))
  e = edm_precond.Precond('edm')
  assert (e.sigma_min, e.sigma_max) == (0.0, np.inf)


def test_bfloat16_close_to_float32(small):
  network, params, model, (x, sigma, y) = small
  c_noise = np.log(sigma) / 4
  f32 = np.asarray(jax.jit(lambda p: model.apply({'params': p}, x, c_noise, y))(params))
  m16 = song_unet.SongUNet(network, dtype=jnp.bfloat16)
  f16 = jax.jit(lambda p: m16.apply({'params': p}, x, c_noise, y))(params)
  assert f16.dtype == jnp.float32
  rel = np.linalg.norm(np.asarray(f16) - f32) / np.linalg.norm(f32)
  print(f'bf16 vs f32 F: relative L2 error {rel:.2e}')
  assert 1e-5 < rel < 3e-2


def test_cifar10_config_has_the_reference_parameter_count():
  """The released edm-cifar10-32x32-{cond,uncond}-vp networks: 55,735,299 / 55,733,891."""
  cfg = ref_lib.config()
  shapes = song_unet.param_shapes(song_unet.CIFAR10_DDPMPP)
  assert song_unet.count_params(shapes) == cfg['cifar10_cond_vp_param_count']
  uncond = dataclasses.replace(song_unet.CIFAR10_DDPMPP, label_dim=0)
  assert song_unet.count_params(song_unet.param_shapes(uncond)) == \
      cfg['cifar10_uncond_vp_param_count']


def test_labels_contract(small):
  """Int classes mean their one-hot vectors; a conditional network needs them, an
  unconditional one refuses them."""
  network, params, model, (x, sigma, y) = small
  denoise = edm_precond.make_denoiser(model, edm_precond.Precond('edm'))
  both = jax.jit(lambda p: (denoise(p, x, sigma, y), denoise(p, x, sigma, np.eye(3)[y])))
  a, b = both(params)
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  with pytest.raises(ValueError, match='required by a class-conditional SongUNet'):
    jax.eval_shape(lambda p: denoise(p, x, sigma), params)
  with pytest.raises(ValueError, match=r'\(B,\) integer classes or \(B, 3\) vectors'):
    jax.eval_shape(lambda p: denoise(p, x, sigma, np.zeros((4, 2), np.float32)), params)
  model0 = song_unet.SongUNet(dataclasses.replace(network, label_dim=0))
  params0 = {k: v for k, v in params.items() if k != 'map_label'}
  with pytest.raises(ValueError, match='refused by an unconditional one'):
    jax.eval_shape(lambda p: edm_precond.make_denoiser(model0, edm_precond.Precond('edm'))(
        p, x, sigma, y), params0)


def test_dropout_only_with_a_dropout_key(small):
  network, params, _, (x, sigma, y) = small
  model = song_unet.SongUNet(dataclasses.replace(network, dropout=0.3, label_dropout=0.5))
  denoise = edm_precond.make_denoiser(model, edm_precond.Precond('edm'))
  train = jax.jit(lambda p, k: denoise(p, x, sigma, y, dropout_key=k))
  a, b = train(params, jax.random.key(0)), train(params, jax.random.key(1))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
  np.testing.assert_array_equal(a, train(params, jax.random.key(0)))
  # Without a key there is none: the reference comparisons run networks of dropout 0.1.


@pytest.mark.integration
def test_gradients_reach_every_parameter(small):
  network, params, model, (x, sigma, y) = small
  aug = np.ones((4, network.augment_dim), np.float32)
  denoise = edm_precond.make_denoiser(model, edm_precond.Precond('edm'))
  grads = jax.jit(jax.grad(lambda p: jnp.mean(denoise(p, x, sigma, y,
                                                      augment_labels=aug) ** 2)))(params)
  zero = [k for k, g in checkpoint.flatten(grads).items() if not np.any(g)]
  assert not zero, zero


@pytest.mark.parametrize('kwargs,match', [
    (dict(embedding_type='fourier'), "embedding_type = 'fourier' is not supported"),
    (dict(encoder_type='residual'), "encoder_type = 'residual'"),
    (dict(resample_filter=(1, 3, 3, 1)), 'resample_filter'),
    (dict(img_resolution=36), 'multiple of'),
    (dict(model_channels=18), 'GroupNorm groups'),
    (dict(dropout=1.0), 'dropout must be in'),
])
def test_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    song_unet.SongUNetConfig(**kwargs)


def test_group_count_is_the_reference_rule():
  assert [song_unet.group_count(c) for c in (8, 16, 96, 128, 256, 512)] == [2, 4, 24, 32, 32, 32]


@pytest.mark.integration
def test_initialisation_is_the_references(small):
  """xavier_uniform everywhere, x 1e-5 on conv1 / proj / the output conv, x sqrt(0.2) on qkv;
  zero biases, unit GroupNorm scales: checked by range and spread of each fresh kernel."""
  network, _, model, _ = small
  params = song_unet.init_params(model, jax.random.key(0))
  for key, value in checkpoint.flatten(params).items():
    module, leaf = key.rsplit('/', 1)
    if leaf == 'bias':
      assert not value.any(), key
    elif leaf == 'scale':
      np.testing.assert_array_equal(value, 1.0, err_msg=key)
    else:
      area = np.prod(value.shape[:-2]) if value.ndim == 4 else 1
      limit = np.sqrt(6 / (area * (value.shape[-2] + value.shape[-1])))
      name = module.rsplit('/', 1)[-1]
      limit *= 1e-5 if name in ('conv1', 'proj') or name.endswith('aux_conv') else (
          np.sqrt(0.2) if name == 'qkv' else 1.0)
      assert np.abs(value).max() <= limit * (1 + 1e-6), key
      if value.size >= 256:   # a uniform's std is limit / sqrt(3)
        assert abs(value.std() / (limit / np.sqrt(3)) - 1) < 0.15, (key, value.std(), limit)
