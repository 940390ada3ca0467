"""Samples a diffusion generator into a pseudo-labelled shard set, on every device of every host.

The generator is any checkpoint models/diffusion/generators.py loads: a DDPM or an ADM (e.g.
google/ddpm-cifar10-32 imported from diffusers, guided-diffusion's ImageNet models) with the
ε-samplers, or an EDM generator with Heun's or Euler's. Each batch is sampled and, with --classifier
(a training workdir), pseudo-labelled on the devices: label = arg-max class, score = its softmax
probability. Without a classifier the generator must be class-conditional: sample i is drawn for
class i mod classes. With --class_balanced the set holds num / classes of each class (the paper's
"until we have 100K images for each class"). Sample i's noise is a function of (seed, i) alone, so
the set does not depend on the device count, the host count or a restart: killed and run again
with the same command, it finishes with exactly N samples, each once (data/generation/sampling.py).

Multi-host: each host samples its own batches on its own devices and writes its own shards; the
set's manifest lists them all.
"""
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from data import real
from data.generation import gaussian_fit
from data.generation import sampling
from models.diffusion import generators
from trainer import sharding
from trainer.generation import labeller
from trainer.generation import mesh_sampler
from trainer.robust import classifier as classifier_lib

def local_mesh():
  """A ('data', 'fsdp') mesh of this host's devices, the batch over all of them."""
  return sharding.make_mesh(devices=jax.local_devices())


def make_sample_batch(draw: Callable, params: Any, mesh, *, batch_size: int, image_shape,
                      num_classes: int | None = None, class_map=None) -> Callable:
  """`sample_batch(key, b) -> uint8 images` (and labels for a conditional generator), jitted.

  `draw(params, keys, shape, y)` is the generator's sampler (models/diffusion/generators.py).
  Sample id = b * batch_size + row, drawn by mesh_sampler (noise fold_in(key, id)) and, when
  conditional, labelled id mod num_classes; with `class_map` (the generator's class for each of
  those labels, e.g. TinyImageNet's 200 inside ImageNet's 1,000) the generator is asked for
  class_map[label]. The batch is split over the mesh's devices.
  """
  if batch_size % mesh.size:
    raise ValueError(f'--batch_size={batch_size} must be a multiple of the {mesh.size} devices '
                     f'of this host')
  batch = sharding.batch_sharding(mesh)
  params = jax.device_put(sharding.host_copy(params), sharding.replicated(mesh))

  def fn(params, key, b):
    ids = b.astype(jnp.uint32) * batch_size + jnp.arange(batch_size, dtype=jnp.uint32)
    y = None if not num_classes else mesh_sampler.class_of(ids, num_classes)
    asked = y if class_map is None else jnp.asarray(class_map, jnp.int32)[y]
    images = mesh_sampler.sample_ids(lambda keys, shape, y: draw(params, keys, shape, y), key,
                                     ids, image_shape, y=asked, mesh=mesh)
    return images if y is None else (images, y)

  jitted = jax.jit(fn, out_shardings=batch if not num_classes else (batch, batch))
  return lambda key, b: jitted(params, key, jnp.uint32(b))


