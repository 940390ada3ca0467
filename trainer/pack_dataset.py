"""Packs a path dataset's split into shards for streaming (data/datasets/packed.py); once per
dataset:

  python -m trainer.pack_dataset --config=configs/X.py [--config.dataset.path=PATH] \\
      [--split=train] [--shards=N]
"""
from absl import flags
from ml_collections import config_flags

from data import datasets
from data.datasets import packed
from trainer import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'test'], 'The split to pack.')
_SHARDS = flags.DEFINE_integer('shards', 0, 'Shard files (0: one per 2,000 images, at least 64).')
flags.mark_flags_as_required(['config'])


def main():
  ds = datasets.get(_CONFIG.value.dataset)
  if ds.name not in datasets.PATH_NAMES:
    raise cli.UserError(f'{ds.name} is not read from a path: only {datasets.PATH_NAMES} are '
                        'packed (tfds datasets stream from their prepared files)')
  print(packed.pack(ds, _SPLIT.value, _SHARDS.value), flush=True)


if __name__ == '__main__':
  cli.run(main)
