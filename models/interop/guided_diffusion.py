"""Import openai/guided-diffusion's checkpoints (Dhariwal & Nichol's ADM) into our generator format
(the command is `python -m trainer.import_generator --format=guided-diffusion`).

The paper's TinyImageNet and ImageNet generators are guided-diffusion's class-conditional
ImageNet 64x64 and 256x256 models (Sec. 6, footnote 9). A checkpoint is a plain state_dict:
`.pt` files are read with `torch.load(..., weights_only=True)` (torch's restricted unpickler:
tensors and containers only, no code), `.safetensors` files without torch. Its architecture is
not in the file: it is the model flags the README gives with it (configs/adm/: one module per
checkpoint), under guided-diffusion's own flag names and defaults (`FLAG_DEFAULTS`, its
script_util.model_and_diffusion_defaults; `num_classes` is ours, its NUM_CLASSES = 1000).

`unet_config(flags)` is the same network in models.diffusion.unet's (diffusers') layout:
channel_mult x num_channels -> block_out_channels; a level attends when its downsampling rate is
image_size / r for an r in attention_resolutions (AttnDown/UpBlock2D, else
ResnetDown/UpsampleBlock2D with resblock_updown, DownBlock2D/UpBlock2D without);
num_head_channels -> attention_head_dim; use_scale_shift_norm -> 'scale_shift'; resblock_updown
-> 'resnet' resampling; learn_sigma -> 6 output channels; [cos, sin] time embedding without
shift, GroupNorm(32, eps 1e-5) everywhere, the middle attention included. `schedule(flags)` is
its noise schedule ('linear' scaled by 1000 / T, or 'cosine') and variance ('learned_range'
with learn_sigma, else 'fixed_large', or 'fixed_small' with sigma_small).

The weights are renamed by walking the architecture as guided-diffusion builds it
(input_blocks.K, middle_block, output_blocks.K, time_embed, label_emb, out) and transposed (conv
OIHW -> HWIO, 1x1 conv1d and linear (out, in) -> (in, out)); each attention's fused qkv is split
into to_q/to_k/to_v, heads first (legacy order) or q/k/v first (use_new_attention_order). Every
weight must be used and every parameter found, with its shape; otherwise the error names the key.

use_fp16 (guided-diffusion's fp16 torso) has no effect here: parameters are float32, and the
compute dtype is chosen at load time (`checkpoint.load(dir, dtype='bfloat16')`). timestep
respacing is a sampling choice (samplers: `spacing='guided'`, or `use_timesteps`).
"""

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
from etils import epath
from flax import traverse_util
from safetensors import numpy as st_numpy

from models.diffusion import checkpoint
from models.diffusion import schedule as schedule_lib
from models.diffusion import unet as unet_lib

# guided-diffusion's script_util.model_and_diffusion_defaults() (commit 22e0df8), plus
# create_gaussian_diffusion's sigma_small and our num_classes (its NUM_CLASSES).
FLAG_DEFAULTS = {
    'image_size': 64, 'num_channels': 128, 'num_res_blocks': 2, 'num_heads': 4,
    'num_heads_upsample': -1, 'num_head_channels': -1, 'attention_resolutions': '16,8',
    'channel_mult': '', 'dropout': 0.0, 'class_cond': False, 'use_checkpoint': False,
    'use_scale_shift_norm': True, 'resblock_updown': False, 'use_fp16': False,
    'use_new_attention_order': False, 'learn_sigma': False, 'diffusion_steps': 1000,
    'noise_schedule': 'linear', 'timestep_respacing': '', 'use_kl': False,
    'predict_xstart': False, 'rescale_timesteps': False, 'rescale_learned_sigmas': False,
    'sigma_small': False, 'num_classes': 1000,
}
# script_util.create_model's channel_mult for channel_mult=''.
_DEFAULT_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_RESBLOCK = {'in_layers.0': 'norm1', 'in_layers.2': 'conv1', 'emb_layers.1': 'time_emb_proj',
             'out_layers.0': 'norm2', 'out_layers.3': 'conv2', 'skip_connection': 'conv_shortcut'}
