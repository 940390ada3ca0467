"""Our flax variables in the field's layouts: RobustBench's PyTorch models, DeepMind's Haiku.

* RobustBench (and DeepMind's released `.pt` files): a `state_dict` of `DMWideResNet` (our WRNs)
  or `DMPreActResNet` (our ResNet-18), from `robustbench/model_zoo/architectures/dm_wide_resnet.py`,
  a copy of deepmind-research `adversarial_robustness/pytorch/model_zoo.py`. Kernels are OIHW
  (ours HWIO), the head's weight is (out, in) (ours (in, out)); BatchNorm has `weight`, `bias`,
  `running_mean`, `running_var` and `num_batches_tracked`.
* DeepMind's Haiku `(params, state)` pair (`adversarial_robustness/jax/model_zoo.py`, the layout
  of their `_v2` `.npy` files: plain nested dicts `{module: {name: array}}`): modules
  `wide_res_net/~/init_conv`, `wide_res_net/~/resnet_lay_{g}_block_{b}/~/{batchnorm_k,conv_k,
  shortcut}`, `wide_res_net/~/batchnorm`, `wide_res_net/~/logits`; kernels `w` (HWIO, as ours),
  head `w`/`b`; BatchNorm `scale`/`offset` of shape (1, 1, 1, C) and its running averages in
  the state of `<bn>/~/mean_ema` and `<bn>/~/var_ema` (key `average`, debiased).

The stride-2 convolutions agree: flax's and Haiku's 'SAME' pad a 3x3 stride-2 convolution of an
even-sized input by 0 before and 1 after, which is the `F.pad(x, (0, 1, 0, 1))` of the PyTorch
port; a 1x1 stride-2 projection pads nothing in all three. (For odd sizes they would differ;
the PyTorch classes only take 32x32 images anyway: their final pooling window is fixed.)

Both PyTorch classes normalise the input with a mean/std given to the constructor, not stored
in the `state_dict`; DeepMind's Haiku model expects normalised inputs. Ours normalises inside
with `data.real`'s mean/std, the same constants as DeepMind's for CIFAR-10 and CIFAR-100.
"""
import dataclasses
import re
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import numpy as np

_WRN = re.compile(r'wrn-(\d+)-(\d+)')
_BLOCK = re.compile(r'stage_(\d+)_block_(\d+)')


@dataclasses.dataclass(frozen=True)
class Architecture:
  kind: str   # 'wrn' | 'preact'
  depth: int
  width: int  # 0 for the pre-act ResNet, as DMPreActResNet's constructor wants


def architecture(model_name: str) -> Architecture:
  """The RobustBench class our model `model_name` maps onto; a clear error where none does."""
  if model_name == 'preact-resnet-18':
    return Architecture('preact', 18, 0)
  match = _WRN.fullmatch(model_name)
  if not match:
    raise ValueError(f'Model {model_name!r} has no RobustBench/DeepMind counterpart; '
                     'use a wrn-{depth}-{width} or preact-resnet-18.')
  depth, width = map(int, match.groups())
  if width < 2:
    # Our first block projects always (as DeepMind's JAX model does); DMWideResNet uses the
    # identity where the channel count does not change (16 -> 16 at width 1).
    raise ValueError(f'{model_name}: DMWideResNet has no projection shortcut in the first '
                     'block at width 1, ours does; only widths >= 2 convert.')
  return Architecture('wrn', depth, width)


def architecture_name(model_name: str) -> str:
  """RobustBench's name for the architecture ('WideResNet-28-10', 'PreActResNet-18')."""
  if model_name == 'preact-resnet-18':
    return 'PreActResNet-18'
  match = _WRN.fullmatch(model_name)
  return f'WideResNet-{match.group(1)}-{match.group(2)}' if match else model_name


def robustbench_constructor(model_name: str, *, num_classes: int, mean: Sequence[float],
                            std: Sequence[float]) -> Tuple[str, Dict[str, Any]]:
  """(class name, keyword arguments) that build the matching RobustBench model."""
  arch = architecture(model_name)
  name = 'DMWideResNet' if arch.kind == 'wrn' else 'DMPreActResNet'
  return name, {'num_classes': int(num_classes), 'depth': arch.depth, 'width': arch.width,
                'activation_fn': 'Swish', 'mean': tuple(map(float, mean)),
                'std': tuple(map(float, std)), 'num_input_channels': len(mean)}


# --- Names -------------------------------------------------------------------------------------

