"""Imports a published diffusion model as a generator checkpoint for `trainer.sample`:

  python -m trainer.import_generator --format=diffusers --source=DIR --out=GEN
      [--scheduler=scheduler_config.json] [--name=NAME]
  python -m trainer.import_generator --format=guided-diffusion --source=64x64_diffusion.pt
      --flags=configs/adm/imagenet64.py --out=GEN [--name=NAME]

diffusers: a `save_pretrained` directory of a `UNet2DModel` and its `DDPMScheduler` (e.g. a
local copy of google/ddpm-cifar10-32, the paper's CIFAR-10 DDPM), weights read from safetensors
(models/diffusion/diffusers_import.py).
guided-diffusion: an openai/guided-diffusion checkpoint (.pt, read weights-only, or
.safetensors) and its model flags (configs/adm/: the paper's TinyImageNet and ImageNet ADMs;
models/diffusion/guided_diffusion_import.py).
"""
from absl import flags
from ml_collections import config_flags

from models.diffusion import diffusers_import
from models.diffusion import guided_diffusion_import
from models.diffusion import unet as unet_lib
from trainer import cli

_FORMAT = flags.DEFINE_enum('format', 'diffusers', ['diffusers', 'guided-diffusion'],
                            'What --source is.')
_SOURCE = flags.DEFINE_string('source', None, 'The published model (a directory or file).')
_OUT = flags.DEFINE_string('out', None, 'Generator checkpoint directory to write.')
_SCHEDULER = flags.DEFINE_string('scheduler', None,
                                 'diffusers: scheduler_config.json (default: the one in --source).')
_FLAGS = config_flags.DEFINE_config_file(
    'flags', None, 'guided-diffusion: its model flags (configs/adm/imagenet64.py, ...).')
_NAME = flags.DEFINE_string('name', None,
                            'Generator name (default: the directory name, or the file stem).')
flags.mark_flags_as_required(['source', 'out'])


def main():
  out = cli.absolute(_OUT.value)
  if _FORMAT.value == 'guided-diffusion':
    if _FLAGS.value is None:
      raise ValueError('--format=guided-diffusion needs --flags=configs/adm/<model>.py')
    gen = guided_diffusion_import.import_checkpoint(cli.absolute(_SOURCE.value), _FLAGS.value,
                                                    out, name=_NAME.value)
  else:
    gen = diffusers_import.import_pretrained(cli.absolute(_SOURCE.value), out,
                                             scheduler=cli.absolute(_SCHEDULER.value),
                                             name=_NAME.value)
  print(f'{out}: {gen.name}, {gen.image_shape} images, {unet_lib.count_params(gen.params):,} '
        f'parameters, {gen.schedule.num_timesteps} steps, classes: {gen.num_classes}', flush=True)


if __name__ == '__main__':
  cli.run(main)