_ATTENTION = {'norm': 'group_norm', 'proj_out': 'to_out_0'}   # qkv is split, see _qkv


def resolve_flags(flags: Mapping[str, Any], *, source: str = 'flags') -> dict[str, Any]:
  """guided-diffusion's defaults overridden by `flags`; an unknown flag is an error naming it."""
  flags = dict(flags)
  unknown = sorted(set(flags) - set(FLAG_DEFAULTS))
  if unknown:
    raise ValueError(f'{source}: unknown guided-diffusion flags {unknown}; known: '
                     f'{sorted(FLAG_DEFAULTS)}.')
  flags = {**FLAG_DEFAULTS, **flags}
  if flags['predict_xstart']:
    raise ValueError(f'{source}: predict_xstart=True (an x_0-predicting model) is not supported; '
                     'the generator contract is an eps-prediction model.')
  if flags['rescale_timesteps'] and flags['diffusion_steps'] != 1000:
    raise ValueError(f'{source}: rescale_timesteps=True with diffusion_steps='
                     f'{flags["diffusion_steps"]} is not supported (the model would see t scaled '
                     'by 1000 / T).')
  return flags


def _channel_mult(flags: dict[str, Any], source: str) -> tuple[float, ...]:
  if flags['channel_mult'] == '':
    if flags['image_size'] not in _DEFAULT_CHANNEL_MULT:
      raise ValueError(f'{source}: image_size {flags["image_size"]} has no default channel_mult '
                       f'(guided-diffusion: {sorted(_DEFAULT_CHANNEL_MULT)}); set channel_mult.')
    return _DEFAULT_CHANNEL_MULT[flags['image_size']]
  return tuple(float(m) for m in str(flags['channel_mult']).split(','))


