"""Trajectory schema (versioned) for agent-native mid-training data (daVinci-Dev).

Two sample kinds, one JSON object per line:

  contextually-native   {"schema_version": "1.0", "kind": "context", "id": str, "source": str,
                         "spans": [{"kind": "context"|"file"|"summary"|"edit", "text": str,
                                    "path": str (optional; file snapshot / edited file)}, ...]}
  environmentally-native {"schema_version": "1.0", "kind": "env", "id": str, "source": str,
                         "turns": [{"role": "system"|"user"|"assistant"|"tool_call"|"observation",
                                    "content": str, "name": str (tool name; tool_call/observation),
                                    "error": bool (tool_call whose call failed; default false),
                                    "weight": number >= 0 (multiplies the turn's loss weights
                                              under every mask policy; default 1)}, ...],
                         "reward": float | null (verifiable outcome)}

Spans and turns are in causal order. `id`, `source`, a turn's `name` and a span's `path` are
non-empty printable strings (no line breaks or control characters: they are shown in reports and
rendered on lines of their own). A turn's `weight` follows the OpenAI chat fine-tuning
convention (`"weight": 0` keeps a turn as context only): e.g. one-step samples cut from a
trajectory, where the earlier turns are the context and only the last turn is the target.
`parse_record` validates one decoded JSON object and raises
`RecordError` naming file, line, field and what was expected; nothing is coerced.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

SCHEMA_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
SPAN_KINDS = ("context", "file", "summary", "edit")
ROLES = ("system", "user", "assistant", "tool_call", "observation")
SAMPLE_KINDS = ("context", "env")


def printable(text: str) -> str:
  """`text` with every unprintable character (control, format, lone surrogate, line break)
  escaped as Python does in repr, so that printing or logging it can never fail or forge lines."""
  if text.isprintable():
    return text
  return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RecordError(ValueError):
  """A malformed record: `FILE:LINE: field: reason` (all parts made printable)."""

  def __init__(self, file: str, line: int, field: str, reason: str):
    self.file, self.line = printable(str(file)), line
    self.field, self.reason = printable(field), printable(reason)
    super().__init__(f"{self.file}:{line}: {self.field}: {self.reason}")


def describe(value: Any) -> str:
  """A short JSON-terms description of a value for error messages; never large, never fails
  (a 5,000-digit int is not converted to text: Python refuses that)."""
  if value is None:
    return "null"
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, int):
    if value.bit_length() > 64:
      return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return f"number {value}"
  if isinstance(value, float):
    return f"number {value!r}"
  if isinstance(value, str):
    return f"string {value[:40]!r}" + ("..." if len(value) > 40 else "")
  if isinstance(value, list):
    return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
  if isinstance(value, dict):
    return f"an object with {len(value)} key{'' if len(value) == 1 else 's'}"
  return type(value).__name__


@dataclasses.dataclass(frozen=True)
class Span:
  kind: str
  text: str
  path: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Turn:
  role: str
  content: str
  name: Optional[str] = None
  error: bool = False
  weight: float = 1.0  # multiplies the mask policy's loss weights of this turn's tokens


@dataclasses.dataclass(frozen=True)
class ContextSample:
  id: str
  source: str
  spans: tuple[Span, ...]
  kind: str = "context"


@dataclasses.dataclass(frozen=True)
class EnvSample:
  id: str
  source: str
  turns: tuple[Turn, ...]
  reward: Optional[float] = None
  kind: str = "env"


Sample = Union[ContextSample, EnvSample]


def to_record(sample: Sample) -> dict:
  """The JSON object of a sample (inverse of parse_record); optional fields left out when unset."""
  out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": sample.kind, "id": sample.id,
                         "source": sample.source}
  if isinstance(sample, ContextSample):
    out["spans"] = [{k: v for k, v in dataclasses.asdict(s).items() if v is not None}
                    for s in sample.spans]
  else:
    out["turns"] = [{k: v for k, v in dataclasses.asdict(t).items()
                     if v is not None and not (k == "error" and v is False)
                     and not (k == "weight" and v == 1.0)} for t in sample.turns]
    out["reward"] = sample.reward
  return out


def _get(obj: dict, key: str, types, where: str, file: str, line: int, required=True,
         expected: str = ""):
  if key not in obj:
    if required:
      raise RecordError(file, line, f"{where}{key}", f"missing; expected {expected or _names(types)}")
    return None
  value = obj[key]
  # bool is an int subclass: never accept it where a number or string is expected
  if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
    raise RecordError(file, line, f"{where}{key}",
                      f"expected {expected or _names(types)}, got {describe(value)}")
  if isinstance(value, str):
    # JSON allows "\ud800" escapes; such a string cannot be UTF-8 encoded (tokenized) later
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as e:
      raise RecordError(file, line, f"{where}{key}",
                        f"invalid text: lone surrogate at character {e.start}") from None
  return value


def _tuple(types):
  return types if isinstance(types, tuple) else (types,)


def _names(types) -> str:
  names = [{"str": "a string", "list": "an array", "bool": "true/false", "dict": "an object",
            "int": "a number", "float": "a number", "NoneType": "null"}.get(t.__name__, t.__name__)
           for t in _tuple(types)]
  return " or ".join(dict.fromkeys(names))  # (int, float) reads "a number", not "a number or a number"


def _unknown(obj: dict, allowed: set, where: str, file: str, line: int, what: str = ""):
  extra = sorted(set(obj) - allowed)
  if extra:
    raise RecordError(file, line, f"{where}{extra[0]}",
                      f"unknown field{what}; allowed: {sorted(allowed)}")


def _name(obj: dict, key: str, where: str, file: str, line: int, required=True) -> Optional[str]:
  """A non-empty identifier-like string (id, source, tool name, path): printable only, because
  it is shown in reports and rendered on a line of its own (a newline in it would forge one)."""
  value = _get(obj, key, str, where, file, line, required=required)
  if value is None:
    return None
  if not value:
    raise RecordError(file, line, f"{where}{key}", "expected a non-empty string")
  if not value.isprintable():
    bad = next(c for c in value if not c.isprintable())
    raise RecordError(file, line, f"{where}{key}", f"unprintable character {bad!r} at "
                      f"{value.index(bad)}; a name must be one printable line")
  return value


def _number(value: Any, field: str, file: str, line: int) -> Optional[float]:
  """A reward: null or a finite JSON number, as a float. JSON has no size limit on numbers:
  10**400 is valid JSON but no float, and json.loads reads "1e400" as inf."""
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RecordError(file, line, field, f"expected a number or null, got {describe(value)}")
  try:
    number = float(value)
  except OverflowError:
    number = math.inf
  if not math.isfinite(number):
    raise RecordError(file, line, field, f"expected a finite number, got {describe(value)}")
  return number


def parse_record(obj: Any, *, file: str = "<memory>", line: int = 0) -> Sample:
  """Validates one decoded JSON object and returns the sample."""
  if not isinstance(obj, dict):
    raise RecordError(file, line, "<record>", f"expected a JSON object, got {describe(obj)}")
  version = _get(obj, "schema_version", str, "", file, line)
  if version not in SUPPORTED_VERSIONS:
    raise RecordError(file, line, "schema_version", f"unsupported version {version!r}; "
                      f"supported: {list(SUPPORTED_VERSIONS)}")
  kind = _get(obj, "kind", str, "", file, line, expected=f"one of {list(SAMPLE_KINDS)}")
  if kind not in SAMPLE_KINDS:
    raise RecordError(file, line, "kind", f"expected one of {list(SAMPLE_KINDS)}, got {kind!r}")
  sid = _name(obj, "id", "", file, line)
  source = _name(obj, "source", "", file, line)
  common = {"schema_version", "kind", "id", "source"}
  if kind == "context":
    _unknown(obj, common | {"spans"}, "", file, line)
    raw = _get(obj, "spans", list, "", file, line)
    if not raw:
      raise RecordError(file, line, "spans", "expected at least one span")
    spans = []
    for i, s in enumerate(raw):
      where = f"spans[{i}]."
      if not isinstance(s, dict):
        raise RecordError(file, line, f"spans[{i}]", f"expected an object, got {describe(s)}")
      _unknown(s, {"kind", "text", "path"}, where, file, line)
      skind = _get(s, "kind", str, where, file, line, expected=f"one of {list(SPAN_KINDS)}")
      if skind not in SPAN_KINDS:
        raise RecordError(file, line, f"{where}kind", f"expected one of {list(SPAN_KINDS)}, got {skind!r}")
      spans.append(Span(skind, _get(s, "text", str, where, file, line),
                        _name(s, "path", where, file, line, required=False)))
    return ContextSample(sid, source, tuple(spans))
  _unknown(obj, common | {"turns", "reward"}, "", file, line)
  raw = _get(obj, "turns", list, "", file, line)
  if not raw:
    raise RecordError(file, line, "turns", "expected at least one turn")
  turns = []
  for i, t in enumerate(raw):
    where = f"turns[{i}]."
    if not isinstance(t, dict):
      raise RecordError(file, line, f"turns[{i}]", f"expected an object, got {describe(t)}")
    _unknown(t, {"role", "content", "name", "error", "weight"}, where, file, line)
    role = _get(t, "role", str, where, file, line, expected=f"one of {list(ROLES)}")
    if role not in ROLES:
      raise RecordError(file, line, f"{where}role", f"expected one of {list(ROLES)}, got {role!r}")
    name = _name(t, "name", where, file, line, required=False)
    if role in ("tool_call", "observation") and not name:
      raise RecordError(file, line, f"{where}name", f"a {role} turn needs the tool name")
    error = _get(t, "error", bool, where, file, line, required=False) or False
    weight = 1.0
    if "weight" in t:
      weight = _number(t["weight"], f"{where}weight", file, line)
      if weight is None or weight < 0:
        raise RecordError(file, line, f"{where}weight",
                          f"expected a finite number >= 0, got {describe(t['weight'])}")
    turns.append(Turn(role, _get(t, "content", str, where, file, line), name, error, weight))
  reward = _number(obj.get("reward"), "reward", file, line)
  return EnvSample(sid, source, tuple(turns), reward)
