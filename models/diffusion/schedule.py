"""The DDPM noise schedule: betas, and alpha_bar_t = prod_{s<=t} (1 - beta_s).

Ho et al. (2020): linear betas from 1e-4 to 0.02 over T = 1000 steps; q(x_t | x_0) =
N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), with t = 0 the first (least noisy) step, as
diffusers indexes it. Also the other `beta_schedule`s of diffusers' `DDPMScheduler` (same
formulas; computed here in float64, diffusers computes in float32), `trained_betas` and
`rescale_betas_zero_snr`, so a diffusers `scheduler_config.json` turns into the same schedule.
"""

import dataclasses
import json
import math
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ('linear', 'scaled_linear', 'squaredcos_cap_v2', 'sigmoid', 'laplace')
VARIANCE_TYPES = ('fixed_small', 'fixed_small_log', 'fixed_large', 'fixed_large_log',
                  'learned_range')
# DDPMScheduler keys about sampling-time details (thresholding, spacing of inference steps) that
# do not change the schedule; they are not carried over.
_IGNORED_KEYS = ('_class_name', '_diffusers_version', 'thresholding', 'dynamic_thresholding_ratio',
                 'sample_max_value', 'timestep_spacing', 'steps_offset')


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A discrete-time VP noise schedule of `num_timesteps` steps.

  Attributes:
    betas: (T,) float64, beta_t for t = 0..T-1.
    variance_type: the reverse-process variance the model was released with ('fixed_small' is
      Ho et al.'s sigma_t^2 = beta~_t, 'fixed_large' is beta_t, 'learned_range' Nichol &
      Dhariwal's interpolation of their logs by the model's second output, v; ADM's).
    clip_sample: whether DDPM sampling clips the predicted x_0 to [-clip_sample_range, +range].
    clip_sample_range: see clip_sample.
  """
  betas: np.ndarray
  variance_type: str = 'fixed_small'
  clip_sample: bool = True
  clip_sample_range: float = 1.0

  def __post_init__(self):
    betas = np.asarray(self.betas, np.float64)
    if betas.ndim != 1 or not len(betas) or not np.all((betas > 0) & (betas <= 1)):
      raise ValueError(f'Schedule: betas must be a non-empty 1-D array in (0, 1], got shape '
                       f'{betas.shape}, range [{betas.min(initial=0)}, {betas.max(initial=0)}].')
    if self.variance_type not in VARIANCE_TYPES:
      raise ValueError(f'Schedule: variance_type {self.variance_type!r} not in {VARIANCE_TYPES}.')
    object.__setattr__(self, 'betas', betas)

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """(T,) float64 alpha_bar_t."""
    return np.cumprod(1.0 - self.betas)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready; betas as a list of floats (exact: JSON floats round-trip float64)."""
    return {'betas': self.betas.tolist(), 'variance_type': self.variance_type,
            'clip_sample': self.clip_sample, 'clip_sample_range': self.clip_sample_range}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'Schedule':
    return cls(betas=np.asarray(d['betas'], np.float64), variance_type=d['variance_type'],
               clip_sample=d['clip_sample'], clip_sample_range=d['clip_sample_range'])


def add_noise(alphas_cumprod, x0, t, eps):
  """Ho et al.'s forward process: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps for (B,) timesteps t."""
  a = jnp.asarray(alphas_cumprod)[t][:, None, None, None]
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps


def predict_x0(x_t, eps, a_t):
  """Its inverse: the x_0 that the noise `eps` explains at x_t (a_t the cumulated alpha)."""
  return (x_t - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)


def ho_linear(num_timesteps: int = 1000, beta_start: float = 1e-4,
              beta_end: float = 0.02) -> Schedule:
  """Ho et al.'s schedule (the default: 1000 linear steps from 1e-4 to 0.02)."""
  return Schedule(betas=np.linspace(beta_start, beta_end, num_timesteps))


def _alpha_bar_betas(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
  """diffusers' `betas_for_alpha_bar`: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
  i = np.arange(num_timesteps, dtype=np.float64)
  ratio = alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps)
  return np.minimum(1.0 - ratio, max_beta)


def _laplace_alpha_bar(t):
  lmb = -0.5 * np.sign(0.5 - t) * np.log(1 - 2 * np.abs(0.5 - t) + 1e-6)
  snr = np.exp(lmb)
  return np.sqrt(snr / (1 + snr))


def betas_for(beta_schedule: str, num_timesteps: int, beta_start: float,
              beta_end: float) -> np.ndarray:
  """The betas of a diffusers `beta_schedule` name; a clear error for an unknown one."""
  if beta_schedule == 'linear':
    return np.linspace(beta_start, beta_end, num_timesteps)
  if beta_schedule == 'scaled_linear':
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps) ** 2
  if beta_schedule == 'squaredcos_cap_v2':
    return _alpha_bar_betas(
        num_timesteps, lambda t: np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
  if beta_schedule == 'laplace':
    return _alpha_bar_betas(num_timesteps, _laplace_alpha_bar)
  if beta_schedule == 'sigmoid':
    x = np.linspace(-6.0, 6.0, num_timesteps)
    return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start
  raise ValueError(f'beta_schedule {beta_schedule!r} is not supported; use one of '
                   f'{BETA_SCHEDULES} or trained_betas.')


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. (2023), Alg. 1, as diffusers' `rescale_zero_terminal_snr`: alpha_bar_T = 0."""
  sqrt_abar = np.sqrt(np.cumprod(1.0 - betas))
  first, last = sqrt_abar[0], sqrt_abar[-1]
  sqrt_abar = (sqrt_abar - last) * first / (first - last)
  abar = sqrt_abar ** 2
  alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
  return 1.0 - alphas


def from_scheduler_config(config: dict[str, Any], *, source: str = 'scheduler config') -> Schedule:
  """The schedule of a diffusers `DDPMScheduler` config (its defaults for missing keys).

  Raises:
    ValueError: naming `source` and the key, for a prediction type other than epsilon (our
      eps_fn contract), an unsupported beta_schedule or variance_type, or an unknown key.
  """
  c = dict(config)
  prediction = c.pop('prediction_type', 'epsilon')
  if prediction != 'epsilon':
    raise ValueError(f'{source}: prediction_type {prediction!r} is not supported; the generator '
                     'contract is an eps-prediction model.')
  num = int(c.pop('num_train_timesteps', 1000))
  start, end = float(c.pop('beta_start', 1e-4)), float(c.pop('beta_end', 0.02))
  name = c.pop('beta_schedule', 'linear')
  trained = c.pop('trained_betas', None)
  try:
    betas = (np.asarray(trained, np.float64) if trained is not None
             else betas_for(name, num, start, end))
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None
  if c.pop('rescale_betas_zero_snr', False):
    betas = rescale_zero_terminal_snr(betas)
  variance_type = c.pop('variance_type', 'fixed_small')
  clip, clip_range = bool(c.pop('clip_sample', True)), float(c.pop('clip_sample_range', 1.0))
  unknown = sorted(k for k in c if k not in _IGNORED_KEYS)
  if unknown:
    raise ValueError(f'{source}: unknown DDPMScheduler keys {unknown}.')
  try:
    return Schedule(betas=betas, variance_type=variance_type, clip_sample=clip,
                    clip_sample_range=clip_range)
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None


def load_scheduler_config(path: str) -> Schedule:
  """From a `scheduler_config.json` file (or a directory holding one)."""
  if os.path.isdir(path):
    path = os.path.join(path, 'scheduler_config.json')
  with open(path) as f:
    return from_scheduler_config(json.load(f), source=path)


