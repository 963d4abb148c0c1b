"""Pieces every run loop shares (train/loop.py, rl/loop.py): the SIGTERM/SIGINT stop flag and the
config diff printed when a resumed run's config differs from its checkpoint's."""

from __future__ import annotations

import signal
import threading
from typing import Optional


class StopFlag:
  """Set by SIGTERM/SIGINT; handlers installed only from the main thread, restored after."""

  def __init__(self, install: bool):
    self.signal: Optional[str] = None
    self._old = {}
    if install and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, _frame):
    self.signal = signal.Signals(signum).name

  def restore(self) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  """"key.path: old -> new" for every leaf that differs between two nested dicts."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out
