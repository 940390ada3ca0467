"""Final evaluation of a training workdir (trainer/evaluation/evaluate.py):

    python -m trainer.evaluate --workdir=DIR [--checkpoint=best|latest|STEP] [--num_examples=N]
        [--attacks=aa+mt,standard] [--config.key=value …]

The config is the run's own (DIR/config.json); --config.key=value overrides it, e.g.
--config.dataset.data_dir=… on another machine or --config.threat.eps=… for another radius.
The test points are attacked in chunks of eval.chunk_size, each saved as it ends: run the same
command again after a kill and it resumes; with --distributed, every host takes its share of the
chunks, with the result of one process.
"""
from absl import flags
from ml_collections import config_flags

from trainer import cli
from trainer.evaluation import evaluate
from trainer.harness import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 0, 'First N test images (0: all).')
_ATTACKS = flags.DEFINE_string('attacks', None,
                               'Comma-separated cascades (default: config.eval.attacks).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0,
                                   'Points per attack call (0: config.eval.batch_size).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize(): the '
                                 'hosts split the chunks of test points (coordinator flags as in '
                                 'trainer.main).')


def _peek_workdir(argv):
  for i, arg in enumerate(argv):
    for prefix in ('--workdir=', '-workdir='):
      if arg.startswith(prefix):
        return arg[len(prefix):]
    if arg in ('--workdir', '-workdir') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _parse_flags(argv):
  """Defines --config from the workdir's stored config, so --config.key=value overrides it."""
  workdir = _peek_workdir(argv)
  if workdir is None:
    raise cli.UserError('--workdir=DIR is required: the training workdir to evaluate.')
  cli.check_gcs_readable(workdir, '--workdir')
  config_flags.DEFINE_config_dict('config', workdir_lib.load_config(cli.absolute(workdir)),
                                  "The run's config (DIR/config.json), with overrides.",
                                  sys_argv=argv)
  return flags.FLAGS(argv)


def main():
  cli.initialize_distributed(_DISTRIBUTED.value, '--distributed')
  workdir = cli.absolute(_WORKDIR.value)
  cli.start(workdir)
  evaluate.evaluate(flags.FLAGS.config, workdir, checkpoint=_CHECKPOINT.value,
                    num_examples=_NUM_EXAMPLES.value, attacks=_ATTACKS.value,
                    batch_size=_BATCH_SIZE.value)


if __name__ == '__main__':
  cli.run(main, parser=_parse_flags)
