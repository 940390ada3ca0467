"""A training split that the input workers stream from TFRecord files instead of holding in RAM.

`Dataset.stream(split, skip)` returns one; `data.input.pipeline` reads it like generated data:
files split across hosts (and loader workers), interleaved, their order reshuffled every epoch,
a window shuffle, and the reader's position in the checkpoint. The parser runs on every record
in the worker and returns (image bytes, label, id), or None to drop the record (the held-out
head of the split); images are decoded where the batch is assembled, also in the worker.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from data.datasets import dataset


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
  """What the pipeline needs to stream a split; see the module docstring.

  `parser(record, path, index)` must be picklable (Grain sends it to its workers); `index` is the
  record's position in its file. `shape` is the (H, W, C) the model sees; `stored_shape` the
  stored images', with H = W = 0 when their sizes vary (they are then cropped to `shape`,
  `dataset.crop = 'inception'`).
  """
  name: str
  files: tuple[str, ...]
  parser: Callable
  size: int
  shape: tuple[int, int, int]
  stored_shape: tuple[int, int, int]
  encoding: str
  num_classes: int

  def __getitem__(self, key):
    raise dataset.StreamingError(
        f'the {self.name} training split streams from its files '
        '(config.dataset.storage), so it has no arrays in RAM; a command that needs them must '
        'run with --config.dataset.storage=ram')
