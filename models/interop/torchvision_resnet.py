"""Our bottleneck ResNets (`models.resnet`) in torchvision's `state_dict` layout, both ways.

RobustBench's ImageNet ResNet-50s (`robustbench/model_zoo/imagenet.py`: Salman2020Do_R50,
Engstrom2019Robustness, Wong2020Fast, Standard_R50) are torchvision `resnet50()` models wrapped as
`normalize_model(resnet50(), mu, sigma)`, an `nn.Sequential` of `normalize` (an `ImageNormalizer`
with buffers `mean`, `std`) and `model`. `robustbench.utils.load_model` strips `module.` and
`model.` from a downloaded file's keys, adds `model.` back and tolerates missing
`normalize.mean` / `normalize.std`: the files hold torchvision's keys, with or without those
prefixes; a `state_dict()` of the wrapped model has the normaliser too. Both are accepted here,
as are DataParallel's `module.` prefixes and the layout of MadryLab's `robustness` library, where
those models were trained (see `unwrap`). Normalisation buffers, where present, must equal the
mean/std our model normalises with (the dataset's): a checkpoint trained with other constants
would be evaluated on shifted inputs.

torchvision's names for ours:

| ours | torchvision |
|---|---|
| `stem` (7x7 conv), `bn_stem` | `conv1`, `bn1` |
| `stage_{i}_block_{j}/conv_{k}`, `bn_{k}` (k = 0, 1, 2) | `layer{i+1}.{j}.conv{k+1}`, `bn{k+1}` |
| `stage_{i}_block_{j}/shortcut`, `bn_shortcut` | `layer{i+1}.{j}.downsample.0`, `.1` |
| `head` | `fc` |

Kernels are OIHW there (HWIO here) and the head's weight is (out, in) (ours (in, out)); BatchNorm
`weight`/`bias`/`running_mean`/`running_var` are our `scale`/`bias`/`mean`/`var`, and the
`num_batches_tracked` counters, which inference never reads, may be missing.

The layout has no activation: a torchvision model is ReLU, and the same tensors load into
`resnet-50-swish` as well (for a Swish ResNet trained in PyTorch with torchvision's layout); the
model name in the config says which.
"""
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from models.resnet import DEPTHS

_NAME = re.compile(r'resnet-(\d+)(-swish)?')
_BLOCK = re.compile(r'stage_(\d+)_block_(\d+)')
_LAYER = {'conv_0': 'conv1', 'conv_1': 'conv2', 'conv_2': 'conv3', 'bn_0': 'bn1', 'bn_1': 'bn2',
          'bn_2': 'bn3', 'shortcut': 'downsample.0', 'bn_shortcut': 'downsample.1'}
_TOP = {'stem': 'conv1', 'bn_stem': 'bn1', 'head': 'fc'}
_BN_LEAF = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
# What RobustBench's `normalize_model` wrapper adds around the torchvision model.
WRAPPER_PREFIX = 'model.'
NORMALIZER = ('normalize.mean', 'normalize.std')
# MadryLab's `robustness` library (the origin of Engstrom2019Robustness and Salman2020Do_R50)
# saves an `AttackerModel`: `model.` (the classifier), `attacker.model.` (the same modules again)
# and `normalizer.new_mean` / `new_std`, all under DataParallel's `module.`.
MADRYLAB_NORMALIZER = {'normalizer.new_mean': 'normalize.mean',
                       'normalizer.new_std': 'normalize.std'}
MADRYLAB_ATTACKER = 'attacker.model.'


def handles(model_name: str) -> bool:
  """Whether `model_name` is one of our torchvision-layout ResNets (`resnet-50`, ...)."""
  return _NAME.fullmatch(model_name) is not None


def torch_key(collection: str, path: Sequence[str], name: str) -> str:
  """torchvision's key of our variable `collection`/`path`/`name`."""
  block = _BLOCK.fullmatch(path[0])
  if block and len(path) == 2 and path[1] in _LAYER:
    module = f'layer{int(block.group(1)) + 1}.{block.group(2)}.{_LAYER[path[1]]}'
  elif len(path) == 1 and path[0] in _TOP:
    module = _TOP[path[0]]
  else:
    raise ValueError(f'Our module {"/".join(path)} has no torchvision counterpart.')
  if path[-1].startswith('bn'):
    return f'{module}.{_BN_LEAF[name]}'
  return f'{module}.{"bias" if name == "bias" else "weight"}'


def _leaves(tree) -> list:
  """[(collection, module path, name, value)] of a {'params', 'batch_stats'} tree."""
  out = []
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = tuple(p.key for p in path)
    out.append((keys[0], keys[1:-1], keys[-1], value))
  return out


def _to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
  if name == 'kernel':
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _from_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
  if name == 'kernel':
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def to_torch(variables, *, num_batches_tracked: int = 0) -> Dict[str, np.ndarray]:
  """Our {'params', 'batch_stats'} as a torchvision `state_dict` of numpy arrays (float32; the
  `num_batches_tracked` counters int64, set to `num_batches_tracked`)."""
  out = {}
  for collection, path, name, value in _leaves(variables):
    key = torch_key(collection, path, name)
    out[key] = np.ascontiguousarray(_to_torch_layout(name, np.asarray(value, np.float32)))
    if name == 'var':
      out[key.replace('running_var', 'num_batches_tracked')] = np.asarray(
          num_batches_tracked, np.int64)
  return out


