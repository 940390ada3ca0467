"""What one kind of generator brings to the generator task (trainer/diffusion/generator.py)."""
from typing import Any

import jax
import jax.numpy as jnp
import optax


class Objective:
  """What one kind of generator brings to the generator task."""
  name: str                    # 'ddpm', 'edm': the checkpoint and manifest say it
  num_classes: int | None      # a class-conditional network's classes
  image_shape: tuple

  def init_params(self, key) -> Any:
    raise NotImplementedError

  def optimizer(self) -> optax.GradientTransformation:
    raise NotImplementedError

  def loss(self, params, x0, y, key) -> jax.Array:
    """The scalar loss of clean images x0 in [-1, 1] (labels y or None); key: its noise."""
    raise NotImplementedError

  def ema(self, ema, params, step) -> Any:
    raise NotImplementedError

  def grid_sampler(self, params):
    """`sample(keys, shape, y) -> images in [-1, 1]` from these parameters (traced)."""
    raise NotImplementedError

  def check_grid(self, config) -> None:
    """Refuses grid settings the sampler cannot take, naming the key."""

  def save(self, path, params, source) -> None:
    raise NotImplementedError


def to_model_scale(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the scale the models and samplers work in."""
  return images.astype(jnp.float32) / 127.5 - 1.0
