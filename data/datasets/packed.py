"""A path dataset's split copied once into encoded TFRecord shards, which the input workers
stream (`dataset.storage = 'stream'`, or 'auto' for a split larger than `dataset.ram_limit_gb`).

  python -m trainer.pack_dataset --config=configs/X.py [--config.dataset.path=PATH] [--shards=64]

writes PATH.packed/train-00000-of-00064.tfrecord … and PATH.packed/train.json beside the
dataset, in the shard format of `data.records`: each record's image is the file's own PNG or
JPEG bytes when the file already has the dataset's size (nothing is re-encoded), a PNG of its
pixels otherwise (resized images, npz arrays); its `id` is the image's position in the split's
fixed order, and records are written in that order, so the held-out head (ids below
`dataset.holdout`) is dropped from the stream by id. The manifest records the options the
order and sizes depend on; a copy packed with other options is refused, with the command that
packs it again.
"""
from __future__ import annotations

import concurrent.futures
import math
import posixpath

import numpy as np
import tqdm

from data import files
from data.datasets import dataset
from data.datasets import streamed
from data.records import example_format
from data.records import shard_writer
from data.records import shards

RECORDS_PER_SHARD = 2_000   # default shard count: one per this many images, at least 64
_CHUNK = 256


def prefix(ds, split: str) -> str:
  return posixpath.join(ds.path.rstrip('/') + '.packed', split)


def _stamp(ds, split: str) -> dict:
  return {'dataset': ds.name, 'split': split, 'depends_on': ds.depends_on()}


def pack(ds, split: str = 'train', num_shards: int = 0, progress: bool = True) -> str:
  """Writes the packed copy of `split`; returns its manifest path."""
  source, n, info = ds.source(split), ds.size(split), ds.info
  num_shards = min(n, num_shards or max(64, math.ceil(n / RECORDS_PER_SHARD)))
  writer = shard_writer.ShardWriter(
      prefix(ds, split), num_shards=num_shards, total=n, image_shape=info.shape,
      num_classes=info.num_classes, source=f'{ds.name}/{split}', encoding='png',
      metadata={'packed': _stamp(ds, split)})
  bar = tqdm.tqdm(total=n, unit='img', disable=not progress, desc=f'pack {ds.name} {split}')
  with writer, bar, concurrent.futures.ThreadPoolExecutor(8) as pool:
    for begin in range(0, n, _CHUNK):
      ids = np.arange(begin, min(n, begin + _CHUNK))
      writer.write_encoded(list(pool.map(source.encoded, ids)), source.labels_at(ids), ids=ids)
      bar.update(len(ids))
  return writer.manifest_path


class PackedParser:
  """(record, path, index) -> (image bytes, label, id), None for ids below `skip` (picklable)."""

  def __init__(self, shape, num_classes: int, encoding: str, skip: int):
    self.parse = example_format.ExampleParser(shape, num_classes, encoding)
    self.skip = int(skip)

  def __call__(self, record: bytes, path: str, index: int):
    del path, index
    image, label, id_ = self.parse(record)
    return None if id_ < self.skip else (image, label, id_)


def streamed_split(ds, split: str, skip: int = 0) -> streamed.StreamedSplit:
  """The packed copy of `split` without its first `skip` images."""
  path = shards.manifest_path(prefix(ds, split))
  command = (f'python -m trainer.pack_dataset --config=CONFIG --config.dataset.name={ds.name} '
             f'--config.dataset.path={ds.path} (with the run\'s dataset options)')
  if not files.exists(path):
    raise dataset.StreamingError(
        f'{ds.name} at {ds.path}: its {split} split streams from a packed copy, which is not '
        f'there ({path}); pack it once: {command}')
  manifest = shards.load_manifest(path)
  stamp = manifest.get('metadata', {}).get('packed')
  if stamp != _stamp(ds, split):
    raise dataset.StreamingError(
        f'{path} was packed with other dataset options ({stamp}, this run: '
        f'{_stamp(ds, split)}); pack it again: {command}')
  if manifest['count'] != ds.size(split):
    raise dataset.StreamingError(
        f'{path} holds {manifest["count"]} images, the {split} split now has '
        f'{ds.size(split)}; pack it again: {command}')
  if manifest['count'] <= skip:
    raise ValueError(f'{path}: {manifest["count"]} images, none left after the {skip} held out')
  parser = PackedParser(manifest['image_shape'], manifest['num_classes'],
                        manifest['image_encoding'], skip)
  return streamed.StreamedSplit(
      name=f'{ds.name} ({ds.path})', files=tuple(shards.shard_paths(path, manifest)),
      parser=parser, size=manifest['count'] - skip, shape=tuple(ds.info.shape),
      stored_shape=tuple(manifest['image_shape']), encoding=manifest['image_encoding'],
      num_classes=manifest['num_classes'])