_TORCH_MODULES = {
    'wrn': {'stem': 'init_conv', 'bn_final': 'batchnorm', 'head': 'logits',
            'block': 'layer.{g}.block.{b}', 'bn_0': 'batchnorm_0', 'bn_1': 'batchnorm_1',
            'conv_0': 'conv_0', 'conv_1': 'conv_1', 'shortcut': 'shortcut'},
    'preact': {'stem': 'conv_2d', 'bn_final': 'batchnorm', 'head': 'logits',
               'block': 'layer_{g}.{b}', 'bn_0': 'batchnorm_0', 'bn_1': 'batchnorm_1',
               'conv_0': 'conv_2d_1', 'conv_1': 'conv_2d_2', 'shortcut': 'shortcut'},
}
_HAIKU_MODULES = {'stem': 'init_conv', 'bn_final': 'batchnorm', 'head': 'logits',
                  'block': 'resnet_lay_{g}_block_{b}', 'bn_0': 'batchnorm_0',
                  'bn_1': 'batchnorm_1', 'conv_0': 'conv_0', 'conv_1': 'conv_1',
                  'shortcut': 'shortcut'}
HAIKU_ROOT = 'wide_res_net'


def _module(names: Mapping[str, str], path: Sequence[str], sep: str) -> str:
  """The foreign module name of our module `path`, e.g. ('stage_1_block_0', 'conv_0')."""
  parts = []
  for name in path:
    block = _BLOCK.fullmatch(name)
    if block:
      parts.append(names['block'].format(g=block.group(1), b=block.group(2)))
    elif name in names:
      parts.append(names[name])
    else:
      raise ValueError(f'Our module {"/".join(path)} has no counterpart in this layout.')
  return sep.join(parts)


@dataclasses.dataclass(frozen=True)
class _Leaf:
  collection: str          # 'params' | 'batch_stats'
  path: Tuple[str, ...]    # our module path
  name: str                # our variable name
  shape: Tuple[int, ...]   # our shape


def _leaves(abstract) -> list:
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    keys = tuple(p.key for p in path)
    out.append(_Leaf(keys[0], keys[1:-1], keys[-1], tuple(leaf.shape)))
  return out


def _is_bn(leaf: _Leaf) -> bool:
  return leaf.path[-1].startswith('bn')


def _torch_key(leaf: _Leaf, kind: str) -> str:
  module = _module(_TORCH_MODULES[kind], leaf.path, '.')
  if leaf.collection == 'batch_stats':
    return f'{module}.running_{leaf.name}'
  return f'{module}.{"bias" if leaf.name == "bias" else "weight"}'


def _to_torch_array(leaf: _Leaf, value: np.ndarray) -> np.ndarray:
  if leaf.name == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _from_torch_array(leaf: _Leaf, value: np.ndarray) -> np.ndarray:
  if leaf.name == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


# --- PyTorch (RobustBench) ---------------------------------------------------------------------

def to_torch(variables, model_name: str, *, num_batches_tracked: int = 0) -> Dict[str, np.ndarray]:
  """Our {'params', 'batch_stats'} as a RobustBench `state_dict` of numpy arrays (float32; the
  `num_batches_tracked` counters int64, set to `num_batches_tracked`)."""
  kind = architecture(model_name).kind
  out = {}
  for leaf, value in zip(_leaves(variables), jax.tree_util.tree_leaves(variables)):
    key = _torch_key(leaf, kind)
    out[key] = np.ascontiguousarray(_to_torch_array(leaf, np.asarray(value, np.float32)))
    if leaf.collection == 'batch_stats' and leaf.name == 'var':
      out[key.replace('running_var', 'num_batches_tracked')] = np.asarray(
          num_batches_tracked, np.int64)
  return out


def describe_torch(state_dict: Mapping[str, Any]) -> str:
  """What a RobustBench state_dict looks like, for error messages."""
  try:
    if 'init_conv.weight' in state_dict:
      width = state_dict['layer.0.block.0.conv_0.weight'].shape[0] // 16
      blocks = len({k.split('.')[3] for k in state_dict if k.startswith('layer.0.block.')})
      classes = state_dict['logits.weight'].shape[0]
      return f'a DMWideResNet-{6 * blocks + 4}-{width} with {classes} classes'
    if 'conv_2d.weight' in state_dict:
      blocks = [len({k.split('.')[1] for k in state_dict if k.startswith(f'layer_{g}.')})
                for g in range(4)]
      depth = {(2, 2, 2, 2): '18', (3, 4, 6, 3): '34'}.get(tuple(blocks), f'with {blocks} blocks')
      return f'a DMPreActResNet-{depth} with {state_dict["logits.weight"].shape[0]} classes'
  except (KeyError, IndexError, AttributeError):
    pass
  return 'of an unknown architecture (first keys: ' + ', '.join(list(state_dict)[:4]) + ')'


