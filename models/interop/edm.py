"""Import an NVlabs/edm DDPM++ network (`SongUNet` under `EDMPrecond` or `VPPrecond`); the
command is `python -m trainer.import_generator --format=edm`:

    --source=FILE.pt --precond=vp --out=DIR        (a state_dict; or FILE.safetensors)
    --source=FILE.pkl --trust_pickle --edm_source=EDM_DIR --out=DIR

The released checkpoints (e.g. `edm-cifar10-32x32-cond-vp.pkl`) are pickles that embed the
network's source code and run it when loaded. Two ways in:

(a) a plain state_dict, the common fix: in an NVlabs/edm checkout,
      `torch.save(pickle.load(open(PKL, 'rb'))['ema'].state_dict(), 'edm.pt')`,
    read here with `torch.load(weights_only=True)` (no code runs), or the same tensors as a
    `.safetensors` file (torch not needed). A state_dict holds no hyperparameters: the
    architecture is read off its keys and shapes (resolution, channels, levels, blocks,
    attention, classes, augmentation labels), and `--precond` says which preconditioning it
    was trained under (`vp` for the released *-vp files), with the reference's defaults.
(b) the `.pkl` itself, only with `--trust_pickle` (it runs the code it carries) and the user's
    NVlabs/edm checkout on the path (`--edm_source`, for its `torch_utils` and `dnnlib`); the
    preconditioning and its parameters, the dropout rates and the network class then come from
    the pickled objects.

Weights are renamed (`model.enc.16x16_block0.conv0.weight` -> `enc_16x16_block0/conv0/kernel`)
and transposed (conv OIHW -> HWIO, linear (out, in) -> (in, out)); the [1, 1] resampling
filters the reference keeps as buffers are checked and dropped. Every weight must be used and
every parameter found with its shape; otherwise the error names the key.
"""

import os
import pickle
import re
import sys
from typing import Any, Optional

import numpy as np
from flax import traverse_util
from safetensors import numpy as st_numpy

from models.diffusion import checkpoint
from models.diffusion.edm import checkpoint as edm_checkpoint
from models.diffusion.edm import precond as edm_precond
from models.diffusion.edm import network as song_unet

_RESAMPLE_FILTER = np.full((1, 1, 2, 2), 0.25, np.float32)   # the [1, 1] filter, normalised
# Module names of the other SongUNet variants (NCSN++'s Fourier embedding, skip/residual paths).
_UNSUPPORTED = ('map_noise.freqs', 'aux_down', 'aux_skip', 'aux_residual', 'aux_up')
_PRECOND_FIELDS = {'VPPrecond': ('vp', ('beta_d', 'beta_min', 'M', 'epsilon_t')),
                   'EDMPrecond': ('edm', ('sigma_data',))}


def _strip(state: dict[str, Any]) -> dict[str, np.ndarray]:
  """Keys without the preconditioning's 'model.' prefix, values as float32 numpy arrays."""
  out = {}
  for key, value in state.items():
    if hasattr(value, 'detach'):
      value = value.detach().float().cpu().numpy()
    out[key.removeprefix('model.')] = np.asarray(value, np.float32)
  return out


def _shape(state, key: str, source: str) -> tuple[int, ...]:
  if key not in state:
    raise ValueError(f'{source}: key model.{key} not found; is it the state_dict of an '
                     'NVlabs/edm DDPM++ (SongUNet) network?')
  return state[key].shape


