"""Import a released classifier checkpoint into a new workdir
(trainer/interop/checkpoint_import.py):

    python -m trainer.import_checkpoint --source=FILE --config=configs/X.py --workdir=DIR
        [--config.key=value …] [--trust_pickle] [--train_state]

FILE: a RobustBench-format PyTorch state_dict (.pt/.pth), or DeepMind's Haiku .npy (a pickle:
only with --trust_pickle). Then `python -m trainer.evaluate --workdir=DIR`, or with --train_state
`python -m trainer.main` with the same config and workdir to fine-tune.
"""
from absl import flags
from ml_collections import config_flags

from trainer import cli
from trainer.interop import checkpoint_import

_CONFIG = config_flags.DEFINE_config_file('config', None,
                                          'Config file (configs/*.py) of the model.',
                                          lock_config=True)
_SOURCE = flags.DEFINE_string('source', None, 'Checkpoint file: .pt/.pth state_dict or Haiku .npy.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'New workdir to create.')
_TRUST_PICKLE = flags.DEFINE_bool('trust_pickle', False,
                                  'Allow unpickling a Haiku .npy (it can run code).')
_TRAIN_STATE = flags.DEFINE_bool('train_state', False, 'Also write checkpoints/0 for fine-tuning '
                                 'with trainer.main (reads the training data).')
flags.mark_flags_as_required(['config', 'source', 'workdir'])


def main():
  workdir = cli.absolute(_WORKDIR.value)
  cli.start(workdir)
  record = checkpoint_import.import_checkpoint(
      cli.absolute(_SOURCE.value), _CONFIG.value, workdir, trust_pickle=_TRUST_PICKLE.value,
      with_train_state=_TRAIN_STATE.value)
  print(f'Imported {record["source"]} ({record["format"]}) as {record["model"]} into {workdir}; '
        f'evaluate it with: python -m trainer.evaluate --workdir={workdir}')


if __name__ == '__main__':
  cli.run(main)
