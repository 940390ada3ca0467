"""Samplers against a closed-form optimal denoiser, and step for step against diffusers.

Closed form. Let the data be x_0 ~ N(mu, S) in d dimensions and x_t = sqrt(a) x_0 + sqrt(1 - a) e
with e ~ N(0, I) independent of x_0 (a = alphas_cumprod[t]). Then (e, x_t) is jointly Gaussian:
  E[x_t] = sqrt(a) mu,  Cov(x_t) = a S + (1 - a) I =: C_t,  Cov(e, x_t) = sqrt(1 - a) I,
and the minimiser of E||eps(x_t, t) - e||^2 (what the network is trained towards) is the
conditional mean, for Gaussians the linear regression
  eps*(x_t, t) = E[e | x_t] = sqrt(1 - a) C_t^{-1} (x_t - sqrt(a) mu).
With eps* every sampler integrates the exact reverse process (up to its discretisation), so its
samples must have mean mu and covariance S. Tolerances come from the sample size n: a sample mean
has standard error sqrt(S_ii / n) and a sample covariance entry sqrt((S_ii S_jj + S_ij^2) / n);
we allow 5 standard errors plus a small discretisation allowance stated per check.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from models.diffusion import samplers

T = 1000
N = 4000
SHAPE = (2, 2, 1)          # d = 4, as NHWC images
D = 4


def linear_alphas_cumprod(T=T, start=1e-4, end=0.02):
  """Ho et al.'s linear betas; alphas_cumprod[t] = prod_{s <= t} (1 - beta_s)."""
  return np.cumprod(1.0 - np.linspace(start, end, T, dtype=np.float64))


def gaussian_data():
  mu = np.array([0.3, -0.2, 0.1, 0.0])
  a = np.array([[0.20, 0.00, 0.00, 0.00], [0.08, 0.15, 0.00, 0.00],
                [-0.05, 0.04, 0.12, 0.00], [0.02, 0.00, 0.06, 0.10]])
  return mu, a @ a.T


def optimal_eps_fn(mu, cov, alphas_cumprod):
  """eps*(x_t, t) = sqrt(1 - a) C_t^{-1} (x_t - sqrt(a) mu) with C_t = a S + (1 - a) I."""
  a = alphas_cumprod[:, None, None]
  inv = np.linalg.inv(a * cov[None] + (1 - a) * np.eye(D)[None])       # (T, d, d)
  gain = jnp.asarray(np.sqrt(1 - a) * inv, jnp.float32)
  shift = jnp.asarray(np.sqrt(alphas_cumprod)[:, None] * mu[None], jnp.float32)

  def eps_fn(params, x, t):
    del params
    flat = x.reshape(x.shape[0], D) - shift[t]
    return jnp.einsum('bij,bj->bi', gain[t], flat).reshape(x.shape)
  return eps_fn


def moments(x):
  flat = np.asarray(x, np.float64).reshape(len(x), D)
  return flat.mean(0), np.cov(flat, rowvar=False)


@pytest.fixture(scope='module')
def problem():
  ac = linear_alphas_cumprod()
  mu, cov = gaussian_data()
  return ac, mu, cov, optimal_eps_fn(mu, cov, ac)


def run(problem, sampler, steps, key=0):
  ac, _, _, eps_fn = problem
  fn = jax.jit(lambda k: samplers.sample(eps_fn, None, ac, k, (N,) + SHAPE, sampler=sampler,
                                         steps=steps, clip_denoised=False))
  return np.asarray(fn(jax.random.key(key)))


@pytest.mark.parametrize('sampler,steps', [('ddpm', 1000), ('ddim', 1000), ('dpm++2m', 20)])
def test_recovers_data_mean_and_covariance(problem, sampler, steps):
  _, mu, cov, _ = problem
  got_mu, got_cov = moments(run(problem, sampler, steps))
  se_mu = np.sqrt(np.diag(cov) / N)
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / N)
  print(f'{sampler}-{steps}: max |mean err|/se {np.max(np.abs(got_mu - mu) / se_mu):.2f}, '
        f'max |cov err|/se {np.max(np.abs(got_cov - cov) / se_cov):.2f}')
  np.testing.assert_array_less(np.abs(got_mu - mu), 5 * se_mu)
  np.testing.assert_array_less(np.abs(got_cov - cov), 5 * se_cov + 2e-4)


