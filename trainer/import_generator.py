"""Imports a published diffusion model as a generator checkpoint for `trainer.sample`:

  python -m trainer.import_generator --format=diffusers --source=DIR --out=GEN
      [--scheduler=scheduler_config.json] [--name=NAME]
  python -m trainer.import_generator --format=guided-diffusion --source=64x64_diffusion.pt
      --flags=configs/adm/imagenet64.py --out=GEN [--name=NAME]
  python -m trainer.import_generator --format=edm --source=edm.pt --precond=vp --out=GEN
      [--dropout=0.13]   (or --source=edm-cifar10-32x32-cond-vp.pkl --trust_pickle
      --edm_source=NVLABS_EDM_CHECKOUT)

diffusers: a `save_pretrained` directory of a `UNet2DModel` and its `DDPMScheduler` (e.g. a
local copy of google/ddpm-cifar10-32, the paper's CIFAR-10 DDPM), weights read from safetensors
(models/interop/diffusers.py).
guided-diffusion: an openai/guided-diffusion checkpoint (.pt, read weights-only, or
.safetensors) and its model flags (configs/adm/: the paper's TinyImageNet and ImageNet ADMs;
models/interop/guided_diffusion.py).
"""
from absl import flags
from ml_collections import config_flags

from models.interop import diffusers as diffusers_import
from models.interop import guided_diffusion as guided_diffusion_import
from models.diffusion import unet as unet_lib
from models.diffusion.edm import network
from models.interop import edm as edm_import
from trainer import cli

_FORMAT = flags.DEFINE_enum('format', 'diffusers', ['diffusers', 'guided-diffusion', 'edm'],
                            'What --source is.')
_SOURCE = flags.DEFINE_string('source', None, 'The published model (a directory or file).')
_OUT = flags.DEFINE_string('out', None, 'Generator checkpoint directory to write.')
_SCHEDULER = flags.DEFINE_string('scheduler', None,
                                 'diffusers: scheduler_config.json (default: the one in --source).')
_FLAGS = config_flags.DEFINE_config_file(
    'flags', None, 'guided-diffusion: its model flags (configs/adm/imagenet64.py, ...).')
_PRECOND = flags.DEFINE_enum('precond', None, ['vp', 'edm'],
                             'edm: the preconditioning a state_dict was trained under (vp for '
                             'the released *-vp networks).')
_TRUST_PICKLE = flags.DEFINE_bool('trust_pickle', False,
                                  'edm: allow a .pkl (unpickling runs the code it carries).')
_EDM_SOURCE = flags.DEFINE_string('edm_source', None,
                                  'edm: an NVlabs/edm checkout, on the path to unpickle a .pkl.')
_DROPOUT = flags.DEFINE_float('dropout', None, 'edm: the training dropout (fine-tuning).')
_NAME = flags.DEFINE_string('name', None,
                            'Generator name (default: the directory name, or the file stem).')
flags.mark_flags_as_required(['source', 'out'])


def main():
  out, source = cli.absolute(_OUT.value), cli.absolute(_SOURCE.value)
  if _FORMAT.value == 'edm':
    gen = edm_import.import_checkpoint(
        source, out, precond=_PRECOND.value, trust_pickle=_TRUST_PICKLE.value,
        edm_source=cli.absolute(_EDM_SOURCE.value), name=_NAME.value, dropout=_DROPOUT.value)
    print(f'{out}: {gen.name}, {gen.image_shape} images, {network.count_params(gen.params):,} '
          f'parameters, {gen.precond.kind} preconditioning, classes: {gen.num_classes}',
          flush=True)
    return
  if _FORMAT.value == 'guided-diffusion':
    if _FLAGS.value is None:
      raise ValueError('--format=guided-diffusion needs --flags=configs/adm/<model>.py')
    gen = guided_diffusion_import.import_checkpoint(source, _FLAGS.value, out, name=_NAME.value)
  else:
    gen = diffusers_import.import_pretrained(source, out, scheduler=cli.absolute(_SCHEDULER.value),
                                             name=_NAME.value)
  print(f'{out}: {gen.name}, {gen.image_shape} images, {unet_lib.count_params(gen.params):,} '
        f'parameters, {gen.schedule.num_timesteps} steps, classes: {gen.num_classes}', flush=True)


if __name__ == '__main__':
  cli.run(main)
