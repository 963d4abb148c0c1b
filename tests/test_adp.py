"""ADP 1.0.0-1.5.0 import: conversion of good trajectories (one per version, and the JSON-array
layout ADP publishes), exact errors for bad ones, the per-version rules, the error rule."""

import collections
import json
import os

import pytest

from agentic_jax.data import adp
from agentic_jax.data import render as rd
from agentic_jax.data import tokenizer as tk
from agentic_jax.data.schema import EnvSample, RecordError, Turn

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GOOD = os.path.join(DATA, "adp_good.jsonl")
BAD = os.path.join(DATA, "adp_bad.jsonl")


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _convert(k):
  notes = collections.Counter()
  sample = adp.parse_adp_record(_lines(GOOD)[k], file="g.jsonl", line=k + 1, notes=notes)
  return sample, notes


def test_v12_with_tool_call_ids():
  sample, notes = _convert(0)
  assert sample == EnvSample("adp-1", "toy_adp", (
      Turn("user", "Count files in /tmp"),
      Turn("assistant", "<|think|>Use ls.<|end_think|>I will count."),
      Turn("tool_call", "ls /tmp | wc -l", "execute_bash"),
      Turn("observation", "3\n[Command finished with exit code 0]", "execute_bash"),
      Turn("tool_call", '{"path": "/tmp/x", "lines": [1, 2]}', "read_file", error=True),
      Turn("observation", 'Traceback (most recent call last):\n  File "x", line 1\nFileNotFoundError: x',
           "read_file"),
      Turn("assistant", "Done.\n\n<finish>3 files</finish>"),
  ), reward=1.0)
  assert notes == {}


def test_v10_links_by_adjacency_and_last_reward():
  sample, notes = _convert(1)
  assert sample == EnvSample("adp-2", "adp", (
      Turn("user", "Print x"),
      Turn("tool_call", "print(x)", "execute_ipython_cell", error=True),
      Turn("observation", "NameError: name 'x' is not defined", "execute_ipython_cell"),
      Turn("assistant", "x is undefined; retrying"),
      Turn("assistant", "Define it first."),
      Turn("tool_call", "x = 1\nprint(x)", "execute_ipython_cell"),
      Turn("observation", "1", "execute_ipython_cell"),
      Turn("assistant", "It prints 1."),
  ), reward=1.0)  # rewards 0.0 then 1.0 then null: the last non-null one
  assert notes == {}


def test_v11_web_and_image_observations():
  sample, notes = _convert(2)
  assert sample == EnvSample("adp-web", "adp", (
      Turn("user", "Find the price", "alice"),
      Turn("tool_call", '{"url": "https://shop.example"}', "goto"),
      Turn("observation", "URL: https://shop.example\n[1] link 'Buy'\nBuy (button)", "goto"),
      Turn("assistant", "$5"),
  ), reward=None)
  assert notes == {"web_observation: html not used (axtree kept)": 1,
                   "image_observation: image pixels not represented": 2,
                   "image_observation: no text to represent (item dropped)": 1}


def test_missing_version_is_counted_and_source_override():
  notes = collections.Counter()
  sample = adp.parse_adp_record(_lines(GOOD)[3], source="mine", notes=notes)
  assert sample == EnvSample("adp-noversion", "mine", (
      Turn("user", "hello"), Turn("assistant", "<|think|>greet back<|end_think|>hi")))
  assert notes == {"schema_version missing (read as 1.5.0)": 1}


BAD_EXPECTED = [
    "content[1].class_: unknown class 'ApiAction'; expected one of ['api_action', 'code_action', "
    "'message_action', 'text_observation', 'image_observation', 'web_observation']",
    "schema_version: unsupported ADP version '2.0.0'; supported: ['1.0.0', '1.1.0', '1.2.0', "
    "'1.3.0', '1.4.0', '1.5.0']",
    "content[0].thoughts: unknown field; allowed: ['class_', 'content', 'description', "
    "'reasoning_content', 'reward', 'tool_call_id']",
    "content[0].source: expected one of ['user', 'agent', 'environment'], got 'user_msg'",
    "content[2].tool_call_id: 'c9' does not match any preceding action's tool_call_id",
    "content[1].kwargs: expected an object, got an array of 2 items",
    "content[0].annotations[0].bounding_box.x: missing; expected a number",
    "content: expected at least one action or observation",
    "content[1].class_: missing; expected one of ['api_action', 'code_action', 'message_action', "
    "'text_observation', 'image_observation', 'web_observation']",
    "content[1].reward: expected a number or null, got true",
]


@pytest.mark.parametrize("k", range(len(BAD_EXPECTED)))
def test_bad_records_exact_messages(k):
  with pytest.raises(RecordError) as e:
    adp.parse_adp_record(_lines(BAD)[k], file="bad.jsonl", line=k + 1)
  assert str(e.value) == f"bad.jsonl:{k + 1}: {BAD_EXPECTED[k]}"
  assert (e.value.file, e.value.line) == ("bad.jsonl", k + 1)