def test_higher_order_solver_is_closer_to_the_1000_step_ode_at_equal_nfe(problem):
  """From the same x_T, DPM-Solver++(2M) with 10 evaluations lands nearer DDIM-1000 (the
  probability-flow ODE solved finely) than DDIM with 10 evaluations does."""
  _, mu, cov, _ = problem
  reference = run(problem, 'ddim', 1000)
  distance, cov_error = {}, {}
  for s in ('ddim', 'dpm++2m'):
    x = run(problem, s, 10)
    distance[s] = np.sqrt(np.mean((x - reference) ** 2))
    cov_error[s] = np.abs(moments(x)[1] - cov).max()
  print(f'10 NFE: RMS distance to DDIM-1000 {distance}, max |cov err| {cov_error}')
  assert distance['dpm++2m'] < 0.5 * distance['ddim'], distance
  assert cov_error['dpm++2m'] < 0.5 * cov_error['ddim'], cov_error


def test_the_same_key_gives_the_same_sample_whatever_the_batch():
  ac = linear_alphas_cumprod()
  eps_fn = lambda p, x, t: 0.1 * x
  keys = jax.random.split(jax.random.key(3), 6)
  whole = samplers.ddpm(eps_fn, None, ac, keys, (6,) + SHAPE, steps=50)
  part = samplers.ddpm(eps_fn, None, ac, keys[2:4], (2,) + SHAPE, steps=50)
  np.testing.assert_allclose(whole[2:4], part, rtol=1e-6, atol=1e-6)


def test_bad_input_is_named():
  ac = linear_alphas_cumprod()
  with pytest.raises(ValueError, match='sampler must be one of'):
    samplers.sample(lambda p, x, t: x, None, ac, jax.random.key(0), (1,) + SHAPE,
                    sampler='euler', steps=10)
  with pytest.raises(ValueError, match='steps must be in'):
    samplers.timesteps(T, 0)
  with pytest.raises(ValueError, match="variance must be one of.*'fixed_large_log'"):
    samplers.ddpm(lambda p, x, t: x, None, ac, jax.random.key(0), (1,) + SHAPE, steps=5,
                  variance='fixed_large_log')
  with pytest.raises(ValueError, match='alphas_cumprod'):
    samplers.ddim(lambda p, x, t: x, None, ac[::-1], jax.random.key(0), (1,) + SHAPE, steps=5)


def test_to_uint8_rounds_like_diffusers():
  x = jnp.array([-1.0, -0.999, 0.0, 0.5, 1.0, 1.5])
  want = (np.clip(np.asarray(x) / 2 + 0.5, 0, 1) * 255).round().astype(np.uint8)
  np.testing.assert_array_equal(samplers.to_uint8(x), want)


# ------------------------------------------------------------------------------------------------
# Against diffusers' schedulers: the same eps function, the same noise, the same trajectory.
# ------------------------------------------------------------------------------------------------

B = 8
W = np.random.default_rng(0).normal(size=(D, D)).astype(np.float32) * 0.6


def _eps_jax(params, x, t):
  del params
  scale = 1.0 + t.astype(jnp.float32)[:, None] / T
  return (jnp.tanh(x.reshape(len(x), D) @ W) * scale).reshape(x.shape)


def _eps_torch(x, t):
  scale = 1.0 + float(t) / T
  return (torch.tanh(x.reshape(len(x), D) @ torch.from_numpy(W)) * scale).reshape(x.shape)


def _initial_and_step_noise(key, steps):
  keys = samplers._sample_keys(key, B)
  return [np.array(samplers._normal(keys, j, SHAPE)) for j in range(steps + 1)]


def _run_diffusers(scheduler, steps, noise, step_kwargs):
  scheduler.set_timesteps(steps)
  x = torch.from_numpy(noise[0])
  for j, t in enumerate(scheduler.timesteps):
    x = scheduler.step(_eps_torch(x, t), t, x, **step_kwargs(j)).prev_sample
  return np.clip(x.numpy(), -1, 1)


