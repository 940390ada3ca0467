"""The one atomic writer (data/files.py): whole or not at all, no temporary file after a failure,
and a killed writer's leftovers cleared by the next write."""
import pytest

from data import files


def test_a_write_replaces_the_file_whole_and_clears_leftovers(tmp_path):
  path = tmp_path / 'eval.json'
  path.write_text('old')
  (tmp_path / 'eval.json.tmp-dead1234').write_text('{"half": ')   # what a kill leaves
  (tmp_path / 'other.json.tmp-alive999').write_text('x')           # another file's: kept
  files.write_atomic(str(path), '{"new": 1}')
  assert path.read_text() == '{"new": 1}'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['eval.json', 'other.json.tmp-alive999']


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / 'config.json'
  path.write_text('old')
  def no_room(src, dst):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(files, 'rename', no_room)
  with pytest.raises(OSError, match='No space left'):
    files.write_atomic(str(path), b'new')
  assert [p.name for p in tmp_path.iterdir()] == ['config.json'] and path.read_text() == 'old'


def test_an_aborted_file_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with files.AtomicFile(str(tmp_path / 'sub' / 'shard.tfrecord')) as f:
      f.write(b'part')
      raise RuntimeError('killed mid-shard')
  assert list((tmp_path / 'sub').iterdir()) == []
