"""EDM's preconditioning: the denoiser D(x, sigma) = c_skip x + c_out F(c_in x, c_noise).

Karras et al. 2022 (EDM), as NVlabs/edm `training/networks.py` writes it:

  EDMPrecond  c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
              c_in = 1 / sqrt(sd^2 + sigma^2),   c_noise = ln(sigma) / 4          (sd = sigma_data)
  VPPrecond   c_skip = 1,  c_out = -sigma,  c_in = 1 / sqrt(sigma^2 + 1),
              c_noise = (M - 1) sigma^-1(sigma), with sigma(t) = sqrt(exp(beta_d t^2 / 2 +
              beta_min t) - 1) (Song et al.'s VP SDE) and its inverse; the released
              edm-cifar10-32x32-*-vp checkpoints use it (beta_d 19.9, beta_min 0.1, M 1000,
              epsilon_t 1e-5).

As in the reference, x and sigma enter in float32 whatever the caller's dtype (a float64 sampler
state included), the network runs in its compute dtype, and D comes out in float32.
`Precond.sigma_min` / `sigma_max` are the noise levels the preconditioning supports (VP: sigma
(epsilon_t) and sigma(1); EDM: 0 and inf by default), which the sampler clamps its range to.

`make_denoiser(model, precond)` gives the pure function of DESIGN.md,
`denoiser(params, x, sigma, y=None, *, augment_labels=None, dropout_key=None) -> D`, with
dropout (and label dropout) only when `dropout_key` is given.
"""

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from models.diffusion.edm import network as song_unet

KINDS = ('edm', 'vp')


@dataclasses.dataclass(frozen=True)
class Precond:
  """The preconditioning of a denoiser; fields and defaults as the reference's classes."""
  kind: str = 'edm'
  sigma_data: float = 0.5        # EDM: the data's expected standard deviation
  edm_sigma_min: float = 0.0     # EDM: the lowest and highest supported noise levels
  edm_sigma_max: float = math.inf
  beta_d: float = 19.9           # VP: extent of the noise level schedule
  beta_min: float = 0.1          # VP: its initial slope
  M: int = 1000                  # VP: timesteps of the DDPM formulation
  epsilon_t: float = 1e-5        # VP: the lowest t used in training

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'Precond kind must be one of {KINDS}, got {self.kind!r}.')

  @property
  def sigma_min(self) -> float:
    return float(vp_sigma(self, self.epsilon_t)) if self.kind == 'vp' else self.edm_sigma_min

  @property
  def sigma_max(self) -> float:
    return float(vp_sigma(self, 1.0)) if self.kind == 'vp' else self.edm_sigma_max

  def to_dict(self) -> dict[str, Any]:
    return {k: (None if v == math.inf else v) for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, d: dict[str, Any], *, source: str = 'precond') -> 'Precond':
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f'{source}: unknown precond keys {unknown}; known: {sorted(names)}.')
    d = dict(d)
    if d.get('edm_sigma_max', 0.0) is None:  # JSON has no inf
      d['edm_sigma_max'] = math.inf
    try:
      return cls(**d)
    except (TypeError, ValueError) as e:
      raise ValueError(f'{source}: {e}') from None


def vp_sigma(p: Precond, t):
  """Song et al.'s VP noise level at time t in [epsilon_t, 1] (numpy, jax or float)."""
  mod = jnp if isinstance(t, jax.Array) else np
  return mod.sqrt(mod.expm1(0.5 * p.beta_d * t ** 2 + p.beta_min * t))


def vp_sigma_inv(p: Precond, sigma: jax.Array) -> jax.Array:
  """t of noise level sigma: (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d.

  ln(1 + sigma^2), not log1p: the released networks were trained on the reference's float32
  rounding of it (up to 1.5% off in sigma^2 at sigma = 0.002), and c_noise must match theirs.
  """
  root = jnp.sqrt(p.beta_min ** 2 + 2 * p.beta_d * jnp.log(1 + sigma ** 2))
  return (root - p.beta_min) / p.beta_d


def coefficients(p: Precond, sigma: jax.Array) -> tuple[jax.Array, ...]:
  """(c_skip, c_out, c_in, c_noise) of float32 `sigma`, each of sigma's shape."""
  if p.kind == 'vp':
    return (jnp.ones_like(sigma), -sigma, 1 / jnp.sqrt(sigma ** 2 + 1),
            (p.M - 1) * vp_sigma_inv(p, sigma))
  sd2 = p.sigma_data ** 2
  return (sd2 / (sigma ** 2 + sd2), sigma * p.sigma_data / jnp.sqrt(sigma ** 2 + sd2),
          1 / jnp.sqrt(sd2 + sigma ** 2), jnp.log(sigma) / 4)


Denoiser = Callable[..., jax.Array]


def make_denoiser(model: song_unet.SongUNet, precond: Precond) -> Denoiser:
  """`denoiser(params, x, sigma, y=None, *, augment_labels=None, dropout_key=None) -> D`.

  x: (B, H, W, C) noisy images in the model's scale ([-1, 1] data plus noise of level sigma);
  sigma: a scalar or (B,); y: class labels for a class-conditional network ((B,) ints or
  (B, label_dim) vectors); augment_labels: (B, augment_dim) for a network trained with EDM's
  augmentation (None at sampling). Pure; float32 D of x's shape.
  """
  def denoiser(params, x, sigma, y=None, *, augment_labels=None,
               dropout_key: Optional[jax.Array] = None):
    x = jnp.asarray(x).astype(jnp.float32)
    sigma = jnp.broadcast_to(jnp.asarray(sigma).astype(jnp.float32).reshape(-1),
                             (x.shape[0],))
    c_skip, c_out, c_in, c_noise = coefficients(precond, sigma)
    col = lambda c: c[:, None, None, None]
    rngs = None if dropout_key is None else {'dropout': dropout_key}
    f = model.apply({'params': params}, col(c_in) * x, c_noise, y, augment_labels,
                    train=dropout_key is not None, rngs=rngs)
    return col(c_skip) * x + col(c_out) * f
  return denoiser
