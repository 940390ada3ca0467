"""Images are uint8 in storage and on the host-to-device path, float32 in [0, 1] on the devices.

`to_float` is the one place the conversion happens, inside jitted code: a uint8 batch crosses to
the devices at a quarter of float32's bytes.
"""
import jax.numpy as jnp


def to_float(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [0, 255] → float32 [0, 1]; float images pass through unchanged."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images
