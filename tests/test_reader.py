"""JSONL reading: raise / skip with counts, blank lines, bad bytes, and the check_data CLI.

The issue-10 cases and the adversarial round are in test_reader_adversarial.py."""

import os
import subprocess
import sys

import pytest

from agentic_jax.data import reader
from agentic_jax.data.schema import ContextSample, EnvSample, RecordError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXED = "tests/data/native_mixed.jsonl"   # relative to REPO: the CLI prints paths as given
GOOD = "tests/data/native_good.jsonl"
ADP_GOOD = "tests/data/adp_good.jsonl"
ADP_BAD = "tests/data/adp_bad.jsonl"

# Problems in native_mixed.jsonl, by hand from its lines (2 and 7 are blank, 1 and 6 are good).
MIXED_PROBLEMS = [
    f"{MIXED}:3: <json>: invalid JSON: Expecting property name enclosed in double quotes at column 41",
    f"{MIXED}:4: turns[1].role: expected one of ['system', 'user', 'assistant', 'tool_call', "
    "'observation'], got 'robot'",
    f"{MIXED}:5: turns[0].name: a tool_call turn needs the tool name",
    f"{MIXED}:8: id: duplicate id 'e1' (first on line 1)",
    f"{MIXED}:9: reward: NaN is not valid JSON (a non-standard constant)",
    f"{MIXED}:10: <record>: expected a JSON object, got an array of 2 items",
    f"{MIXED}:11: schema_version: unsupported version '2.0'; supported: ['1.0']",
]
MIXED_SUMMARY = (f"{MIXED}: 9 records, 2 kept, 7 skipped (<json>: 1, <record>: 1, id: 1, "
                 "reward: 1, schema_version: 1, turns[*].name: 1, turns[*].role: 1), 2 blank lines")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


def test_good_native_file():
  samples, report = reader.read_samples(GOOD)
  assert [type(s) for s in samples] == [EnvSample, ContextSample]
  assert [s.id for s in samples] == ["env-1", "ctx-1"]
  assert samples[0].turns[3].name == "calc" and samples[0].reward == 1.0
  assert samples[1].spans[1].text == "def f(x):\n\treturn 1 / x\n"
  assert (report.lines, report.blank, report.records, report.kept, report.skipped) == (2, 0, 2, 2, 0)
  assert report.summary() == f"{GOOD}: 2 records, 2 kept, 0 skipped, 0 blank lines"


def test_raise_stops_at_the_first_bad_record():
  with pytest.raises(RecordError) as e:
    reader.read_samples(MIXED, on_bad_record="raise")
  assert str(e.value) == MIXED_PROBLEMS[0]
  assert (e.value.line, e.value.field) == (3, "<json>")


def test_skip_counts_every_bad_record():
  samples, report = reader.read_samples(MIXED, on_bad_record="skip")
  assert [s.id for s in samples] == ["e1", "c1"]
  assert [str(p) for p in report.problems] == MIXED_PROBLEMS
  assert (report.lines, report.blank, report.records, report.kept, report.skipped) == (11, 2, 9, 2, 7)
  assert report.summary() == MIXED_SUMMARY


def test_max_problems_caps_the_list_not_the_counts():
  _, report = reader.read_samples(MIXED, on_bad_record="skip", max_problems=2)
  assert [str(p) for p in report.problems] == MIXED_PROBLEMS[:2]
  assert report.skipped == 7 and sum(report.skipped_by_field.values()) == 7


def test_adp_files():
  samples, report = reader.read_samples(ADP_GOOD, format="adp", source="adp_toy")
  assert [s.id for s in samples] == ["adp-1", "adp-2", "adp-web", "adp-noversion"]
  assert {s.source for s in samples} == {"adp_toy"}
  assert report.notes == {"schema_version missing (read as 1.5.0)": 1,
                          "web_observation: html not used (axtree kept)": 1,
                          "image_observation: image pixels not represented": 2,
                          "image_observation: no text to represent (item dropped)": 1}
  with pytest.raises(reader.FileError) as e:  # nothing kept: an error even under "skip"
    reader.read_samples(ADP_BAD, format="adp", on_bad_record="skip")
  assert str(e.value) == f"{ADP_BAD}: no records kept: all 10 records were skipped"
  bad = e.value.report
  assert (bad.records, bad.kept, bad.skipped) == (10, 0, 10)
  assert [p.line for p in bad.problems] == list(range(1, 11))
  assert bad.skipped_by_field == {"content[*].class_": 2, "schema_version": 1,
                                  "content[*].thoughts": 1, "content[*].source": 1,
                                  "content[*].tool_call_id": 1, "content[*].kwargs": 1,
                                  "content[*].annotations[*].bounding_box.x": 1, "content": 1,
                                  "content[*].reward": 1}


