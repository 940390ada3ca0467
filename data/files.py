"""Files on a local disk or in a bucket (gs://), and the one way anything is written atomically.

Local paths go through the standard library, any `scheme://` path through TensorFlow's
`tf.io.gfile` (imported only when needed). `write_atomic` is the writer of every file that a
reader must never see half-written (manifests, configs, records of finished work): the bytes go
to `PATH.tmp-<unique>` beside it and are renamed over PATH, so a crash leaves the old file or the
new one; a failed write removes its temporary file, and the next write of PATH removes what a
killed one left (`PATH.tmp-*`). `AtomicFile` is the same for a file written piece by piece (a
shard). On GCS a rename is a copy and a delete: readers still see the old object or the new one.
"""
import glob as glob_lib
import os
import posixpath
import uuid

TMP = '.tmp-'


def is_local(path: str) -> bool:
  """True for plain filesystem paths (no `scheme://` prefix)."""
  return '://' not in str(path)


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (slow; only for gs:// paths)
  return tf.io.gfile


def open_file(path: str, mode: str = 'rb'):
  """Opens a local file with `open`, anything else with `tf.io.gfile.GFile`."""
  if is_local(path):
    return open(path, mode)
  return _gfile().GFile(path, mode)


def exists(path: str) -> bool:
  return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
  return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def listdir(path: str) -> list[str]:
  """Names in a directory (no trailing slashes), sorted."""
  if is_local(path):
    return sorted(os.listdir(path))
  return sorted(name.rstrip('/') for name in _gfile().listdir(path))


def glob(pattern: str) -> list[str]:
  """Paths matching a shell pattern, sorted."""
  if is_local(pattern):
    return sorted(glob_lib.glob(pattern))
  return sorted(_gfile().glob(pattern))


def makedirs(path: str) -> None:
  if not path:
    return
  if is_local(path):
    os.makedirs(path, exist_ok=True)
  else:
    _gfile().makedirs(path)


def rename(src: str, dst: str) -> None:
  """Renames `src` over `dst` (atomic on local filesystems)."""
  if is_local(src):
    os.replace(src, dst)
  else:
    _gfile().rename(src, dst, overwrite=True)


def remove(path: str) -> None:
  """Removes a file if it exists."""
  if is_local(path):
    if os.path.exists(path):
      os.remove(path)
  elif _gfile().exists(path):
    _gfile().remove(path)


def remove_leftovers(path: str) -> list[str]:
  """Removes the temporary files a killed writer of `path` left (`PATH.tmp-*`)."""
  stale = glob(glob_escape(str(path)) + TMP + '*')
  for leftover in stale:
    remove(leftover)
  return stale


def glob_escape(path: str) -> str:
  return ''.join(f'[{c}]' if c in '*?[' else c for c in path)


class AtomicFile:
  """`with AtomicFile(path) as f: f.write(...)`: PATH appears whole when the block ends without
  an error, and not at all otherwise (`commit()` / `abort()` for writers that hold it open)."""

  def __init__(self, path: str):
    self.path = str(path)
    makedirs(posixpath.dirname(self.path) if not is_local(self.path)
             else os.path.dirname(self.path))
    remove_leftovers(self.path)
    self.tmp = f'{self.path}{TMP}{uuid.uuid4().hex[:8]}'
    self._file = open_file(self.tmp, 'wb')

  def write(self, data: bytes) -> None:
    self._file.write(data)

  def commit(self) -> str:
    try:
      self._file.close()
      rename(self.tmp, self.path)
    except BaseException:
      remove(self.tmp)
      raise
    return self.path

  def abort(self) -> None:
    self._file.close()
    remove(self.tmp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.commit()
    else:
      self.abort()


def write_atomic(path, data: str | bytes) -> None:
  """Writes `data` to `path` whole or not at all (see the module docstring)."""
  with AtomicFile(os.fspath(path) if not isinstance(path, str) else path) as f:
    f.write(data.encode() if isinstance(data, str) else data)
