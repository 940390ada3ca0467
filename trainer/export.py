"""Export a training workdir's best EMA weights for RobustBench (trainer/interop/export.py):

    python -m trainer.export --workdir=DIR --out=model.pt [--checkpoint=best|latest|STEP]
"""
import os

from absl import flags

from trainer import cli
from trainer.interop import export

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to export.')
_OUT = flags.DEFINE_string('out', None, 'Path of the PyTorch state_dict to write (e.g. model.pt).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
flags.mark_flags_as_required(['workdir', 'out'])


def main():
  out = cli.absolute(_OUT.value)
  cls, kwargs = export.export(cli.absolute(_WORKDIR.value), out, _CHECKPOINT.value)
  print(f'Wrote {out} and {os.path.splitext(out)[0]}.json. Load it with:\n'
        f'{export.constructor_text(cls, kwargs)}\n'
        f'model.load_state_dict(torch.load({out!r}, weights_only=True)); model.eval()')


if __name__ == '__main__':
  cli.run(main)
