"""EDM's training loss (Karras et al. 2022, Sec. 5; NVlabs/edm `training/loss.py`, `EDMLoss`).

For a clean batch y (in [-1, 1]) with labels, each example draws its own noise level and noise,

  ln(sigma) ~ N(P_mean, P_std^2)        (P_mean = -1.2, P_std = 1.2)
  n ~ N(0, sigma^2 I)
  loss = lambda(sigma) ||D(y + n, sigma) - y||^2,  lambda(sigma) = (sigma^2 + sigma_data^2) /
         (sigma sigma_data)^2             (sigma_data = 0.5)

λ(σ) is 1 / c_out(σ)^2 of EDM's preconditioning, so the network's own target has unit weight at
every noise level. The reference returns the weighted squared error per pixel and trains on
`loss.sum() / batch`; `edm_loss` returns the per-example sums, whose mean is that objective.

Dropout: the denoiser runs with a dropout key (train mode). Augmentation: the reference's
non-leaking pipeline (`AugmentPipe`) turns y into an augmented y and augmentation labels that
condition the network; `augment(key, images) -> (images, augment_labels)` plugs such a pipeline
in (none is built here; the network takes the labels, `song_unet` `augment_dim`).
"""
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

P_MEAN = -1.2
P_STD = 1.2
SIGMA_DATA = 0.5


def sample_sigma(key: jax.Array, batch: int, p_mean: float = P_MEAN,
                 p_std: float = P_STD) -> jax.Array:
  """(B,) noise levels, exp(N(p_mean, p_std^2))."""
  return jnp.exp(jax.random.normal(key, (batch,)) * p_std + p_mean)


def loss_weight(sigma: jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
  """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def loss_given(denoiser: Callable, params: Any, images: jax.Array, sigma: jax.Array,
               noise: jax.Array, *, y=None, augment_labels=None,
               sigma_data: float = SIGMA_DATA,
               dropout_key: Optional[jax.Array] = None) -> jax.Array:
  """The loss for given draws: sigma (B,), unit noise (B, H, W, C); per-example sums (B,)."""
  noisy = images + noise * sigma[:, None, None, None]
  d = denoiser(params, noisy, sigma, y, augment_labels=augment_labels, dropout_key=dropout_key)
  per_pixel = loss_weight(sigma, sigma_data)[:, None, None, None] * (d - images) ** 2
  return per_pixel.sum(axis=(1, 2, 3))


def edm_loss(denoiser: Callable, params: Any, images: jax.Array, key: jax.Array, *, y=None,
             p_mean: float = P_MEAN, p_std: float = P_STD, sigma_data: float = SIGMA_DATA,
             dropout: bool = True,
             augment: Optional[Callable[[jax.Array, jax.Array], tuple]] = None) -> jax.Array:
  """EDM's loss of a batch; per-example sums (B,) (train on their mean).

  Args:
    denoiser: `edm_precond.make_denoiser(...)`.
    params: its parameters (differentiate with respect to these).
    images: (B, H, W, C) float in [-1, 1].
    key: the batch's randomness (noise levels, noise, dropout, augmentation).
    y: class labels for a conditional network.
    p_mean, p_std, sigma_data: EDM's training distribution of noise levels and data scale.
    dropout: run the network in train mode (dropout, label dropout).
    augment: an augmentation pipeline, `augment(key, images) -> (images, augment_labels)`.
  """
  k_sigma, k_noise, k_drop, k_aug = jax.random.split(key, 4)
  augment_labels = None
  if augment is not None:
    images, augment_labels = augment(k_aug, images)
  images = images.astype(jnp.float32)
  sigma = sample_sigma(k_sigma, images.shape[0], p_mean, p_std)
  noise = jax.random.normal(k_noise, images.shape)
  return loss_given(denoiser, params, images, sigma, noise, y=y, augment_labels=augment_labels,
                    sigma_data=sigma_data, dropout_key=k_drop if dropout else None)
