"""One run per workdir: WORKDIR/lease.json says who holds it, so a second start is refused in one
line instead of racing the first on checkpoint writes and deletions.

Process 0 takes the lease when a run starts and gives it back when the run ends (finished, stopped
or failed); a thread refreshes its heartbeat every HEARTBEAT_SECONDS. A lease left by a killed run
is taken over: on the same host when its process is gone (pid and start time, so a reused pid is
not mistaken for it), from another host when its heartbeat is older than STALE_SECONDS. On a local
disk the lease is created exclusively (O_EXCL); on gs://, where epath has no exclusive create, two
starts within the same second could both take it: start pod runs once.
"""
import json
import os
import socket
import threading
import time

import jax
from etils import epath

from data import files

HEARTBEAT_SECONDS = 30
STALE_SECONDS = 300
NAME = 'lease.json'


class WorkdirBusyError(FileExistsError):
  """Another live run holds the workdir (its lease file exists and is live)."""


def _start_time(pid):
  """The kernel's start time of `pid` (Linux), or None: tells a reused pid from the holder."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return int(f.read().rsplit(')', 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _alive(holder):
  pid = holder.get('pid')
  try:
    os.kill(pid, 0)
  except (OSError, TypeError):
    return False
  return holder.get('pid_start') in (None, _start_time(pid))


def _live(holder, now):
  if holder.get('host') == socket.gethostname():
    return _alive(holder)
  return now - holder.get('heartbeat', 0) < STALE_SECONDS


class Lease:
  """`with Lease(workdir):` holds the workdir for this run (process 0 only; a no-op elsewhere)."""

  def __init__(self, workdir):
    self.path = epath.Path(workdir, NAME)
    self.mine = jax.process_index() == 0
    self.record = {'host': socket.gethostname(), 'pid': os.getpid(),
                   'pid_start': _start_time(os.getpid()), 'started': time.time()}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, daemon=True, name='lease-heartbeat')

  def __enter__(self):
    if self.mine:
      self._take()
      self._thread.start()
    return self

  def __exit__(self, *exc):
    if self.mine:
      self._stop.set()
      self._thread.join()  # no heartbeat may rewrite the lease after it is given back
      if self._held_by_me():
        self.path.unlink(missing_ok=True)

  def _take(self):
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.path.exists():
      try:
        holder = json.loads(self.path.read_text())
      except ValueError:  # cut short by a kill during its write: nobody holds it
        holder = {}
      if holder and _live(holder, time.time()):
        raise WorkdirBusyError(
            f'{self.path.parent} is in use by another run (host {holder.get("host")}, pid '
            f'{holder.get("pid")}); wait for it to end, or delete {self.path} if it is gone')
      self.path.unlink(missing_ok=True)
    self._write(exclusive=True)

  def _write(self, exclusive=False):
    text = json.dumps(dict(self.record, heartbeat=time.time()))
    if exclusive and not str(self.path).startswith('gs://'):
      try:
        fd = os.open(os.fspath(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
      except FileExistsError as e:
        raise WorkdirBusyError(f'{self.path.parent} was taken by another run a moment ago') from e
      try:
        with os.fdopen(fd, 'w') as f:
          f.write(text)
      except BaseException:  # e.g. a full disk: no empty lease left behind
        self.path.unlink(missing_ok=True)
        raise
      return
    files.write_atomic(os.fspath(self.path), text)

  def _held_by_me(self):
    try:
      holder = json.loads(self.path.read_text())
    except (OSError, ValueError):
      return False
    return holder.get('pid') == self.record['pid'] and holder.get('host') == self.record['host']

  def _beat(self):
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        if self._held_by_me():
          self._write()
      except OSError:  # a passing storage error; the next beat tries again
        pass
