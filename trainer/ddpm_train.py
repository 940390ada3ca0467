"""DDPM training: python -m trainer.ddpm_train --config=configs/ddpm_digits.py --workdir=DIR

Ho et al.'s objective on the dataset of the config (trainer/diffusion/ddpm.py). The workdir holds
config.json, checkpoints/<s>/state, TensorBoard events with a sample grid every eval.every_steps,
and at the end generator/, the EMA weights as a generator checkpoint for `trainer.sample`.
Multi-host and resume as `trainer.main`.
"""
from absl import flags
from ml_collections import config_flags

from trainer import cli
from trainer.diffusion import ddpm

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/ddpm_*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and the generator.')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  workdir = cli.start_run(_CONFIG.value, _WORKDIR.value)
  result = ddpm.train(_CONFIG.value, workdir, progress_name='ddpm')
  losses = [logged['loss'] for _, logged in result['history']]
  loss = f'loss {losses[-1]:.4f}' if losses else 'no step left to train'
  if result['finished']:
    print(f'step {result["step"]}: {loss}; generator: {result["generator"]}', flush=True)
  else:
    print(f'stopped at step {result["step"]} (checkpoint saved): {loss}; run the same command '
          'to resume', flush=True)


if __name__ == '__main__':
  cli.run(main)
