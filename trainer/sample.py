"""Samples a diffusion generator into a pseudo-labelled shard set, on every device of every host.

  python -m trainer.sample --generator=CKPT --num=N --out=DIR/NAME --shards=K \\
      --sampler=ddpm|ddim|dpm++2m --steps=S --seed=0 [--classifier=WORKDIR --top_k=K] \\
      [--batch_size=B]

CKPT is a generator checkpoint (models/diffusion/checkpoint.py; e.g. google/ddpm-cifar10-32
imported from diffusers). Each batch is sampled and, with --classifier (a training workdir),
pseudo-labelled on the devices: label = arg-max class, score = its softmax probability. Without a
classifier the generator must be class-conditional: sample i is drawn for class i mod classes.
Sample i's noise is a function of (seed, i) alone, so the set does not depend on the device
count, the host count or a restart: killed and run again with the same command, it finishes with
exactly N samples, each once (data/generation/sampling.py).

Multi-host: pass --distributed on every process (coordinator flags as in trainer.main). Each host
samples its own batches on its own devices and writes its own shards; OUT.json lists them all.
"""
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging
from jax.experimental import multihost_utils

from data import images as images_lib
from data.generation import sampling
from models.diffusion import samplers
from trainer import cli
from trainer import sharding

_GENERATOR = flags.DEFINE_string('generator', None, 'Generator checkpoint directory.')
_NUM = flags.DEFINE_integer('num', None, 'Samples to draw (with --top_k: candidates).')
_OUT = flags.DEFINE_string('out', None, 'Output prefix DIR/NAME (local or gs://).')
_SHARDS = flags.DEFINE_integer('shards', None, 'Shard files of the whole set.')
_SAMPLER = flags.DEFINE_enum('sampler', 'dpm++2m', list(samplers.SAMPLERS), 'Sampler.')
_STEPS = flags.DEFINE_integer('steps', None, 'Network evaluations per sample (default: ddpm '
                              "the generator's T, 1000 as Ho et al.; ddim 100; dpm++2m 20).")
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise (and of the top-K shuffle).')
_CLASSIFIER = flags.DEFINE_string('classifier', None, 'Training workdir of the pseudo-labeller.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "Classifier: 'best', 'latest' or a step.")
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the K best-scoring samples per class (0: all).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Images per batch on each host (a '
                                   'multiple of its device count; same on every host).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'UNet compute dtype.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize().')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar (images/s, ETA).')


def local_mesh():
  """A ('data', 'fsdp') mesh of this host's devices, the batch over all of them."""
  return sharding.make_mesh(devices=jax.local_devices())


def _to_host_numpy(tree):
  """Host copies of (possibly multi-host, replicated) arrays, to place on a local mesh."""
  return jax.tree_util.tree_map(
      lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else np.asarray(a),
      tree)


def make_sample_batch(eps_fn: Callable, params: Any, alphas_cumprod, mesh, *, batch_size: int,
                      image_shape, sampler: str, steps: int, num_classes: int | None = None,
                      **options) -> Callable:
  """`sample_batch(key, b) -> uint8 images` (and labels for a conditional generator), jitted.

  Sample id = b * batch_size + row draws its noise from fold_in(key, id) and, when conditional,
  class id mod num_classes; the batch is split over the mesh's devices.
  """
  if batch_size % mesh.size:
    raise ValueError(f'--batch_size={batch_size} must be a multiple of the {mesh.size} devices '
                     f'of this host')
  batch = sharding.batch_sharding(mesh)
  params = jax.device_put(_to_host_numpy(params), sharding.replicated(mesh))
  shape = (batch_size,) + tuple(image_shape)

  def fn(params, key, b):
    ids = jax.lax.with_sharding_constraint(   # uint32: ids up to 2^32 - 1
        b.astype(jnp.uint32) * batch_size + jnp.arange(batch_size, dtype=jnp.uint32), batch)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(ids)
    y = None if not num_classes else (ids % num_classes).astype(jnp.int32)
    x = samplers.sample(eps_fn, params, alphas_cumprod, keys, shape, sampler=sampler,
                        steps=steps, y=y, **options)
    images = samplers.to_uint8(x)
    return images if y is None else (images, y)

  jitted = jax.jit(fn, out_shardings=batch if not num_classes else (batch, batch))
  return lambda key, b: jitted(params, key, jnp.uint32(b))


def make_label_batch(model, variables, mesh) -> Callable:
  """`label_batch(uint8 images on the mesh) -> (labels, scores)`: arg-max class, its probability."""
  variables = jax.device_put(_to_host_numpy(variables), sharding.replicated(mesh))

  @jax.jit
  def label(variables, images):
    probs = jax.nn.softmax(model.apply(variables, images_lib.to_float(images), train=False))
    return jnp.argmax(probs, -1), jnp.max(probs, -1)
  return lambda images: label(variables, images)


def sampler_options(generator, sampler: str) -> dict[str, Any]:
  """The generator's own schedule settings: x_0 clipping, and DDPM's posterior variance."""
  schedule = generator.schedule
  if schedule.clip_sample and schedule.clip_sample_range != 1.0:
    raise ValueError(f'schedule clip_sample_range={schedule.clip_sample_range}: the samplers '
                     f'clip the predicted x_0 to [-1, 1] only')
  options = {'clip_denoised': bool(schedule.clip_sample)}
  if sampler == 'ddpm':
    options['variance'] = schedule.variance_type
  return options


def sample_to_shards(generator_path: str, out: str, *, num: int, num_shards: int, sampler: str,
                     steps: int | None = None, seed: int = 0, classifier: str | None = None,
                     checkpoint: str = 'best', top_k: int = 0, batch_size: int = 256,
                     dtype: str = 'float32', progress: bool = True) -> sampling.SamplingResult:
  """Loads the generator (and classifier), builds the jitted functions, writes the set."""
  from models.diffusion import checkpoint as generator_checkpoint  # pylint: disable=g-import-not-at-top
  if not 1 <= num < 2 ** 32:
    raise ValueError(f'--num={num}: sample ids are 32-bit, so 1 <= num < 2^32')
  generator = generator_checkpoint.load(generator_path, dtype=dtype)
  steps = steps or {'ddpm': generator.schedule.num_timesteps, 'ddim': 100, 'dpm++2m': 20}[sampler]
  mesh = local_mesh()
  num_classes, label_batch = generator.num_classes, None
  if classifier:
    from data import real  # pylint: disable=g-import-not-at-top
    from trainer import checkpointing  # pylint: disable=g-import-not-at-top
    config, model, variables = checkpointing.restore_for_eval(classifier, checkpoint)
    info = real.info(config.dataset)
    if tuple(info.shape) != tuple(generator.image_shape):
      raise ValueError(f'{generator_path}: generates images of shape {generator.image_shape}, '
                       f'but the classifier in {classifier} was trained on '
                       f'{config.dataset.name} images of shape {tuple(info.shape)}')
    if num_classes and num_classes != info.num_classes:
      raise ValueError(f'{generator_path}: a generator of {num_classes} classes, but the '
                       f'classifier in {classifier} has {info.num_classes}')
    label_batch, num_classes = make_label_batch(model, variables, mesh), info.num_classes
  elif not num_classes:
    raise ValueError(f'{generator_path}: an unconditional generator needs --classifier to '
                     f'label its samples')
  # A conditional generator always needs its classes; with a classifier, its labels replace them.
  sample_batch = make_sample_batch(
      generator.eps_fn, generator.params, generator.alphas_cumprod, mesh, batch_size=batch_size,
      image_shape=generator.image_shape, sampler=sampler, steps=steps,
      num_classes=generator.num_classes, **sampler_options(generator, sampler))
  if label_batch is not None and generator.num_classes:
    conditioned = sample_batch
    sample_batch = lambda key, b: conditioned(key, b)[0]  # noqa: E731
  return sampling.write_samples(
      sample_batch, label_batch, out, num=num, batch_size=batch_size, num_shards=num_shards,
      image_shape=generator.image_shape, num_classes=num_classes, generator=generator.name,
      sampler=sampler, steps=steps, seed=seed, top_k=top_k,
      process_index=jax.process_index(), process_count=jax.process_count(),
      barrier=lambda: multihost_utils.sync_global_devices('trainer.sample'), progress=progress,
      metadata={'generator_checkpoint': generator_path, 'classifier': classifier or None,
                'sampler': sampler, 'steps': steps, 'dtype': dtype})


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.initialize_distributed(_DISTRIBUTED.value, '--distributed')
  out = cli.absolute(_OUT.value)
  cli.start(out.rsplit('/', 1)[0] if '/' in out else '.')
  logging.info('Process %d/%d, local devices: %s', jax.process_index(), jax.process_count(),
               jax.local_devices())
  result = sample_to_shards(
      cli.absolute(_GENERATOR.value), out, num=_NUM.value,
      num_shards=_SHARDS.value, sampler=_SAMPLER.value, steps=_STEPS.value, seed=_SEED.value,
      classifier=cli.absolute(_CLASSIFIER.value), checkpoint=_CHECKPOINT.value, top_k=_TOP_K.value,
      batch_size=_BATCH_SIZE.value, dtype=_DTYPE.value, progress=_PROGRESS.value)
  if jax.process_index() == 0:
    print(result.manifest, flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['generator', 'num', 'out', 'shards'])
  cli.run(main)
