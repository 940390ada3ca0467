"""Entry point: python -m trainer.main --config=configs/X.py [--config.key=value …] --workdir=DIR"""
import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from trainer import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, events and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config.distributed:
    jax.distributed.initialize()
  logging.info('Process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
