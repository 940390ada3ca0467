"""EDM's Heun and Euler samplers: step for step against NVlabs/edm, and on a Gaussian.

Reference. tests/fixtures/edm holds NVlabs/edm's `edm_sampler` (and its `ablation_sampler` in
the Euler setting) run with float64 state on a random network from fixed latents (and, with
churn, fixed per-step noise): the network's input at every evaluation and the final sample. Ours
gets the same network, latents and noise and must reproduce every state to float32 rounding of
the network (1e-5 of the state's largest entry: errors of the 2N - 1 evaluations add up).

Closed form. For data x_0 ~ N(mu, S) and x = x_0 + sigma n, the ideal denoiser is
D*(x, sigma) = mu + S (S + sigma^2 I)^-1 (x - mu); the probability-flow ODE it drives carries
N(0, sigma_max^2 I + S) to N(mu, S), so samples must have mean mu and covariance S up to the
sampling error (5 standard errors) and the discretisation.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edm_reference as ref_lib
from edm_reference import assert_close, nhwc
from models.diffusion.edm import precond as edm_precond
from models.diffusion.edm import sampler as edm_sampler
from models.diffusion.edm import network as song_unet

STATE = 1e-5   # of each state's largest entry
STEPS = 6


def _reference_run(name):
  ref = ref_lib.reference()
  return (nhwc(ref[f'out_{name}_call_x']), ref[f'out_{name}_call_sigma'],
          nhwc(ref[f'out_{name}_out']))


def _check_trajectory(name, traj, x, t_steps, heun=True):
  """Our states x_0 .. x_{N-1} are the reference's first network input of each step."""
  call_x, call_sigma, out = _reference_run(name)
  first = call_x[::2] if heun else call_x
  np.testing.assert_allclose(t_steps[:-1], call_sigma[::2] if heun else call_sigma, rtol=1e-12)
  if heun:   # the corrector evaluates at sigma_{i+1}, except on the last step
    np.testing.assert_allclose(t_steps[1:-1], call_sigma[1::2], rtol=1e-12)
  assert len(call_x) == edm_sampler.nfe(STEPS, 'heun' if heun else 'euler')
  for i in range(STEPS):
    assert_close(traj[i], first[i], STATE, f'{name} x_{i}')
  assert_close(traj[-1], out, STATE, f'{name} x_N')
  np.testing.assert_array_equal(x, traj[-1])


@pytest.fixture(scope='module')
def edm_solver():
  """One compiled Heun sampler for the EDM-preconditioned reference network (grids traced)."""
  network, params = ref_lib.network_and_params()
  denoise = edm_precond.make_denoiser(song_unet.SongUNet(network), edm_precond.Precond('edm'))
  labels = ref_lib.reference()['in_labels']

  @jax.jit
  def run(latents, noise, t_steps, gammas):
    return edm_sampler.solve(denoise, params, latents, t_steps, gammas,
                             noise=lambda i: noise[i], S_noise=1.007, state_dtype='float64',
                             y=labels, return_trajectory=True)
  return run


def test_heun_trajectory_equals_reference(edm_solver):
  """edm_sampler, 6 steps (11 NFE), float64 state as the reference, no churn."""
  ref = ref_lib.reference()
  t_steps = edm_sampler.sigma_steps(STEPS)
  gammas = edm_sampler.churn(t_steps)
  assert not gammas.any()
  x, traj = edm_solver(nhwc(ref['in_latents']), nhwc(ref['in_churn_noise']), t_steps, gammas)
  assert x.dtype == jnp.float32 and traj.shape == (STEPS + 1,) + x.shape
  _check_trajectory('heun_edm', np.asarray(traj), np.asarray(x), t_steps)


