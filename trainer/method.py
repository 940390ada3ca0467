"""The whole method in one command (trainer/pipeline/stages.py):

  python -m trainer.method --config=configs/demo.py [--config.key=value …] --workdir=DIR

classifier → generator → pseudo-labelled samples → Algorithm 1's data metrics → robust training
→ evaluation, and WORKDIR/report.md. Run the same command again to resume after an interruption;
a changed config is refused for the stages it would change, unless --redo=STAGE says to redo them.
"""
from absl import flags
from ml_collections import config_flags

from trainer import cli
from trainer.pipeline import report
from trainer.pipeline import stages

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every stage of the method.')
_REDO = flags.DEFINE_string('redo', None, 'Redo this stage and every stage after it (their '
                            'outputs are deleted first): classifier, generator, samples, '
                            'data_metrics, robust or evaluation.')
flags.mark_flags_as_required(['config', 'workdir'])


def main():
  workdir = cli.absolute(_WORKDIR.value)
  cli.check_config_paths(_CONFIG.value)
  cli.start(workdir)
  out = stages.run(_CONFIG.value, workdir, redo=_REDO.value)
  if out['status'] == 'stopped':
    print(f"stopped in the {out['stopped_at']} stage (checkpoint saved): run the same command "
          'to resume', flush=True)
  else:
    print(report.closing(out), flush=True)


if __name__ == '__main__':
  cli.run(main)