def _call(call_id, **kw):
  return {"class_": "api_action", "function": "f", "kwargs": {}, "tool_call_id": call_id, **kw}


def _obs(call_id, text="ok"):
  return {"class_": "text_observation", "content": text, "source": "environment",
          "tool_call_id": call_id}


@pytest.mark.parametrize("content, message", [
    ([_call("a"), _obs("a"), _call("a")],
     "content[2].tool_call_id: duplicate tool_call_id 'a' (also content[0])"),
    ([_call("a"), _obs("a"), _obs("a")],
     "content[2].tool_call_id: second observation for 'a' (first: content[1])"),
    ([{"class_": "message_action", "content": "hi", "tool_call_id": "a"}],
     "content[0].tool_call_id: a message_action is not a tool call and cannot have a tool_call_id"),
    ([{"class_": "text_observation", "content": "x\ud800", "source": "user"}],
     "content[0].content: invalid text: lone surrogate at character 1"),
    ([_call("a", reward=float("nan")), _obs("a")],
     "content[0].reward: expected a finite number, got number nan"),
    ([_call("a", reward=10**400), _obs("a")],
     "content[0].reward: expected a finite number, got an integer of about 401 digits"),
    ([_call("a"), _obs("a"), _call("b")], "content[2].tool_call_id: 'b' has no observation with "
     "the same tool_call_id"),
    ([{"class_": "api_action", "function": "run\nfake", "kwargs": {}}],
     "content[0].function: unprintable character '\\n' at 3; a name must be one printable line"),
    ([{"class_": "code_action", "language": "", "content": "x"}],
     "content[0].language: expected a non-empty string"),
    ([{"class_": "image_observation", "content": "a.png", "source": "environment"}],
     "content: no representable text in any item (images only?)"),
    ([{"class_": "web_observation", "viewport_size": [1, 2, 3]}],
     "content[0].viewport_size: expected [width, height] integers or null, got an array of 3 items"),
    ([{"class_": "web_observation", "image_observation": {"content": "a.png", "source": "robot"}}],
     "content[0].image_observation.source: expected one of ['user', 'agent', 'environment'], "
     "got 'robot'"),
])
def test_more_bad_records(content, message):
  with pytest.raises(RecordError) as e:
    adp.parse_adp_record({"schema_version": "1.1.0", "id": "x", "content": content})
  assert str(e.value) == f"<memory>:0: {message}"


def test_top_level_fields():
  base = {"id": "x", "content": [{"class_": "message_action", "content": "hi"}]}
  with pytest.raises(RecordError, match=r"^<memory>:0: extra: unknown field in ADP 1.5.0; allowed: "
                     r"\['available_code_languages', 'available_custom_tools', 'content', 'details'"):
    adp.parse_adp_record({**base, "extra": 1})
  with pytest.raises(RecordError, match=r"available_code_languages\[1\]: expected a string, got number 3"):
    adp.parse_adp_record({**base, "available_code_languages": ["python", 3]})
  with pytest.raises(RecordError, match="<record>: expected a JSON object, got an array of 1 item"):
    adp.parse_adp_record([base])


@pytest.mark.parametrize("text, failed", [
    ("3\n[Command finished with exit code 0]", False),
    ("[Command finished with exit code 1]", True),
    ("make: done\nProcess exited with exit status 2", True),
    ("exit_code=127", True),
    ("x\nTraceback (most recent call last):\n  File ...", True),
    ("the text 'Traceback (most recent call last):' quoted mid-line", False),
    ("\n  ModuleNotFoundError: No module named 'y'", True),
    ("requests.exceptions.HTTPError: 404", True),
    ("error: pathspec 'x' did not match", True),
    ("ERROR: could not install", True),
    ("Errors: none", False),
    ("All tests passed\nValueError: only the first line counts", False),
    ("", False),
    ("[exit code " + "7" * 5000 + "]", True),     # over Python's 4,300-digit int() limit
    ("exit code " + "0" * 5000, False),
    ("exit status -0", False),
])
def test_observation_failed_rule(text, failed):
  assert adp.observation_failed(text) is failed


def test_code_tool_names():
  assert [adp.code_tool_name(x) for x in ("python", "Python3", "bash", "sh", "sql")] == [
      "execute_ipython_cell", "execute_ipython_cell", "execute_bash", "execute_bash", "execute_sql"]


