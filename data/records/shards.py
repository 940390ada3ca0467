"""Generated-data shard sets: the layout, the JSON manifest, and reading.

A shard set with prefix `DIR/NAME` is the files

  DIR/NAME-00000-of-00008.tfrecord ... DIR/NAME-00007-of-00008.tfrecord
  DIR/NAME.json                         the manifest, written last

whose records are `tf.train.Example`s in the schema of `example_format`. The
manifest holds `count`, `image_shape`, `num_classes`, `generator`, `seed`,
per-class counts and the shard files (names relative to the manifest), e.g.

  {"format": "tfrecord-example", "version": 1, "count": 1000000,
   "image_shape": [32, 32, 3], "num_classes": 10, "generator": "ddpm",
   "seed": 0, "label_counts": [...], "shards": [{"file": ..., "count": ...}],
   "image_encoding": "png", "jpeg_quality": null}

`image_encoding` says what the records' `image` bytes hold: 'raw' pixels, one
'png' or 'jpeg' file each (`jpeg_quality` records the quality the writer used;
null when the bytes were copied from source files), or 'mixed' (PNG or JPEG, as
the packed source files were). A manifest without the key is a raw set (every
set written before encoded images existed). An encoded set whose images vary in
size says so with H = W = 0 in `image_shape` (e.g. [0, 0, 3]).

`shard_writer.ShardWriter` writes a set. Reading:

  manifest = load_manifest(path)        # checks keys; ManifestError otherwise
  validate_manifest(manifest, path, image_shape=(32, 32, 3), num_classes=10)
  for example in read_examples(path):   # dicts: image (HWC uint8), label, ...
    ...
  for batch in read_examples(path, batch_size=1024):  # dicts of arrays
    ...

The training pipeline reads the shards itself (`shard_paths`, shuffled and
split across hosts); `read_examples` is the plain in-order stream the tools use.
"""
from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from data import files
from data.records import example_format
from data.records import record_dataset

FORMAT = 'tfrecord-example'
VERSION = 1
_REQUIRED_KEYS = {'count': int, 'image_shape': list, 'num_classes': int,
                  'shards': list}


class ManifestError(ValueError):
  """A manifest that is missing, malformed, or disagrees with the config."""


# ------------------------------------------------------------------------------
# Names and manifests.
# ------------------------------------------------------------------------------


def shard_name(name: str, index: int, num_shards: int) -> str:
  return f'{name}-{index:05d}-of-{num_shards:05d}.tfrecord'


def manifest_path(prefix: str) -> str:
  return f'{prefix}.json'


def load_manifest(path: str) -> dict[str, Any]:
  """Reads and structurally checks a manifest; ManifestError names the path."""
  if not files.exists(path):
    raise ManifestError(f'{path}: shard manifest not found')
  with files.open_file(path, 'rb') as f:
    text = f.read()
  try:
    manifest = json.loads(text)
  except ValueError as e:
    raise ManifestError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(manifest, dict):
    raise ManifestError(f'{path}: expected a JSON object')
  for key, kind in _REQUIRED_KEYS.items():
    if key not in manifest:
      raise ManifestError(f'{path}: missing key {key!r}')
    if not isinstance(manifest[key], kind):
      raise ManifestError(f'{path}: key {key!r} must be a {kind.__name__}, '
                          f'got {manifest[key]!r}')
  shards = manifest['shards']
  if not shards:
    raise ManifestError(f'{path}: lists no shards')
  for i, shard in enumerate(shards):
    if not isinstance(shard, dict) or 'file' not in shard:
      raise ManifestError(f'{path}: shards[{i}] needs a "file" entry')
  encoding = manifest.setdefault('image_encoding', 'raw')
  if encoding not in example_format.ENCODINGS:
    raise ManifestError(f'{path}: image_encoding {encoding!r} is not one of '
                        f'{example_format.ENCODINGS}')
  total = sum(int(s.get('count', 0)) for s in shards)
  if all('count' in s for s in shards) and total != manifest['count']:
    raise ManifestError(f'{path}: shard counts sum to {total}, "count" says '
                        f'{manifest["count"]}')
  return manifest


