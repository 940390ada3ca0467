"""A tfds dataset's prepared TFRecord files, read without TensorFlow: streamed by the input
workers, or a range of them read into RAM.

Why the prepared TFRecords rather than `tfds.data_source` (ArrayRecord): the TFRecords are what
`download_and_prepare()` writes by default, and they go through the same CRC-checked reader as
the generated shards, which reads `gs://` in large sequential chunks; ArrayRecord's reader opens
local files only (google/array_record issue #120), and its random access would cost one request
per image on a bucket. Streaming in file order with a per-epoch file shuffle and a window
shuffle is what the generated data does already, and tfds shuffled the examples when it wrote
the files. The reader keeps no per-image index, so memory does not grow with the split.

Examples are numbered as tfds numbers them: position in the split, file by file (the files'
lengths come from the dataset's info); that number is the example's `id`, and the first `skip`
of them (the held-out head) are dropped from the stream.
"""
from __future__ import annotations

import os
import posixpath

from data.datasets import streamed
from data.records import example_format
from data.records import record_dataset


# How to prepare a dataset that tfds cannot download (ImageNet's images need an account).
MANUAL = {'imagenet2012': (
    "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in MANUAL, then python -c \"import "
    "tensorflow_datasets as tfds; tfds.builder('imagenet2012', data_dir='DIR')"
    ".download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir='MANUAL'))\"")}


def _not_prepared(tfds_name, data_dir):
  from data.datasets import tfds_sets  # pylint: disable=g-import-not-at-top
  return tfds_sets.not_prepared(tfds_name, data_dir, MANUAL.get(tfds_name, ''))


def split_files(tfds_name: str, split: str, data_dir: str) -> tuple[list[str], list[int]]:
  """(file paths, examples per file) of a prepared split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(tfds_name, data_dir=data_dir or None)
  splits = builder.info.splits
  if split not in splits or not splits[split].num_examples:
    raise _not_prepared(tfds_name, data_dir)
  file_format = str(getattr(builder.info.file_format, 'value', builder.info.file_format))
  if file_format != 'tfrecord':
    raise ValueError(
        f'the tfds dataset {tfds_name!r} in {data_dir or "the tfds default folder"} is prepared '
        f"as {file_format}; streaming reads tfds's TFRecord files: prepare it with "
        "download_and_prepare(file_format='tfrecord') (the default)")
  info = splits[split]
  return [os.fspath(p) for p in info.filepaths], [int(n) for n in info.shard_lengths]


class TfdsExampleParser:
  """(record, path, index) -> (image bytes, label, id), or None for ids below `skip`.

  A class so Grain can pickle it into its workers. Reads the `image` (an encoded file) and
  `label` features that tfds's image datasets share; checks the image header against `shape`
  (H = W = 0: any size) and the label range.
  """

  def __init__(self, first_ids: dict[str, int], shape, num_classes: int, skip: int = 0):
    self.first_ids = dict(first_ids)
    self.shape = tuple(shape)
    self.num_classes = int(num_classes)
    self.skip = int(skip)

  def __call__(self, record: bytes, path: str, index: int):
    id_ = self.first_ids[posixpath.basename(path)] + index
    if id_ < self.skip:
      return None
    feature = example_format.Example.FromString(record).features.feature
    image = example_format.single(feature, 'image', 'bytes_list')
    label = example_format.single(feature, 'label', 'int64_list')
    example_format.check_image(image, self.shape, 'mixed')
    if not 0 <= label < self.num_classes:
      raise ValueError(f'label {label} outside [0, {self.num_classes})')
    return image, label, id_


def _parser(tfds_name, split, data_dir, shape, num_classes, skip):
  """(files, examples per file, total, parser)."""
  files, lengths = split_files(tfds_name, split, data_dir)
  first, firsts = 0, {}
  for path, n in zip(files, lengths):
    firsts[posixpath.basename(path)] = first
    first += n
  return files, lengths, first, TfdsExampleParser(firsts, shape, num_classes, skip)


def streamed_split(tfds_name: str, split: str, data_dir: str, info, *, skip: int = 0,
                   shape=None) -> streamed.StreamedSplit:
  """The split without its first `skip` examples, for the input workers; `shape` is the stored
  images' (default: the dataset's; H = W = 0 when their sizes vary)."""
  shape = tuple(shape or info.shape)
  files, _, total, parser = _parser(tfds_name, split, data_dir, shape, info.num_classes,
                                    skip)
  if total <= skip:
    raise ValueError(f'{tfds_name} {split}: {total} examples, none left after the '
                     f'{skip} held out')
  return streamed.StreamedSplit(name=tfds_name, files=tuple(files), parser=parser,
                                size=total - skip, shape=tuple(info.shape),
                                stored_shape=shape, encoding='mixed',
                                num_classes=info.num_classes)


def read(tfds_name: str, split: str, data_dir: str, info, start: int, stop: int | None,
         shape=None):
  """Yields (image bytes, label, id) of examples [start, stop) in order, reading only the files
  that hold them."""
  shape = tuple(shape or info.shape)
  files, lengths, total, parser = _parser(tfds_name, split, data_dir, shape,
                                          info.num_classes, start)
  stop = total if stop is None else min(stop, total)
  for path, n in zip(files, lengths):
    first = parser.first_ids[posixpath.basename(path)]
    if first >= stop:
      return
    if first + n <= start:
      continue
    records = record_dataset.TFRecordIterDataset([path], parse_fn=parser, with_position=True)
    for image, label, id_ in records:
      if id_ >= stop:
        return
      yield image, label, id_


def size(tfds_name: str, split: str, data_dir: str) -> int:
  return sum(split_files(tfds_name, split, data_dir)[1])
