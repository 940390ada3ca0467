"""Packs a path dataset's split into shards for streaming (`packed`); run once per dataset.

  python -m data.datasets.pack --config=configs/X.py [--config.dataset.path=PATH] \
      [--split=train] [--shards=N]
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from data import datasets
from data.datasets import packed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).')
_SPLIT = flags.DEFINE_enum('split', 'train', ['train', 'test'], 'The split to pack.')
_SHARDS = flags.DEFINE_integer('shards', 0, 'Shard files (0: one per 2,000 images, at least 64).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  ds = datasets.get(_CONFIG.value.dataset)
  if ds.name not in datasets.PATH_NAMES:
    raise app.UsageError(f'{ds.name} is not read from a path: only {datasets.PATH_NAMES} are '
                         'packed (tfds datasets stream from their prepared files)')
  print(packed.pack(ds, _SPLIT.value, _SHARDS.value))


if __name__ == '__main__':
  app.run(main)
