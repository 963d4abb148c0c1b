"""Packing groups: a global batch that does not depend on how many processes feed it.

    it = row_block(make_group, batch_size=8, groups=2, row_start=4, row_stop=8)
    next(it)   # rows 4..7 of global batch 0, i.e. all rows of group 1's batch 0

Why: a packed pipeline is a sequential process (first fit over a stream of samples), so if
every process packed its own share of the rows from its own share of the stream, the global
batch - and every loss of the run - would change with the number of processes. Instead the
global batch of `batch_size` rows is defined as `groups` independent packing groups of
batch_size / groups rows each, concatenated in group order: group g is the pipeline with
process_index=g, process_count=groups (it reads elements g, g+G, ... of every source's
stream; data/pipeline.py). That definition names no process. A process feeding global rows
[row_start, row_stop) builds only the groups those rows fall in and slices them:

  * groups a multiple of the process count (the efficient setting): each process builds its
    own groups/processes groups, nothing is computed twice;
  * fewer groups than processes (e.g. groups=1, the default): several processes build the
    same group and each keeps its own rows (redundant host work, same numbers).

So a 1-process and an N-process run of the same config train on bitwise the same batches.
`make_group(g)` must return that group's checkpointable iterator (a grain.DatasetIterator
with get_state/set_state and `stats`); `row_block` returns it unchanged when the process
needs exactly one whole group, so single-process states keep the pipeline's own format.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import grain
import numpy as np

STATE_VERSION = 1
# Pipeline counts taken once when the sources are built (the same in every group).
_PER_SOURCE_FIELDS = ("dropped_overlong", "source_dropped")


def check_groups(batch_size: int, groups: Any, *, key: str = "config.data.pack_groups") -> int:
  """`groups` as an int that divides batch_size; ValueError naming `key` otherwise."""
  if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
    raise ValueError(f"{key}: expected an int >= 1, got {groups!r}")
  if batch_size % groups:
    raise ValueError(f"{key}={groups} does not divide config.data.batch_size={batch_size} "
                     "(each packing group is batch_size / pack_groups rows)")
  return int(groups)


def groups_of_rows(batch_size: int, groups: int, row_start: int, row_stop: int) -> range:
  """The groups holding global rows [row_start, row_stop)."""
  if not 0 <= row_start < row_stop <= batch_size:
    raise ValueError(f"rows [{row_start}:{row_stop}) are not a non-empty block of a "
                     f"{batch_size}-row batch")
  per = batch_size // groups
  return range(row_start // per, (row_stop - 1) // per + 1)


def row_block(make_group: Callable[[int], Any], *, batch_size: int, groups: int, row_start: int,
              row_stop: int) -> Any:
  """Iterator over rows [row_start, row_stop) of the grouped global batches (module doc)."""
  groups = check_groups(batch_size, groups)
  needed = groups_of_rows(batch_size, groups, row_start, row_stop)
  per = batch_size // groups
  if len(needed) == 1 and row_stop - row_start == per:
    return make_group(needed[0])
  return RowBlockIterator({g: make_group(g) for g in needed}, rows_per_group=per,
                          row_start=row_start, row_stop=row_stop, groups=groups)


class RowBlockIterator(grain.DatasetIterator):
  """Concatenates the batches of several packing groups and keeps rows [start, stop)."""

  def __init__(self, iterators: Mapping[int, Any], *, rows_per_group: int, row_start: int,
               row_stop: int, groups: int):
    super().__init__()
    self._its = dict(sorted(iterators.items()))
    self._first = min(self._its)
    self._slice = slice(row_start - self._first * rows_per_group,
                        row_stop - self._first * rows_per_group)
    self.groups, self.rows = groups, (row_start, row_stop)

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    parts = [next(it) for it in self._its.values()]
    return {k: np.concatenate([p[k] for p in parts], axis=0)[self._slice] for k in parts[0]}

  def get_state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, "pack_groups": self.groups, "rows": list(self.rows),
            "groups": {str(g): it.get_state() for g, it in self._its.items()}}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("version") != STATE_VERSION or "groups" not in state:
      raise ValueError("data iterator state: not a packing-group state (was the run saved with "
                       "another process count or config.data.pack_groups?)")
    if state.get("pack_groups") != self.groups:
      raise ValueError(f"data iterator state: saved with pack_groups={state.get('pack_groups')}, "
                       f"this run has {self.groups}")
    saved = state["groups"]
    missing = [g for g in self._its if str(g) not in saved]
    if missing:
      raise ValueError(f"data iterator state: groups {missing} were not saved by this process "
                       f"(it fed rows {state.get('rows')}, now {list(self.rows)}); resume with "
                       "the same number of processes")
    for g, it in self._its.items():
      it.set_state(saved[str(g)])

  @property
  def stats(self) -> Any:
    """The groups' pipeline counts summed (this process's groups)."""
    parts = [it.stats for it in self._its.values()]
    total = dataclasses.replace(parts[0])
    for f in dataclasses.fields(total):
      if f.name in _PER_SOURCE_FIELDS:  # describe the sources, identical in every group
        continue
      values = [getattr(p, f.name) for p in parts]
      if isinstance(values[0], dict):
        merged: dict = {}
        for v in values:
          for k, n in v.items():
            merged[k] = merged.get(k, 0) + n
        setattr(total, f.name, merged)
      else:
        setattr(total, f.name, sum(values))
    return total

  def __str__(self) -> str:
    return f"RowBlockIterator(groups {list(self._its)} of {self.groups}, rows {self.rows})"
