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
