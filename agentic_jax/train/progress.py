"""The run loops' progress bar (train/runner.MetricsWriter owns one): tqdm.auto on a terminal or
in a notebook (a widget), one tqdm-formatted line per record anywhere else (log files, CI)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping, Optional, TextIO, Union

# tqdm.auto first: it imports tqdm.autonotebook with that module's notebook warning silenced
import tqdm.auto
import tqdm.autonotebook
import tqdm.std


def postfix_text(postfix: Union[str, Mapping[str, Any], None]) -> str:
  """The text a progress postfix shows: a string as it is, a mapping as "k=v, k=v" (tqdm's
  own postfix layout; values as the caller formatted them, floats as 4 significant digits)."""
  if postfix is None or isinstance(postfix, str):
    return postfix or ""
  return ", ".join(f"{k}={format(v, '.4g') if isinstance(v, float) else v}"
                   for k, v in postfix.items())


def _in_notebook() -> bool:
  """True when tqdm.auto picked the notebook widget (a Jupyter kernel with ipywidgets). A
  kernel's stderr is no terminal, yet the widget redraws in place: live mode, not lines."""
  return tqdm.autonotebook.tqdm is not tqdm.std.tqdm


def _columns(stream: TextIO) -> Optional[int]:
  """The width of the terminal `stream` writes to; None when it has none (not a file, no tty)."""
  try:
    return os.get_terminal_size(stream.fileno()).columns
  except (AttributeError, OSError, ValueError):
    return None


class ProgressBar:
  """The one progress bar of a run loop: position = the step, total = num_steps, postfix = the
  few numbers the job shows (loss, tokens/s, ...).

  Two modes, chosen once from where it draws:
    live   a terminal (`stream.isatty()`) or a notebook: a tqdm.auto bar (a widget in
           Jupyter), moved by `advance` / `update`, redrawn at most every `mininterval` s
           (tqdm's own throttling), left on screen when closed.
    lines  anything else (a log file, a pipe, a CI job): no bar is drawn, only one line per
           `update` that has a postfix, written by tqdm's own meter formatter
           (`tqdm.format_meter`: bar, step/total, elapsed<remaining, rate, postfix). A live
           tqdm bar in a file is one ever-growing line of "\\r"-separated redraws; one line
           per log record is what the hand-drawn line wrote there before, so the volume of
           output is the same.
  `enabled=False` (train.progress False, processes other than 0) draws nothing at all."""

  def __init__(self, total: Optional[int], initial: int = 0, *, desc: str = "",
               stream: Optional[TextIO] = None, enabled: bool = True, unit: str = "step"):
    self.stream = stream or sys.stderr
    self.total, self.initial, self.desc, self.unit = total, initial, desc, unit
    isatty = getattr(self.stream, "isatty", lambda: False)
    self.live = enabled and (isatty() or _in_notebook())
    self.lines = enabled and not self.live
    self._t0 = time.time()
    self.bar = None
    if self.live:
      # width: the terminal's, followed as it is resized; a pseudo-terminal that reports 0
      # columns (`docker run -t` before the size is set) would make tqdm trim the bar to nothing
      width = {"ncols": 100} if _columns(self.stream) == 0 else {"dynamic_ncols": True}
      self.bar = tqdm.auto.tqdm(total=total, initial=initial, desc=desc, unit=unit,
                                file=self.stream, leave=True, **width)

  def advance(self, step: int) -> None:
    """Moves a live bar to `step` (steps completed); a lines-mode bar waits for `update`."""
    if self.bar is not None and step > self.bar.n:
      self.bar.update(step - self.bar.n)  # tqdm refreshes at most every mininterval

  def update(self, step: int, postfix: Union[str, Mapping[str, Any], None]) -> None:
    """At `step`: the live bar's position (and postfix, when one is given); in lines mode,
    one line when there is a postfix."""
    if self.bar is not None:
      self.advance(step)
      if postfix is not None:
        # drawn now, not at the next throttled move: new numbers come once per record
        self.bar.set_postfix_str(postfix_text(postfix), refresh=True)
    elif self.lines and postfix is not None:
      line = tqdm.std.tqdm.format_meter(
          step, self.total, time.time() - self._t0, prefix=self.desc, ascii=True, unit=self.unit,
          postfix=postfix_text(postfix), initial=self.initial)
      self.stream.write(line + "\n")
      self.stream.flush()

  def close(self) -> None:
    """Leaves the bar where the run ended (a stopped run's bar stays short of the total)."""
    if self.bar is not None:
      self.bar.close()
      self.bar = None
