"""Export a training workdir's best EMA weights for RobustBench.

    python -m trainer.export --workdir=DIR --out=model.pt [--checkpoint=best|latest|STEP]

Writes a plain PyTorch `state_dict` that loads with `strict=True` into RobustBench's
`DMWideResNet` (our WRNs) or `DMPreActResNet` (our ResNet-18), BatchNorm running averages and
`num_batches_tracked` (the checkpoint's training step) included, and beside it (`model.json`)
the model-info record RobustBench keeps in `model_info/<dataset>/<threat>/<name>.json`, filled
from DIR/robustbench.json when `trainer.evaluate` has written one. The console shows the
constructor call that rebuilds the model.
"""
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from etils import epath

from data import real
from trainer import checkpointing
from trainer import cli
from trainer import evaluate
from trainer import interop_layout


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
          'architecture': interop_layout.architecture_name(model_name),
          'eps': float(config.threat.eps),
          'clean_acc': record.get('clean_acc'), 'reported': record.get('autoattack_acc'),
          'autoattack_acc': record.get('autoattack_acc'), 'footnote': None}


def export(workdir: str, out: str, checkpoint: str = 'best') -> Tuple[str, Dict[str, Any]]:
  """Writes `out` (state_dict) and its model-info JSON; returns (class name, constructor kwargs)."""
  import torch  # pylint: disable=g-import-not-at-top
  config, _, variables = checkpointing.restore_for_eval(workdir, checkpoint)
  check_image_shape(config)
  info = real.info(config.dataset)
  name = config.model.name
  step = evaluate.checkpoint_step(workdir, checkpoint) or 0
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(variables))
  state_dict = interop_layout.to_torch(variables, name, num_batches_tracked=step)
  epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
  with epath.Path(out).open('wb') as f:
    torch.save({k: torch.tensor(v) for k, v in state_dict.items()}, f)
  record_path = epath.Path(workdir, 'robustbench.json')
  record = json.loads(record_path.read_text()) if record_path.exists() else None
  info_path = epath.Path(os.path.splitext(out)[0] + '.json')
  info_path.write_text(json.dumps(model_info(config, name, record), indent=2))
  return interop_layout.robustbench_constructor(name, num_classes=info.num_classes,
                                                mean=info.mean, std=info.std)


def _constructor_text(cls, kwargs):
  args = ', '.join(f'{k}={v}' if k == 'activation_fn' else f'{k}={v!r}' for k, v in kwargs.items())
  return (f'from robustbench.model_zoo.architectures.dm_wide_resnet import {cls}, Swish\n'
          f'model = {cls}({args})')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  out = cli.absolute(f.out)
  cls, kwargs = export(cli.absolute(f.workdir), out, f.checkpoint)
  print(f'Wrote {out} and {os.path.splitext(out)[0]}.json. Load it with:\n'
        f'{_constructor_text(cls, kwargs)}\n'
        f'model.load_state_dict(torch.load({out!r}, weights_only=True)); model.eval()')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Training workdir to export.')
  flags.DEFINE_string('out', None, 'Path of the PyTorch state_dict to write (e.g. model.pt).')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.mark_flags_as_required(['workdir', 'out'])
  cli.run(main)
