"""Pseudo-labels generated images with a trained classifier and writes them as a shard set.

  python -m data.generation.pseudolabel --classifier=WORKDIR --source=SRC --out=DIR/NAME --shards=N \
      [--top_k=K] [--checkpoint=best] [--batch_size=1024] [--seed=0]

SRC is a shard set's manifest (`….json`) or an `.npz` with an `image` array (DeepMind's or
DM-Improves-AT's sets). Each sample gets the classifier's arg-max class as its label and the
softmax probability of that class as its score; its source id is kept. With --top_k, only the
K highest-scoring samples of each class are kept (Carmon et al. 2019), class-balanced, in
memory bounded by K × classes whatever the source size; they are shuffled before writing.
Batches are split across all local devices.
"""
import argparse
import logging
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from data.records import shard_writer
from data.records import shards
from data.generation import topk


def source_batches(source, batch_size):
  """(count, image_shape, iterator of dicts with uint8 `image` and int64 `id`)."""
  if source.endswith('.npz'):
    from data.generation import import_npz  # pylint: disable=g-import-not-at-top
    images = import_npz.NpzMember(source, 'image')
    def npz_batches():
      for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        yield {'image': images.rows(start, stop), 'id': np.arange(start, stop, dtype=np.int64)}
    return len(images), tuple(images.shape[1:]), npz_batches()
  manifest = shards.load_manifest(source)
  batches = ({'image': b['image'], 'id': b['id']}
             for b in shards.read_examples(source, batch_size=batch_size))
  return manifest['count'], tuple(manifest['image_shape']), batches


def make_labeller(model, variables, batch_size):
  """Returns `label(images_uint8) -> (labels, scores)`, data-parallel over the local devices."""
  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices)
  padded = math.ceil(batch_size / len(devices)) * len(devices)
  sharded = NamedSharding(mesh, P('data'))

  @jax.jit
  def predict(x):
    probs = jax.nn.softmax(model.apply(variables, x, train=False))
    return jnp.argmax(probs, -1), jnp.max(probs, -1)

  def label(images):
    n = len(images)
    x = np.zeros((padded,) + images.shape[1:], np.float32)
    x[:n] = images.astype(np.float32) / 255.0
    labels, scores = jax.device_get(predict(jax.device_put(x, sharded)))
    return labels[:n].astype(np.int64), scores[:n].astype(np.float32)
  return label


def pseudolabel(classifier, source, out, *, num_shards, top_k=0, which='best', batch_size=1024,
                seed=0, source_name=None):
  """Labels `source` with the classifier in workdir `classifier`; returns the manifest path."""
  from trainer import checkpointing  # pylint: disable=g-import-not-at-top
  config, model, variables = checkpointing.restore_for_eval(classifier, which)
  from data import real  # pylint: disable=g-import-not-at-top
  info = real.info(config.dataset.name)
  count, shape, batches = source_batches(source, batch_size)
  if shape != tuple(info.shape):
    raise ValueError(f'{source}: images of shape {shape}, but the classifier was trained on '
                     f'{config.dataset.name} images of shape {tuple(info.shape)}.')
  label = make_labeller(model, variables, batch_size)
  writer_args = dict(num_shards=num_shards, image_shape=shape, num_classes=info.num_classes,
                     source=source_name or f'pseudolabel:{source}', seed=seed,
                     metadata={'classifier': str(classifier), 'top_k': top_k})
  progress = tqdm.tqdm(total=count, unit='img', desc='pseudo-label', disable=None)
  if not top_k:
    with shard_writer.ShardWriter(out, total=count, **writer_args) as writer:
      for batch in batches:
        labels, scores = label(batch['image'])
        writer.write_batch(batch['image'], labels, scores, ids=batch['id'])
        progress.update(len(labels))
    return writer.manifest_path
  selector = topk.TopKPerClass(top_k, info.num_classes)
  for batch in batches:
    labels, scores = label(batch['image'])
    selector.add(labels, scores, image=batch['image'], id=batch['id'])
    progress.update(len(labels))
  kept = selector.result()
  order = np.random.default_rng(seed).permutation(len(kept.labels))
  with shard_writer.ShardWriter(out, total=len(order), **writer_args) as writer:
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      writer.write_batch(kept.payload['image'][idx], kept.labels[idx], kept.scores[idx],
                         ids=kept.payload['id'][idx])
  logging.info('Kept %d of %d samples (%s per class).', len(order), count, kept.counts.tolist())
  return writer.manifest_path


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--classifier', required=True, help='workdir of the trained classifier')
  parser.add_argument('--source', required=True, help='shard manifest (.json) or .npz')
  parser.add_argument('--out', required=True, help='output prefix DIR/NAME')
  parser.add_argument('--shards', type=int, required=True)
  parser.add_argument('--top_k', type=int, default=0, help='keep the K best per class (0: all)')
  parser.add_argument('--checkpoint', default='best', help="'best', 'latest' or a step")
  parser.add_argument('--batch_size', type=int, default=1024)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  path = pseudolabel(args.classifier, args.source, args.out, num_shards=args.shards,
                     top_k=args.top_k, which=args.checkpoint, batch_size=args.batch_size,
                     seed=args.seed)
  print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
