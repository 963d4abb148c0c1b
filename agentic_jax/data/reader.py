"""Reading JSONL sample files with validation that loses nothing silently.

`read_samples(path, format, on_bad_record)` decodes one JSON object per line ("native": our schema,
`schema.parse_record`; "adp": Agent Data Protocol, `adp.parse_adp_record`). Line numbers are
1-based physical lines. Blank (whitespace-only) lines are not records: they are counted in the
report and skipped. A bad line (invalid UTF-8, invalid JSON, NaN/Infinity constants, a schema
violation, or an id already seen earlier in the file) raises `RecordError` under
on_bad_record="raise"; under "skip" it is counted by field (indices folded: `turns[*].role`) and
its error kept in `report.problems` (the first `max_problems`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Optional

from agentic_jax.data import adp
from agentic_jax.data.schema import RecordError, Sample, parse_record

FORMATS = ("native", "adp")
ON_BAD_RECORD = ("raise", "skip")
_INDEX = re.compile(r"\[\d+\]")


@dataclasses.dataclass
class ReadReport:
  file: str
  lines: int = 0          # physical lines
  blank: int = 0          # whitespace-only lines (not records)
  records: int = 0        # non-blank lines, i.e. records read
  kept: int = 0
  skipped: int = 0
  skipped_by_field: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  problems: list = dataclasses.field(default_factory=list)  # RecordError, the first max_problems
  # ADP, kept records only: what could not be represented, versions assumed
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def summary(self) -> str:
    """One line, e.g. `f.jsonl: 5 records, 3 kept, 2 skipped (<json>: 1, turns[*].role: 1), 1 blank line`."""
    out = f"{self.file}: {self.records} records, {self.kept} kept, {self.skipped} skipped"
    if self.skipped_by_field:
      out += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_by_field.items())) + ")"
    out += f", {self.blank} blank line{'' if self.blank == 1 else 's'}"
    if self.notes:
      out += "; notes: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.notes.items()))
    return out

  def merge(self, other: "ReadReport") -> None:
    """Adds another file's counts (for reports over several files; `file` is kept)."""
    for f in ("lines", "blank", "records", "kept", "skipped"):
      setattr(self, f, getattr(self, f) + getattr(other, f))
    self.skipped_by_field.update(other.skipped_by_field)
    self.notes.update(other.notes)
    self.problems.extend(other.problems)


def _reject_constant(name: str):
  raise ValueError(f"non-standard JSON constant {name}")


def decode_line(raw: bytes, file: str, line: int):
  """The JSON value of one line; RecordError(field="<utf-8>" or "<json>") when it is not valid."""
  try:
    text = raw.decode("utf-8").rstrip("\r\n")  # without the terminator, columns are 1-based on the line
  except UnicodeDecodeError as e:
    raise RecordError(file, line, "<utf-8>", f"invalid UTF-8 at byte column {e.start + 1}") from None
  try:
    return json.loads(text, parse_constant=_reject_constant)
  except json.JSONDecodeError as e:
    raise RecordError(file, line, "<json>", f"invalid JSON: {e.msg} at column {e.colno}") from None
  except ValueError as e:  # from _reject_constant
    raise RecordError(file, line, "<json>", f"invalid JSON: {e}") from None


def read_samples(path: str, format: str = "native", on_bad_record: str = "raise", *,
                 source: Optional[str] = None, max_problems: Optional[int] = 100
                 ) -> tuple[list[Sample], ReadReport]:
  """Reads and validates a JSONL file. `source` names ADP samples (see adp.parse_adp_record) and
  must be None for native files, whose records carry their own source. `max_problems=None` keeps
  every problem (check_data)."""
  if format not in FORMATS:
    raise ValueError(f"unknown data format {format!r}; expected one of {list(FORMATS)}")
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(f"unknown on_bad_record {on_bad_record!r}; expected one of {list(ON_BAD_RECORD)}")
  if source is not None and format == "native":
    raise ValueError("source= applies to ADP files only; native records carry their own source")
  report = ReadReport(path)
  samples: list[Sample] = []
  first_line_of_id: dict[str, int] = {}
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      report.lines += 1
      if not raw.strip():
        report.blank += 1
        continue
      report.records += 1
      notes: collections.Counter = collections.Counter()
      try:
        obj = decode_line(raw, path, lineno)
        if format == "native":
          sample = parse_record(obj, file=path, line=lineno)
        else:
          sample = adp.parse_adp_record(obj, file=path, line=lineno, source=source, notes=notes)
        if sample.id in first_line_of_id:
          raise RecordError(path, lineno, "id", f"duplicate id {sample.id!r} (first on line "
                            f"{first_line_of_id[sample.id]})")
      except RecordError as e:
        if on_bad_record == "raise":
          raise
        report.skipped += 1
        report.skipped_by_field[_INDEX.sub("[*]", e.field)] += 1
        if max_problems is None or len(report.problems) < max_problems:
          report.problems.append(e)
        continue
      first_line_of_id[sample.id] = lineno
      report.notes.update(notes)
      report.kept += 1
      samples.append(sample)
  return samples, report
