"""Samplers for a VP diffusion model given as `eps_fn(params, x_t, t[, y]) -> eps`.

The forward process is Ho et al.'s: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps with a_t =
alphas_cumprod[t], t = 0 … T-1 (diffusers' indexing: a_0 = 1 - beta_0). Three samplers:

  ddpm     ancestral sampling (Ho et al. 2020, Alg. 2), one network evaluation per step; with
           steps < T the timesteps are a subset and beta_t is replaced by 1 - a_t / a_prev, as in
           diffusers' DDPMScheduler and guided-diffusion's SpacedDiffusion. The posterior
           variance defaults to beta-tilde ('fixed_small' = (1 - a_prev) / (1 - a_t) beta_t, the
           variance of q(x_{t-1} | x_t, x_0)), diffusers' DDPMScheduler default; Ho et al.
           (Sec. 3.2) found it and beta_t ('fixed_large', reachable with `variance=`) to give
           similar samples. 'learned_range' is Nichol & Dhariwal's (2021) learned variance, ADM's:
           the model outputs [eps, v] (2C channels) and log sigma^2 = frac log beta_t + (1 - frac)
           log beta-tilde_t with frac = (v + 1) / 2, beta-tilde's log "clipped" at the last step
           to the step before's (guided-diffusion's posterior_log_variance_clipped; that step
           adds no noise). A generator's schedule records the variance it was released with, and
           trainer/sample.py passes it.
  ddim     deterministic DDIM (Song et al. 2021, eta = 0), S evaluations.
  dpm++2m  DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep in the data
           prediction x_0 on the half-log-SNR lambda = log(alpha / sigma); first order on the
           first step and on the last, which lands on sigma = 0 (diffusers'
           DPMSolverMultistepScheduler with final_sigmas_type='zero'), S evaluations.
A learned-variance model's v is used by ddpm's 'learned_range' only; ddim and dpm++2m take eps
(the first C channels), as guided-diffusion's ddim_sample does.

Timesteps. ddpm and ddim use diffusers' default 'leading' spacing: t_i = (S-1-i) * (T // S),
i.e. 990, 980, …, 0 for S = 100 of T = 1000. Also reachable with `spacing=`: 'trailing'
(round(T - i T / S) - 1: 999, 989, …, 9); 'guided', guided-diffusion's `--timestep_respacing S`
(`space_timesteps`: S points evenly spread over 0 … T-1, both ends included, e.g. 0, 4, 8, …,
999 for S = 250); 'guided_ddim', its "ddimS" (the smallest integer stride giving S points from
0, the same as 'leading' when S divides T). Any other subset, e.g. guided-diffusion's
sectioned "10,15,20", goes in as `use_timesteps=space_timesteps(T, '10,15,20')`. A step from
t_i goes to t_{i+1}, the next timestep of the grid, and the last step to "a = 1" (diffusers'
set_alpha_to_one), as in Song et al.'s code, guided-diffusion and diffusers' DDPMScheduler.
diffusers' DDIMScheduler instead steps to t_i - T // S, which is off the grid for 'trailing'
spacing when T mod S != 0 (e.g. S = 30 of 1000: 999 -> 966, then 966 -> 933 while the grid's
next point is 932); `ddim(..., prev_timestep='offset')` reproduces that, equal to diffusers'
DDIM to float precision; the default 'next' differs from it there, and only there.
dpm++2m defaults to timesteps uniform in log-SNR from T-1 to 0; diffusers' 'linspace' grid is
reachable with `spacing='linspace'` (`dpm_timesteps`).

The predicted x_0 is clipped to [-1, 1] by default (`clip_denoised=True`), as Ho et al.'s
sampler, guided-diffusion and diffusers' clip_sample=True do; for DPM-Solver++ this is its
static thresholding. After clipping, ddim re-derives the eps that re-noises x_0 from the clipped
x_0 (guided-diffusion's ddim_sample), so x_0 and eps stay one consistent pair; diffusers'
DDIMScheduler (use_clipped_model_output=False, its pipeline's default) re-noises with the
network's eps instead, reachable with `eps_from_x0=False`. On the digits DDPM that choice moves
the classifier-feature FD of 500 DDIM-100 samples from 2.88 (diffusers') to 0.93 (unclipped: 0.85;
DPM-Solver++(2M)-20: 0.90; BENCHMARKS.md, the sampler table).

Noise. `key` is either one key (split into one key per sample) or a batch of keys, one per
sample: sample i draws x_T from fold_in(key_i, 0) and the ancestral noise of step j from
fold_in(key_i, j + 1), so a sample depends only on its own key, never on the batch it is in or
on how the batch is sharded.

  x = sample(eps_fn, params, alphas_cumprod, key, (n, 32, 32, 3), sampler='dpm++2m', steps=20)
  images = to_uint8(x)   # uint8 NHWC
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models.diffusion import schedule as schedule_lib

EpsFn = Callable[..., jax.Array]
SAMPLERS = ('ddpm', 'ddim', 'dpm++2m')
SPACINGS = ('leading', 'trailing', 'guided', 'guided_ddim')
VARIANCES = ('fixed_small', 'fixed_large', 'learned_range')
PREV_TIMESTEPS = ('next', 'offset')
ROUNDINGS = ('round', 'floor')
# diffusers' 'fixed_small_log' gives the same standard deviation, exp(log(var) / 2). Its
# 'fixed_large_log' is not accepted: DDPMScheduler.step takes sqrt(log(beta_t)) there (NaN).
_VARIANCE_ALIASES = {'fixed_small_log': 'fixed_small'}
DPM_SPACINGS = ('logsnr', 'uniform', 'linspace')


# ------------------------------------------------------------------------------------------------
# Timesteps and the schedule.
# ------------------------------------------------------------------------------------------------


def _check_schedule(alphas_cumprod) -> np.ndarray:
  a = np.asarray(alphas_cumprod, np.float64)
  if a.ndim != 1 or a.size < 1 or not np.all((a > 0) & (a <= 1)) or np.any(np.diff(a) > 0):
    raise ValueError(f'alphas_cumprod must be a non-increasing 1-D array in (0, 1], got shape '
                     f'{a.shape}, range [{a.min() if a.size else None}, '
                     f'{a.max() if a.size else None}]')
  return a


def space_timesteps(num_train: int, section_counts: str | Sequence[int]) -> np.ndarray:
  """guided-diffusion's `space_timesteps` (respace.py): the kept timesteps, largest first.

  `section_counts` "S1,S2,…" (or a list) splits 0 … T-1 into equal sections (the first T mod n
  one longer) and keeps S_k points of section k, evenly spread over it with both ends included
  (positions accumulated as floats and rounded half to even, as Python's round() there does);
  "ddimS" keeps range(0, T, stride) for the smallest stride that gives S points. E.g. "250",
  "ddim25", "10,15,20".
  """
  spec = section_counts
  if isinstance(spec, str):
    if spec.startswith('ddim'):
      count = _parse_count(spec[len('ddim'):], spec)
      for stride in range(1, num_train):
        if len(range(0, num_train, stride)) == count:
          return np.arange(0, num_train, stride)[::-1].astype(np.int64)
      raise ValueError(f'timestep respacing {spec!r}: no integer stride gives exactly {count} of '
                       f'{num_train} steps')
    spec = [_parse_count(c, section_counts) for c in spec.split(',')]
  kept, start = set(), 0
  for i, count in enumerate(spec):
    size = num_train // len(spec) + (1 if i < num_train % len(spec) else 0)
    if not 1 <= count <= size:
      raise ValueError(f'timestep respacing {section_counts!r}: cannot take {count} steps from a '
                       f'section of {size}')
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):
      kept.add(start + round(position))
      position += stride
    start += size
  return np.array(sorted(kept, reverse=True), np.int64)


def _parse_count(text: str, spec) -> int:
  try:
    return int(text)
  except ValueError:
    raise ValueError(f'timestep respacing {spec!r}: {text!r} is not a step count') from None


def timesteps(num_train: int, steps: int, spacing: str = 'leading') -> np.ndarray:
  """The S timesteps a ddpm/ddim sampler visits, largest first (see the module docstring)."""
  if not 1 <= steps <= num_train:
    raise ValueError(f'steps must be in [1, {num_train}], got {steps}')
  if spacing == 'leading':
    return (np.arange(steps)[::-1] * (num_train // steps)).astype(np.int64)
  if spacing == 'trailing':
    return (np.round(np.arange(num_train, 0, -num_train / steps)) - 1).astype(np.int64)
  if spacing == 'guided':
    return space_timesteps(num_train, [steps])
  if spacing == 'guided_ddim':
    return space_timesteps(num_train, f'ddim{steps}')
  raise ValueError(f'spacing must be one of {SPACINGS}, got {spacing!r}')


def _grid(num_train: int, steps: int | None, spacing: str, use_timesteps) -> np.ndarray:
  """`timesteps(...)`, or `use_timesteps` (any order, distinct, in [0, T)) largest first."""
  if use_timesteps is None:
    return timesteps(num_train, steps or num_train, spacing)
  ts = np.array(sorted({int(t) for t in np.ravel(list(use_timesteps))}, reverse=True))
  if not ts.size or ts[0] >= num_train or ts[-1] < 0:
    raise ValueError(f'use_timesteps must be a non-empty set of timesteps in [0, {num_train}), '
                     f'got {ts.size} from {ts[-1] if ts.size else None} to '
                     f'{ts[0] if ts.size else None}')
  if steps is not None and steps != ts.size:
    raise ValueError(f'steps={steps} but use_timesteps holds {ts.size} distinct timesteps')
  return ts.astype(np.int64)


def dpm_timesteps(alphas_cumprod, steps: int, spacing: str = 'logsnr') -> np.ndarray:
  """DPM-Solver's S evaluation timesteps, largest first; after the last comes sigma = 0.

  'logsnr' (default): uniform in lambda = log(alpha / sigma) from t = T-1 to t = 0, each point
  rounded to the nearest timestep: Lu et al.'s choice for low-resolution images, and the one
  whose steps stay comparable in lambda, which the 2M extrapolation needs (r = h_prev / h).
  'uniform': round(linspace(T-1, 0, S)), ending on t = 0 as DDPM and DDIM do.
  'linspace': diffusers' DPMSolverMultistepScheduler, round(linspace(0, T-1, S+1)) reversed
  without t = 0, so its last step jumps from t ~ T/S straight to sigma = 0.
  On the Gaussian test problem at 10 NFE, the RMS distance to the 1,000-step ODE solution is
  0.004 (logsnr), 0.026 (uniform), 0.085 (linspace), against 0.078 for DDIM-10.
  """
  a = _check_schedule(alphas_cumprod)
  num_train = a.size
  if not 2 <= steps < num_train:
    raise ValueError(f'steps must be in [2, {num_train - 1}], got {steps}')
  if spacing == 'linspace':
    return np.linspace(0, num_train - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
  if spacing == 'uniform':
    return np.linspace(num_train - 1, 0, steps).round().astype(np.int64)
  if spacing == 'logsnr':
    lam = 0.5 * (np.log(a) - np.log1p(-a))             # increasing as t decreases
    grid = np.linspace(lam[-1], lam[0], steps)
    ts = np.abs(lam[None, :] - grid[:, None]).argmin(1)
    if np.any(np.diff(ts) >= 0):
      raise ValueError(f'logsnr spacing: {steps} steps do not map to distinct timesteps')
    return ts.astype(np.int64)
  raise ValueError(f'spacing must be one of {DPM_SPACINGS}, got {spacing!r}')


def _prev_alphas(a: np.ndarray, ts: np.ndarray) -> np.ndarray:
  """a at the timestep after each of `ts`; 1 after the last (diffusers' set_alpha_to_one)."""
  return np.concatenate([a[ts[1:]], [1.0]])


# ------------------------------------------------------------------------------------------------
# Shared pieces.
# ------------------------------------------------------------------------------------------------


def _sample_keys(key, batch: int) -> jax.Array:
  """One key per sample: `key` split into `batch` keys, or `key` itself when it is a batch."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  single = key.ndim == (0 if typed else 1)
  keys = jax.random.split(key, batch) if single else key
  if keys.shape[0] != batch:
    raise ValueError(f'got {keys.shape[0]} sample keys for a batch of {batch}')
  return keys


def _normal(keys, index: int | jax.Array, shape: Sequence[int]) -> jax.Array:
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, index), tuple(shape)))(keys)


def _call(eps_fn: EpsFn, params, x, t, y):
  """(eps, v): the model's output split on channels; v is None unless it has 2C channels."""
  tt = jnp.full((x.shape[0],), t, jnp.int32)
  out = (eps_fn(params, x, tt) if y is None else eps_fn(params, x, tt, y)).astype(jnp.float32)
  c = x.shape[-1]
  if out.shape[-1] == c:
    return out, None
  if out.shape[-1] == 2 * c:
    return out[..., :c], out[..., c:]
  raise ValueError(f'eps_fn returned {out.shape[-1]} channels for x_t of {c}: expected {c} (eps) '
                   f'or {2 * c} (eps and a learned variance v)')


def _x0(x, eps, a_t, clip: bool):
  x0 = schedule_lib.predict_x0(x, eps, a_t)
  return jnp.clip(x0, -1.0, 1.0) if clip else x0


def _f32(*arrays):
  return tuple(jnp.asarray(v, jnp.float32) for v in arrays)


# ------------------------------------------------------------------------------------------------
# The samplers.
# ------------------------------------------------------------------------------------------------


def ddpm(eps_fn: EpsFn, params: Any, alphas_cumprod, key, shape: Sequence[int], *,
         steps: int | None = None, y=None, variance: str = 'fixed_small',
         spacing: str = 'leading', use_timesteps=None, clip_denoised: bool = True) -> jax.Array:
  """Ancestral sampling (Ho et al. Alg. 2; diffusers' DDPMScheduler.step, guided-diffusion's
  p_sample), one evaluation per timestep of `timesteps(T, steps, spacing)` or `use_timesteps`."""
  a = _check_schedule(alphas_cumprod)
  variance = _VARIANCE_ALIASES.get(variance, variance)
  if variance not in VARIANCES:
    raise ValueError(f'variance must be one of {VARIANCES}, got {variance!r}')
  ts = _grid(a.size, steps, spacing, use_timesteps)
  a_t, a_prev = a[ts], _prev_alphas(a, ts)
  beta = 1.0 - a_t / a_prev
  coef_x0 = np.sqrt(a_prev) * beta / (1.0 - a_t)
  coef_xt = np.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a_t)
  small = (1 - a_prev) / (1 - a_t) * beta                 # beta-tilde, 0 on the step to a = 1
  var = beta if variance == 'fixed_large' else np.maximum(small, 1e-20)
  std = np.where(ts > 0, np.sqrt(var), 0.0)   # no noise on the step that lands on x_0
  # learned_range: log beta-tilde with the last step's (log 0) replaced by the step before's.
  min_log = np.log(np.maximum(np.concatenate([small[:-1], small[-2:-1] if ts.size > 1
                                              else beta[-1:]]), 1e-20))
  max_log = np.log(beta)
  learned = variance == 'learned_range'
  keys = _sample_keys(key, shape[0])
  x = _normal(keys, 0, shape[1:])

  def step(x, inputs):
    j, t, a_t, c0, ct, s, lo, hi = inputs
    eps, v = _call(eps_fn, params, x, t, y)
    if learned:
      if v is None:
        raise ValueError("variance='learned_range' needs a model that outputs eps and v "
                         f'({2 * x.shape[-1]} channels); this one outputs {x.shape[-1]}')
      frac = (v + 1.0) / 2.0
      s = jnp.where(t > 0, jnp.exp(0.5 * (frac * hi + (1.0 - frac) * lo)), 0.0)
    x0 = _x0(x, eps, a_t, clip_denoised)
    x = c0 * x0 + ct * x + s * _normal(keys, j + 1, shape[1:])
    return x, None

  inputs = (jnp.arange(ts.size), jnp.asarray(ts, jnp.int32)) + _f32(
      a_t, coef_x0, coef_xt, std, min_log, max_log)
  x, _ = jax.lax.scan(step, x, inputs)
  return jnp.clip(x, -1.0, 1.0)


def ddim(eps_fn: EpsFn, params: Any, alphas_cumprod, key, shape: Sequence[int], *,
         steps: int | None = None, y=None, spacing: str = 'leading', use_timesteps=None,
         prev_timestep: str = 'next', eps_from_x0: bool = True,
         clip_denoised: bool = True) -> jax.Array:
  """DDIM with eta = 0 (Song et al. Eq. 12; diffusers' DDIMScheduler.step), `steps` evaluations.

  The eps that re-noises x_0 is re-derived from the clipped x_0, as guided-diffusion's
  ddim_sample; `eps_from_x0=False` keeps the network's, as diffusers' DDIMScheduler.
  `prev_timestep` 'next' steps to the next timestep of the grid; 'offset' to t - T // S, as
  diffusers' DDIMScheduler (different only for 'trailing' spacing with T mod S != 0).
  """
  a = _check_schedule(alphas_cumprod)
  ts = _grid(a.size, steps, spacing, use_timesteps)
  a_t, a_prev = a[ts], _prev_alphas(a, ts)
  if prev_timestep == 'offset':
    prev = ts - a.size // ts.size
    a_prev = np.where(prev >= 0, a[np.maximum(prev, 0)], 1.0)
  elif prev_timestep != 'next':
    raise ValueError(f'prev_timestep must be one of {PREV_TIMESTEPS}, got {prev_timestep!r}')
  x = _normal(_sample_keys(key, shape[0]), 0, shape[1:])

  def step(x, inputs):
    t, a_t, a_prev = inputs
    eps, _ = _call(eps_fn, params, x, t, y)
    x0 = _x0(x, eps, a_t, clip_denoised)
    if eps_from_x0:
      eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None

  x, _ = jax.lax.scan(step, x, (jnp.asarray(ts, jnp.int32),) + _f32(a_t, a_prev))
  return jnp.clip(x, -1.0, 1.0)


def dpm_solver_pp_2m(eps_fn: EpsFn, params: Any, alphas_cumprod, key, shape: Sequence[int], *,
                     steps: int, y=None, spacing: str = 'logsnr',
                     clip_denoised: bool = True) -> jax.Array:
  """DPM-Solver++(2M), Lu et al. 2022 Alg. 2 (diffusers' 'midpoint' form), `steps` evaluations.

  With alpha = sqrt(a), sigma = sqrt(1 - a), lambda = log(alpha / sigma), h_i = lambda_{i+1} -
  lambda_i and D the data prediction, a step from t_i to t_{i+1} is
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} (exp(-h_i) - 1) (D_i + (D_i - D_{i-1})
              / (2 r_i)),  r_i = h_{i-1} / h_i,
  first order (the D_{i-1} term dropped) on the first step and on the last, which goes to
  sigma = 0 and so returns D of the last evaluation.
  """
  a = _check_schedule(alphas_cumprod)
  ts = dpm_timesteps(a, steps, spacing)
  alpha, sigma = np.sqrt(a[ts]), np.sqrt(1.0 - a[ts])
  lam = np.log(alpha) - np.log(sigma)
  # Target of each step: the next timestep, then sigma = 0 (alpha = 1, lambda = +inf).
  alpha_next = np.concatenate([alpha[1:], [1.0]])
  sigma_next = np.concatenate([sigma[1:], [0.0]])
  h = np.concatenate([np.diff(lam), [np.inf]])
  h_prev = np.concatenate([[np.nan], h[:-1]])
  second = np.isfinite(h) & np.isfinite(h_prev)          # 2nd order except first and last
  half_over_r = np.where(second, h / np.where(second, h_prev, 1.0) / 2.0, 0.0)
  x_coef = sigma_next / sigma
  d_coef = -alpha_next * np.expm1(-h)                     # exp(-inf) - 1 = -1 on the last step
  x = _normal(_sample_keys(key, shape[0]), 0, shape[1:])

  def step(carry, inputs):
    x, d_prev = carry
    t, a_t, xc, dc, hr = inputs
    d = _x0(x, _call(eps_fn, params, x, t, y)[0], a_t, clip_denoised)
    x = xc * x + dc * (d + hr * (d - d_prev))
    return (x, d), None

  inputs = (jnp.asarray(ts, jnp.int32),) + _f32(a[ts], x_coef, d_coef, half_over_r)
  (x, _), _ = jax.lax.scan(step, (x, jnp.zeros_like(x)), inputs)
  return jnp.clip(x, -1.0, 1.0)


def sample(eps_fn: EpsFn, params: Any, alphas_cumprod, key, shape: Sequence[int], *,
           sampler: str, steps: int, y=None, clip_denoised: bool = True,
           **options) -> jax.Array:
  """Samples `shape` (NHWC) in [-1, 1] with the named sampler; `options` go to that sampler."""
  if sampler == 'ddpm':
    fn = ddpm
  elif sampler == 'ddim':
    fn = ddim
  elif sampler == 'dpm++2m':
    fn = dpm_solver_pp_2m
  else:
    raise ValueError(f'sampler must be one of {SAMPLERS}, got {sampler!r}')
  return fn(eps_fn, params, alphas_cumprod, key, tuple(shape), steps=steps, y=y,
            clip_denoised=clip_denoised, **options)


def to_uint8(x: jax.Array, rounding: str = 'round') -> jax.Array:
  """[-1, 1] floats -> uint8 NHWC images: (x + 1) * 127.5 rounded as diffusers' pipelines do, or
  with `rounding='floor'` truncated as guided-diffusion's image_sample.py does (half a level
  darker on average)."""
  if rounding not in ROUNDINGS:
    raise ValueError(f'rounding must be one of {ROUNDINGS}, got {rounding!r}')
  scaled = (jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5
  return (jnp.round(scaled) if rounding == 'round' else jnp.floor(scaled)).astype(jnp.uint8)
