"""Generator training (trainer/diffusion/generator.py):

  python -m trainer.train_generator --config=configs/ddpm_digits.py --workdir=DIR

`config.objective` says which generator: 'ddpm' (Ho et al.; configs/ddpm_*.py) or 'edm' (Karras
et al.; configs/edm_*.py). The workdir holds config.json, checkpoints/<s>/state, TensorBoard
events with a sample grid every eval.every_steps, and at the end generator/, the EMA weights as a
generator checkpoint for `trainer.sample`. Multi-host and resume as `trainer.main`.
"""
from absl import flags
from ml_collections import config_flags

from trainer import cli
from trainer.diffusion import generator

_CONFIG = config_flags.DEFINE_config_file('config', None,
                                          'Config file (configs/ddpm_*.py, configs/edm_*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and the generator.')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  workdir = cli.start_run(_CONFIG.value, _WORKDIR.value)
  result = generator.train(_CONFIG.value, workdir, progress_name=_CONFIG.value.objective)
  losses = [logged['loss'] for _, logged in result['history']]
  loss = f'loss {losses[-1]:.4f}' if losses else 'no step left to train'
  if result['finished']:
    print(f'step {result["step"]}: {loss}; generator: {result["generator"]}', flush=True)
  else:
    print(f'stopped at step {result["step"]} (checkpoint saved): {loss}; run the same command '
          'to resume', flush=True)


if __name__ == '__main__':
  cli.run(main)
