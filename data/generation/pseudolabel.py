"""Pseudo-labels generated images with a trained classifier and writes them as a shard set.

The command is `python -m trainer.pseudolabel` (it restores the classifier); this module takes
the classifier as a label function. The source is a shard set's manifest (`….json`) or an `.npz`
with an `image` array (DeepMind's or DM-Improves-AT's sets). Each sample gets the classifier's
arg-max class as its label and the softmax probability of that class as its score; its source id
is kept. With top_k, only the K highest-scoring samples of each class are kept (Carmon et al.
2019), class-balanced, in memory bounded by K × classes whatever the source size; they are
shuffled before writing.
"""
import logging
from typing import Callable

import numpy as np
import tqdm

from data.records import shard_writer
from data.records import shards
from data.generation import import_npz
from data.generation import topk


def source_batches(source, batch_size):
  """(count, image_shape, iterator of dicts with uint8 `image` and int64 `id`)."""
  if source.endswith('.npz'):
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


def pseudolabel(label_fn: Callable, source: str, out: str, *, num_shards: int, num_classes: int,
                image_shape: tuple, top_k: int = 0, batch_size: int = 1024, seed: int = 0,
                source_name: str | None = None, metadata: dict | None = None) -> str:
  """Labels every image of `source` with `label_fn`; returns the written set's manifest path.

  `label_fn(images_uint8) -> (labels, scores)` is the classifier, already placed on the devices
  (see trainer/pseudolabel.py); `image_shape` is the shape it was trained on.
  """
  count, shape, batches = source_batches(source, batch_size)
  if shape != tuple(image_shape):
    raise ValueError(f'{source}: images of shape {shape}, but the classifier was trained on '
                     f'images of shape {tuple(image_shape)}.')
  writer_args = dict(num_shards=num_shards, image_shape=shape, num_classes=num_classes,
                     source=source_name or f'pseudolabel:{source}', seed=seed,
                     metadata=dict(metadata or {}, top_k=top_k))
  progress = tqdm.tqdm(total=count, unit='img', desc='pseudo-label', dynamic_ncols=True,
                       mininterval=1.0)
  if not top_k:
    with shard_writer.ShardWriter(out, total=count, **writer_args) as writer:
      for batch in batches:
        labels, scores = label_fn(batch['image'])
        writer.write_batch(batch['image'], labels, scores, ids=batch['id'])
        progress.update(len(labels))
    progress.close()
    return writer.manifest_path
  selector = topk.TopKPerClass(top_k, num_classes)
  for batch in batches:
    labels, scores = label_fn(batch['image'])
    selector.add(labels, scores, image=batch['image'], id=batch['id'])
    progress.update(len(labels))
  progress.close()
  kept = selector.result()
  order = np.random.default_rng(seed).permutation(len(kept.labels))
  with shard_writer.ShardWriter(out, total=len(order), **writer_args) as writer:
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      writer.write_batch(kept.payload['image'][idx], kept.labels[idx], kept.scores[idx],
                         ids=kept.payload['id'][idx])
  logging.info('Kept %d of %d samples (%s per class).', len(order), count, kept.counts.tolist())
  return writer.manifest_path
