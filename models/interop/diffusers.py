"""Import a diffusers `UNet2DModel` + `DDPMScheduler` into our generator checkpoint (the command
is `python -m trainer.import_generator --format=diffusers`).

The source is a `save_pretrained` directory: `config.json` and `diffusion_pytorch_model.safetensors`
(read with `safetensors`, never pickle: a directory with only a `.bin` is refused), and a
`scheduler_config.json` beside them, or a pipeline directory with `unet/` and `scheduler/`
sub-directories (as `DDPMPipeline.save_pretrained` writes; google/ddpm-cifar10-32 ships both
layouts' files). The weights are renamed (`down_blocks.0.resnets.1.conv1.weight` ->
`down_blocks_0/resnets_0/conv1/kernel`; the pre-0.12 attention names query/key/value/proj_attn as
diffusers itself converts them) and transposed (conv OIHW -> HWIO, linear (out, in) -> (in, out)).
Every weight must be used and every parameter found, with its shape; otherwise the error names the
key.

A key missing from config.json means what it means to diffusers (`DIFFUSERS_DEFAULTS`). Note
attention_head_dim: absent, diffusers (and we) split attention into 8-channel heads; the
published google/ddpm-cifar10-32 config says null, one head over all channels, as Ho et al.
"""

import json
import os
from typing import Any, Optional

import numpy as np
from flax import traverse_util
from safetensors import numpy as st_numpy

from models.diffusion import checkpoint
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib

WEIGHTS = 'diffusion_pytorch_model.safetensors'
# diffusers' UNet2DModel defaults (diffusers 0.42, unet_2d.py) for the keys a config.json may
# omit; a test compares them with the installed diffusers.
DIFFUSERS_DEFAULTS = {
    'sample_size': None, 'in_channels': 3, 'out_channels': 3, 'center_input_sample': False,
    'time_embedding_type': 'positional', 'time_embedding_dim': None, 'freq_shift': 0,
    'flip_sin_to_cos': True,
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    'block_out_channels': (224, 448, 672, 896), 'layers_per_block': 2,
    'mid_block_scale_factor': 1, 'downsample_padding': 1, 'downsample_type': 'conv',
    'upsample_type': 'conv', 'dropout': 0.0, 'act_fn': 'silu', 'attention_head_dim': 8,
    'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None, 'num_train_timesteps': None,
}
# Values of diffusers-only keys that are the only ones we build (anything else is refused).
_REQUIRED = {'time_embedding_type': 'positional', 'mid_block_type': 'UNetMidBlock2D',
             'add_attention': True, 'class_embed_type': None}
_OURS = ('sample_size', 'in_channels', 'out_channels', 'block_out_channels', 'down_block_types',
         'up_block_types', 'layers_per_block', 'attention_head_dim', 'norm_num_groups',
         'norm_eps', 'act_fn', 'flip_sin_to_cos', 'freq_shift', 'downsample_padding',
         'mid_block_scale_factor', 'center_input_sample', 'time_embedding_dim',
         'num_class_embeds', 'dropout', 'resnet_time_scale_shift', 'downsample_type',
         'upsample_type', 'attn_norm_num_groups')
_DEPRECATED_ATTENTION = {'query': ['to_q'], 'key': ['to_k'], 'value': ['to_v'],
                         'proj_attn': ['to_out', '0']}


def unet_config(config: dict[str, Any], *, source: str = 'config.json') -> unet_lib.UNetConfig:
  """Our architecture for a diffusers `UNet2DModel` config.json (diffusers' defaults for gaps).

  Raises:
    ValueError: naming `source` and the key, for another model class, a feature we do not build
      (e.g. a Fourier time embedding, a block type other than models.diffusion.unet's) or an
      unknown key.
  """
  c = {k: v for k, v in config.items() if not k.startswith('_')}
  cls = config.get('_class_name', 'UNet2DModel')
  if cls != 'UNet2DModel':
    raise ValueError(f'{source}: _class_name {cls!r}; only UNet2DModel is supported.')
  unknown = sorted(set(c) - set(DIFFUSERS_DEFAULTS))
  if unknown:
    raise ValueError(f'{source}: unknown UNet2DModel keys {unknown}.')
  c = {**DIFFUSERS_DEFAULTS, **c}
  for key, value in _REQUIRED.items():
    if c[key] != value:
      raise ValueError(f'{source}: {key} = {c[key]!r} is not supported (only {value!r}).')
  size = c['sample_size']
  if isinstance(size, (list, tuple)):
    if len(set(size)) != 1:
      raise ValueError(f'{source}: sample_size {size}: only square images are supported.')
    size = size[0]
  if not isinstance(size, int):
    raise ValueError(f'{source}: sample_size must be an int, got {size!r}.')
  c['sample_size'] = size
  try:
    return unet_lib.UNetConfig(**{k: c[k] for k in _OURS})
  except (TypeError, ValueError) as e:
    raise ValueError(f'{source}: {e}') from None


