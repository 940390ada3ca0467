"""Pseudo-labels generated images with a trained classifier (trainer/generation/pseudolabel.py):

  python -m trainer.pseudolabel --classifier=WORKDIR --source=SRC --out=DIR/NAME --shards=N \\
      [--top_k=K] [--checkpoint=best] [--batch_size=1024] [--seed=0]

SRC is a shard set's manifest (`….json`) or an `.npz` with an `image` array.
"""
import os

from absl import flags

from trainer import cli
from trainer.generation import pseudolabel

_CLASSIFIER = flags.DEFINE_string('classifier', None, 'Workdir of the trained classifier.')
_SOURCE = flags.DEFINE_string('source', None, 'Shard manifest (.json) or .npz of images.')
_OUT = flags.DEFINE_string('out', None, 'Output prefix DIR/NAME.')
_SHARDS = flags.DEFINE_integer('shards', None, 'Number of output shards.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the K best-scoring per class (0: all).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 1024, 'Images per device batch.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the top-K shuffle.')
flags.mark_flags_as_required(['classifier', 'source', 'out', 'shards'])


def main():
  out = cli.absolute(_OUT.value)
  cli.check_gcs_readable(_SOURCE.value, '--source')
  cli.check_gcs_readable(_CLASSIFIER.value, '--classifier')
  cli.start(os.path.dirname(out) or '.')
  path = pseudolabel.label_with(cli.absolute(_CLASSIFIER.value), cli.absolute(_SOURCE.value), out,
                                num_shards=_SHARDS.value, top_k=_TOP_K.value,
                                which=_CHECKPOINT.value, batch_size=_BATCH_SIZE.value,
                                seed=_SEED.value)
  print(path, flush=True)


if __name__ == '__main__':
  cli.run(main)