def test_imported_sample_renders_with_think_tokens():
  sample, _ = _convert(0)
  r = rd.render(sample, tk.ByteTokenizer(), "error_masked")
  ids = r.tokens.tolist()
  assert ids.count(14) == 1 and ids.count(15) == 1   # <|think|>, <|end_think|> from reasoning_content
  # the failed read_file call (turn 4) and ... no assistant turn right before it (an observation is)
  call = [i for i, k in enumerate(r.mask_kind.tolist()) if k == 7]
  weights = r.loss_weights.tolist()
  first_call = [i for i in call if i < ids.index(8)]           # execute_bash call: trained
  failed_call = [i for i in call if i > ids.index(8)]          # read_file call: masked
  assert all(weights[i] == 1.0 for i in first_call) and all(weights[i] == 0.0 for i in failed_call)


# ------------------------------------------------------------------ versions 1.0.0 - 1.5.0

VERSIONS = os.path.join(DATA, "adp_versions.jsonl")   # one record per supported version
ARRAY = os.path.join(DATA, "adp_array.json")          # 1.5.0 records as ADP publishes them

BY_VERSION = {
    "1.0.0": EnvSample("v100", "toy_v100", (          # adjacency links; available_apis
        Turn("user", "What is 6 * 7? Then look up the answer."),
        Turn("assistant", "Compute it."),
        Turn("tool_call", "print(6 * 7)", "execute_ipython_cell"),
        Turn("observation", "42", "execute_ipython_cell"),
        Turn("tool_call", '{"query": "42 meaning"}', "search", error=True),
        Turn("observation", "ERROR: rate limited", "search"),
        Turn("assistant", "6 * 7 = 42; the search failed."))),
    "1.1.0": EnvSample("v110", "adp", (               # rewards on actions: the last one counts
        Turn("user", "List the repo.", "bob"),
        Turn("tool_call", "ls", "execute_bash"),
        Turn("observation", "README.md\nsrc", "execute_bash"),
        Turn("assistant", "Two entries.")), reward=0.5),
    "1.2.0": EnvSample("v120", "adp", (               # one linked pair, one adjacent pair
        Turn("user", "Check the tests."),
        Turn("tool_call", "pytest -q", "execute_bash", error=True),
        Turn("observation", "1 failed\n[exit code 1]", "execute_bash"),
        Turn("tool_call", "cat setup.cfg", "execute_bash"),
        Turn("observation", "[tool:pytest]", "execute_bash"),
        Turn("assistant", "One test fails."))),
    "1.3.0": EnvSample("v130", "adp", (               # parallel calls answered out of order
        Turn("user", "Weather in Oslo and Lima?"),
        Turn("tool_call", '{"city": "Oslo"}', "get_weather"),
        Turn("tool_call", '{"city": "Lima"}', "get_weather"),
        Turn("observation", "Lima: 24C", "get_weather"),
        Turn("observation", "Oslo: -3C", "get_weather"),
        Turn("assistant", "Oslo -3C, Lima 24C.")), reward=1.0),
    "1.4.0": EnvSample("v140", "adp", (               # available_code_languages
        Turn("user", "Count lines of a.py in two ways."),
        Turn("tool_call", "wc -l a.py", "execute_bash"),
        Turn("observation", "12 a.py", "execute_bash"),
        Turn("assistant", "<|think|>Cross-check.<|end_think|>"),
        Turn("tool_call", "print(len(open('a.py').readlines()))", "execute_ipython_cell"),
        Turn("observation", "12", "execute_ipython_cell"),
        Turn("assistant", "12 lines."))),
    "1.5.0": EnvSample("v150", "adp", (               # available_custom_tools, daVinci-Dev's shape
        Turn("user", "Fix the typo 'recieve' in docs/intro.md."),
        Turn("assistant", "<|think|>Find it first.<|end_think|>I'll locate the typo."),
        Turn("tool_call", "grep -n recieve docs/intro.md", "execute_bash"),
        Turn("observation", "3:You will recieve a token.", "execute_bash"),
        Turn("assistant", "Replace it."),
        Turn("tool_call", '{"command": "str_replace", "path": "docs/intro.md", "old_str": "recieve", '
             '"new_str": "receive"}', "str_replace_editor"),
        Turn("observation", "The file docs/intro.md has been edited.", "str_replace_editor"),
        Turn("assistant", "<finish> Fixed. </finish>"))),
}


def _by_version():
  return {r["schema_version"]: r for r in _lines(VERSIONS)}


def test_fixture_has_a_record_per_supported_version():
  assert sorted(_by_version()) == sorted(BY_VERSION) == list(adp.ADP_VERSIONS)
  assert adp.ADP_DEFAULT_VERSION == adp.ADP_VERSIONS[-1] == "1.5.0"


@pytest.mark.parametrize("version", adp.ADP_VERSIONS)
def test_a_record_of_each_version(version):
  notes = collections.Counter()
  assert adp.parse_adp_record(_by_version()[version], notes=notes) == BY_VERSION[version]
  assert notes == {}