def _numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor, without importing torch here
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def unwrap(state_dict: Mapping[str, Any], source: str = 'checkpoint'
           ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """(torchvision keys, normalisation buffers) of a bare, DataParallel, RobustBench-wrapped or
  MadryLab `robustness` state_dict: `module.` and the wrappers' `model.` prefixes are removed,
  the normalisers' buffers returned under RobustBench's names, and the attacker's copy of the
  weights in a `robustness` checkpoint dropped once it is found equal to the classifier's."""
  bare = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  for theirs, ours in MADRYLAB_NORMALIZER.items():
    if theirs in bare:
      bare[ours] = bare.pop(theirs)
  norm = {k: _numpy(bare.pop(k)) for k in NORMALIZER if k in bare}
  for key in [k for k in bare if k.startswith(MADRYLAB_ATTACKER)]:
    twin = key.removeprefix('attacker.')
    if twin not in bare or not np.array_equal(_numpy(bare[key]), _numpy(bare[twin])):
      raise ValueError(f'{source}: key {key!r} (the attacker\'s copy of the model in a MadryLab '
                       f'robustness checkpoint) does not equal {twin!r}; which one to import is '
                       'not clear.')
    del bare[key]
  if bare and all(k.startswith(WRAPPER_PREFIX) for k in bare):
    bare = {k.removeprefix(WRAPPER_PREFIX): v for k, v in bare.items()}
  return bare, norm


def describe(state_dict: Mapping[str, Any]) -> str:
  """What a torchvision ResNet state_dict holds, for error messages."""
  try:
    blocks = tuple(len({k.split('.')[1] for k in state_dict if k.startswith(f'layer{s}.')})
                   for s in range(1, 5))
    depth = {v: f'ResNet-{d}' for d, v in DEPTHS.items()}.get(blocks, f'ResNet with {blocks} '
                                                                       'blocks per stage')
    bottleneck = 'layer1.0.conv3.weight' in state_dict
    kind = depth if bottleneck else f'basic-block ResNet with {blocks} blocks per stage'
    return f'a torchvision {kind} with {np.shape(state_dict["fc.weight"])[0]} classes'
  except (KeyError, IndexError):
    return 'of an unknown architecture (first keys: ' + ', '.join(list(state_dict)[:4]) + ')'


def _check_normalizer(norm: Mapping[str, np.ndarray], mean, std, source: str) -> None:
  for key, ours in zip(NORMALIZER, (mean, std)):
    if key in norm and ours is not None:
      theirs = norm[key].reshape(-1)
      if theirs.shape != (len(ours),) or not np.allclose(theirs, ours, atol=1e-6):
        raise ValueError(
            f'{source}: key {key!r} is {theirs.round(6).tolist()}, but the model normalises its '
            f'inputs with {list(ours)} (the dataset\'s {key.split(".")[1]}); the checkpoint was '
            'trained for other statistics.')


def from_torch(state_dict: Mapping[str, Any], abstract, model_name: str, *,
               source: str = 'checkpoint', mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None):
  """A torchvision ResNet `state_dict` (arrays or tensors) as our variables shaped like `abstract`.

  Every key must be there with the right shape and no other may be (the `num_batches_tracked`
  counters may be missing); RobustBench's `normalize.mean` / `normalize.std`, if present, must
  equal `mean` / `std`. Errors name the key and say what the file holds.

  Args:
    state_dict: torchvision keys, optionally under `module.` and/or RobustBench's wrapper.
    abstract: our variables ({'params', 'batch_stats'}), e.g. ShapeDtypeStructs.
    model_name: our model name, for messages (`resnet-50`, ...).
    source: the file, for messages.
    mean: the per-channel mean our model normalises with, checked against `normalize.mean`.
    std: the per-channel std, checked against `normalize.std`.

  Returns:
    float32 numpy arrays in the structure of `abstract`.

  Raises:
    ValueError: for a missing, unexpected or misshapen key, or other normalisation constants.
  """
  bare, norm = unwrap(state_dict, source)
  _check_normalizer(norm, mean, std, source)
  leaves = _leaves(abstract)
  expected = {torch_key(c, p, n): (n, tuple(v.shape)) for c, p, n, v in leaves}
  counters = {k.replace('running_var', 'num_batches_tracked') for k in expected
              if k.endswith('.running_var')}
  missing = [k for k in expected if k not in bare]
  unexpected = [k for k in bare if k not in expected and k not in counters]
  if missing or unexpected:
    listed = [f'{what} key(s) {keys[:3]}{f" and {len(keys) - 3} more" if len(keys) > 3 else ""}'
              for what, keys in (('missing', missing), ('unexpected', unexpected)) if keys]
    raise ValueError(
        f'{source} does not fit {model_name}: it is {describe(bare)}; {", ".join(listed)}. Set '
        '--config.model.name and the dataset to those of the checkpoint.')
  values = []
  for key, (name, shape) in expected.items():
    value = _numpy(bare[key])
    want = _to_torch_layout(name, np.empty(shape)).shape
    if value.shape != want:
      raise ValueError(f'{source}: key {key!r} has shape {tuple(value.shape)}; {model_name} '
                       f'needs {want} (the checkpoint is {describe(bare)}).')
    values.append(_from_torch_layout(name, value).astype(np.float32))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), values)
