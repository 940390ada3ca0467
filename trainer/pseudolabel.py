"""Pseudo-labels generated images with a trained classifier and writes them as a shard set.

  python -m trainer.pseudolabel --classifier=WORKDIR --source=SRC --out=DIR/NAME --shards=N \\
      [--top_k=K] [--checkpoint=best] [--batch_size=1024] [--seed=0]

SRC is a shard set's manifest (`….json`) or an `.npz` with an `image` array (DeepMind's or
DM-Improves-AT's sets). Each sample gets the classifier's arg-max class as its label and the
softmax probability of that class as its score; with --top_k only the K best-scoring samples of
each class are kept (data/generation/pseudolabel.py). Batches are split across all devices.
"""
import os

import jax
import jax.numpy as jnp
from absl import flags

from data import real
from data.generation import pseudolabel as pseudolabel_lib
from trainer import checkpointing
from trainer import cli
from trainer import sharding


def make_label_fn(model, variables, batch_size, mesh=None):
  """label(images_uint8) -> (int64 labels, float32 scores): arg-max class and its probability."""
  def predict(x):
    probs = jax.nn.softmax(model.apply(variables, x, train=False))
    return jnp.argmax(probs, -1), jnp.max(probs, -1)
  apply = sharding.batched_apply(predict, mesh or sharding.make_mesh(), batch_size)

  def label(images):
    labels, scores = apply(images)
    return labels.astype('int64'), scores.astype('float32')
  return label


def label_with(classifier, source, out, *, num_shards, top_k=0, which='best', batch_size=1024,
               seed=0, source_name=None):
  """Restores the classifier of workdir `classifier` and labels `source`; the manifest path."""
  config, model, variables = checkpointing.restore_for_eval(classifier, which)
  info = real.info(config.dataset)
  return pseudolabel_lib.pseudolabel(
      make_label_fn(model, variables, batch_size), source, out, num_shards=num_shards,
      num_classes=info.num_classes, image_shape=info.shape, top_k=top_k, batch_size=batch_size,
      seed=seed, source_name=source_name, metadata={'classifier': str(classifier)})


def _define_flags():
  """Command-line flags, defined only when run as a program (trainer.method imports this)."""
  flags.DEFINE_string('classifier', None, 'Workdir of the trained classifier.')
  flags.DEFINE_string('source', None, 'Shard manifest (.json) or .npz of images.')
  flags.DEFINE_string('out', None, 'Output prefix DIR/NAME.')
  flags.DEFINE_integer('shards', None, 'Number of output shards.')
  flags.DEFINE_integer('top_k', 0, 'Keep the K best-scoring per class (0: all).')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.DEFINE_integer('batch_size', 1024, 'Images per device batch.')
  flags.DEFINE_integer('seed', 0, 'Seed of the top-K shuffle.')
  flags.mark_flags_as_required(['classifier', 'source', 'out', 'shards'])


def main(argv):
  del argv
  f = flags.FLAGS
  out = cli.absolute(f.out)
  cli.start(os.path.dirname(out) or '.')
  path = label_with(cli.absolute(f.classifier), cli.absolute(f.source), out,
                    num_shards=f.shards, top_k=f.top_k, which=f.checkpoint,
                    batch_size=f.batch_size, seed=f.seed)
  print(path, flush=True)


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
