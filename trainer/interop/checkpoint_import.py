"""Import a released checkpoint into a new workdir that `trainer.evaluate` and `trainer.main` use.

The source file is one of
* a PyTorch `.pt`/`.pth` state_dict of RobustBench's `DMWideResNet` or `DMPreActResNet`, such as
  DeepMind's released models (read with `torch.load(weights_only=True)`: no code in it runs);
  a `{'state_dict': …}` wrapper and DataParallel's `module.` prefixes are accepted;
* for `resnet-50`/`-101`/`-152` (`-swish`), a torchvision ResNet state_dict, such as RobustBench's
  ImageNet ResNet-50s, bare or in RobustBench's `normalize_model` wrapper
  (`models.interop.torchvision_resnet`);
* a DeepMind Haiku `.npy` (a pickled `(params, state)` pair of their JAX WideResNet, the `_v2`
  files' layout). Unpickling can run code from the file, so it needs `--trust_pickle`.

The config says the architecture and dataset (`--config.model.name=wrn-70-16`, …); a checkpoint of
another architecture is refused with the key that does not fit. The workdir gets config.json,
best/0 holding the weights as the EMA variables (the released weights are averaged ones) with
their BatchNorm statistics, best.json and import.json (where the weights came from). The
held-out accuracy of an imported model is unknown: best.json records it as -1, below any
measured value, so a fine-tuning run's first evaluation takes over the best checkpoint.
`--train_state` also writes checkpoints/0, a training state starting from these weights (fresh
optimiser, data at its start), so that `python -m trainer.main` with the same config and workdir
fine-tunes them; it reads the training data.
"""
import hashlib
from typing import Any, Dict, Tuple

import jax
import ml_collections
import numpy as np
from etils import epath

from data import real
from models.interop import robustbench
from models.interop import torchvision_resnet
from trainer.harness import checkpoints
from trainer.harness import workdir as workdir_lib
from trainer.interop import export
from trainer.robust import classifier
from trainer.robust import train

UNKNOWN_ACCURACY = -1.0
TORCH_SUFFIXES = ('.pt', '.pth')


def load_torch(source: str) -> Dict[str, np.ndarray]:
  """A state_dict of numpy arrays from a PyTorch file, without running code from it."""
  torch = export.import_torch('importing a .pt checkpoint')
  try:
    with epath.Path(source).open('rb') as f:
      loaded = torch.load(f, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises UnpicklingError or RuntimeError, by version
    raise ValueError(f'{source} is not a PyTorch file of plain tensors that loads with '
                     f'weights_only=True: {str(e).splitlines()[0]}') from e
  for key in ('state_dict', 'model_state_dict', 'model'):
    if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
      loaded = loaded[key]
  if not isinstance(loaded, dict):
    raise ValueError(f'{source} holds a {type(loaded).__name__}, not a state_dict.')
  out = {}
  for key, value in loaded.items():
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    out[key.removeprefix('module.')] = value.numpy()
  return out


def load_haiku(source: str, trust_pickle: bool) -> Tuple[dict, dict]:
  """DeepMind's (params, state) pair from a `.npy`; only with `trust_pickle`."""
  with epath.Path(source).open('rb') as f:
    try:
      np.load(f, allow_pickle=False)
    except ValueError as e:
      if not trust_pickle:
        raise ValueError(
            f'{source} is a pickled Haiku (params, state) pair, and unpickling a file can run '
            'any code it holds. Pass --trust_pickle if you trust where it comes from, or '
            'import the .pt file of the same model instead.') from e
    else:
      raise ValueError(f'{source} holds a plain array, not a Haiku (params, state) pair.')
    f.seek(0)
    try:
      loaded = np.load(f, allow_pickle=True)  # explicit opt-in: --trust_pickle
    except ModuleNotFoundError as e:
      raise ValueError(f'{source} pickles {e.name} objects (a release before DeepMind\'s _v2 '
                       'files); use the _v2 .npy or the .pt file of the model.') from e
  pair = loaded.tolist() if isinstance(loaded, np.ndarray) else loaded
  if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and
          all(isinstance(p, dict) for p in pair)):
    raise ValueError(f'{source} does not hold a (params, state) pair of dicts.')
  return pair


def read_variables(source: str, config: ml_collections.ConfigDict,
                   trust_pickle: bool = False) -> Tuple[Any, str]:
  """(our variables, format name) of the checkpoint at `source`, for `config.model`."""
  abstract = classifier.abstract_state(config).ema_variables()
  name = config.model.name
  if source.endswith(TORCH_SUFFIXES) and torchvision_resnet.handles(name):
    info = real.info(config.dataset)
    return torchvision_resnet.from_torch(load_torch(source), abstract, name, source=source,
                                         mean=info.mean, std=info.std), 'torch'
  if source.endswith(TORCH_SUFFIXES):
    return robustbench.from_torch(load_torch(source), abstract, name, source=source), 'torch'
  if source.endswith('.npy'):
    params, state = load_haiku(source, trust_pickle)
    return robustbench.from_haiku(params, state, abstract, name, source=source), 'haiku'
  raise ValueError(f'{source}: unknown checkpoint format; expected a PyTorch state_dict '
                   f'({", ".join(TORCH_SUFFIXES)}) or a DeepMind Haiku .npy.')


def _sha256(source):
  digest = hashlib.sha256()
  with epath.Path(source).open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _save_train_state(workdir, config, variables, ckpt):
  """checkpoints/0: a fresh training state whose weights and averages are `variables`."""
  task = train.RobustTraining(config)
  state = jax.jit(task.init_state)()
  params, stats = variables['params'], variables['batch_stats']
  state = state.replace(params=params, batch_stats=stats, ema_params=params,
                        ema_batch_stats=stats)
  ckpt.save(0, state, task.data(0), force=True)


def import_checkpoint(source: str, config: ml_collections.ConfigDict, workdir: str, *,
                      trust_pickle: bool = False, with_train_state: bool = False) -> dict:
  """Writes the workdir; returns its import record."""
  for name in ('best', 'checkpoints'):
    if epath.Path(workdir, name).exists():
      raise FileExistsError(f'{workdir}/{name} exists: import into a new workdir.')
  variables, fmt = read_variables(source, config, trust_pickle)
  variables = jax.tree_util.tree_map(jax.numpy.asarray, variables)
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, config, with_data=True, keeps_best=True)
  key = train.selection_key(config)
  ckpt.maybe_save_best(0, variables, {key: UNKNOWN_ACCURACY}, key)
  if with_train_state:
    _save_train_state(workdir, config, variables, ckpt)
  ckpt.close()
  record = {'source': source, 'format': fmt, 'sha256': _sha256(source),
            'model': config.model.name, 'dataset': config.dataset.name,
            'train_state': with_train_state}
  if jax.process_index() == 0:
    workdir_lib.write_json(epath.Path(workdir, 'import.json'), record)
  return record
