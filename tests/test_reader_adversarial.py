"""Hostile and careless input for the readers (issue 10, parts 4 and 5): every malformed record
gives `FILE:LINE: field: reason` and a counted skip, or the whole file fails with a clear error and
check_data exits 1; nothing raises anything else, and nothing printed can fail or forge a line."""

import copy
import json
import os
import re
import subprocess
import sys

import pytest

from agentic_jax.data import adp, reader
from agentic_jax.data import render as rd
from agentic_jax.data import tokenizer as tk
from agentic_jax.data.schema import RecordError, parse_record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "tests", "data")


def _rec(sid="a", **extra) -> dict:
  return {"schema_version": "1.0", "kind": "env", "id": sid, "source": "s",
          "turns": [{"role": "user", "content": "hi"}], **extra}


def _line(sid="a", **extra) -> bytes:
  return json.dumps(_rec(sid, **extra)).encode()


def _adp(**kwargs) -> dict:
  return {"schema_version": "1.5.0", "id": "x", "content": [
      {"class_": "text_observation", "content": "go", "source": "user"},
      {"class_": "api_action", "function": "f", "kwargs": kwargs, "tool_call_id": "c"},
      {"class_": "text_observation", "content": "ok", "source": "environment", "tool_call_id": "c"}]}


def _read(tmp_path, data: bytes, fmt="native", name="f.jsonl", **kw):
  """(kept ids, problems without the file prefix, whole-file error or None, report)."""
  path = tmp_path / name
  path.write_bytes(data)
  try:
    samples, report = reader.read_samples(str(path), fmt, on_bad_record="skip", **kw)
    fatal = None
  except reader.FileError as e:
    samples, report, fatal = [], e.report, str(e).replace(f"{path}", "FILE")
  problems = [str(p)[len(str(path)) + 1:] for p in report.problems]
  return [s.id for s in samples], problems, fatal, report


def _check(*args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "check_data.py"), *args],
                        capture_output=True, env=env, cwd=REPO, timeout=120)


# ------------------------------------------------------------------ the cases of issue 10, part 4

def test_deep_nesting_is_a_counted_skip(tmp_path):
  deep = b"[" * 100_000 + b"]" * 100_000            # json.loads: RecursionError
  nested = _line("b", x=json.loads("[" * 200 + "]" * 200))   # decodes; too deep to use safely
  ids, problems, fatal, _ = _read(tmp_path, deep + b"\n" + _line("a") + b"\n" + nested + b"\n")
  assert ids == ["a"] and fatal is None
  assert problems == ["1: <json>: invalid JSON: nested too deeply to decode",
                      "3: x" + "[0]" * 63 + ": nested deeper than 64 levels"]
  # ADP kwargs are json.dumps'ed on import: a deep one must fail here, not in json.dumps
  deep_kwargs = json.dumps(_adp(a=json.loads("[" * 500 + "]" * 500))).encode()
  _, problems, _, _ = _read(tmp_path, deep_kwargs + b"\n", "adp")
  assert problems == ["1: content[1].kwargs.a" + "[0]" * 60 + ": nested deeper than 64 levels"]


def test_numbers_too_large(tmp_path):
  lines = [_line("a", reward=10**400),                                   # valid JSON, no float
           _line("b").replace(b'"s"', b'"s", "reward": 1e400'),          # json.loads: inf
           _line("c", reward=1.0).replace(b"1.0", b"1" + b"0" * 4999),   # over int()'s limit
           _line("ok")]
  ids, problems, _, _ = _read(tmp_path, b"\n".join(lines) + b"\n")
  assert ids == ["ok"]
  assert problems == ["1: reward: expected a finite number, got an integer of about 401 digits",
                      "2: reward: number out of range (beyond a 64-bit float)",
                      "3: reward: integer of 5000 digits is too long"]
  rec = {**_adp(), "content": [{"class_": "text_observation", "content": "go", "source": "user",
                                "reward": 10**400}]}
  _, problems, _, _ = _read(tmp_path, json.dumps(rec).encode() + b"\n", "adp")
  assert problems == ["1: content[0].reward: expected a finite number, got an integer of about "
                      "401 digits"]