def _head_dim(flags: dict[str, Any], attending: list[int], source: str) -> int:
  """Our one attention_head_dim for guided-diffusion's num_head_channels or num_heads."""
  if flags['num_head_channels'] != -1:
    return int(flags['num_head_channels'])
  ups = flags['num_heads_upsample']
  if ups not in (-1, flags['num_heads']):
    raise ValueError(f'{source}: num_heads_upsample={ups} differs from num_heads='
                     f'{flags["num_heads"]}; not supported.')
  widths = {c // flags['num_heads'] for c in attending}
  if len(widths) != 1 or any(c % flags['num_heads'] for c in attending):
    raise ValueError(f'{source}: num_heads={flags["num_heads"]} gives heads of widths '
                     f'{sorted(widths)} over attention channels {sorted(set(attending))}; only '
                     'one head width is supported (set num_head_channels).')
  return widths.pop()


def unet_config(flags: Mapping[str, Any], *, source: str = 'flags') -> unet_lib.UNetConfig:
  """The UNet of guided-diffusion's model flags (see the module docstring)."""
  f = resolve_flags(flags, source=source)
  mult = _channel_mult(f, source)
  if mult[0] != 1:
    raise ValueError(f'{source}: channel_mult {mult} starts at {mult[0]}; only 1 is supported '
                     '(the time embedding is num_channels wide, the first level mult x that).')
  channels = tuple(int(m * f['num_channels']) for m in mult)
  rates = {f['image_size'] // int(r) for r in str(f['attention_resolutions']).split(',')}
  attends = [2 ** level in rates for level in range(len(mult))]
  plain = 'Resnet{}sampleBlock2D' if f['resblock_updown'] else '{}Block2D'
  down = tuple('AttnDownBlock2D' if a else plain.format('Down') for a in attends)
  up = tuple('AttnUpBlock2D' if a else plain.format('Up') for a in attends[::-1])
  attending = [c for c, a in zip(channels, attends) if a] + [channels[-1]]
  resample = 'resnet' if f['resblock_updown'] else 'conv'
  try:
    return unet_lib.UNetConfig(
        sample_size=f['image_size'], in_channels=3, out_channels=6 if f['learn_sigma'] else 3,
        block_out_channels=channels, down_block_types=down, up_block_types=up,
        layers_per_block=f['num_res_blocks'],
        attention_head_dim=_head_dim(f, attending, source), norm_num_groups=32, norm_eps=1e-5,
        act_fn='silu', flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        num_class_embeds=f['num_classes'] if f['class_cond'] else None, dropout=f['dropout'],
        resnet_time_scale_shift='scale_shift' if f['use_scale_shift_norm'] else 'default',
        attn_norm_num_groups=32, downsample_type=resample, upsample_type=resample)
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None


def schedule(flags: Mapping[str, Any], *, source: str = 'flags') -> schedule_lib.Schedule:
  """The noise schedule and reverse variance of guided-diffusion's diffusion flags."""
  f = resolve_flags(flags, source=source)
  steps, name = f['diffusion_steps'], f['noise_schedule']
  if name == 'linear':   # Ho et al.'s, stretched to T steps (get_named_beta_schedule)
    betas = schedule_lib.betas_for('linear', steps, 1000 / steps * 1e-4, 1000 / steps * 0.02)
  elif name == 'cosine':   # Nichol & Dhariwal's, max beta 0.999: diffusers' squaredcos_cap_v2
    betas = schedule_lib.betas_for('squaredcos_cap_v2', steps, 0.0, 0.0)
  else:
    raise ValueError(f'{source}: noise_schedule {name!r} is not one of guided-diffusion\'s '
                     "('linear', 'cosine').")
  variance = ('learned_range' if f['learn_sigma'] else
              'fixed_small' if f['sigma_small'] else 'fixed_large')
  return schedule_lib.Schedule(betas=betas, variance_type=variance, clip_sample=True)


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------


def module_map(unet: unet_lib.UNetConfig) -> dict[str, tuple[str, str]]:
  """guided-diffusion module name -> (our module path, kind), walking the UNet as it builds it.

  kind: 'resblock', 'attention' or 'leaf' (a conv, linear, norm or embedding of its own).
  """
  m = {'time_embed.0': ('time_embedding/linear_1', 'leaf'),
       'time_embed.2': ('time_embedding/linear_2', 'leaf'),
       'label_emb': ('class_embedding', 'leaf'), 'input_blocks.0.0': ('conv_in', 'leaf'),
       'out.0': ('conv_norm_out', 'leaf'), 'out.2': ('conv_out', 'leaf'),
       'middle_block.0': ('mid_block/resnets_0', 'resblock'),
       'middle_block.1': ('mid_block/attentions_0', 'attention'),
       'middle_block.2': ('mid_block/resnets_1', 'resblock')}
  n, layers, k = len(unet.block_out_channels), unet.layers_per_block, 1
  for level, kind in enumerate(unet.down_block_types):
    ours = f'down_blocks_{level}'
    for i in range(layers):
      m[f'input_blocks.{k}.0'] = (f'{ours}/resnets_{i}', 'resblock')
      if kind.startswith('Attn'):
        m[f'input_blocks.{k}.1'] = (f'{ours}/attentions_{i}', 'attention')
      k += 1
    if level < n - 1:
      if unet_lib.block_resampler(kind, unet, 'down') == 'resnet':
        m[f'input_blocks.{k}.0'] = (f'{ours}/downsamplers_0', 'resblock')
      else:
        m[f'input_blocks.{k}.0.op'] = (f'{ours}/downsamplers_0/conv', 'leaf')
      k += 1
  k = 0
  for level, kind in enumerate(unet.up_block_types):
    ours = f'up_blocks_{level}'
    for i in range(layers + 1):
      m[f'output_blocks.{k}.0'] = (f'{ours}/resnets_{i}', 'resblock')
      last = 0
      if kind.startswith('Attn'):
        m[f'output_blocks.{k}.1'] = (f'{ours}/attentions_{i}', 'attention')
        last = 1
      if i == layers and level < n - 1:
        if unet_lib.block_resampler(kind, unet, 'up') == 'resnet':
          m[f'output_blocks.{k}.{last + 1}'] = (f'{ours}/upsamplers_0', 'resblock')
        else:
          m[f'output_blocks.{k}.{last + 1}.conv'] = (f'{ours}/upsamplers_0/conv', 'leaf')
      k += 1
  return m


def _split_key(key: str, modules: dict[str, tuple[str, str]]) -> Optional[tuple[str, str, str]]:
  """(our module path, kind, the rest of the key) for a state_dict key, or None."""
  parts = key.split('.')
  for cut in range(len(parts) - 1, 0, -1):
    prefix = '.'.join(parts[:cut])
    if prefix in modules:
      path, kind = modules[prefix]
      return path, kind, '.'.join(parts[cut:])
  return None


def _leaf(value: np.ndarray, leaf: str) -> tuple[str, np.ndarray]:
  """torch leaf ('weight' / 'bias') -> (our leaf name, array in our layout), by the shape."""
  if leaf == 'bias':
    return 'bias', value
  if value.ndim == 4:                     # conv2d OIHW -> HWIO
    return 'kernel', value.transpose(2, 3, 1, 0)
  if value.ndim == 3:                     # 1x1 conv1d (out, in, 1) -> dense (in, out)
    return 'kernel', value[:, :, 0].T
  if value.ndim == 2:                     # linear (out, in) -> (in, out)
    return 'kernel', value.T
  return 'scale', value                   # GroupNorm weight


def _qkv(value: np.ndarray, leaf: str, head_dim: int, new_order: bool) -> dict[str, np.ndarray]:
  """guided-diffusion's fused qkv (3C, C, 1) / (3C,) -> our to_q/to_k/to_v (C, C) / (C,).

  New order: rows [q; k; v], each [head 0; head 1; ...]. Legacy: [head 0: q, k, v; head 1: ...].
  """
  w = value[..., 0] if value.ndim == 3 else value
  c = w.shape[0] // 3
  heads = c // head_dim
  if new_order:
    parts = np.split(w, 3, axis=0)
  else:
    grouped = w.reshape((heads, 3, head_dim) + w.shape[1:])
    parts = [grouped[:, j].reshape((c,) + w.shape[1:]) for j in range(3)]
  name = 'kernel' if leaf == 'weight' else 'bias'
  return {f'{n}/{name}': (p.T if name == 'kernel' else p)
          for n, p in zip(('to_q', 'to_k', 'to_v'), parts)}


def convert_weights(state: Mapping[str, np.ndarray], unet: unet_lib.UNetConfig, *,
                    new_attention_order: bool, source: str = 'state_dict') -> dict[str, np.ndarray]:
  """guided-diffusion's state_dict -> our flat params {'a/b/kernel': float32 array}.

  Raises:
    ValueError: naming guided-diffusion's key, for a weight our architecture has no place for,
      and our key (with the key it came from), for a parameter missing or of another shape.
  """
  modules = module_map(unet)
  out, origin, unexpected = {}, {}, []
  for key, value in state.items():
    found = _split_key(key, modules)
    inner, _, leaf = found[2].rpartition('.') if found else ('', '', '')
    names = {'resblock': _RESBLOCK, 'attention': _ATTENTION}.get(found[1]) if found else None
    value = np.asarray(value, np.float32)
    if found and found[1] == 'attention' and inner == 'qkv' and leaf in ('weight', 'bias'):
      head_dim = unet.attention_head_dim or value.shape[0] // 3
      try:
        split = _qkv(value, leaf, head_dim, new_attention_order)
      except ValueError:
        raise ValueError(f'{source}: {key} of shape {value.shape} is not a fused qkv of '
                         f'{head_dim}-channel heads.') from None
      for name, v in split.items():
        out[f'{found[0]}/{name}'], origin[f'{found[0]}/{name}'] = v, key
      continue
    if (not found or leaf not in ('weight', 'bias')
        or (names is None and inner) or (names is not None and inner not in names)):
      unexpected.append(key)
      continue
    module = found[0] if names is None else f'{found[0]}/{names[inner]}'
    if module == 'class_embedding':
      name = 'embedding'    # nn.Embedding's (classes, width) is flax's layout already
    else:
      name, value = _leaf(value, leaf)
    out[f'{module}/{name}'], origin[f'{module}/{name}'] = value, key
  if unexpected:
    raise ValueError(f'{source} does not match the UNet of its flags: unexpected keys '
                     f'({len(unexpected)}): {", ".join(sorted(unexpected)[:8])}')
  checkpoint.check_params(checkpoint.expected_shapes(unet), out, source, origin)
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A `.pt` (torch, weights_only) or `.safetensors` state_dict as float32 numpy arrays."""
  p = epath.Path(path)
  if not p.exists():
    raise FileNotFoundError(f'{path} not found.')
  if path.endswith('.safetensors'):
    try:
      state = st_numpy.load(p.read_bytes())
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
      raise ValueError(f'{path}: not a readable safetensors file: {e}') from None
    return {k: np.asarray(v, np.float32) for k, v in state.items()}
  if not path.endswith(('.pt', '.pth')):
    raise ValueError(f'{path}: expected a .pt, .pth or .safetensors state_dict.')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f'{path}: reading a .pt checkpoint needs torch (CPU is enough); or convert '
                      'it to .safetensors elsewhere.') from None
  try:
    state = torch.load(io.BytesIO(p.read_bytes()), map_location='cpu', weights_only=True)
  except Exception as e:  # noqa: BLE001 -- torch raises many types for a corrupt or pickled file
    raise ValueError(f'{path}: not a readable weights-only torch checkpoint: {e}') from None
  if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                               for v in state.values()):
    raise ValueError(f'{path}: expected a state_dict (names -> tensors), got '
                     f'{type(state).__name__}.')
  return {k: v.detach().float().numpy() for k, v in state.items()}


def class_labels(wnids: Sequence[str], imagenet_wnids: Sequence[str]) -> np.ndarray:
  """The class ids guided-diffusion's ImageNet models know `wnids` (WordNet ids) by.

  Its training labels are each class's index among the sorted WordNet ids of all classes
  (image_datasets.py: files named WNID_*, labels from sorted(set(WNIDs))); for ILSVRC-2012's
  1,000 classes that is the usual ImageNet class index. E.g. TinyImageNet's 200 WNIDs (its
  wnids.txt) -> the labels to sample the 64x64 model with (`samplers.sample(..., y=...)`).

  Raises:
    ValueError: for a WNID not among `imagenet_wnids` (named), or duplicates in them.
  """
  index = {w: i for i, w in enumerate(sorted(set(imagenet_wnids)))}
  if len(index) != len(imagenet_wnids):
    raise ValueError(f'imagenet_wnids: {len(imagenet_wnids) - len(index)} duplicates.')
  unknown = [w for w in wnids if w not in index]
  if unknown:
    raise ValueError(f'{len(unknown)} WNIDs are not ImageNet classes: {unknown[:8]}')
  return np.array([index[w] for w in wnids], np.int32)


def read_checkpoint(path: str, flags: Mapping[str, Any], *,
                    name: Optional[str] = None) -> checkpoint.Generator:
  """The generator of a guided-diffusion checkpoint and its model flags, float32 params."""
  unet = unet_config(flags)
  f = resolve_flags(flags)
  flat = convert_weights(read_state_dict(path), unet,
                         new_attention_order=f['use_new_attention_order'], source=path)
  params = traverse_util.unflatten_dict(flat, sep='/')
  name = name or os.path.splitext(os.path.basename(path))[0]
  return checkpoint.Generator(unet=unet, schedule=schedule(flags), params=params, name=name)


def import_checkpoint(path: str, flags: Mapping[str, Any], out: str, *,
                      name: Optional[str] = None) -> checkpoint.Generator:
  """Reads a guided-diffusion checkpoint and writes our generator checkpoint to `out`."""
  gen = read_checkpoint(path, flags, name=name)
  checkpoint.save(out, gen.unet, gen.schedule, gen.params, name=gen.name,
                  source=f'guided-diffusion:{os.path.basename(path)}')
  return checkpoint.load(out)