def _our_key(key: str) -> tuple[str, str]:
  """('down_blocks_0/resnets_1/conv1', 'weight') for 'down_blocks.0.resnets.1.conv1.weight'."""
  parts = key.split('.')
  *module, leaf = parts
  if 'attentions' in module and module[-1] in _DEPRECATED_ATTENTION:
    module = module[:-1] + _DEPRECATED_ATTENTION[module[-1]]
  out = []
  for p in module:
    if p.isdigit() and out:
      out[-1] += f'_{p}'
    else:
      out.append(p)
  return '/'.join(out), leaf


def convert_weights(state: dict[str, np.ndarray], unet: unet_lib.UNetConfig, *,
                    source: str = WEIGHTS) -> dict[str, np.ndarray]:
  """diffusers' state dict -> our flat params {'a/b/kernel': float32 HWIO / (in, out) array}.

  Raises:
    ValueError: naming the diffusers key, for a weight our architecture has no place for, and
      naming our key, for a parameter the file lacks or of another shape.
  """
  expected = checkpoint.expected_shapes(unet)
  modules = {k.rsplit('/', 1)[0]: set() for k in expected}
  for k in expected:
    module, leaf = k.rsplit('/', 1)
    modules[module].add(leaf)
  out, origin, unexpected = {}, {}, []
  for key, value in state.items():
    module, leaf = _our_key(key)
    leaves = modules.get(module, set())
    value = np.asarray(value, np.float32)
    if leaf == 'bias' and 'bias' in leaves:
      name = 'bias'
    elif leaf == 'weight' and 'kernel' in leaves:
      name = 'kernel'
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    elif leaf == 'weight' and 'scale' in leaves:
      name = 'scale'
    elif leaf == 'weight' and 'embedding' in leaves:
      name = 'embedding'
    else:
      unexpected.append(key)
      continue
    out[f'{module}/{name}'] = value
    origin[f'{module}/{name}'] = key
  if unexpected:
    raise ValueError(f'{source} does not match the UNet architecture of its config: '
                     f'unexpected keys ({len(unexpected)}): {", ".join(sorted(unexpected)[:8])}')
  checkpoint.check_params(expected, out, source, origin)
  return out


def _find(pretrained: str, sub: str, name: str) -> Optional[str]:
  for path in (os.path.join(pretrained, sub, name), os.path.join(pretrained, name)):
    if os.path.isfile(path):
      return path
  return None


def read_pretrained(pretrained: str, scheduler: Optional[str] = None) -> checkpoint.Generator:
  """The generator of a diffusers directory (see the module docstring), float32 params."""
  config_path = _find(pretrained, 'unet', 'config.json')
  if config_path is None:
    raise FileNotFoundError(f'No config.json in {pretrained} or {pretrained}/unet: is it a '
                            'diffusers save_pretrained directory?')
  weights = os.path.join(os.path.dirname(config_path), WEIGHTS)
  if not os.path.isfile(weights):
    raise FileNotFoundError(
        f'{weights} not found. Only safetensors weights are read (a .bin file is a pickle and '
        'is never loaded); save the model with save_pretrained(safe_serialization=True).')
  with open(config_path) as f:
    unet = unet_config(json.load(f), source=config_path)
  scheduler = scheduler or _find(pretrained, 'scheduler', 'scheduler_config.json')
  if scheduler is None:
    raise FileNotFoundError(f'No scheduler_config.json in {pretrained} or '
                            f'{pretrained}/scheduler; pass --scheduler=FILE.')
  sched = schedule_lib.load_scheduler_config(scheduler)
  try:
    state = st_numpy.load_file(weights)
  except (TypeError, ValueError) as e:  # e.g. bfloat16 tensors, which numpy cannot hold
    raise ValueError(f'{weights}: cannot read as float arrays: {e}') from None
  flat = convert_weights(state, unet, source=weights)
  params = traverse_util.unflatten_dict(flat, sep='/')
  name = os.path.basename(os.path.normpath(pretrained)) or 'ddpm'
  return checkpoint.Generator(unet=unet, schedule=sched, params=params, name=name)


def import_pretrained(pretrained: str, out: str, *, scheduler: Optional[str] = None,
                      name: Optional[str] = None) -> checkpoint.Generator:
  """Reads a diffusers directory and writes our checkpoint to `out`; returns the generator."""
  gen = read_pretrained(pretrained, scheduler)
  name = name or gen.name
  checkpoint.save(out, gen.unet, gen.schedule, gen.params, name=name,
                  source=f'diffusers:{os.path.basename(os.path.normpath(pretrained))}')
  return checkpoint.load(out)