def test_bytes_line_endings_and_last_line_without_newline(tmp_path):
  good = b'{"schema_version": "1.0", "kind": "env", "id": "%s", "source": "s", "turns": [{"role": "user", "content": "a\\r\\nb"}]}'
  path = tmp_path / "f.jsonl"
  path.write_bytes(good % b"a" + b"\r\n" + b"\r\n" + b'{"a": "\xff"}\n' + good % b"b")
  samples, report = reader.read_samples(str(path), on_bad_record="skip")
  assert [s.id for s in samples] == ["a", "b"]
  assert samples[0].turns[0].content == "a\r\nb"      # escaped CR LF inside the string is kept
  assert (report.lines, report.blank, report.kept) == (4, 1, 2)
  assert [str(p) for p in report.problems] == [f"{path}:3: <utf-8>: invalid UTF-8 at byte column 8"]


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown data format 'csv'"):
    reader.read_samples(GOOD, format="csv")
  with pytest.raises(ValueError, match="unknown on_bad_record 'ignore'"):
    reader.read_samples(GOOD, on_bad_record="ignore")
  with pytest.raises(ValueError, match="source= applies to ADP files only"):
    reader.read_samples(GOOD, source="x")


def _check(*args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "launch/check_data.py", *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=120)


def test_check_data_cli_bad_file():
  proc = _check(f"--input={MIXED}")
  assert proc.returncode == 1, proc.stderr
  assert proc.stdout.splitlines() == MIXED_PROBLEMS + [MIXED_SUMMARY]


def test_check_data_cli_good_files():
  proc = _check(f"--input={GOOD}")
  assert (proc.returncode, proc.stdout) == (0, f"{GOOD}: 2 records, 2 kept, 0 skipped, 0 blank lines\n")
  proc = _check(f"--input={ADP_GOOD}", "--format=adp")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.splitlines() == [
      f"{ADP_GOOD}: 4 records, 4 kept, 0 skipped, 0 blank lines; notes: image_observation: image "
      "pixels not represented x2, image_observation: no text to represent (item dropped) x1, "
      "schema_version missing (read as 1.5.0) x1, web_observation: html not used (axtree kept) x1"]


def test_check_data_cli_several_files_and_missing_file():
  proc = _check(f"--input={GOOD}", f"--input={MIXED}", "--input=tests/data/nope.jsonl")
  assert proc.returncode == 1
  assert proc.stdout.splitlines() == (
      [f"{GOOD}: 2 records, 2 kept, 0 skipped, 0 blank lines"] + MIXED_PROBLEMS + [MIXED_SUMMARY]
      + ["tests/data/nope.jsonl: cannot read: No such file or directory",
         "total: 11 records, 4 kept, 7 skipped (<json>: 1, <record>: 1, id: 1, reward: 1, "
         "schema_version: 1, turns[*].name: 1, turns[*].role: 1), 2 blank lines"])


def test_check_data_cli_usage_errors():
  assert _check().returncode != 0                                   # --input is required
  proc = _check(f"--input={GOOD}", "--format=csv")
  assert proc.returncode != 0 and "format" in proc.stderr


def test_schema_rejects_what_cannot_be_trained_on(tmp_path):
  # fixes in schema.py: lone surrogates (valid JSON escapes, but not encodable text) and
  # non-finite rewards are errors, not crashes later in the tokenizer / loss
  path = tmp_path / "s.jsonl"
  path.write_text('{"schema_version": "1.0", "kind": "env", "id": "s", "source": "s", '
                  '"turns": [{"role": "user", "content": "ok \\ud800"}]}\n')
  with pytest.raises(RecordError) as e:
    reader.read_samples(str(path))
  assert str(e.value) == f"{path}:1: turns[0].content: invalid text: lone surrogate at character 3"
  from agentic_jax.data.schema import parse_record
  rec = {"schema_version": "1.0", "kind": "env", "id": "s", "source": "s",
         "turns": [{"role": "user", "content": "x"}], "reward": float("inf")}
  with pytest.raises(RecordError, match=r"^<memory>:0: reward: expected a finite number, got number inf$"):
    parse_record(rec)