@pytest.mark.parametrize("version", adp.ADP_VERSIONS)
def test_from_1_3_an_observed_tool_action_needs_a_tool_call_id(version):
  rec = {k: v for k, v in _by_version()["1.2.0"].items() if k != "available_apis"}
  rec["schema_version"] = version
  if version < "1.3.0":
    assert adp.parse_adp_record(rec).turns == BY_VERSION["1.2.0"].turns
  else:
    with pytest.raises(RecordError) as e:
      adp.parse_adp_record(rec)
    assert str(e.value) == (
        "<memory>:0: content[3].tool_call_id: missing; a tool action followed by its observation "
        f"needs one from ADP 1.3.0 on (this record: {version}; older versions linked by adjacency)")


@pytest.mark.parametrize("version", adp.ADP_VERSIONS)
def test_available_apis_renamed_in_1_5(version):
  rec = {**_by_version()["1.4.0"], "schema_version": version}
  if version < "1.5.0":
    assert adp.parse_adp_record(rec).turns == BY_VERSION["1.4.0"].turns
  else:
    with pytest.raises(RecordError, match=r"^<memory>:0: available_apis: renamed "
                       r"available_custom_tools in ADP 1\.5\.0 \(this record: 1\.5\.0\)$"):
      adp.parse_adp_record(rec)


def test_newer_fields_under_an_older_version_are_read_as_adp_does():
  # ADP's current model takes available_custom_tools / available_code_languages whatever the
  # version: daVinci-Dev's 1.5.0 samples relabelled 1.2.0 still import
  rec = {**_by_version()["1.5.0"], "schema_version": "1.2.0"}
  assert adp.parse_adp_record(rec).turns == BY_VERSION["1.5.0"].turns


@pytest.mark.parametrize("languages, message", [
    (["bash"], "lacks ['python'], used by code_action items"),
    (["bash", "python", "ruby"], "lists ['ruby'], used by no code_action item"),
    (["Bash", "python"], "lacks ['bash'], used by code_action items"),
])
def test_available_code_languages_must_match_exactly(languages, message):
  rec = {**_by_version()["1.4.0"], "available_code_languages": languages}
  with pytest.raises(RecordError) as e:
    adp.parse_adp_record(rec)
  assert str(e.value) == (f"<memory>:0: available_code_languages: {message} (it must list exactly "
                          "the languages used)")


def test_json_array_file_as_adp_publishes():
  from agentic_jax.data import reader  # pylint: disable=import-outside-toplevel
  samples, report = reader.read_samples(ARRAY, format="adp")
  assert [s.id for s in samples] == ["arr-0", "arr-1", "arr-2"]
  assert report.layout == "json-array" and report.summary() == (
      f"{ARRAY}: 3 records, 3 kept, 0 skipped, JSON array")
  assert samples[0] == EnvSample("arr-0", "adp", (
      Turn("user", "The CLI crashes with `import . as x` in pkg/cli.py. Please fix it."),
      Turn("assistant", "<|think|>Look at the file first.<|end_think|>I'll read the top of the file."),
      Turn("tool_call", "sed -n 1,5p pkg/cli.py", "execute_bash"),
      Turn("observation", "import . as x\nimport os\n", "execute_bash"),
      Turn("assistant", "A relative import needs from-syntax."),
      Turn("tool_call", '{"command": "str_replace", "path": "pkg/cli.py", "old_str": "import . as x",'
           ' "new_str": "from pkg import x"}', "str_replace_editor"),
      Turn("observation", "The file pkg/cli.py has been edited.", "str_replace_editor"),
      Turn("assistant", "<finish> Fixed the import. </finish>")))
  assert samples[1].turns[2] == Turn("tool_call", "pytest -q tests", "execute_bash", error=True)


def test_json_array_errors_name_the_line_where_the_record_starts(tmp_path):
  from agentic_jax.data import reader  # pylint: disable=import-outside-toplevel
  with open(ARRAY) as f:
    text = f.read()
  starts = [i + 1 for i, ln in enumerate(text.splitlines()) if ln == "  {"]
  assert starts == [2, 61, 100]
  records = json.loads(text)
  records[1]["id"] = "arr-0"                                   # duplicate id
  records[2]["content"][1]["class_"] = "MessageAction"         # ADP's README spelling
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(records, indent=2))
  samples, report = reader.read_samples(str(path), format="adp", on_bad_record="skip")
  assert [s.id for s in samples] == ["arr-0"]
  assert [str(p) for p in report.problems] == [
      f"{path}:61: id: duplicate id 'arr-0' (first on line 2)",
      f"{path}:100: content[1].class_: unknown class 'MessageAction'; expected one of "
      "['api_action', 'code_action', 'message_action', 'text_observation', 'image_observation', "
      "'web_observation']"]