def test_heun_with_churn_equals_reference(edm_solver):
  """S_churn 10, S_min 0.05, S_max 20, S_noise 1.007, fed the reference's per-step noise."""
  ref, cfg = ref_lib.reference(), ref_lib.config()['churn']
  t_steps = edm_sampler.sigma_steps(STEPS)
  gammas = edm_sampler.churn(t_steps, cfg['S_churn'], cfg['S_min'], cfg['S_max'])
  inside = (t_steps[:-1] >= 0.05) & (t_steps[:-1] <= 20)
  np.testing.assert_allclose(gammas, np.where(inside, math.sqrt(2) - 1, 0.0))
  x, traj = edm_solver(nhwc(ref['in_latents']), nhwc(ref['in_churn_noise']), t_steps, gammas)
  call_x, _, out = _reference_run('heun_churn')
  # With churn the network first sees x^ = x_i + noise, so compare x_0 and the final sample.
  assert_close(traj[0], call_x[0], STATE, 'churn x_0')
  assert_close(x, out, STATE, 'churn x_N')


@pytest.mark.integration
def test_vp_and_euler_and_float32_state_equal_reference():
  """VPPrecond under Heun (range clamped to what VP supports), Euler, and float32 state."""
  ref = ref_lib.reference()
  network, params = ref_lib.network_and_params()
  model = song_unet.SongUNet(network)
  latents, labels = nhwc(ref['in_latents']), ref['in_labels']
  vp = edm_precond.Precond('vp')
  for name, precond, solver, state in (('heun_vp', vp, 'heun', 'float64'),
                                       ('euler_edm', edm_precond.Precond('edm'), 'euler',
                                        'float64'),
                                       ('heun_edm', edm_precond.Precond('edm'), 'heun',
                                        'float32')):
    denoise = edm_precond.make_denoiser(model, precond)
    t_steps = edm_sampler.sigma_steps(STEPS, max(0.002, precond.sigma_min),
                                      min(80.0, precond.sigma_max))
    x, traj = jax.jit(lambda p: edm_sampler.solve(
        denoise, p, latents, t_steps, edm_sampler.churn(t_steps), solver=solver,
        state_dtype=state, y=labels, return_trajectory=True))(params)
    if state == 'float64':
      _check_trajectory(name, np.asarray(traj), np.asarray(x), t_steps, heun=solver == 'heun')
    else:   # float32 state: the same path within float32 accumulation over 11 evaluations
      assert_close(x, _reference_run(name)[2], 1e-4, 'float32 state x_N')


# ------------------------------------------------------------------------------------------------
# A Gaussian with a closed-form denoiser.
# ------------------------------------------------------------------------------------------------

MU = np.array([0.3, -0.2, 0.1, 0.0])
_A = np.array([[0.20, 0.00, 0.00, 0.00], [0.08, 0.15, 0.00, 0.00],
               [-0.05, 0.04, 0.12, 0.00], [0.02, 0.00, 0.06, 0.10]])
COV = _A @ _A.T
SHAPE = (2, 2, 1)


def gaussian_denoiser(calls=None):
  """D*(x, sigma) for N(MU, COV) on (B, 2, 2, 1) images; `calls` collects each sigma seen."""
  mu, cov = jnp.asarray(MU, jnp.float32), jnp.asarray(COV, jnp.float32)

  def denoise(params, x, sigma):
    del params
    if calls is not None:
      jax.debug.callback(lambda s: calls.append(float(np.ravel(s)[0])), sigma)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
    flat = x.reshape(x.shape[0], -1) - mu
    gain = jax.vmap(lambda s: cov @ jnp.linalg.inv(cov + s ** 2 * jnp.eye(4)))(sigma)
    return (mu + jnp.einsum('bij,bj->bi', gain, flat)).reshape(x.shape)
  return denoise


@pytest.mark.parametrize('solver,steps,allowance', [('heun', 18, 0.004), ('euler', 60, 0.01)])
def test_samples_have_the_data_distribution(solver, steps, allowance):
  n = 4000
  x = jax.jit(lambda k: edm_sampler.sample(gaussian_denoiser(), None, k, (n,) + SHAPE,
                                           num_steps=steps, solver=solver))(jax.random.key(0))
  x = np.asarray(x, np.float64).reshape(n, -1)
  se_mean = np.sqrt(np.diag(COV) / n)
  assert np.all(np.abs(x.mean(0) - MU) < 5 * se_mean + allowance), (x.mean(0), MU)
  se_cov = np.sqrt((np.outer(np.diag(COV), np.diag(COV)) + COV ** 2) / n)
  err = np.abs(np.cov(x.T) - COV)
  assert np.all(err < 5 * se_cov + allowance), err.max()


