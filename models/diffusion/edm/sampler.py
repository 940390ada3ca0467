"""EDM's samplers for a denoiser D(params, x, sigma[, y]): Heun's 2nd-order method and Euler.

Karras et al. 2022, Algorithm 2, as NVlabs/edm `generate.py` (`edm_sampler`) writes it:

  sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
            i = 0 .. N-1, then sigma_N = 0   (defaults sigma_min 0.002, sigma_max 80, rho 7;
            clamped to the range the preconditioning supports, as the reference does)
  x_0 = sigma_0 * latents
  step i: gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= sigma_i <= S_max else 0
          sigma^ = sigma_i (1 + gamma_i);  x^ = x_i + sqrt(sigma^2 - sigma_i^2) S_noise n_i
          d = (x^ - D(x^, sigma^)) / sigma^;  x_{i+1} = x^ + (sigma_{i+1} - sigma^) d
          Heun, except on the last step (sigma_N = 0): d' = (x_{i+1} - D(x_{i+1},
          sigma_{i+1})) / sigma_{i+1};  x_{i+1} = x^ + (sigma_{i+1} - sigma^) (d + d') / 2

so Heun costs 2N - 1 network evaluations (NFE): N = 18 is the reference's CIFAR-10 setting (35
NFE), N = 20 (39 NFE, no churn) DM-Improves-AT's. `solver='euler'` drops the correction (N NFE):
the reference's `ablation_sampler(solver='euler', discretization='edm', schedule='linear',
scaling='none')`.

State dtype. The reference keeps x in float64 (DM-Improves-AT samples with it); the network still
sees float32 inputs (its preconditioning casts them) and returns float32. Here the state is
float32 by default, fast on TPUs and GPUs; `state_dtype='float64'` reaches the reference: the
update runs under `jax.enable_x64`, the network outside it.

Noise. `keys` is one key (split into one per sample) or a batch of keys, as for
`samplers.sample`: sample i draws its latents from fold_in(key_i, 0) and the churn noise of step
j from fold_in(key_i, j + 1), so a sample depends only on its own key. The reference draws churn
noise on every step, also where gamma = 0 (where it is multiplied by 0); here it is drawn only
when some step has gamma > 0.

  x = sample(gen.denoiser, gen.params, key, (n, 32, 32, 3), num_steps=20, y=labels,
             supported=gen.sigma_range)
  images = samplers.to_uint8(x)   # the reference's (x * 127.5 + 128).clip(0, 255) truncated
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.diffusion.samplers import _normal, _sample_keys

SOLVERS = ('heun', 'euler')
STATE_DTYPES = ('float32', 'float64')
Denoiser = Callable[..., jax.Array]


def sigma_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0) -> np.ndarray:
  """(N + 1,) float64 noise levels, sigma_0 = sigma_max down to sigma_min, then 0."""
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}')
  if not 0 < sigma_min <= sigma_max or rho <= 0:
    raise ValueError(f'need 0 < sigma_min <= sigma_max and rho > 0, got sigma_min {sigma_min}, '
                     f'sigma_max {sigma_max}, rho {rho}')
  i = np.arange(num_steps, dtype=np.float64)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  steps = (hi + i / max(num_steps - 1, 1) * (lo - hi)) ** rho
  return np.concatenate([steps, [0.0]])


def churn(t_steps: np.ndarray, S_churn: float = 0.0, S_min: float = 0.0,
          S_max: float = math.inf) -> np.ndarray:
  """(N,) gamma_i = min(S_churn / N, sqrt(2) - 1) where S_min <= sigma_i <= S_max, else 0."""
  n = t_steps.size - 1
  cur = t_steps[:-1]
  inside = (S_min <= cur) & (cur <= S_max)
  return np.where(inside, min(S_churn / n, math.sqrt(2) - 1), 0.0)


def nfe(num_steps: int, solver: str = 'heun') -> int:
  """Network evaluations per sample: 2N - 1 for Heun, N for Euler."""
  return 2 * num_steps - 1 if solver == 'heun' else num_steps


def sample(denoiser: Denoiser, params: Any, keys, shape: Sequence[int], *,
           num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
           rho: float = 7.0, solver: str = 'heun', S_churn: float = 0.0,
           S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0,
           state_dtype: str = 'float32', supported: tuple[float, float] = (0.0, math.inf),
           y=None, return_trajectory: bool = False):
  """Samples `shape` (NHWC) in the model's scale ([-1, 1] data), float32, not clipped.

  Args:
    denoiser: `denoiser(params, x, sigma[, y]) -> D` (`edm_precond.make_denoiser`).
    params: its parameters.
    keys: a key or one key per sample (see the module docstring).
    shape: (B, H, W, C).
    num_steps: N, the number of noise levels before 0.
    sigma_min, sigma_max, rho: the discretisation; clamped to `supported`.
    solver: 'heun' (2N - 1 NFE) or 'euler' (N NFE).
    S_churn, S_min, S_max, S_noise: stochasticity (S_churn 0: the deterministic ODE).
    state_dtype: 'float32', or 'float64' as the reference.
    supported: the preconditioning's (sigma_min, sigma_max) (`EDMGenerator.sigma_range`).
    y: class labels for a conditional denoiser, (B,) ints or (B, label_dim) vectors.
    return_trajectory: also return the (N + 1, B, H, W, C) states x_0 .. x_N.
  """
  keys = _sample_keys(keys, shape[0])
  latents = _normal(keys, 0, shape[1:])
  t_steps = sigma_steps(num_steps, max(sigma_min, supported[0]), min(sigma_max, supported[1]),
                        rho)
  gammas = churn(t_steps, S_churn, S_min, S_max)
  noise = None if not np.any(gammas > 0) else (lambda i: _normal(keys, i + 1, shape[1:]))
  return solve(denoiser, params, latents, t_steps, gammas, noise=noise, S_noise=S_noise,
               solver=solver, state_dtype=state_dtype, y=y,
               return_trajectory=return_trajectory)


def solve(denoiser: Denoiser, params: Any, latents: jax.Array, t_steps: np.ndarray,
          gammas: np.ndarray, *, noise: Callable[[jax.Array], jax.Array] | None = None,
          S_noise: float = 1.0, solver: str = 'heun', state_dtype: str = 'float32',
          y=None, return_trajectory: bool = False):
  """The sampler given its noise: latents (B, H, W, C), `t_steps` (N + 1,), `gammas` (N,).

  `noise(i)` gives step i's churn noise (B, H, W, C); it is needed where a gamma is > 0, and
  without it no noise is added. `t_steps` and `gammas` may be traced arrays (one compiled
  sampler for many grids). Returns float32 x_N, and the float32 states x_0 .. x_N when
  `return_trajectory`.
  """
  if solver not in SOLVERS:
    raise ValueError(f'solver must be one of {SOLVERS}, got {solver!r}')
  if state_dtype not in STATE_DTYPES:
    raise ValueError(f'state_dtype must be one of {STATE_DTYPES}, got {state_dtype!r}')
  if isinstance(gammas, np.ndarray) and np.any(gammas > 0) and noise is None:
    raise ValueError('S_churn > 0 needs churn noise')
  heun = solver == 'heun'
  wide = state_dtype == 'float64'

  def net(x, sigma):
    """D in float32, outside x64 mode: the network is the same in both state dtypes."""
    x32 = x.astype(jnp.float32)
    with jax.enable_x64(False):
      d = denoiser(params, x32, sigma) if y is None else denoiser(params, x32, sigma, y)
    return d.astype(x.dtype)

  def step(x, inputs, correct: bool):
    i, t_cur, t_next, gamma = inputs
    t_hat = t_cur + gamma * t_cur
    if noise is not None:
      with jax.enable_x64(False):   # the same draws in both state dtypes
        eps = noise(i)
      eps = eps.astype(x.dtype)
      x = x + jnp.sqrt(jnp.maximum(t_hat ** 2 - t_cur ** 2, 0.0)) * S_noise * eps
    d_cur = (x - net(x, t_hat.astype(jnp.float32))) / t_hat
    x_next = x + (t_next - t_hat) * d_cur
    if correct:
      d_prime = (x_next - net(x_next, t_next.astype(jnp.float32))) / t_next
      x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next

  def run():
    dt = jnp.float64 if wide else jnp.float32
    t = jnp.asarray(t_steps).astype(dt)
    xs = (jnp.arange(gammas.shape[0], dtype=jnp.int32), t[:-1], t[1:],
          jnp.asarray(gammas).astype(dt))
    x0 = jnp.asarray(latents).astype(dt) * t[0]
    # Steps 0 .. N-2 in a scan (Heun corrects them), the last on its own: it lands on sigma = 0,
    # where the reference takes the Euler step alone.
    body = lambda x, inp: (step(x, inp, heun), x.astype(jnp.float32))
    x, states = jax.lax.scan(body, x0, jax.tree_util.tree_map(lambda a: a[:-1], xs))
    last = jax.tree_util.tree_map(lambda a: a[-1], xs)
    x_final = step(x, last, False)
    traj = jnp.concatenate([states, x.astype(jnp.float32)[None],
                            x_final.astype(jnp.float32)[None]])
    return x_final.astype(jnp.float32), traj

  if wide:
    with jax.enable_x64(True):
      x, traj = run()
  else:
    x, traj = run()
  return (x, traj) if return_trajectory else x
