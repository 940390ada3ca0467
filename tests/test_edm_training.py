"""EDM's training pieces: the loss against NVlabs/edm's EDMLoss, the loss falling on a toy set,
the EMA half-life in images with its ramp-up, and the Adam learning-rate ramp."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edm_reference as ref_lib
from edm_reference import assert_close, nhwc
from models.diffusion.edm import ema as edm_ema
from models.diffusion.edm import loss as edm_loss
from models.diffusion.edm import optimizer as edm_optimizer
from models.diffusion.edm import precond as edm_precond
from models.diffusion.edm import network as song_unet


def test_loss_equals_reference():
  """EDMLoss with its own draws of ln(sigma) and noise replayed: per-example sums agree."""
  ref = ref_lib.reference()
  network, params = ref_lib.network_and_params()
  denoise = edm_precond.make_denoiser(song_unet.SongUNet(network), edm_precond.Precond('edm'))
  sigma = np.exp(ref['in_loss_rnd_normal'].reshape(-1) * edm_loss.P_STD + edm_loss.P_MEAN)
  loss = jax.jit(lambda p: edm_loss.loss_given(
      denoise, p, nhwc(ref['in_images']), sigma, nhwc(ref['in_loss_noise']),
      y=ref['in_labels']))(params)
  assert loss.shape == (4,)
  assert_close(loss, ref['out_loss'].sum(axis=(1, 2, 3)), 2e-6, 'EDM loss per example')


def test_weight_undoes_c_out():
  """lambda(sigma) c_out(sigma)^2 = 1: the network's target has unit weight at every level."""
  sigma = jnp.array([0.002, 0.1, 0.5, 3.0, 80.0])
  c_out = edm_precond.coefficients(edm_precond.Precond('edm'), sigma)[1]
  np.testing.assert_allclose(edm_loss.loss_weight(sigma) * c_out ** 2, 1.0, rtol=1e-5)


def test_noise_levels_are_log_normal():
  sigma = np.asarray(edm_loss.sample_sigma(jax.random.key(0), 20000))
  log = np.log(sigma)
  assert abs(log.mean() - (-1.2)) < 5 * 1.2 / np.sqrt(20000)
  assert abs(log.std() - 1.2) < 0.03


def _toy_set():
  """16 8x8 greyscale images of two kinds (bright left half, bright top half), labelled."""
  rng = np.random.default_rng(0)
  y = np.arange(16) % 2
  base = np.zeros((16, 8, 8, 1), np.float32) - 0.8
  base[y == 0, :, :4] = 0.8
  base[y == 1, :4, :] = 0.8
  return np.clip(base + 0.05 * rng.standard_normal(base.shape), -1, 1).astype(np.float32), y


def _fresh_params(network, seed=0):
  """LeCun-normal kernels, zero biases, unit GroupNorm scales, drawn in numpy (no compile)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(
          np.float32)
    return np.full(leaf.shape, 1.0 if name == 'scale' else 0.0, np.float32)
  return jax.tree_util.tree_map_with_path(draw, song_unet.param_shapes(network))


@pytest.mark.integration
def test_loss_falls_on_a_toy_set():
  """40 steps of plain optax Adam (lr 5e-3) on a tiny DDPM++ (one level: its blocks, attention
  and label embedding): the loss on fixed draws falls. Compiling the step is most of its time."""
  images, y = _toy_set()
  network = song_unet.SongUNetConfig(
      img_resolution=8, in_channels=1, out_channels=1, label_dim=2, model_channels=8,
      channel_mult=(1,), num_blocks=1, attn_resolutions=(), dropout=0.1)
  model = song_unet.SongUNet(network)
  params = _fresh_params(network)
  denoise = edm_precond.make_denoiser(model, edm_precond.Precond('edm'))
  opt = optax.adam(5e-3)

  def measure(p):   # the same draws every time, no dropout
    return jnp.mean(edm_loss.edm_loss(denoise, p, images, jax.random.key(99), y=y,
                                      dropout=False))

  @jax.jit
  def step(p, state, key):
    loss, grads = jax.value_and_grad(
        lambda q: jnp.mean(edm_loss.edm_loss(denoise, q, images, key, y=y)))(p)
    updates, state = opt.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss

  measure = jax.jit(measure)
  before = float(measure(params))
  state = opt.init(params)
  t0 = time.perf_counter()
  for i in range(40):
    params, state, _ = step(params, state, jax.random.key(i))
  print(f'40 steps incl. compile: {time.perf_counter() - t0:.1f}s')
  after = float(measure(params))
  print(f'EDM loss on fixed draws: {before:.3f} -> {after:.3f} after 40 Adam steps')
  assert np.isfinite(after) and after < 0.6 * before


def test_ema_half_life_is_counted_in_images():
  """Without ramp-up, halflife images of any batch size halve the weight of the old average."""
  for batch in (16, 128, 512):
    beta = float(edm_ema.ema_beta(10 ** 9, batch, halflife_kimg=4.096, rampup_ratio=None))
    ema = {'w': jnp.ones(3)}
    for _ in range(4096 // batch):
      ema = edm_ema.ema_update(ema, {'w': jnp.zeros(3)}, beta)
    np.testing.assert_allclose(ema['w'], 0.5, rtol=1e-5)


def test_ema_ramp_up():
  """The half-life is min(500 kimg, 0.05 x images seen): none at the start, full after 10M."""
  assert float(edm_ema.ema_beta(0, 512)) == 0.0            # the first step copies the weights
  np.testing.assert_allclose(edm_ema.ema_beta(10 ** 6, 512), 0.5 ** (512 / 50_000), rtol=1e-6)
  np.testing.assert_allclose(edm_ema.ema_beta(2 * 10 ** 7, 512), 0.5 ** (512 / 500_000),
                             rtol=1e-6)
  traced = jax.jit(lambda n: edm_ema.ema_beta(n, 512))(jnp.float32(10 ** 6))
  np.testing.assert_allclose(traced, 0.5 ** (512 / 50_000), rtol=1e-6)
  ema = edm_ema.ema_update({'w': jnp.full(2, 4.0)}, {'w': jnp.zeros(2)}, 0.25)
  np.testing.assert_allclose(ema['w'], 1.0)                 # params + beta (ema - params)


def test_adam_learning_rate_ramp_and_gradient_clean_up():
  schedule = edm_optimizer.learning_rate(512)
  np.testing.assert_allclose([schedule(0), schedule(9766), schedule(10 ** 5)],
                             [0.0, 1e-3 * 9766 * 512 / 1e7, 1e-3], rtol=1e-6)
  opt = edm_optimizer.adam(batch_size=512, rampup_kimg=1)
  params = {'w': jnp.ones(3)}
  state = opt.init(params)
  grads = {'w': jnp.array([jnp.nan, jnp.inf, 1.0])}
  updates, state = opt.update(grads, state, params)
  np.testing.assert_array_equal(updates['w'], 0.0)          # lr 0 on the first step
  updates, state = opt.update({'w': jnp.array([jnp.nan, -jnp.inf, 2.0])}, state, params)
  u = np.asarray(updates['w'])
  assert np.all(np.isfinite(u)) and u[0] == 0.0 and u[2] < 0.0   # NaN counts as 0