@pytest.mark.parametrize('steps,variance', [(1000, 'fixed_small'), (50, 'fixed_small'),
                                            (50, 'fixed_large'), (50, 'fixed_small_log')])
def test_ddpm_matches_diffusers_ddpm_scheduler(monkeypatch, steps, variance):
  from diffusers import DDPMScheduler
  from diffusers.schedulers import scheduling_ddpm
  key = jax.random.key(1)
  noise = _initial_and_step_noise(key, steps)
  step = iter(range(1, steps + 1))
  monkeypatch.setattr(scheduling_ddpm, 'randn_tensor',
                      lambda shape, **kw: torch.from_numpy(noise[next(step)]))
  scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule='linear',
                            variance_type=variance, clip_sample=True)
  want = _run_diffusers(scheduler, steps, noise, lambda j: {})
  ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
  got = samplers.ddpm(_eps_jax, None, ac, key, (B,) + SHAPE, steps=steps, variance=variance)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


@pytest.mark.parametrize('steps,spacing', [(100, 'leading'), (10, 'leading'), (10, 'trailing')])
def test_ddim_matches_diffusers_ddim_scheduler(steps, spacing):
  from diffusers import DDIMScheduler
  key = jax.random.key(2)
  noise = _initial_and_step_noise(key, 0)
  scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule='linear', clip_sample=True,
                            timestep_spacing=spacing)
  want = _run_diffusers(scheduler, steps, noise, lambda j: {'eta': 0.0})
  ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
  got = samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, steps=steps, spacing=spacing,
                     eps_from_x0=False)   # diffusers' re-noising with the network's eps
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


@pytest.mark.parametrize('steps', [10, 20])
def test_dpm_solver_matches_diffusers_multistep_scheduler(steps):
  from diffusers import DPMSolverMultistepScheduler
  key = jax.random.key(4)
  noise = _initial_and_step_noise(key, 0)
  scheduler = DPMSolverMultistepScheduler(
      num_train_timesteps=T, beta_schedule='linear', algorithm_type='dpmsolver++',
      solver_order=2, solver_type='midpoint', thresholding=False, final_sigmas_type='zero')
  # diffusers' default grid; ours defaults to log-SNR spacing (see samplers.dpm_timesteps).
  want = _run_diffusers(scheduler, steps, noise, lambda j: {})
  ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
  got = samplers.dpm_solver_pp_2m(_eps_jax, None, ac, key, (B,) + SHAPE, steps=steps,
                                  spacing='linspace', clip_denoised=False)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Learned variance, respaced timesteps and DDIM's previous timestep.
# ------------------------------------------------------------------------------------------------

W_V = np.random.default_rng(1).normal(size=(D, D)).astype(np.float32) * 0.8


def _eps_v_jax(params, x, t):
  """[eps, v] on the channel axis, v in (-1, 1): a learned-variance model's output (2C = 2)."""
  v = jnp.tanh(x.reshape(len(x), D) @ W_V).reshape(x.shape)
  return jnp.concatenate([_eps_jax(params, x, t), v], axis=-1)


def _eps_v_torch(x, t):
  """The same on NCHW tensors (diffusers splits eps and v on axis 1)."""
  nhwc = x.permute(0, 2, 3, 1)
  v = torch.tanh(nhwc.reshape(len(x), D) @ torch.from_numpy(W_V)).reshape(nhwc.shape)
  return torch.cat([_eps_torch(nhwc, t), v], dim=-1).permute(0, 3, 1, 2)


