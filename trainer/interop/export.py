"""Export a training workdir's best EMA weights for RobustBench.

Writes a plain PyTorch `state_dict` that loads with `strict=True` into RobustBench's
`DMWideResNet` (our WRNs) or `DMPreActResNet` (our ResNet-18), BatchNorm running averages and
`num_batches_tracked` (the checkpoint's training step) included, and beside it (`model.json`)
the model-info record RobustBench keeps in `model_info/<dataset>/<threat>/<name>.json`, filled
from DIR/robustbench.json when `trainer.evaluate` has written one. The console shows the
constructor call that rebuilds the model.
"""
import io
import os
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
from etils import epath

from data import real
from models.interop import robustbench
from trainer.evaluation import evaluate
from trainer.harness import workdir as workdir_lib
from trainer.robust import classifier


def import_torch(command):
  """PyTorch, an optional dependency of the weight interop; one clear line when it is missing."""
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: only the interop needs it)
  except ImportError as e:
    raise ImportError(f'{command} needs PyTorch, which is not installed: '
                      'pip install torch==2.13.0') from e
  return torch


def check_image_shape(config: ml_collections.ConfigDict) -> None:
  """The PyTorch classes pool a fixed window (8 for the WRN, 4 for ResNet-18): 32x32 inputs."""
  shape = real.info(config.dataset).shape
  if tuple(shape[:2]) != (32, 32):
    raise ValueError(f'{config.dataset.name} images are {shape[0]}x{shape[1]}; RobustBench\'s '
                     'DMWideResNet and DMPreActResNet take 32x32 images only (fixed pooling).')


def model_info(config: ml_collections.ConfigDict, model_name: str,
               record: Optional[dict] = None) -> dict:
  """RobustBench's model-info fields (its `utils.ModelInfo`), accuracies in percent as strings."""
  record = record or {}
  return {'link': None, 'name': None, 'authors': None,
          # Generated data from a model trained on the training set only is not extra data.
          'additional_data': False, 'number_forward_passes': 1,
          'dataset': config.dataset.name, 'venue': None,
          'architecture': robustbench.architecture_name(model_name),
          'eps': float(config.threat.eps),
          'clean_acc': record.get('clean_acc'), 'reported': record.get('autoattack_acc'),
          'autoattack_acc': record.get('autoattack_acc'), 'footnote': None}


def export(workdir: str, out: str, checkpoint: str = 'best') -> Tuple[str, Dict[str, Any]]:
  """Writes `out` (state_dict) and its model-info JSON; returns (class name, constructor kwargs)."""
  torch = import_torch('trainer.export')
  config, _, variables = classifier.load(workdir, checkpoint)
  check_image_shape(config)
  info = real.info(config.dataset)
  name = config.model.name
  step = evaluate.checkpoint_step(workdir, checkpoint) or 0
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
  state_dict = robustbench.to_torch(variables, name, num_batches_tracked=step)
  epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()  # torch writes memoryviews, which a gs:// file (TensorFlow's) refuses
  torch.save({k: torch.tensor(v) for k, v in state_dict.items()}, buffer)
  epath.Path(out).write_bytes(buffer.getvalue())
  record_path = epath.Path(workdir, 'robustbench.json')
  record = workdir_lib.read_json(record_path) if record_path.exists() else None
  workdir_lib.write_json(os.path.splitext(out)[0] + '.json', model_info(config, name, record))
  return robustbench.robustbench_constructor(name, num_classes=info.num_classes,
                                                mean=info.mean, std=info.std)


def constructor_text(cls, kwargs):
  """Python that rebuilds the exported model in RobustBench."""
  args = ', '.join(f'{k}={v}' if k == 'activation_fn' else f'{k}={v!r}' for k, v in kwargs.items())
  return (f'from robustbench.model_zoo.architectures.dm_wide_resnet import {cls}, Swish\n'
          f'model = {cls}({args})')