def infer_network(state: dict[str, np.ndarray], *, source: str = 'state_dict',
                  **overrides) -> song_unet.SongUNetConfig:
  """The DDPM++ architecture a reference state_dict (keys without 'model.') belongs to.

  `overrides` set what the weights do not show (dropout, label_dropout).
  """
  bad = sorted(k for k in state if any(u in k for u in _UNSUPPORTED))
  if bad:
    raise ValueError(f'{source}: {bad[0]} belongs to a SongUNet variant other than DDPM++ '
                     '(NCSN++: Fourier embedding, skip or residual paths), which is not '
                     'supported.')
  convs = [m for m in (re.fullmatch(r'enc\.(\d+)x\1_conv\.weight', k) for k in state) if m]
  if len(convs) != 1:
    raise ValueError(f'{source}: expected one input conv model.enc.RxR_conv.weight, found '
                     f'{len(convs)}; is it the state_dict of an NVlabs/edm SongUNet?')
  res = int(convs[0].group(1))
  model_channels, in_channels = state[convs[0].group(0)].shape[:2]
  mult, r = [], res
  while f'enc.{r}x{r}_block0.conv0.weight' in state:
    mult.append(state[f'enc.{r}x{r}_block0.conv0.weight'].shape[0] // model_channels)
    r //= 2
  num_blocks = len([k for k in state if re.fullmatch(rf'enc\.{res}x{res}_block\d+\.conv0\.weight',
                                                       k)])
  layer0 = _shape(state, 'map_layer0.weight', source)
  cfg = dict(
      img_resolution=res, in_channels=in_channels,
      out_channels=_shape(state, f'dec.{res}x{res}_aux_conv.weight', source)[0],
      label_dim=state['map_label.weight'].shape[1] if 'map_label.weight' in state else 0,
      augment_dim=state['map_augment.weight'].shape[1] if 'map_augment.weight' in state else 0,
      model_channels=model_channels, channel_mult=tuple(mult),
      channel_mult_emb=layer0[0] // model_channels,
      channel_mult_noise=layer0[1] // model_channels, num_blocks=num_blocks,
      attn_resolutions=tuple(res >> i for i in range(len(mult))
                             if f'dec.{res >> i}x{res >> i}_block{num_blocks}.qkv.weight'
                             in state))
  cfg.update({k: v for k, v in overrides.items() if v is not None})
  try:
    return song_unet.SongUNetConfig(**cfg)
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from None


def _our_key(key: str) -> tuple[str, str]:
  """('enc_16x16_block0/conv0', 'weight') for 'enc.16x16_block0.conv0.weight'."""
  parts = key.split('.')
  if parts[0] in ('enc', 'dec') and len(parts) > 2:
    parts = [f'{parts[0]}_{parts[1]}'] + parts[2:]
  return '/'.join(parts[:-1]), parts[-1]


def convert_weights(state: dict[str, np.ndarray], network: song_unet.SongUNetConfig, *,
                    source: str = 'state_dict') -> dict[str, np.ndarray]:
  """Reference weights (keys without 'model.') -> our flat params {'a/b/kernel': float32}.

  Raises:
    ValueError: naming the reference key, for a weight with no place here or a resampling
      filter other than [1, 1], and naming our key, for a missing or wrong-shaped parameter.
  """
  expected = edm_checkpoint.expected_shapes(network)
  leaves: dict[str, set] = {}
  for k in expected:
    module, leaf = k.rsplit('/', 1)
    leaves.setdefault(module, set()).add(leaf)
  out, origin, unexpected = {}, {}, []
  for key, value in state.items():
    module, leaf = _our_key(key)
    have = leaves.get(module, set())
    if leaf == 'resample_filter' and module in leaves:
      if value.shape != _RESAMPLE_FILTER.shape or not np.allclose(value, _RESAMPLE_FILTER):
        raise ValueError(f'{source}: model.{key} is not the [1, 1] resampling filter of '
                         'DDPM++; other filters are not supported.')
      continue
    if leaf == 'bias' and 'bias' in have:
      name = 'bias'
    elif leaf == 'weight' and 'kernel' in have:
      name = 'kernel'
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    elif leaf == 'weight' and 'scale' in have:
      name = 'scale'
    else:
      unexpected.append(f'model.{key}')
      continue
    out[f'{module}/{name}'] = np.ascontiguousarray(value, np.float32)
    origin[f'{module}/{name}'] = f'model.{key}'
  if unexpected:
    raise ValueError(f'{source} does not match the DDPM++ architecture read off it: unexpected '
                     f'keys ({len(unexpected)}): {", ".join(sorted(unexpected)[:8])}')
  checkpoint.check_params(expected, out, source, origin)
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state_dict from `.safetensors` or from `torch.load(weights_only=True)`; no code runs."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found.')
  if path.endswith('.safetensors'):
    try:
      return _strip(st_numpy.load_file(path))
    except Exception as e:  # safetensors raises its own error type for a damaged file
      raise ValueError(f'{path}: not a readable safetensors file ({e}).') from None
  import torch  # pylint: disable=g-import-not-at-top  (only this path needs torch)
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise ValueError(
        f'{path} is not a plain state_dict (torch.load with weights_only=True refused it: '
        f'{str(e).split(". ")[0]}). A released .pkl runs the code it carries: pass it as '
        '--pkl with --trust_pickle if you trust it, or save its state_dict first (see '
        '--help).') from None
  except (RuntimeError, EOFError) as e:
    raise ValueError(f'{path}: not a readable torch file ({str(e).splitlines()[0]}).') from None
  if not isinstance(state, dict) or not all(hasattr(v, 'shape') for v in state.values()):
    raise ValueError(f'{path}: expected a state_dict (a dict of tensors), got '
                     f'{type(state).__name__}' + (f' with keys {sorted(state)[:5]}'
                                                  if isinstance(state, dict) else '') + '.')
  return _strip(state)


def precond_of(net: Any, *, source: str) -> edm_precond.Precond:
  """The preconditioning of an unpickled reference `VPPrecond` / `EDMPrecond`."""
  cls = type(net).__name__
  if cls not in _PRECOND_FIELDS:
    raise ValueError(f'{source}: the network is a {cls}; only {sorted(_PRECOND_FIELDS)} are '
                     'supported.')
  kind, fields = _PRECOND_FIELDS[cls]
  values = {f: getattr(net, f) for f in fields}
  if kind == 'edm':
    values.update(edm_sigma_min=float(net.sigma_min), edm_sigma_max=float(net.sigma_max))
  return edm_precond.Precond(kind=kind, **values)


def read_pickle(path: str, *, trust_pickle: bool = False,
                edm_source: Optional[str] = None) -> tuple[Any, dict[str, np.ndarray], dict]:
  """(precond, state_dict, network overrides) of a reference pickle; `trust_pickle` required."""
  if not trust_pickle:
    raise ValueError(
        f'{path} is a pickle: loading it runs the code it carries. Pass --trust_pickle (with '
        '--edm_source=YOUR_NVLABS_EDM_CHECKOUT) if you trust it, or save its state_dict in '
        'the edm checkout and pass that as --source (see the module docstring).')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found.')
  if edm_source:
    sys.path.insert(0, os.path.abspath(edm_source))
  try:
    with open(path, 'rb') as f:
      data = pickle.load(f)  # trusted explicitly by the caller (--trust_pickle)
  except ModuleNotFoundError as e:
    raise ValueError(f'{path} needs the module {e.name!r} of the code it was saved with: pass '
                     '--edm_source=DIR, a checkout of NVlabs/edm.') from None
  finally:
    if edm_source:
      sys.path.remove(os.path.abspath(edm_source))
  net = data.get('ema') if isinstance(data, dict) else data
  if net is None or not hasattr(net, 'state_dict'):
    raise ValueError(f'{path}: no network under the key "ema" (keys: '
                     f'{sorted(data) if isinstance(data, dict) else type(data).__name__}).')
  precond = precond_of(net, source=path)
  model_cls = type(getattr(net, 'model', None)).__name__
  if model_cls != 'SongUNet':
    raise ValueError(f'{path}: the network is a {model_cls}; only SongUNet (DDPM++) is '
                     'supported.')
  kwargs = getattr(net, 'init_kwargs', None) or {}
  overrides = {k: kwargs[k] for k in ('dropout', 'label_dropout') if k in kwargs}
  return precond, _strip(net.state_dict()), overrides


def read(source: str, *, precond: Optional[str] = None, trust_pickle: bool = False,
         edm_source: Optional[str] = None, name: Optional[str] = None,
         dropout: Optional[float] = None) -> edm_checkpoint.EDMGenerator:
  """The generator of a reference state_dict (`.pt` or `.safetensors`, with `precond` 'vp' or
  'edm') or `.pkl` (with `trust_pickle`).

  `dropout` (training only) replaces what the file says or, for a state_dict, which says
  nothing, SongUNet's default 0.10 (the released CIFAR-10 networks trained with 0.13).
  """
  if source.endswith('.pkl'):
    pre, state, overrides = read_pickle(source, trust_pickle=trust_pickle, edm_source=edm_source)
  else:
    if precond not in edm_precond.KINDS:
      raise ValueError(f'--precond must be one of {edm_precond.KINDS} for a state_dict (it does '
                       f'not say which preconditioning trained it), got {precond!r}.')
    pre, state, overrides = edm_precond.Precond(kind=precond), read_state_dict(source), {}
  if dropout is not None:
    overrides = dict(overrides, dropout=dropout)
  network = infer_network(state, source=source, **overrides)
  flat = convert_weights(state, network, source=source)
  default = os.path.splitext(os.path.basename(source))[0] or 'edm'
  return edm_checkpoint.EDMGenerator(network=network, precond=pre,
                                     params=traverse_util.unflatten_dict(flat, sep='/'),
                                     name=name or default)


def import_checkpoint(source: str, out: str, **options) -> edm_checkpoint.EDMGenerator:
  """Reads `source` (see `read` for the options) and writes it as an EDM generator to `out`."""
  gen = read(source, **options)
  edm_checkpoint.save(out, gen.network, gen.precond, gen.params, name=gen.name,
                      source=f'NVlabs/edm:{os.path.basename(source)}')
  return edm_checkpoint.load(out)
