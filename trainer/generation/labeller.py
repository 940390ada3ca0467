"""Pseudo-labels: a classifier's arg-max class of each image and that class's softmax probability
(its score, for top-K), as the paper labels generated data with a non-robust classifier."""
import jax
import jax.numpy as jnp
import numpy as np

from data import images as images_lib
from trainer import sharding


def predict(model, variables, images):
  """(labels, scores) of images, uint8 or float in [0, 1] (traced)."""
  probs = jax.nn.softmax(model.apply(variables, images_lib.to_float(images), train=False))
  return jnp.argmax(probs, -1), jnp.max(probs, -1)


def on_mesh(model, variables, mesh):
  """`label(uint8 images already on the mesh) -> (labels, scores)` on the devices, jitted."""
  variables = jax.device_put(sharding.host_copy(variables), sharding.replicated(mesh))
  jitted = jax.jit(lambda v, x: predict(model, v, x))
  return lambda images: jitted(variables, images)


def on_host(model, variables, batch_size, mesh=None):
  """`label(uint8 numpy images) -> (int64 labels, float32 scores)`, batches split over the mesh."""
  apply = sharding.batched_apply(lambda x: predict(model, variables, x),
                                 mesh or sharding.make_mesh(), batch_size)

  def label(images):
    labels, scores = apply(images)
    return np.asarray(labels, np.int64), np.asarray(scores, np.float32)
  return label
