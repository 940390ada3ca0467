"""Pseudo-labels generated images with a trained classifier and writes them as a shard set.

The source is a shard set's manifest (`….json`) or an `.npz` with an `image` array (DeepMind's or
DM-Improves-AT's sets). Each sample gets the classifier's arg-max class as its label and the
softmax probability of that class as its score; with --top_k only the K best-scoring samples of
each class are kept (data/generation/pseudolabel.py). Batches are split across all devices.
"""
from data import real
from data.generation import pseudolabel as pseudolabel_lib
from trainer.generation import labeller
from trainer.robust import classifier as classifier_lib


def label_with(classifier, source, out, *, num_shards, top_k=0, which='best', batch_size=1024,
               seed=0, source_name=None):
  """Restores the classifier of workdir `classifier` and labels `source`; the manifest path."""
  config, model, variables = classifier_lib.load(classifier, which)
  info = real.info(config.dataset)
  return pseudolabel_lib.pseudolabel(
      labeller.on_host(model, variables, batch_size), source, out, num_shards=num_shards,
      num_classes=info.num_classes, image_shape=info.shape, top_k=top_k, batch_size=batch_size,
      seed=seed, source_name=source_name, metadata={'classifier': str(classifier)})
