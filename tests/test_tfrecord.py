"""TFRecord framing, CRC checks, interleaving and checkpointable positions."""
import json
import struct

import numpy as np
import pytest

from data.records import record_dataset
from data.records import tfrecord


def _write_files(tmp_path, num_files=3, per_file=5):
  """Files whose records are b'f{file}-r{record}' (records vary in length)."""
  paths = []
  for f in range(num_files):
    path = str(tmp_path / f'part-{f}.tfrecord')
    tfrecord.write_records(
        path, [f'f{f}-r{r}'.encode() * (r + 1) for r in range(per_file)])
    paths.append(path)
  return paths


def _offsets(path):
  """Byte offset of every record in a (valid) file."""
  data, offsets, pos = open(path, 'rb').read(), [], 0
  while pos < len(data):
    offsets.append(pos)
    (length,) = struct.unpack_from('<Q', data, pos)
    pos += length + 16
  return offsets


def test_framing_layout():
  # CRC32C(b'') is 0, so its masked value is the mask delta alone; the
  # byte-for-byte match with TensorFlow's writer is in test_shards.py.
  assert tfrecord.masked_crc32c(b'') == 0xA282EAD8
  record = tfrecord.frame(b'hello')
  assert len(record) == 5 + 16
  length, length_crc = struct.unpack_from('<QI', record)
  assert length == 5
  assert length_crc == tfrecord.masked_crc32c(record[:8])


def test_round_trip_sequential(tmp_path):
  paths = _write_files(tmp_path)
  got = list(record_dataset.TFRecordIterDataset(paths))
  want = [f'f{f}-r{r}'.encode() * (r + 1) for f in range(3) for r in range(5)]
  assert got == want


def test_interleave_shuffle_repeat_sees_each_record_once_per_epoch(tmp_path):
  paths = _write_files(tmp_path, num_files=4, per_file=3)
  ds = record_dataset.TFRecordIterDataset(paths, cycle_length=3,
                                          shuffle_seed=7, num_epochs=3)
  got = list(ds)
  assert len(got) == 36
  assert sorted(got) == sorted(
      list(record_dataset.TFRecordIterDataset(paths)) * 3)
  # The first cycle_length records come from three different files.
  assert len({r[:2] for r in got[:3]}) == 3


def test_state_resumes_exactly_after_json_round_trip(tmp_path):
  paths = _write_files(tmp_path, num_files=4, per_file=6)
  ds = record_dataset.TFRecordIterDataset(paths, cycle_length=2,
                                          shuffle_seed=1, num_epochs=None)
  it = iter(ds)
  want = [next(it) for _ in range(70)]
  it = iter(ds)
  first = [next(it) for _ in range(29)]
  state = json.loads(json.dumps(it.get_state()))
  resumed = iter(ds)
  resumed.set_state(state)
  assert first + [next(resumed) for _ in range(41)] == want


def test_data_crc_corruption_names_file_and_offset(tmp_path):
  (path,) = _write_files(tmp_path, num_files=1, per_file=6)
  offset = _offsets(path)[3]
  data = bytearray(open(path, 'rb').read())
  data[offset + 12 + 2] ^= 0xFF   # inside record 3's payload
  open(path, 'wb').write(bytes(data))
  with pytest.raises(tfrecord.CorruptRecordError) as e:
    list(record_dataset.TFRecordIterDataset([path]))
  assert path in str(e.value) and f'byte offset {offset}' in str(e.value)
  assert 'data CRC' in str(e.value)
  # 'skip' drops only that record and counts it.
  it = iter(record_dataset.TFRecordIterDataset([path], on_corrupt='skip'))
  got = list(it)
  assert len(got) == 5 and b'f0-r3' not in b''.join(got)
  assert it.get_state()['skipped'] == 1
  assert record_dataset.skipped_in(it) == 1


def test_length_crc_corruption(tmp_path):
  (path,) = _write_files(tmp_path, num_files=1, per_file=6)
  offset = _offsets(path)[2]
  data = bytearray(open(path, 'rb').read())
  data[offset] ^= 0x01   # the length field of record 2
  open(path, 'wb').write(bytes(data))
  with pytest.raises(tfrecord.CorruptRecordError, match='length CRC') as e:
    list(record_dataset.TFRecordIterDataset([path]))
  assert e.value.path == path and e.value.offset == offset
  # The framing after a bad length cannot be trusted: the file ends there.
  it = iter(record_dataset.TFRecordIterDataset([path], on_corrupt='skip'))
  assert len(list(it)) == 2 and it.get_state()['skipped'] == 1


@pytest.mark.parametrize('cut', [3, 14])   # inside the header, the payload
def test_truncation_detected(tmp_path, cut):
  (path,) = _write_files(tmp_path, num_files=1, per_file=4)
  offset = _offsets(path)[3]
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:offset + cut])
  with pytest.raises(tfrecord.CorruptRecordError, match='truncated') as e:
    list(record_dataset.TFRecordIterDataset([path]))
  assert f'{path}: bad record at byte offset {offset}' in str(e.value)
  it = iter(record_dataset.TFRecordIterDataset([path], on_corrupt='skip'))
  assert len(list(it)) == 3 and it.get_state()['skipped'] == 1


def test_parse_errors_name_file_and_offset(tmp_path):
  (path,) = _write_files(tmp_path, num_files=1, per_file=4)

  def parse(record):
    if record.startswith(b'f0-r2'):
      raise ValueError('label 12 outside [0, 10)')
    return record

  with pytest.raises(tfrecord.CorruptRecordError, match='label 12') as e:
    list(record_dataset.TFRecordIterDataset([path], parse_fn=parse))
  assert e.value.offset == _offsets(path)[2]
  it = iter(record_dataset.TFRecordIterDataset([path], parse_fn=parse,
                                               on_corrupt='skip'))
  assert len(list(it)) == 3 and it.get_state()['skipped'] == 1


def test_slicing_selects_whole_files(tmp_path):
  paths = _write_files(tmp_path, num_files=5, per_file=2)
  ds = record_dataset.TFRecordIterDataset(paths)
  ds.set_slice(slice(1, None, 2))
  assert ds.paths == paths[1::2]
  assert {r[:2] for r in ds} == {b'f1', b'f3'}


def test_empty_and_bad_arguments(tmp_path):
  (path,) = _write_files(tmp_path, num_files=1, per_file=0)
  assert not list(record_dataset.TFRecordIterDataset([path], num_epochs=None))
  with pytest.raises(ValueError, match='on_corrupt'):
    record_dataset.TFRecordIterDataset([path], on_corrupt='ignore')


def test_large_records_span_read_chunks(tmp_path):
  path = str(tmp_path / 'big.tfrecord')
  rng = np.random.default_rng(0)
  records = [rng.bytes(n) for n in (10, 3_000_000, 5, 1_500_000)]
  tfrecord.write_records(path, records)
  assert list(record_dataset.TFRecordIterDataset([path])) == records