def validate_manifest(manifest: dict[str, Any], path: str = '<manifest>', *,
                      image_shape: Sequence[int] | None = None,
                      num_classes: int | None = None) -> None:
  """Rejects a shard set whose image shape or classes disagree with the run."""
  shape = tuple(manifest['image_shape'])
  if image_shape is not None and shape != tuple(image_shape):
    raise ManifestError(
        f'{path}: generated images have shape {shape} but the real images '
        f'have shape {tuple(image_shape)}')
  if num_classes is not None and manifest['num_classes'] != num_classes:
    raise ManifestError(
        f'{path}: generated labels have {manifest["num_classes"]} classes but '
        f'the real dataset has {num_classes}')
  variable = manifest.get('image_encoding', 'raw') != 'raw' and shape[:2] == (0, 0)
  if len(shape) != 3 or (min(shape) < 1 and not variable) or shape[-1] < 1:
    raise ManifestError(f'{path}: image_shape must be [H, W, C] (H = W = 0: sizes vary, '
                        f'encoded sets only), got {shape}')
  if manifest['num_classes'] < 1:
    raise ManifestError(f'{path}: num_classes must be >= 1')


def shard_counts(path: str, manifest: dict[str, Any]) -> dict[str, int]:
  """{full shard path: records} as the manifest counts them (checked as each shard ends); a
  shard the manifest gives no count is not checked."""
  return {p: int(s['count']) for p, s in zip(shard_paths(path, manifest), manifest['shards'])
          if 'count' in s}


def shard_paths(path: str, manifest: dict[str, Any] | None = None) -> list[str]:
  """Full paths of the shards a manifest lists (relative to its directory)."""
  manifest = manifest if manifest is not None else load_manifest(path)
  base = posixpath.dirname(path)
  return [posixpath.join(base, s['file']) for s in manifest['shards']]


# ------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------


def read_examples(path: str, *, batch_size: int | None = None,
                  on_corrupt: str = 'raise') -> Iterator[dict[str, Any]]:
  """Streams a shard set in file order: one dict per example, or batches.

  Examples are dicts with `image` (uint8 HWC array), `label`, `id`, `score`
  and `source`. With `batch_size`, dicts of stacked arrays (the last batch may
  be smaller). Reads one record at a time; memory does not grow with the set.
  """
  manifest = load_manifest(path)
  validate_manifest(manifest, path)
  shape = tuple(manifest['image_shape'])
  records = record_dataset.TFRecordIterDataset(
      shard_paths(path, manifest), on_corrupt=on_corrupt,
      parse_fn=example_format.parse_example, counts=shard_counts(path, manifest))
  encoding = manifest['image_encoding']
  examples = (_with_array(e, shape, encoding) for e in records)
  if batch_size is None:
    yield from examples
    return
  batch = []
  for example in examples:
    batch.append(example)
    if len(batch) == batch_size:
      yield _stack(batch)
      batch = []
  if batch:
    yield _stack(batch)


def _with_array(example: dict[str, Any], shape, encoding: str) -> dict[str, Any]:
  try:
    example_format.check_image(example['image'], shape, encoding)
    example['image'] = example_format.decode_image(example['image'], shape, encoding)
  except ValueError as e:
    raise ValueError(f'example id {example["id"]}: {e}') from e
  return example


def _stack(batch: list[dict[str, Any]]) -> dict[str, np.ndarray]:
  return {'image': np.stack([e['image'] for e in batch]),
          'label': np.array([e['label'] for e in batch], np.int64),
          'id': np.array([e['id'] for e in batch], np.int64),
          'score': np.array([e['score'] for e in batch], np.float32),
          'source': np.array([e['source'] for e in batch])}
