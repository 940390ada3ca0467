"""A SIGTERM (a preemption notice, or `launch/tpu_vm.sh stop`) must not kill a run mid-step.

One process: a handler raises a flag; the loop saves at the next step boundary and stops.
Several processes: every host has to stop at the same step, since a save is collective, but the
notice may reach one host only, or the hosts at different steps. JAX's preemption service
(started by jax.distributed.initialize) catches SIGTERM itself and agrees on a common step, which
Orbax's `reached_preemption` reads; so no Python handler replaces it there.
"""
import signal
import threading

import jax


class Notice:
  """`with Notice() as notice:` … `notice.received(step, checkpoints)`; the previous SIGTERM
  handler is back when the block ends, so a later stage of the same process sees it as before."""

  def __init__(self):
    self._set, self._previous = False, None

  def _handler(self, signum, frame):
    del signum, frame
    self._set = True

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def received(self, step, checkpoints) -> bool:
    return self._set or checkpoints.reached_preemption(step)
