"""A generator checkpoint of any kind, loaded by what its manifest says, and how to sample it.

    gen = generators.load(path)            # DDPM / ADM (checkpoint.py) or EDM (edm/checkpoint.py)
    draw = generators.sampling_fn(gen, 'heun', steps=18)
    x = draw(gen.params, keys, (B, H, W, C), y)   # [-1, 1]; sample j from keys[j]; traceable

DDPM-family generators (Ho et al.'s UNet, ADM) take the ε-samplers of samplers.py with their
schedule's own settings (x_0 clipping, fixed or learned posterior variance); EDM generators take
the Heun or Euler solver of edm/sampler.py within their preconditioning's noise range.
"""
import json

from etils import epath

from models.diffusion import checkpoint
from models.diffusion import samplers
from models.diffusion.edm import checkpoint as edm_checkpoint
from models.diffusion.edm import sampler as edm_sampler

DDPM_SAMPLERS = tuple(samplers.SAMPLERS)
EDM_SAMPLERS = tuple(edm_sampler.SOLVERS)
SAMPLERS = DDPM_SAMPLERS + EDM_SAMPLERS


def load(path, dtype='float32'):
  """The generator at `path`, whichever format its manifest.json names."""
  manifest = epath.Path(path, 'manifest.json')
  if not manifest.exists():
    raise FileNotFoundError(f'{path} is not a generator checkpoint: no manifest.json in it.')
  kind = json.loads(manifest.read_text()).get('format')
  if kind == edm_checkpoint.FORMAT:
    return edm_checkpoint.load(path, dtype=dtype)
  return checkpoint.load(path, dtype=dtype)


def is_edm(generator) -> bool:
  return isinstance(generator, edm_checkpoint.EDMGenerator)


def default_steps(generator, sampler: str) -> int:
  """Network evaluations (ε-samplers) or noise levels (EDM) a sampler takes unless told."""
  if sampler == 'ddpm':
    return generator.schedule.num_timesteps
  return {'ddim': 100, 'dpm++2m': 20, 'heun': 18, 'euler': 35}[sampler]


def ddpm_options(generator, sampler: str) -> dict:
  """The schedule's own settings of a DDPM-family generator: x_0 clipping, posterior variance."""
  schedule = generator.schedule
  if schedule.clip_sample and schedule.clip_sample_range != 1.0:
    raise ValueError(f'schedule clip_sample_range={schedule.clip_sample_range}: the samplers '
                     f'clip the predicted x_0 to [-1, 1] only')
  options = {'clip_denoised': bool(schedule.clip_sample)}
  if sampler == 'ddpm':
    options['variance'] = schedule.variance_type
  return options


def sampling_fn(generator, sampler: str, steps: int | None = None, **options):
  """`draw(params, keys, shape, y) -> images in [-1, 1]` with `sampler` (a clear error when the
  generator's kind does not take it); `options` go to the sampler."""
  steps = steps or default_steps(generator, sampler)
  if is_edm(generator):
    if sampler not in EDM_SAMPLERS:
      raise ValueError(f'--sampler={sampler!r}: {generator.name} is an EDM generator; it samples '
                       f'with {" or ".join(EDM_SAMPLERS)}.')
    return lambda params, keys, shape, y=None: edm_sampler.sample(
        generator.denoiser, params, keys, shape, num_steps=steps, solver=sampler,
        supported=generator.sigma_range, y=y, **options)
  if sampler not in DDPM_SAMPLERS:
    raise ValueError(f'--sampler={sampler!r}: {generator.name} is a DDPM-family generator; it '
                     f'samples with {", ".join(DDPM_SAMPLERS)}.')
  options = {**ddpm_options(generator, sampler), **options}
  return lambda params, keys, shape, y=None: samplers.sample(
      generator.eps_fn, params, generator.alphas_cumprod, keys, shape, sampler=sampler,
      steps=steps, y=y, **options)
