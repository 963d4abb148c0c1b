"""Reading sample files with validation that loses nothing silently and never crashes on input.

`read_samples(path, format, on_bad_record)` reads "native" records (our schema,
`schema.parse_record`) or "adp" ones (Agent Data Protocol, `adp.parse_adp_record`) from either
layout, told apart by the content, not the file name:

  JSON Lines   one record per physical line (1-based line numbers); blank lines are counted, not
               records. Used unless the file starts with "[".
  JSON array   `[record, record, ...]` as ADP publishes its samples (sample_std.json): a file whose
               first non-blank character is "[" (except when its first line is a complete JSON
               value followed by more lines: that is JSON Lines whose first record is an array).
               A record's line is the line where it starts. The whole file is read into memory, so
               it must be at most `max_array_bytes`.

Each record is decoded (UTF-8, standard JSON), checked as JSON data (`check_json`: duplicate keys,
non-standard constants NaN / Infinity, numbers out of range, lone surrogates, nesting deeper than
MAX_DEPTH), validated by the format's parser, and its id must not repeat an earlier one. A bad
record raises `RecordError` (`FILE:LINE: field: reason`) under on_bad_record="raise"; under "skip"
it is counted by field (indices folded: `turns[*].role`) and its error kept in `report.problems`
(the first `max_problems`). A line over `max_record_bytes` is a bad record (read past in bounded
chunks).

`FileError` (a RecordError) is raised in both modes when the file as a whole is unusable: not UTF-8
(UTF-16 / UTF-32 byte-order mark), an array with a syntax error between or inside records (the rest
cannot be located, so reading stops), an array over max_array_bytes, no records at all (empty or
blank file, empty array), or no record kept. It carries the partial report (`.report`).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import re
from typing import Any, Callable, Iterator, Optional

from agentic_jax import fs
from agentic_jax.data import adp
from agentic_jax.data.schema import RecordError, Sample, parse_record, printable

FORMATS = ("native", "adp")
ON_BAD_RECORD = ("raise", "skip")
MAX_DEPTH = 64                    # nesting of objects / arrays in one record (ours need 4, ADP ~6)
MAX_RECORD_BYTES = 256 << 20      # one JSON Lines record
MAX_ARRAY_BYTES = 1 << 30         # a whole JSON-array file (held in memory)
_INDEX = re.compile(r"\[\d+\]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WS = re.compile(r"[ \t\n\r]*")
_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"),
              (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))


class FileError(RecordError):
  """The file as a whole cannot be used (module doc); `line` is 0 when no line is to blame."""

  def __init__(self, file: str, line: int, field: str, reason: str, report: "ReadReport"):
    super().__init__(file, line, field, reason)
    self.report = report
    if not line:  # e.g. `f.jsonl: no records: the file is empty`
      self.args = (f"{self.file}: {self.reason}",)


@dataclasses.dataclass
class ReadReport:
  file: str
  layout: str = "jsonl"   # or "json-array"
  lines: int = 0          # physical lines
  blank: int = 0          # whitespace-only lines (not records)
  records: int = 0        # non-blank lines / array elements, i.e. records read
  kept: int = 0
  skipped: int = 0
  skipped_by_field: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  problems: list = dataclasses.field(default_factory=list)  # RecordError, the first max_problems
  # kept records only: what could not be represented (ADP), versions assumed, a byte-order mark
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def summary(self) -> str:
    """One line, e.g. `f.jsonl: 5 records, 3 kept, 2 skipped (<json>: 1, turns[*].role: 1), 1 blank line`."""
    out = (f"{printable(self.file)}: {self.records} records, {self.kept} kept, "
           f"{self.skipped} skipped")
    if self.skipped_by_field:
      out += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped_by_field.items())) + ")"
    if self.layout == "json-array":
      out += ", JSON array"
    else:
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


class _Invalid:
  """Stands in for a JSON token that decodes but cannot be used (NaN, a 5,000-digit integer), so
  that check_json reports it with its field path and an array file can go on to the next record."""

  def __init__(self, reason: str):
    self.reason = reason


class _Duplicates(dict):
  """An object that had repeated keys (values: the last one, as json.loads keeps)."""
  repeated: list


def _pairs(pairs: list) -> dict:
  obj = dict(pairs)
  if len(obj) == len(pairs):
    return obj
  out = _Duplicates(obj)
  seen: set = set()
  out.repeated = [k for k, _ in pairs if k in seen or seen.add(k)]
  return out


def _int(text: str):
  # Python refuses int() of more than 4,300 digits (and json.loads would raise a bare ValueError)
  return int(text) if len(text) <= 4300 else _Invalid(f"integer of {len(text)} digits is too long")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_pairs, parse_int=_int,
    parse_constant=lambda name: _Invalid(f"{name} is not valid JSON (a non-standard constant)"))


def _join(parent: str, key) -> str:
  if isinstance(key, int):
    return f"{parent}[{key}]"
  return f"{parent}.{key}" if parent else key


def check_json(value: Any, file: str, line: int) -> None:
  """Raises RecordError at the first field (path like `content[2].kwargs.path`) that is not clean
  JSON data: a repeated key, NaN / Infinity, an out-of-range number, a lone surrogate in a key or
  string (not encodable, so not tokenizable), nesting deeper than MAX_DEPTH. Iterative, so any
  depth is safe; a path is only spelled out for containers and errors."""
  stack: list = [(value, "<record>", 0)]
  while stack:
    v, path, depth = stack.pop()
    if isinstance(v, _Invalid):
      raise RecordError(file, line, path, v.reason)
    if isinstance(v, float):
      if not math.isfinite(v):
        raise RecordError(file, line, path, "number out of range (beyond a 64-bit float)")
    elif isinstance(v, str):
      m = _SURROGATE.search(v)
      if m:
        raise RecordError(file, line, path,
                          f"invalid text: lone surrogate at character {m.start()}")
    elif isinstance(v, (dict, list)):
      base = "" if path == "<record>" else path
      if depth >= MAX_DEPTH:
        raise RecordError(file, line, path, f"nested deeper than {MAX_DEPTH} levels")
      if isinstance(v, _Duplicates):
        raise RecordError(file, line, _join(base, v.repeated[0]),
                          "duplicate key in one object (JSON readers keep only the last value)")
      items = v.items() if isinstance(v, dict) else enumerate(v)
      todo = []
      for k, x in items:
        if isinstance(k, str) and _SURROGATE.search(k):
          raise RecordError(file, line, _join(base, k), "invalid text: lone surrogate in a key")
        if not isinstance(x, (int, type(None))):  # ints, bools, null: nothing to check
          todo.append((x, _join(base, k), depth + 1))
      stack.extend(reversed(todo))


def _loads(text: str, file: str, line: int, hint: str = "") -> Any:
  try:
    value, end = _DECODER.raw_decode(text, _WS.match(text).end())
    end = _WS.match(text, end).end()
    if end != len(text):
      raise json.JSONDecodeError("Extra data", text, end)
  except json.JSONDecodeError as e:
    if text.startswith("\ufeff"):
      raise RecordError(file, line, "<json>", "byte-order mark in the middle of the file "
                        "(concatenated files?)") from None
    msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
    raise RecordError(file, line, "<json>", f"invalid JSON: {msg} at column {e.colno}{hint}"
                      ) from None
  except RecursionError:
    raise RecordError(file, line, "<json>", "invalid JSON: nested too deeply to decode") from None
  check_json(value, file, line)
  return value


def decode_line(raw: bytes, file: str, line: int, hint: str = "") -> Any:
  """The checked JSON value of one line; RecordError (field "<utf-8>", "<json>" or the path of the
  offending value) when it is not valid. `hint` is added to a JSON syntax error."""
  try:
    text = raw.decode("utf-8").rstrip("\r\n")  # without the terminator, columns are 1-based on the line
  except UnicodeDecodeError as e:
    raise RecordError(file, line, "<utf-8>", f"invalid UTF-8 at byte column {e.start + 1}") from None
  return _loads(text, file, line, hint)


def _jsonl(f, path: str, report: ReadReport, max_record_bytes: int
           ) -> Iterator[tuple[int, Callable[[], Any]]]:
  """(line, thunk decoding the record) per non-blank line; the thunk raises RecordError."""
  lineno = 0
  while True:
    raw = f.readline(max_record_bytes + 1)
    if not raw:
      return
    lineno += 1
    report.lines += 1
    if lineno == 1 and raw.startswith(_BOM):  # Windows editors write one; harmless at the start
      raw = raw[len(_BOM):]
      report.notes["UTF-8 byte-order mark at the start of the file ignored"] += 1
    if len(raw) > max_record_bytes and not raw.endswith(b"\n"):
      size = len(raw)
      while raw and not raw.endswith(b"\n"):  # skip the rest of the line, 1 MiB at a time
        raw = f.readline(1 << 20)
        size += len(raw)
      report.records += 1
      yield lineno, _raiser(RecordError(path, lineno, "<record>", f"line of {size} bytes is over "
                                        f"the limit of {max_record_bytes} (max_record_bytes)"))
      continue
    if not raw.strip():
      report.blank += 1
      continue
    report.records += 1
    last = not raw.endswith(b"\n")
    hint = "; the last line has no newline (truncated file?)" if last else ""
    yield lineno, (lambda raw=raw, lineno=lineno, hint=hint: decode_line(raw, path, lineno, hint))


def _checked(value: Any, file: str, line: int) -> Any:
  check_json(value, file, line)
  return value


def _raiser(error: Exception) -> Callable[[], Any]:
  def thunk():
    raise error
  return thunk


def _array(data: bytes, path: str, report: ReadReport) -> Iterator[tuple[int, Callable[[], Any]]]:
  """(line, thunk) per element of a JSON-array file. A syntax error outside a record's value, or one
  that stops a value from being read at all, is a FileError: the next record cannot be found."""
  report.layout = "json-array"
  report.lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise FileError(path, line, "<utf-8>", f"invalid UTF-8 at byte column {col}; a JSON array "
                    "cannot be read past it", report) from None
  newlines = [0, 0]  # (position counted up to, newlines before it): positions only grow

  def line_of(pos: int) -> int:
    newlines[1] += text.count("\n", newlines[0], pos)
    newlines[0] = pos
    return newlines[1] + 1

  def fatal(pos: int, reason: str) -> FileError:
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return FileError(path, line_of(pos), "<json>", f"invalid JSON array: {reason} at column {col}; "
                     "reading stopped (the records after it cannot be located)", report)

  pos = _WS.match(text, text.index("[") + 1).end()
  if text.startswith("]", pos):
    pos = _WS.match(text, pos + 1).end()
  else:
    while True:
      start = line_of(pos)
      try:
        value, end = _DECODER.raw_decode(text, pos)
      except json.JSONDecodeError as e:
        # the scanner only calls a string unterminated when the text ends inside it
        ends = e.pos >= len(text) or e.msg.startswith("Unterminated string")
        trailing_comma = e.pos == pos and text.startswith("]", pos)
        raise fatal(e.pos, "trailing comma before ']'" if trailing_comma
                    else "the file ends inside a record (truncated?)" if ends
                    else e.msg[:-3] if e.msg.endswith(" at") else e.msg) from None
      except RecursionError:
        raise fatal(pos, "a record nested too deeply to decode") from None
      report.records += 1
      yield start, (lambda value=value, start=start: _checked(value, path, start))
      pos = _WS.match(text, end).end()
      if text.startswith(",", pos):
        pos = _WS.match(text, pos + 1).end()
        continue
      if text.startswith("]", pos):
        pos = _WS.match(text, pos + 1).end()
        break
      raise fatal(pos, "the file ends before the closing ']' (truncated?)" if pos >= len(text)
                  else "expected ',' or ']' after a record")
  if pos != len(text):
    raise fatal(pos, "extra data after the closing ']'")


def _open_binary(path: str):
  """A buffered binary reader (peek() needed) of a local or remote (gs://...) data file."""
  if fs.is_remote(path):
    return io.BufferedReader(fs.open_file(path, "rb"), 1 << 16)
  return open(path, "rb", buffering=1 << 16)  # pylint: disable=consider-using-with


def _layout(head: bytes) -> str:
  """"json-array" when the first non-blank character is "[" and the first line is not a complete
  JSON value followed by more lines (that is JSON Lines whose first record is an array)."""
  body = head[len(_BOM):] if head.startswith(_BOM) else head
  stripped = body.lstrip(b" \t\r\n")
  if not stripped.startswith(b"["):
    return "jsonl"
  first, _, rest = stripped.partition(b"\n")
  try:
    json.loads(first.decode("utf-8"))
  except RecursionError:
    return "jsonl"       # a deeply nested first line is a (bad) record, not the start of an array
  except ValueError:
    return "json-array"  # e.g. "[" alone, or "[{...}," : the array goes on over several lines
  return "jsonl" if rest.strip() else "json-array"


def read_samples(path: str, format: str = "native", on_bad_record: str = "raise", *,
                 source: Optional[str] = None, max_problems: Optional[int] = 100,
                 max_record_bytes: int = MAX_RECORD_BYTES, max_array_bytes: int = MAX_ARRAY_BYTES
                 ) -> tuple[list[Sample], ReadReport]:
  """Reads and validates a JSON Lines or JSON-array file (module doc). `source` names ADP samples
  (see adp.parse_adp_record) and must be None for native files, whose records carry their own
  source. `max_problems=None` keeps every problem (check_data). OSError when it cannot be opened."""
  if format not in FORMATS:
    raise ValueError(f"unknown data format {format!r}; expected one of {list(FORMATS)}")
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(f"unknown on_bad_record {on_bad_record!r}; expected one of {list(ON_BAD_RECORD)}")
  if source is not None and format == "native":
    raise ValueError("source= applies to ADP files only; native records carry their own source")
  report = ReadReport(path)
  samples: list[Sample] = []
  first_line_of_id: dict[str, int] = {}
  with _open_binary(path) as f:
    head = f.peek(1 << 16)[:1 << 16]
    wide = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    if wide:
      raise FileError(path, 0, "<file>", f"the file is {wide}-encoded (it starts with a {wide} "
                      "byte-order mark); expected UTF-8", report)
    if _layout(head) == "jsonl":
      records = _jsonl(f, path, report, max_record_bytes)
    else:
      data = f.read(max_array_bytes + 1)
      if len(data) > max_array_bytes:
        raise FileError(path, 0, "<file>", f"a JSON-array file over {max_array_bytes} bytes "
                        "(max_array_bytes); write it as JSON Lines, one record per line", report)
      if data.startswith(_BOM):
        data = data[len(_BOM):]
        report.notes["UTF-8 byte-order mark at the start of the file ignored"] += 1
      records = _array(data, path, report)
    for lineno, decode in records:
      notes: collections.Counter = collections.Counter()
      try:
        obj = decode()
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
  if not report.records:
    what = ("the JSON array is empty" if report.layout == "json-array"
            else "the file is empty" if not report.lines else f"{report.lines} blank lines only")
    raise FileError(path, 0, "<file>", f"no records: {what}", report)
  if not report.kept:
    n = report.records
    raise FileError(path, 0, "<file>", "no records kept: " + (
        "the only record was skipped" if n == 1 else f"all {n} records were skipped"), report)
  return samples, report
