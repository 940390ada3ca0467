"""Robust training (trainer/robust/train.py):

  python -m trainer.main --config=configs/X.py [--config.key=value …] --workdir=DIR

Multi-host: pass --config.distributed=True on every process. On Cloud TPU (and SLURM, Open MPI,
Kubernetes) JAX finds the coordinator and the process ids itself; elsewhere give them:

  python -m trainer.main … --config.distributed=True --coordinator_address=HOST:PORT \\
      --num_processes=2 --process_id=0      # and --process_id=1 on the other process

(the coordinator address may also come from $JAX_COORDINATOR_ADDRESS). Every process gets the
same workdir: a disk they share, or a gs:// bucket.
"""
from absl import flags
from ml_collections import config_flags

from trainer import cli
from trainer.harness import progress
from trainer.robust import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, events and results.')
_DEBUG_BATCH_IDS = flags.DEFINE_bool(
    'debug_batch_ids', False, 'Append the sample ids of every train step to '
    'WORKDIR/batch_ids/process_<i>.txt (checks of exact resume).')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  config = _CONFIG.value
  workdir = cli.start_run(config, _WORKDIR.value)
  result = train.train_and_evaluate(config, workdir, record_batch_ids=_DEBUG_BATCH_IDS.value,
                                    progress_name='train')
  print(progress.summary_line(result, workdir), flush=True)


if __name__ == '__main__':
  cli.run(main)