def test_exit_code_of_5000_digits(tmp_path):
  rec = _adp()
  rec["content"][2]["content"] = "[Command finished with exit code " + "1" * 5000 + "]"
  ids, problems, _, _ = _read(tmp_path, json.dumps(rec).encode() + b"\n", "adp")
  assert ids == ["x"] and problems == []
  samples, _ = reader.read_samples(str(tmp_path / "f.jsonl"), "adp")
  assert samples[0].turns[1].error          # non-zero, however long


def test_unprintable_field_names_are_escaped_in_every_message(tmp_path):
  path = tmp_path / "keys.jsonl"
  path.write_bytes(b"\n".join([
      _line("a").replace(b'"id"', b'"\\ud800": 1, "id"'),          # lone surrogate key
      _line("b").replace(b'"id"', b'"x\\nb: forged": 1, "id"'),    # a key that would forge a line
      _line("c").replace(b'"id"', b'"\\u001b[31mred": 1, "id"'),   # terminal escape
      _line("d\u202e"),                                            # right-to-left override in an id
      _line("e")]) + b"\n")
  proc = _check(f"--input={path}")
  assert proc.returncode == 1 and b"Traceback" not in proc.stderr, proc.stderr
  allowed = ("['id', 'kind', 'reward', 'schema_version', 'source', 'turns']")
  assert proc.stdout.decode().splitlines() == [
      f"{path}:1: \\ud800: invalid text: lone surrogate in a key",
      f"{path}:2: x\\nb: forged: unknown field; allowed: {allowed}",
      f"{path}:3: \\x1b[31mred: unknown field; allowed: {allowed}",
      f"{path}:4: id: unprintable character '\\u202e' at 1; a name must be one printable line",
      f"{path}: 5 records, 1 kept, 4 skipped (\\ud800: 1, \\x1b[31mred: 1, id: 1, x\\nb: forged: 1), "
      "0 blank lines"]