def test_heun_is_second_order_and_euler_first():
  """Doubling N divides Heun's error by about 4 and Euler's by about 2 (RMS to Heun-400 from the
  same latents; on this problem Heun-20 0.0104 -> Heun-40 0.0023, Euler-39 0.0144 -> Euler-79
  0.0072; below ~20 steps neither is in its asymptotic regime yet)."""
  key = jax.random.key(1)
  run = lambda n, solver: np.asarray(jax.jit(lambda k: edm_sampler.sample(
      gaussian_denoiser(), None, k, (64,) + SHAPE, num_steps=n, solver=solver))(key))
  fine = run(400, 'heun')
  rms = lambda n, solver: np.sqrt(np.mean((run(n, solver) - fine) ** 2))
  heun = rms(20, 'heun') / rms(40, 'heun')
  euler = rms(39, 'euler') / rms(79, 'euler')
  print(f'error ratio when doubling the steps: Heun {heun:.2f}, Euler {euler:.2f}')
  assert heun > 3.5 and 1.6 < euler < 2.5


def test_evaluations_and_noise_levels():
  """2N - 1 evaluations for Heun, N for Euler, at the EDM grid clamped to `supported`."""
  for solver in ('heun', 'euler'):
    calls = []
    jax.jit(lambda k: edm_sampler.sample(gaussian_denoiser(calls), None, k, (2,) + SHAPE,
                                         num_steps=5, solver=solver,
                                         supported=(0.01, 10.0)))(jax.random.key(0))
    assert len(calls) == edm_sampler.nfe(5, solver) == (9 if solver == 'heun' else 5)
    grid = edm_sampler.sigma_steps(5, 0.01, 10.0)
    expected = (sorted(set(grid[:-1]) | set(grid[1:-1]), reverse=True) if solver == 'heun'
                else list(grid[:-1]))
    np.testing.assert_allclose(sorted(set(calls), reverse=True), expected, rtol=1e-6)
  i = np.arange(5)
  rho = 7
  np.testing.assert_allclose(
      edm_sampler.sigma_steps(5)[:-1],
      (80 ** (1 / rho) + i / 4 * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho, rtol=1e-12)


def test_a_sample_depends_only_on_its_key():
  """Also with churn, and in float64 state, which leaves x64 off afterwards."""
  keys = jax.random.split(jax.random.key(3), 4)
  run = jax.jit(lambda k: edm_sampler.sample(gaussian_denoiser(), None, k, (k.shape[0],) + SHAPE,
                                             num_steps=4, S_churn=5.0, state_dtype='float64'))
  whole, part = np.asarray(run(keys)), np.asarray(run(keys[2:]))
  np.testing.assert_allclose(whole[2:], part, rtol=1e-6, atol=1e-7)
  assert np.abs(whole[0] - whole[1]).max() > 1e-2
  assert jnp.zeros(1).dtype == jnp.float32
  deterministic = jax.jit(lambda k: edm_sampler.sample(gaussian_denoiser(), None, k,
                                                       (4,) + SHAPE, num_steps=4))(keys)
  assert np.abs(whole - np.asarray(deterministic)).max() > 1e-3   # churn adds noise


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_steps=0), 'num_steps must be >= 1'),
    (dict(sigma_min=100.0), 'sigma_min <= sigma_max'),
    (dict(solver='rk4'), 'solver must be one of'),
    (dict(state_dtype='float16'), 'state_dtype must be one of'),
])
def test_bad_options(kwargs, match):
  with pytest.raises(ValueError, match=match):
    edm_sampler.sample(gaussian_denoiser(), None, jax.random.key(0), (2,) + SHAPE, **kwargs)