@pytest.mark.parametrize('spacing,steps', [('guided', 25), ('guided', 7), ('leading', 50)])
def test_ddpm_learned_range_matches_diffusers(monkeypatch, spacing, steps):
  """diffusers' DDPMScheduler(variance_type='learned_range') on the same (custom) timesteps."""
  from diffusers import DDPMScheduler
  from diffusers.schedulers import scheduling_ddpm
  key = jax.random.key(5)
  noise = _initial_and_step_noise(key, steps)
  step = iter(range(1, steps + 1))
  monkeypatch.setattr(scheduling_ddpm, 'randn_tensor', lambda shape, **kw: torch.from_numpy(
      noise[next(step)]).permute(0, 3, 1, 2))
  scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule='squaredcos_cap_v2',
                            variance_type='learned_range', clip_sample=True)
  ts = samplers.timesteps(T, steps, spacing)
  scheduler.set_timesteps(timesteps=[int(t) for t in ts])
  x = torch.from_numpy(noise[0]).permute(0, 3, 1, 2)
  for t in scheduler.timesteps:
    x = scheduler.step(_eps_v_torch(x, t), t, x).prev_sample
  want = np.clip(x.permute(0, 2, 3, 1).numpy(), -1, 1)
  ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
  got = samplers.ddpm(_eps_v_jax, None, ac, key, (B,) + SHAPE, steps=steps, spacing=spacing,
                      variance='learned_range')
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)
  # v moves the variance: with v = -1 throughout, learned_range is fixed_small.
  low = lambda p, x, t: jnp.concatenate([_eps_jax(p, x, t), -jnp.ones_like(x)], -1)  # noqa: E731
  small = samplers.ddpm(_eps_jax, None, ac, key, (B,) + SHAPE, steps=steps, spacing=spacing)
  np.testing.assert_allclose(samplers.ddpm(low, None, ac, key, (B,) + SHAPE, steps=steps,
                                           spacing=spacing, variance='learned_range'),
                             small, atol=1e-5)
  assert np.abs(np.asarray(got) - np.asarray(small)).max() > 1e-2


def test_learned_variance_models_in_the_eps_only_samplers():
  """ddim and dpm++2m use eps only: the v channels change nothing."""
  ac = linear_alphas_cumprod()
  key = jax.random.key(6)
  for sampler, steps in (('ddim', 20), ('dpm++2m', 10)):
    with_v = samplers.sample(_eps_v_jax, None, ac, key, (B,) + SHAPE, sampler=sampler,
                             steps=steps)
    eps_only = samplers.sample(_eps_jax, None, ac, key, (B,) + SHAPE, sampler=sampler,
                               steps=steps)
    np.testing.assert_array_equal(with_v, eps_only)


def test_learned_variance_needs_the_v_channels():
  ac = linear_alphas_cumprod()
  with pytest.raises(ValueError, match="variance='learned_range' needs a model that outputs"):
    samplers.ddpm(_eps_jax, None, ac, jax.random.key(0), (2,) + SHAPE, steps=5,
                  variance='learned_range')
  three = lambda p, x, t: jnp.concatenate([x, x, x], -1)  # noqa: E731
  with pytest.raises(ValueError, match='returned 3 channels for x_t of 1'):
    samplers.ddim(three, None, ac, jax.random.key(0), (2,) + SHAPE, steps=5)


def test_space_timesteps_shapes():
  """guided-diffusion's respacing (its own numbers are checked in test_guided_diffusion.py):
  S distinct steps, both ends for a single section, "ddimS" the stride grid from 0."""
  for spec, n in (('250', 250), ('25', 25), ('1000', 1000), ('10,15,20', 45)):
    ts = samplers.space_timesteps(T, spec)
    assert ts.size == n and np.all(np.diff(ts) < 0) and ts[-1] == 0, spec
  assert samplers.space_timesteps(T, '250')[0] == T - 1
  np.testing.assert_array_equal(samplers.space_timesteps(T, 'ddim25'),
                                samplers.timesteps(T, 25, 'leading'))
  np.testing.assert_array_equal(samplers.space_timesteps(T, 'ddim30'), np.arange(0, T, 34)[::-1])
  np.testing.assert_array_equal(samplers.timesteps(T, 250, 'guided'),
                                samplers.space_timesteps(T, [250]))
  for bad, match in (('ddimx', "'x' is not a step count"), ('1001', 'cannot take 1001'),
                     ('ddim1', 'no integer stride'), ('10,,5', "'' is not a step count")):
    with pytest.raises(ValueError, match=match):
      samplers.space_timesteps(T, bad)


def test_use_timesteps_is_the_same_as_the_spacing():
  ac = linear_alphas_cumprod()
  key = jax.random.key(7)
  ts = samplers.space_timesteps(T, '10,15,20')
  a = samplers.ddpm(_eps_jax, None, ac, key, (B,) + SHAPE, use_timesteps=ts[::-1])
  assert a.shape == (B,) + SHAPE
  b = samplers.sample(_eps_jax, None, ac, key, (B,) + SHAPE, sampler='ddpm', steps=45,
                      use_timesteps=set(ts.tolist()))
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='steps=44 but use_timesteps holds 45'):
    samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, steps=44, use_timesteps=ts)
  with pytest.raises(ValueError, match=r'timesteps in \[0, 1000\)'):
    samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, use_timesteps=[5, 1000])


