"""Samples identified by id: sample i is drawn from the noise fold_in(key, i), whatever the mesh.

The one way generated images are made on the devices, for shards (trainer/generation/sample.py)
and for the training grid (trainer/diffusion/grid.py), whichever sampler makes them: because a
sample's noise depends on its id alone, a set does not change with the device count, the host
count, padding or a restart.
"""
import jax
import jax.numpy as jnp

from models.diffusion import samplers
from trainer import sharding


def sample_ids(sample_fn, key, ids, image_shape, *, y=None, mesh=None):
  """uint8 images of the samples `ids` (traced; split over `mesh`'s devices when given).

  `sample_fn(keys, shape, y) -> images in the model's [-1, 1] scale` draws sample j from
  keys[j] (every sampler of models/diffusion does: samplers.sample, edm_sampler.sample).
  """
  if mesh is not None:
    ids = jax.lax.with_sharding_constraint(ids, sharding.batch_sharding(mesh))
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
  return samplers.to_uint8(sample_fn(keys, (ids.shape[0],) + tuple(image_shape), y))


def class_of(ids, num_classes):
  """The class a conditional generator draws sample `id` for: id mod classes, balanced."""
  return (ids % num_classes).astype(jnp.int32)