def test_a_file_name_that_is_not_utf8(tmp_path):
  path = os.path.join(os.fsencode(tmp_path), b"bad\xff.jsonl")
  with open(path, "wb") as f:
    f.write(_line("a") + b"\n")
  proc = _check(b"--input=" + path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.decode().endswith("bad\\udcff.jsonl: 1 records, 1 kept, 0 skipped, 0 blank lines\n")


def test_duplicate_keys_are_errors(tmp_path):
  dup_id = b'{"schema_version": "1.0", "kind": "env", "id": "a", "id": "b", "source": "s", ' \
           b'"turns": [{"role": "user", "content": "x"}]}'
  dup_turn = _line("c").replace(b'"role": "user"', b'"role": "user", "role": "assistant"')
  ids, problems, _, _ = _read(tmp_path, dup_id + b"\n" + dup_turn + b"\n" + _line("ok") + b"\n")
  assert ids == ["ok"] and problems == [
      "1: id: duplicate key in one object (JSON readers keep only the last value)",
      "2: turns[0].role: duplicate key in one object (JSON readers keep only the last value)"]
  dup_kwarg = json.dumps(_adp(path="a")).replace('"path": "a"', '"path": "a", "path": "b"')
  _, problems, _, _ = _read(tmp_path, dup_kwarg.encode(), "adp")
  assert problems == ["1: content[1].kwargs.path: duplicate key in one object (JSON readers keep "
                      "only the last value)"]


@pytest.mark.parametrize("data, name, message", [
    (b"", "f.jsonl", "FILE: no records: the file is empty"),
    (b"\n  \r\n", "f.jsonl", "FILE: no records: 2 blank lines only"),
    (b"[\n]\n", "f.json", "FILE: no records: the JSON array is empty"),
    (b"{}\n", "f.jsonl", "FILE: no records kept: the only record was skipped"),
    (b"1\n2\n", "f.jsonl", "FILE: no records kept: all 2 records were skipped"),
])
def test_empty_input_or_nothing_kept_is_an_error(tmp_path, data, name, message):
  _, _, fatal, _ = _read(tmp_path, data, name=name)
  assert fatal == message
  # under on_bad_record="raise" too: the first bad record, else the file itself
  with pytest.raises(reader.FileError if "kept" not in message else RecordError):
    reader.read_samples(str(tmp_path / name))
  proc = _check(f"--input={tmp_path / name}")
  assert proc.returncode == 1 and b"Traceback" not in proc.stderr
  assert proc.stdout.decode().splitlines()[-2] == message.replace("FILE", str(tmp_path / name))


def test_issue_cases_through_check_data(tmp_path):
  """The inputs that printed tracebacks (or passed) before: one line each, exit status 1."""
  files = {
      "deep.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n",
      "reward.jsonl": _line("a", reward=10**400) + b"\n",
      "key.jsonl": _line("a").replace(b'"id"', b'"\\ud800": 1, "id"') + b"\n",
      "dup.jsonl": _line("a").replace(b'"id": "a"', b'"id": "a", "id": "b"') + b"\n",
      "empty.jsonl": b"",
  }
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  proc = _check(*[f"--input={tmp_path / n}" for n in files])
  assert proc.returncode == 1 and proc.stderr == b"", proc.stderr
  lines = proc.stdout.decode().replace(f"{tmp_path}/", "").splitlines()
  assert [ln for ln in lines if ": " in ln and not re.search(r": \d+ records, ", ln)] == [
      "deep.jsonl:1: <json>: invalid JSON: nested too deeply to decode",
      "deep.jsonl: no records kept: the only record was skipped",
      "reward.jsonl:1: reward: expected a finite number, got an integer of about 401 digits",
      "reward.jsonl: no records kept: the only record was skipped",
      "key.jsonl:1: \\ud800: invalid text: lone surrogate in a key",
      "key.jsonl: no records kept: the only record was skipped",
      "dup.jsonl:1: id: duplicate key in one object (JSON readers keep only the last value)",
      "dup.jsonl: no records kept: the only record was skipped",
      "empty.jsonl: no records: the file is empty"]
  assert lines[-1] == ("total: 4 records, 0 kept, 4 skipped (<json>: 1, \\ud800: 1, id: 1, reward: 1), "
                       "0 blank lines")
  # ADP: a 5,000-digit exit code imports; the JSON-array layout ADP publishes (1.5.0) imports
  rec = _adp()
  rec["content"][2]["content"] = "exit code " + "1" * 5000
  (tmp_path / "exit.jsonl").write_text(json.dumps(rec) + "\n")
  array = os.path.join(DATA, "adp_array.json")
  proc = _check(f"--input={tmp_path / 'exit.jsonl'}", f"--input={array}", "--format=adp")
  assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
  assert proc.stdout.decode().splitlines()[1:] == [
      f"{array}: 3 records, 3 kept, 0 skipped, JSON array",
      "total: 4 records, 4 kept, 0 skipped, 0 blank lines"]


# ------------------------------------------------------------------ an adversarial round

GOOD, B = _line, b"\n".join
CASES = {  # name: (file bytes, kept ids, problems as regexes without the file prefix)
    "bom at the start": (b"\xef\xbb\xbf" + B([GOOD("a"), GOOD("b")]), ["a", "b"], []),
    "bom in the middle": (B([GOOD("a"), b"\xef\xbb\xbf" + GOOD("b")]), ["a"], [
        r"2: <json>: byte-order mark in the middle of the file \(concatenated files\?\)"]),
    "crlf": (B([GOOD("a") + b"\r", GOOD("b") + b"\r", b""]), ["a", "b"], []),
    "cr only": (GOOD("a") + b"\r" + GOOD("b") + b"\r", [], [
        rf"1: <json>: invalid JSON: Extra data at column {len(GOOD('a')) + 2}; the last line has no "
        r"newline \(truncated file\?\)"]),
    "nan infinity": (B([GOOD("a", reward=float("nan")), GOOD("b", reward=float("inf")),
                        GOOD("c", reward=float("-inf")), GOOD("d")]), ["d"], [
        r"1: reward: NaN is not valid JSON \(a non-standard constant\)",
        r"2: reward: Infinity is not valid JSON \(a non-standard constant\)",
        r"3: reward: -Infinity is not valid JSON \(a non-standard constant\)"]),
    "invalid utf-8 in the middle": (B([GOOD("a"), GOOD("b").replace(b"hi", b"h\xc3("), GOOD("c")]),
                                    ["a", "c"], [r"2: <utf-8>: invalid UTF-8 at byte column "
                                                 rf"{GOOD('b').index(b'hi') + 2}"]),
    "trailing comma": (B([GOOD("a")[:-1] + b",}", GOOD("b")]), ["b"], [
        rf"1: <json>: invalid JSON: .+ at column {len(GOOD('a')) + 1}"]),
    "truncated last line": (B([GOOD("a"), GOOD("b")[:-12]]), ["a"], [
        r"2: <json>: invalid JSON: Unterminated string starting at column \d+; the last line has no "
        r"newline \(truncated file\?\)"]),
    "top-level scalars": (B([GOOD("a"), b"5", b'"x"', b"true", b"null", b"[]"]), ["a"], [
        r"2: <record>: expected a JSON object, got number 5",
        r"3: <record>: expected a JSON object, got string 'x'",
        r"4: <record>: expected a JSON object, got true",
        r"5: <record>: expected a JSON object, got null",
        r"6: <record>: expected a JSON object, got an array of 0 items"]),
    "null where an object is expected": (B([
        json.dumps({**_rec("a"), "turns": [None]}).encode(),
        json.dumps({**_rec("b"), "kind": "context", "spans": None, "turns": "<del>"}).replace(
            ', "turns": "<del>"', "").encode(),
        json.dumps({**_rec("c"), "schema_version": None}).encode(), GOOD("d")]), ["d"], [
        r"1: turns\[0\]: expected an object, got null",
        r"2: spans: expected an array, got null",
        r"3: schema_version: expected a string, got null"]),
    "control characters": (B([
        GOOD("a").replace(b"hi", b"h\x01i"),                       # raw: invalid JSON
        GOOD("b").replace(b"hi", b"h\\u0000i\\u001b[0m"),          # escaped: text, kept
        GOOD("c\u0007"), GOOD("d").replace(b'"s"', b'"s\\t"'),
        GOOD("e").replace(b'"role": "user"', b'"role": "tool_call", "name": "bash\\nrm -rf /"')]),
        ["b"], [
        r"1: <json>: invalid JSON: Invalid control character at column \d+",
        r"3: id: unprintable character '\\x07' at 1; a name must be one printable line",
        r"4: source: unprintable character '\\t' at 1; a name must be one printable line",
        r"5: turns\[0\]\.name: unprintable character '\\n' at 4; a name must be one printable line"]),
    "first line is an array, then JSON Lines": (B([b"[1, 2]", GOOD("a")]), ["a"], [
        r"1: <record>: expected a JSON object, got an array of 2 items"]),
    "wrong types": (B([
        json.dumps({**_rec("a"), "id": 7}).encode(),
        json.dumps({**_rec("b"), "reward": "1.0"}).encode(),
        json.dumps({**_rec("c"), "turns": [{"role": "user", "content": ["hi"]}]}).encode(),
        json.dumps({**_rec("d"), "turns": [{"role": "user", "content": "x", "error": "no"}]}).encode(),
        json.dumps({**_rec("e"), "kind": ["env"]}).encode(), GOOD("f")]), ["f"], [
        r"1: id: expected a string, got number 7",
        r"2: reward: expected a number or null, got string '1.0'",
        r"3: turns\[0\]\.content: expected a string, got an array of 1 item",
        r"4: turns\[0\]\.error: expected true/false, got string 'no'",
        r"5: kind: expected one of \['context', 'env'\], got an array of 1 item"]),
}


@pytest.mark.parametrize("name", CASES)
def test_adversarial_jsonl(tmp_path, name):
  data, kept, expected = CASES[name]
  ids, problems, fatal, _ = _read(tmp_path, data)
  assert ids == kept
  assert len(problems) == len(expected), problems
  for got, pattern in zip(problems, expected):
    assert re.fullmatch(pattern, got), (got, pattern)
  assert fatal is None or (not kept and fatal.startswith("FILE: no records kept"))


def test_bom_is_noted(tmp_path):
  _, _, _, report = _read(tmp_path, CASES["bom at the start"][0])
  assert report.notes == {"UTF-8 byte-order mark at the start of the file ignored": 1}
  ids, _, _, report = _read(tmp_path, b"\xef\xbb\xbf[" + GOOD("a") + b"]", name="f.json")
  assert ids == ["a"] and report.layout == "json-array"
  assert report.notes == {"UTF-8 byte-order mark at the start of the file ignored": 1}


def test_huge_lines(tmp_path):
  big = GOOD("b").replace(b"hi", b"x" * 5000)
  ids, problems, _, _ = _read(tmp_path, B([GOOD("a"), big, GOOD("c")]) + b"\n", max_record_bytes=1000)
  assert ids == ["a", "c"]
  assert problems == [f"2: <record>: line of {len(big) + 1} bytes is over the limit of 1000 "
                      "(max_record_bytes)"]
  ids, _, _, _ = _read(tmp_path, GOOD("d").replace(b"hi", b"y" * (4 << 20)) + b"\n")
  assert ids == ["d"]                                      # 4 MiB: well under the default


def test_utf16_file(tmp_path):
  _, _, fatal, _ = _read(tmp_path, (GOOD("a").decode() + "\n").encode("utf-16"))
  assert fatal == ("FILE: the file is UTF-16-encoded (it starts with a UTF-16 byte-order mark); "
                   "expected UTF-8")


ARRAY_CASES = {  # JSON-array files: (bytes, kept ids, problems, whole-file error)
    "records that are not objects": (b"[\n  " + GOOD("a") + b",\n  7,\n  null,\n  " + GOOD("b")
                                     + b"\n]\n", ["a", "b"], [
        "3: <record>: expected a JSON object, got number 7",
        "4: <record>: expected a JSON object, got null"], None),
    "NaN and a duplicate key go on to the next record": (
        b"[" + GOOD("a", reward=float("nan")) + b",\n" + GOOD("b").replace(b'"s"', b'"s", "id": "c"')
        + b",\n" + GOOD("d") + b"]", ["d"], [
            "1: reward: NaN is not valid JSON (a non-standard constant)",
            "2: id: duplicate key in one object (JSON readers keep only the last value)"], None),
    "trailing comma": (b"[\n" + GOOD("a") + b",\n]\n", ["a"], [],
                       "FILE:3: <json>: invalid JSON array: trailing comma before ']' at column 1; "
                       "reading stopped (the records after it cannot be located)"),
    "truncated": (b"[\n" + GOOD("a") + b",\n" + GOOD("b")[:30], ["a"], [],
                  "FILE:3: <json>: invalid JSON array: the file ends inside a record (truncated?) at "
                  "column 27; reading stopped (the records after it cannot be located)"),
    "no closing bracket": (b"[\n" + GOOD("a") + b"\n", ["a"], [],
                           "FILE:3: <json>: invalid JSON array: the file ends before the closing ']' "
                           "(truncated?) at column 1; reading stopped (the records after it cannot be "
                           "located)"),
    "extra data after the array": (b"[\n" + GOOD("a") + b"\n]\n]\n", ["a"], [],
                                   "FILE:4: <json>: invalid JSON array: extra data after the closing "
                                   "']' at column 1; reading stopped (the records after it cannot be "
                                   "located)"),
    "invalid utf-8": (b"[\n" + GOOD("a") + b",\n" + GOOD("b").replace(b"hi", b"\xff") + b"\n]", [], [],
                      f"FILE:3: <utf-8>: invalid UTF-8 at byte column {GOOD('b').index(b'hi') + 1}; "
                      "a JSON array cannot be read past it"),
    "a syntax error inside a record": (b"[\n" + GOOD("a") + b",\n" + GOOD("b").replace(b":", b"=", 1)
                                       + b"\n]", ["a"], [],
                                       "FILE:3: <json>: invalid JSON array: Expecting ':' delimiter at "
                                       f"column {GOOD('b').index(b':') + 1}; reading stopped (the "
                                       "records after it cannot be located)"),
}


@pytest.mark.parametrize("name", ARRAY_CASES)
def test_adversarial_json_array(tmp_path, name):
  data, kept, expected, fatal_expected = ARRAY_CASES[name]
  ids, problems, fatal, report = _read(tmp_path, data, name="f.json")
  assert report.layout == "json-array"
  assert problems == expected and fatal == fatal_expected
  if fatal is None:
    assert ids == kept
  else:  # the records read before the error were validated and counted
    assert report.kept == len(kept)


def test_array_over_the_size_limit(tmp_path):
  _, _, fatal, _ = _read(tmp_path, b"[" + GOOD("a") + b"]", name="f.json", max_array_bytes=50)
  assert fatal == ("FILE: a JSON-array file over 50 bytes (max_array_bytes); write it as JSON Lines, "
                   "one record per line")


# ------------------------------------------------------------------ wrong types in every field

WRONG = [None, True, False, 0, -1, 2.5, 10**400, "", "x\n", "\ud800", [], [None], {}, {"k": None}]


def _paths(value, path=()):
  yield path
  children = value.items() if isinstance(value, dict) else (
      enumerate(value) if isinstance(value, list) else ())
  for k, v in children:
    yield from _paths(v, path + (k,))


def _mutants(record):
  """The record with each value (and each object key's presence) replaced in turn."""
  for path in _paths(record):
    if not path:
      continue
    for value in WRONG + ["<delete>"]:
      rec = copy.deepcopy(record)
      parent = rec
      for k in path[:-1]:
        parent = parent[k]
      if value == "<delete>":
        if not isinstance(parent, dict):
          continue
        del parent[path[-1]]
      else:
        parent[path[-1]] = value
      yield rec


def _bases():
  with open(os.path.join(DATA, "native_good.jsonl")) as f:
    native = [("native", json.loads(ln)) for ln in f]
  with open(os.path.join(DATA, "adp_versions.jsonl")) as f:
    versions = [("adp", json.loads(ln)) for ln in f]
  with open(os.path.join(DATA, "adp_good.jsonl")) as f:
    good = [("adp", json.loads(ln)) for ln in f]
  return native + versions + good


def test_wrong_types_in_every_field_only_ever_raise_record_error(tmp_path):
  tok = tk.ByteTokenizer()
  counts = {"accepted": 0, "rejected": 0}
  for fmt, base in _bases():
    parse = parse_record if fmt == "native" else adp.parse_adp_record
    lines = []
    for rec in _mutants(base):
      try:
        sample = parse(rec)
      except RecordError as e:
        assert str(e).isprintable()
        counts["rejected"] += 1
      else:
        counts["accepted"] += 1
        rd.render(sample, tok, "error_masked")             # what was accepted can be trained on
      lines.append(json.dumps(rec))                        # \ud800 is written as an escape
    path = tmp_path / "mutants.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:                                                   # and through the whole reader
      _, report = reader.read_samples(str(path), fmt, on_bad_record="skip", max_problems=None)
    except reader.FileError as e:
      report = e.report
    assert report.records == len(lines) == report.kept + report.skipped
  assert counts["rejected"] > 1000 and counts["accepted"] > 100, counts