def sample_to_shards(generator_path: str, out: str, *, num: int, num_shards: int, sampler: str,
                     steps: int | None = None, seed: int = 0, classifier: str | None = None,
                     checkpoint: str = 'best', top_k: int = 0, class_balanced: bool = False,
                     max_candidates: int = 0, batch_size: int = 256, dtype: str = 'float32',
                     classes=None, encoding: str = 'raw', jpeg_quality: int = 95,
                     sampler_options: dict | None = None,
                     progress: bool = True) -> sampling.SamplingResult:
  """Loads the generator (and classifier), builds the jitted functions, writes the set.

  `class_balanced`: num / classes of each class, drawn class by class from a conditional
  generator without a classifier, else the first of each pseudo-label class in the sample stream
  (at most `max_candidates` drawn; data/generation/sampling.py). `classes`: a class-conditional
  generator sampled for these of its classes only (no classifier), label i of the set being
  classes[i]. `encoding`: how the shards store images (raw, png, jpeg). `sampler_options` go to
  the sampler (e.g. {'spacing': 'guided'}, guided-diffusion's respacing).
  """
  if not 1 <= num < 2 ** 32:
    raise ValueError(f'--num={num}: sample ids are 32-bit, so 1 <= num < 2^32')
  generator = generators.load(generator_path, dtype=dtype)
  steps = steps or generators.default_steps(generator, sampler)
  draw = generators.sampling_fn(generator, sampler, steps, **(sampler_options or {}))
  mesh = local_mesh()
  num_classes, label_batch = generator.num_classes, None
  if classifier:
    config, model, variables = classifier_lib.load(classifier, checkpoint)
    info = real.info(config.dataset)
    if tuple(info.shape) != tuple(generator.image_shape):
      raise ValueError(f'{generator_path}: generates images of shape {generator.image_shape}, '
                       f'but the classifier in {classifier} was trained on '
                       f'{config.dataset.name} images of shape {tuple(info.shape)}')
    if num_classes and num_classes != info.num_classes:
      raise ValueError(f'{generator_path}: a generator of {num_classes} classes, but the '
                       f'classifier in {classifier} has {info.num_classes}')
    label_batch, num_classes = labeller.on_mesh(model, variables, mesh), info.num_classes
  elif not num_classes:
    raise ValueError(f'{generator_path}: an unconditional generator needs --classifier to '
                     f'label its samples')
  if classes is not None:
    classes = _check_classes(classes, generator, generator_path, classifier)
    num_classes = len(classes)
  # A conditional generator always needs its classes; with a classifier, its labels replace them.
  sample_batch = make_sample_batch(draw, generator.params, mesh, batch_size=batch_size,
                                   image_shape=generator.image_shape,
                                   num_classes=num_classes if classes is not None
                                   else generator.num_classes, class_map=classes)
  if label_batch is not None and generator.num_classes:
    conditioned = sample_batch
    sample_batch = lambda key, b: conditioned(key, b)[0]  # noqa: E731
  return sampling.write_samples(
      sample_batch, label_batch, out, num=num, batch_size=batch_size, num_shards=num_shards,
      image_shape=generator.image_shape, num_classes=num_classes, generator=generator.name,
      sampler=sampler, steps=steps, seed=seed, top_k=top_k, class_balanced=class_balanced,
      max_candidates=max_candidates, process_index=jax.process_index(),
      process_count=jax.process_count(), encoding=encoding, jpeg_quality=jpeg_quality,
      barrier=lambda: multihost_utils.sync_global_devices('trainer.sample'), progress=progress,
      metadata={'generator_checkpoint': generator_path, 'classifier': classifier or None,
                'sampler': sampler, 'steps': steps, 'dtype': dtype,
                'sampler_options': sampler_options or {},
                'generator_classes': None if classes is None else list(map(int, classes))})


def parse_classes(spec: str):
  """`--classes`: generator class ids '3,7,12', or 'DATASET:PATH', that dataset's class map
  (e.g. 'tiny_imagenet:gs://B/tiny-imagenet-200', its 200 classes' ImageNet-1k indices)."""
  if not spec:
    return None
  if ':' in spec:
    name, path = spec.split(':', 1)
    class_map = real.info({'name': name, 'path': path}).class_map
    if not class_map:
      raise ValueError(f'--classes={spec}: {name} has no class map into another label space')
    return list(class_map)
  try:
    return [int(c) for c in spec.split(',')]
  except ValueError:
    raise ValueError(f'--classes={spec}: expected class ids (3,7,12) or DATASET:PATH') from None


def _check_classes(classes, generator, generator_path, classifier):
  """The generator's class ids of a subset, checked against it."""
  classes = np.asarray(classes, np.int64).reshape(-1)
  if classifier:
    raise ValueError('--classes samples a class-conditional generator for its own labels: drop '
                     '--classifier')
  if not generator.num_classes:
    raise ValueError(f'{generator_path}: --classes needs a class-conditional generator')
  bad = classes[(classes < 0) | (classes >= generator.num_classes)]
  if len(classes) == 0 or len(bad) or len(set(classes.tolist())) != len(classes):
    raise ValueError(f'--classes={classes.tolist()[:8]}…: {len(classes)} distinct ids in '
                     f'[0, {generator.num_classes}) are needed ({generator_path} has '
                     f'{generator.num_classes} classes)')
  return classes


def gaussian_to_shards(fit_path: str, out: str, *, num: int, num_shards: int, classifier: str,
                       seed: int = 0, batch_size: int = 1024,
                       progress: bool = True) -> sampling.SamplingResult:
  """A class-balanced set of the Gaussian fit (App. D), pseudo-labelled by `classifier` as the
  paper's: samples are drawn until each pseudo-label class has num / classes, the first of each
  kept (the fit draws its classes in turn, the classifier decides the label)."""
  fit = gaussian_fit.load(fit_path)
  factors = gaussian_fit.sampling_factors(fit)
  _, model, variables = classifier_lib.load(classifier)
  return sampling.write_samples(
      lambda key, b: gaussian_fit.sample_batch(fit, b, seed=seed, batch_size=batch_size,
                                               factors=factors)[0],
      labeller.on_host(model, variables, batch_size, local_mesh()), out, num=num,
      batch_size=batch_size, num_shards=num_shards, image_shape=fit.image_shape,
      num_classes=fit.num_classes, generator='gaussian_fit', sampler='gaussian', steps=0,
      seed=seed, class_balanced=True, process_index=jax.process_index(),
      process_count=jax.process_count(),
      barrier=lambda: multihost_utils.sync_global_devices('trainer.sample'), progress=progress,
      metadata={'generator_checkpoint': fit_path, 'classifier': classifier})