def from_torch(state_dict: Mapping[str, Any], abstract, model_name: str, *,
               source: str = 'checkpoint'):
  """A RobustBench `state_dict` (arrays or tensors) as our variables shaped like `abstract`.

  Every key must be there with the right shape and no other may be (`num_batches_tracked` may
  be missing: inference does not read it); errors name the key and what the file holds.
  """
  kind = architecture(model_name).kind
  leaves = _leaves(abstract)
  expected = {_torch_key(leaf, kind): leaf for leaf in leaves}
  counters = {k.replace('running_var', 'num_batches_tracked') for k in expected
              if k.endswith('.running_var')}
  missing = [k for k in expected if k not in state_dict]
  unexpected = [k for k in state_dict if k not in expected and k not in counters]
  if missing or unexpected:
    raise ValueError(
        f'{source} does not fit {model_name}: it is {describe_torch(state_dict)}. Missing '
        f'key(s) {missing[:3]}{" ..." if len(missing) > 3 else ""}, unexpected key(s) '
        f'{unexpected[:3]}{" ..." if len(unexpected) > 3 else ""}. Set --config.model.name and '
        'the dataset to those of the checkpoint.')
  values = []
  for key, leaf in expected.items():
    value = _numpy(state_dict[key])
    want = _to_torch_array(leaf, np.empty(leaf.shape)).shape
    if value.shape != want:
      raise ValueError(f'{source}: key {key!r} has shape {tuple(value.shape)}; {model_name} '
                       f'needs {want} (the checkpoint is {describe_torch(state_dict)}).')
    values.append(_from_torch_array(leaf, value).astype(np.float32))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), values)


def _numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor, without importing torch here
    value = value.detach().cpu().numpy()
  return np.asarray(value)


# --- Haiku (DeepMind's JAX release) --------------------------------------------------------------

def _haiku_location(leaf: _Leaf) -> Tuple[str, str, str]:
  """('params' | 'state', module, name) of our leaf in DeepMind's Haiku WideResNet."""
  module = f'{HAIKU_ROOT}/~/' + _module(_HAIKU_MODULES, leaf.path, '/~/')
  if leaf.collection == 'batch_stats':
    return 'state', f'{module}/~/{leaf.name}_ema', 'average'
  if _is_bn(leaf):
    return 'params', module, 'offset' if leaf.name == 'bias' else 'scale'
  return 'params', module, 'b' if leaf.name == 'bias' else 'w'


def from_haiku(params: Mapping[str, Mapping[str, Any]], state: Mapping[str, Mapping[str, Any]],
               abstract, model_name: str, *, source: str = 'checkpoint'):
  """DeepMind's Haiku (params, state) of a WideResNet as our variables shaped like `abstract`."""
  arch = architecture(model_name)
  if arch.kind != 'wrn':
    raise ValueError(f'{source}: DeepMind published the Haiku layout of its WideResNets only; '
                     f'import {model_name} from its .pt file.')
  trees = {'params': params, 'state': state}
  used = {'params': set(), 'state': set()}
  values = []
  for leaf in _leaves(abstract):
    tree, module, name = _haiku_location(leaf)
    if module not in trees[tree] or name not in trees[tree][module]:
      raise ValueError(f'{source} does not fit {model_name}: no {tree} {module!r} / {name!r} '
                       f'({_describe_haiku(params)}).')
    value = np.asarray(trees[tree][module][name], np.float32)
    if value.size != int(np.prod(leaf.shape)) or (
        leaf.name == 'kernel' and value.shape != leaf.shape):
      raise ValueError(f'{source}: {tree} {module!r} / {name!r} has shape {value.shape}; '
                       f'{model_name} needs {leaf.shape} ({_describe_haiku(params)}).')
    values.append(value.reshape(leaf.shape))  # BatchNorm's (1, 1, 1, C) -> (C,)
    used[tree].add(module)
  extra = sorted(set(params) - used['params'])
  if extra:
    raise ValueError(f'{source} does not fit {model_name}: unexpected Haiku module(s) {extra[:3]} '
                     f'({_describe_haiku(params)}).')
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), values)


def _describe_haiku(params: Mapping[str, Any]) -> str:
  try:
    width = np.shape(params[f'{HAIKU_ROOT}/~/resnet_lay_0_block_0/~/conv_0']['w'])[-1] // 16
    blocks = len([m for m in params if re.fullmatch(
        rf'{HAIKU_ROOT}/~/resnet_lay_0_block_\d+/~/conv_0', m)])
    classes = np.shape(params[f'{HAIKU_ROOT}/~/logits']['w'])[-1]
    return f'the file holds a WideResNet-{6 * blocks + 4}-{width} with {classes} classes'
  except (KeyError, IndexError, TypeError):
    return 'the file holds modules ' + ', '.join(sorted(params)[:3])
