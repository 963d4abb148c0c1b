"""A run never hangs: a step stuck past a time limit ends the process with a message.

    dog = Watchdog(limit_s=600, where="mesh {'fsdp': 2, ...} over 2 process(es)")
    with dog.watch("step 12"):
      state, m = compiled(state, batch)
      m = jax.device_get(m)          # blocks until the step's collectives are done
    dog.close()

Why it exists: a collective that never completes (a peer process died, stalled or ran a
different program; an XLA:CPU thread-pool deadlock) blocks the main thread inside XLA, so
Python never regains control: no exception, no stop flag, and Python-level SIGTERM
handlers never run either, since CPython runs them in the main thread between bytecodes.
JAX has no timeout for this on accelerators (jax-ml/jax#38503), XLA:CPU's own ones abort
after 40 s in-process (with a C++ message that names neither the step nor the mesh) and
after 30 minutes across processes (gloo). So a daemon thread watches the main thread:

  * `limit_s` after `watch(what)` began, if it has not ended, it prints
    "[watchdog] <what> did not finish within <limit> s on <where> ..." to stderr and ends the
    process with os._exit(EXIT_STUCK) (no clean-up can run while the main thread is blocked
    in XLA; checkpoints already written are complete, orbax commits them atomically);
  * a SIGTERM/SIGINT that arrives while a watched section is running is seen through
    signal.set_wakeup_fd (written by CPython's C-level handler even while the main thread
    is blocked); if the section is still running `signal_grace_s` later, the process ends
    the same way, so a preempted job does not hang until the scheduler's SIGKILL.

A section that finishes normally costs two lock operations. limit_s=0 disables the timer
(signals are still watched).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Optional

from agentic_jax import fs

EXIT_STUCK = 3  # launch/train.py: 1 = halted on NaN, 2 = bad config / command line


def checkpoint_note(directory: str) -> str:
  """Which checkpoint a rerun resumes from, read from disk when the watchdog fires (orbax
  renames a step's directory to its number only once the step is complete; an async save in
  flight is not counted)."""
  try:
    steps = [int(d) for d in fs.listdir(directory) if d.isdigit()]
  except Exception:  # pylint: disable=broad-except  (OSError; a remote store's own errors)
    steps = []
  if not steps:
    return f"No complete checkpoint in {directory} yet; a rerun starts from step 0."
  return (f"The newest complete checkpoint is step {max(steps)} in {directory}; rerun the same "
          "command to resume from it.")


class Watchdog:
  """See the module docstring. `note()` may add run state (e.g. the newest checkpoint)."""

  def __init__(self, limit_s: float, where: str, *, signal_grace_s: float = 30.0,
               note: Optional[Callable[[], str]] = None,
               exit_fn: Callable[[int], None] = os._exit, poll_s: float = 0.5):
    if not limit_s >= 0:
      raise ValueError(f"watchdog limit_s must be >= 0, got {limit_s!r}")
    self.limit_s, self.where, self.signal_grace_s = float(limit_s), where, float(signal_grace_s)
    self._note, self._exit, self._poll = note, exit_fn, float(poll_s)
    self._lock = threading.Lock()
    self._what: Optional[str] = None
    self._since = 0.0
    self._signalled_at: Optional[float] = None
    self._signal_name = ""
    self._closed = threading.Event()
    self.fired: Optional[str] = None  # the message, once fired (tests)
    self._rfd, self._old_wakeup = self._install_wakeup()
    self._thread = threading.Thread(target=self._run, name="agentic_jax-watchdog", daemon=True)
    self._thread.start()

  # --- main-thread API -------------------------------------------------------------------

  @contextlib.contextmanager
  def watch(self, what: str) -> Iterator[None]:
    with self._lock:
      self._what, self._since, self._signalled_at = what, time.monotonic(), None
    try:
      yield
    finally:
      with self._lock:
        self._what = None

  def close(self) -> None:
    self._closed.set()
    self._thread.join(timeout=5)
    if self._rfd is not None:
      try:
        signal.set_wakeup_fd(self._old_wakeup)
      except ValueError:  # not the main thread any more (cannot happen in the loops)
        pass
      os.close(self._rfd)
      os.close(self._wfd)
      self._rfd = None

  # --- watcher thread --------------------------------------------------------------------

  def _install_wakeup(self):
    """A pipe CPython writes signal numbers to from its C handler; None off the main thread
    (then only the timer works)."""
    if threading.current_thread() is not threading.main_thread():
      return None, -1
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    try:
      old = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    except ValueError:
      os.close(rfd)
      os.close(wfd)
      return None, -1
    self._wfd = wfd
    return rfd, old

  def _drain_signals(self) -> None:
    if self._rfd is None:
      self._closed.wait(self._poll)
      return
    ready, _, _ = select.select([self._rfd], [], [], self._poll)
    if not ready:
      return
    try:
      data = os.read(self._rfd, 512)
    except (BlockingIOError, OSError):
      return
    if self._old_wakeup >= 0:  # pass them on to whoever had the wakeup fd before us
      try:
        os.write(self._old_wakeup, data)
      except OSError:
        pass
    names = [signal.Signals(b).name for b in data
             if b in (signal.SIGTERM, signal.SIGINT)]
    if names:
      with self._lock:
        if self._what is not None and self._signalled_at is None:
          self._signalled_at, self._signal_name = time.monotonic(), names[-1]

  def _run(self) -> None:
    while not self._closed.is_set():
      self._drain_signals()
      with self._lock:
        what, since, sig_at = self._what, self._since, self._signalled_at
      if what is None:
        continue
      now = time.monotonic()
      if self.limit_s and now - since > self.limit_s:
        self._fire(f"{what} did not finish within {self.limit_s:g} s")
        return
      if sig_at is not None and now - sig_at > self.signal_grace_s:
        self._fire(f"{self._signal_name} arrived while {what} was running, and {what} has not "
                   f"finished {self.signal_grace_s:g} s later")
        return

  def _fire(self, head: str) -> None:
    note = ""
    if self._note is not None:
      try:
        note = " " + self._note()
      except Exception as e:  # pylint: disable=broad-except  (never mask the real report)
        note = f" (run state unavailable: {e})"
    msg = (f"[watchdog] {head} on {self.where}: a collective is stuck (a peer process died, "
           f"stalled or runs another program?); ending this process with status "
           f"{EXIT_STUCK}.{note}")
    self.fired = msg
    try:
      sys.stderr.write(msg + "\n")
      sys.stderr.flush()
    finally:
      self._exit(EXIT_STUCK)