def _ddim_on_the_grid(ac, ts, x, eps_from_x0=False):
  """Song et al.'s Eq. 12 (eta = 0) from each grid point to the next, in float64 numpy."""
  x = x.astype(np.float64)
  for i, t in enumerate(ts):
    a_t, a_prev = ac[t], (ac[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    eps = (np.tanh(x.reshape(len(x), D) @ W.astype(np.float64)) * (1 + t / T)).reshape(x.shape)
    x0 = np.clip((x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), -1, 1)
    if eps_from_x0:
      eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
  return np.clip(x, -1, 1)


@pytest.mark.parametrize('steps', [30, 7])
def test_ddim_trailing_when_T_mod_S_is_not_zero(steps):
  """diffusers' DDIMScheduler steps to t - T // S, off the 'trailing' grid when T mod S != 0;
  ours steps to the grid's next point unless prev_timestep='offset', which equals diffusers."""
  from diffusers import DDIMScheduler
  key = jax.random.key(8)
  noise = _initial_and_step_noise(key, 0)
  scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule='linear', clip_sample=True,
                            timestep_spacing='trailing')
  want = _run_diffusers(scheduler, steps, noise, lambda j: {'eta': 0.0})
  ac = scheduler.alphas_cumprod.numpy().astype(np.float64)
  ts = samplers.timesteps(T, steps, 'trailing')
  np.testing.assert_array_equal(ts, scheduler.timesteps.numpy())   # the same grid
  offset = samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, steps=steps, spacing='trailing',
                         prev_timestep='offset', eps_from_x0=False)
  np.testing.assert_allclose(np.asarray(offset), want, atol=1e-4)
  grid = np.asarray(samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, steps=steps,
                                  spacing='trailing', eps_from_x0=False))
  np.testing.assert_allclose(grid, _ddim_on_the_grid(ac, ts, noise[0]), atol=1e-4)
  gap = np.abs(grid - want).max()
  print(f'S = {steps}: max |next-grid DDIM - diffusers DDIM| = {gap:.1e}')
  assert gap > 1e-4


def test_ddim_eps_from_x0():
  """By default eps is re-derived from the clipped x_0 (guided-diffusion); diffusers keeps the
  network's (eps_from_x0=False); without clipping the two are the same."""
  ac = linear_alphas_cumprod()
  key = jax.random.key(9)
  noise = _initial_and_step_noise(key, 0)
  ts = samplers.timesteps(T, 10)
  got = samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, steps=10, eps_from_x0=True)
  np.testing.assert_allclose(got, _ddim_on_the_grid(ac, ts, noise[0], eps_from_x0=True),
                             atol=1e-4)
  np.testing.assert_array_equal(got, samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE,
                                                   steps=10))   # the default
  network = samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, steps=10, eps_from_x0=False)
  assert np.abs(np.asarray(got) - np.asarray(network)).max() > 1e-3   # x_0 was clipped
  kw = dict(steps=10, clip_denoised=False)
  np.testing.assert_allclose(
      samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, eps_from_x0=True, **kw),
      samplers.ddim(_eps_jax, None, ac, key, (B,) + SHAPE, eps_from_x0=False, **kw), atol=2e-5)


def test_to_uint8_floor_like_guided_diffusion():
  x = jnp.array([-1.0, -0.999, 0.0, 0.5, 0.999, 1.0])
  want = np.clip((np.asarray(x, np.float32) + 1) * 127.5, 0, 255).astype(np.uint8)  # truncates
  np.testing.assert_array_equal(samplers.to_uint8(x, 'floor'), want)
  assert samplers.to_uint8(x, 'floor')[2] == 127 and samplers.to_uint8(x)[2] == 128
  with pytest.raises(ValueError, match="rounding must be one of"):
    samplers.to_uint8(x, 'ceil')
