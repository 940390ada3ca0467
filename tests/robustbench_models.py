"""RobustBench's copies of DeepMind's PyTorch models, and weights copied between them and ours.

`robustbench` is installed without its dependencies; importing the package pulls in torchvision,
so the one architecture file is loaded by path instead. It holds `DMWideResNet` and
`DMPreActResNet`, RobustBench's copies of DeepMind's `adversarial_robustness/pytorch/model_zoo.py`.

`name_map(variables, kind)` gives, for every leaf of our variables, the PyTorch state-dict name
and how to turn the tensor into our layout; `to_flax` and `to_torch` apply it in either direction
and fail on any name left over on either side.
"""
import importlib.util
import os

import numpy as np

KINDS = ('wrn', 'preact')


def load_architectures():
  """The module `robustbench.model_zoo.architectures.dm_wide_resnet`, without the package."""
  spec = importlib.util.find_spec('robustbench')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('robustbench is not installed (pip install --no-deps robustbench).')
  path = os.path.join(spec.submodule_search_locations[0], 'model_zoo', 'architectures',
                      'dm_wide_resnet.py')
  module_spec = importlib.util.spec_from_file_location('dm_wide_resnet', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _torch_module_name(flax_path, kind):
  """'stage_1_block_0/bn_0' -> 'layer.1.block.0.batchnorm_0' (wrn) or 'layer_1.0.batchnorm_0'."""
  top = flax_path[0]
  if top == 'stem':
    return 'init_conv' if kind == 'wrn' else 'conv_2d'
  if top == 'bn_final':
    return 'batchnorm'
  if top == 'head':
    return 'logits'
  _, stage, _, block = top.split('_')
  prefix = f'layer.{stage}.block.{block}' if kind == 'wrn' else f'layer_{stage}.{block}'
  layer = {'bn_0': 'batchnorm_0', 'bn_1': 'batchnorm_1', 'shortcut': 'shortcut'}
  if kind == 'wrn':
    layer.update(conv_0='conv_0', conv_1='conv_1')
  else:
    layer.update(conv_0='conv_2d_1', conv_1='conv_2d_2')
  return f'{prefix}.{layer[flax_path[1]]}'


_LEAF = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
         ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
         ('batch_stats', 'var'): 'running_var'}


def name_map(variables, kind):
  """[(collection, flax path, torch name)] for every leaf of our `variables`."""
  if kind not in KINDS:
    raise ValueError(f'Unknown kind {kind!r}; expected one of {KINDS}.')
  rows = []
  for collection in ('params', 'batch_stats'):
    flat = _flatten(variables[collection])
    for path in flat:
      torch_name = f'{_torch_module_name(path, kind)}.{_LEAF[collection, path[-1]]}'
      rows.append((collection, path, torch_name))
  return rows


def _to_ours(tensor, leaf):
  """PyTorch layout -> ours: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
  if leaf == 'kernel' and tensor.ndim == 4:
    return np.transpose(tensor, (2, 3, 1, 0))
  if leaf == 'kernel':
    return tensor.T
  return tensor


def _to_theirs(array, leaf):
  if leaf == 'kernel' and array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))
  if leaf == 'kernel':
    return array.T
  return array


def to_flax(state_dict, variables, kind):
  """Our variables (same tree as `variables`) holding the PyTorch model's weights."""
  theirs = {k: v.detach().cpu().numpy() for k, v in state_dict.items()
            if not k.endswith('num_batches_tracked')}
  rows = name_map(variables, kind)
  missing = [name for _, _, name in rows if name not in theirs]
  extra = sorted(set(theirs) - {name for _, _, name in rows})
  if missing or extra:
    raise ValueError(f'The models do not match: ours has no {extra}, theirs has no {missing}.')
  out = {c: {} for c in ('params', 'batch_stats')}
  for collection, path, name in rows:
    value = _to_ours(theirs[name], path[-1])
    expected = _get(variables[collection], path).shape
    if value.shape != tuple(expected):
      raise ValueError(f'{name}: shape {value.shape} in PyTorch, {tuple(expected)} here.')
    _set(out[collection], path, value.astype(np.float32))
  return out


def to_torch(variables, kind):
  """A PyTorch state dict (numpy values) of our variables, for `load_state_dict`."""
  out = {}
  for collection, path, name in name_map(variables, kind):
    out[name] = np.ascontiguousarray(
        _to_theirs(np.asarray(_get(variables[collection], path)), path[-1]))
  return out


def _flatten(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, 'items'):
      yield from _flatten(value, prefix + (key,))
    else:
      yield prefix + (key,)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value
