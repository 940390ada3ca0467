"""Sample quality of one DDPM under samplers and their options: classifier-feature FD per variant.

  python -m benchmarks.sampler_fd --generator=GEN --classifier=WORKDIR [--num=500] \\
      [--variants=dpm++2m-20,ddim-100,ddim-100:eps_from_x0=0,ddim-100:clip_denoised=0]

On digits: --num class-conditional samples (--num / 10 per class, one key per sample, the same keys
for every variant) of the DDPM in GEN with each variant, NAME-STEPS[:OPTION=0|1,…] (options of
`models.diffusion.samplers`), rounded to uint8 as the shards store them; their Fréchet distance
to the first --num test images in the penultimate features of the classifier trained by
`trainer.main` or the method in WORKDIR (`data/generation/frechet.py`; not Inception FID). Prints
one row per variant with its seconds (compilation included) and the real held-out images' FD to
the same test images as the scale.
"""
import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trainer  # noqa: E402,F401  (the XLA:CPU setting, before jax compiles)
from configs import demo  # noqa: E402
from data import real  # noqa: E402
from data.generation import frechet  # noqa: E402
from data.generation import metrics  # noqa: E402
from models.diffusion import generators  # noqa: E402
from models.diffusion import samplers  # noqa: E402
from trainer.pipeline import stages  # noqa: E402


def parse_variant(spec):
  """'ddim-100:eps_from_x0=0' -> ('ddim', 100, {'eps_from_x0': False})."""
  head, *options = spec.split(':')
  name, steps = head.rsplit('-', 1)
  kwargs = {}
  for option in ','.join(options).split(',') if options else []:
    key, value = option.split('=')
    if value not in ('0', '1'):
      raise ValueError(f'{spec}: option {key} takes 0 or 1, got {value!r}')
    kwargs[key] = value == '1'
  return name, int(steps), kwargs


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--generator', required=True)
  parser.add_argument('--classifier', required=True)
  parser.add_argument('--num', type=int, default=500)
  parser.add_argument('--variants', default='dpm++2m-20,ddim-100,ddim-100:eps_from_x0=0,'
                      'ddim-100:clip_denoised=0')
  args = parser.parse_args()
  generator = generators.load(args.generator)
  dataset = demo.get_config().dataset
  feature_fn = stages._feature_fn(os.path.abspath(args.classifier), 256)  # Orbax: absolute
  test = metrics.batched_features(feature_fn, np.asarray(real.load(dataset, 'test')['image'])
                                  [:args.num])
  holdout = real.training_splits(demo.get_config())[1]['image']
  print(f'real held-out ({len(holdout)}) vs test: FD '
        f'{frechet.frechet_distance(metrics.batched_features(feature_fn, holdout), test):.3f}')
  classes = generator.unet.num_class_embeds
  y = jnp.repeat(jnp.arange(classes), args.num // classes)
  keys = jax.random.split(jax.random.key(0), len(y))
  print(f'| variant | NFE | classifier-feature FD ({len(y)} vs {args.num} test) | seconds |')
  print('|---|---:|---:|---:|')
  for spec in args.variants.split(','):
    name, steps, options = parse_variant(spec)
    draw = jax.jit(generators.sampling_fn(generator, name, steps, **options), static_argnums=2)
    start = time.time()
    images = np.asarray(samplers.to_uint8(draw(generator.params, keys,
                                               (len(y),) + generator.unet.image_shape, y)))
    seconds = time.time() - start
    fd = frechet.frechet_distance(metrics.batched_features(feature_fn, images), test)
    print(f'| {spec} | {steps} | {fd:.3f} | {seconds:.0f} |', flush=True)


if __name__ == '__main__':
  main()
