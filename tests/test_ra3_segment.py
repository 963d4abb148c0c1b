"""Segmentation of expert trajectories into primitive actions (agentic_jax/data/segment.py)."""

from __future__ import annotations

import pytest

from agentic_jax.data.schema import EnvSample, Turn
from agentic_jax.data.segment import segment

CODE = (
    "import os\n"
    "\n"
    "@dec\n"
    "def f(x,\n"
    "      y):\n"
    "    # add them\n"
    "    return (x +\n"
    "            y)\n"
    "if x: y\n"
    "else:\n"
    "    z = 1\n"
)


def texts(segs):
  return [s.text for s in segs]


def check_code_spans(source, segs):
  for i, s in enumerate(segs):
    assert s.unit == "char" and s.index == i
    assert source[s.start:s.end] == s.text
    assert s.context == source[:s.start]


def test_lines():
  segs, rep = segment(CODE, mode="lines")
  check_code_spans(CODE, segs)
  assert texts(segs) == [l + "\n" for l in CODE.split("\n")[:-1] if l.strip()]
  assert rep.dropped_empty == 1 and rep.num_actions == 10 and rep.num_segments == 10
  assert not rep.fell_back_to_lines


def test_blocks_statements_group_multiline_statements():
  segs, rep = segment(CODE, mode="blocks")
  check_code_spans(CODE, segs)
  assert texts(segs) == [
      "import os\n", "@dec\n", "def f(x,\n      y):\n", "    # add them\n",
      "    return (x +\n            y)\n", "if x: y\n", "else:\n", "    z = 1\n"]
  assert rep.dropped_empty == 1 and not rep.fell_back_to_lines


def test_blocks_compound_header_with_body():
  segs, rep = segment(CODE, mode="blocks", blocks="compound")
  check_code_spans(CODE, segs)
  assert texts(segs) == [
      "import os\n",
      "@dec\ndef f(x,\n      y):\n    # add them\n    return (x +\n            y)\n",
      "if x: y\nelse:\n    z = 1\n"]
  assert rep.dropped_empty == 1


def test_multiline_string_is_one_block():
  src = 's = """a\n\nb"""\nt = 2\n'
  segs, _ = segment(src, mode="blocks")
  assert texts(segs) == ['s = """a\n\nb"""\n', "t = 2\n"]


@pytest.mark.parametrize("mode", ["lines", "blocks"])
@pytest.mark.parametrize("blocks", ["statements", "compound"])
def test_empty_input(mode, blocks):
  segs, rep = segment("", mode=mode, blocks=blocks)
  assert segs == [] and rep.num_segments == 0 and rep.num_actions == 0
  assert rep.dropped_empty == 0 and not rep.fell_back_to_lines


def test_whitespace_only_input_counted():
  segs, rep = segment("\n   \n\t\n", mode="blocks")
  assert segs == [] and rep.dropped_empty == 3
  segs, rep = segment("\n   \n\t\n", mode="lines", drop_empty=False)
  assert texts(segs) == ["\n", "   \n", "\t\n"] and rep.kept_empty == 3 and rep.dropped_empty == 0


def test_blank_lines_kept_or_dropped():
  src = "a = 1\n\n\nb = 2"  # no trailing newline
  segs, rep = segment(src, mode="blocks")
  check_code_spans(src, segs)
  assert texts(segs) == ["a = 1\n", "b = 2"] and rep.dropped_empty == 2
  segs, rep = segment(src, mode="blocks", drop_empty=False)
  check_code_spans(src, segs)
  assert texts(segs) == ["a = 1\n", "\n", "\n", "b = 2"] and rep.kept_empty == 2
  assert rep.num_actions == 4


@pytest.mark.parametrize("mode", ["lines", "blocks"])
def test_one_action(mode):
  segs, rep = segment("print(1)", mode=mode)
  assert texts(segs) == ["print(1)"] and rep.num_actions == 1
  assert segs[0].context == "" and (segs[0].start, segs[0].end) == (0, 8)


def test_code_that_does_not_parse_falls_back_to_lines():
  src = "def f(:\n    x = [1,\n"
  segs, rep = segment(src, mode="blocks")
  check_code_spans(src, segs)
  assert texts(segs) == ["def f(:\n", "    x = [1,\n"]
  assert rep.fell_back_to_lines and "SyntaxError" in rep.fallback_reason
  segs, rep = segment("x = 1\ry = 2\n", mode="blocks")
  assert rep.fell_back_to_lines and texts(segs) == ["x = 1\ry = 2\n"]


def test_crlf_code_parses():
  src = "x = (1,\r\n     2)\r\ny = 3\r\n"
  segs, rep = segment(src, mode="blocks")
  assert not rep.fell_back_to_lines
  assert texts(segs) == ["x = (1,\r\n     2)\r\n", "y = 3\r\n"]


def test_very_long_action_split_at_line_boundaries():
  body = "".join(f"    v{i} = {i}\n" for i in range(10))  # 10 lines of 11 or 12 chars
  src = "def g():\n" + body
  segs, rep = segment(src, mode="blocks", blocks="compound", max_action_chars=30)
  check_code_spans(src, segs)
  assert rep.num_actions == 1 and rep.split_actions == 1 and rep.overlong_lines == 0
  assert all(len(s.text) <= 30 for s in segs)
  assert all(s.text.endswith("\n") for s in segs)  # cut at line ends only
  assert "".join(texts(segs)) == src
  assert [s.piece for s in segs] == list(range(len(segs))) and {s.pieces for s in segs} == {
      len(segs)}
  assert [s.text_offset for s in segs] == [s.start for s in segs]


def test_single_overlong_line_kept_whole_and_counted():
  src = "short = 1\n" + "x = '" + "a" * 50 + "'\n" + "y = 2\n"
  segs, rep = segment(src, mode="blocks", blocks="compound", max_action_chars=20)
  assert texts(segs) == ["short = 1\n", "x = '" + "a" * 50 + "'\n", "y = 2\n"]
  assert rep.overlong_lines == 1 and rep.split_actions == 0
  # one action of three lines, the middle one overlong: pieces around it
  src2 = "def h():\n    s = '" + "b" * 40 + "'\n    return s\n"
  segs, rep = segment(src2, mode="blocks", blocks="compound", max_action_chars=20)
  check_code_spans(src2, segs)
  assert texts(segs) == ["def h():\n", "    s = '" + "b" * 40 + "'\n", "    return s\n"]
  assert rep.overlong_lines == 1 and rep.split_actions == 1


def test_bad_options():
  with pytest.raises(ValueError):
    segment("x", mode="words")
  with pytest.raises(ValueError):
    segment("x", mode="blocks", blocks="functions")
  with pytest.raises(ValueError):
    segment("x", max_action_chars=0)
  with pytest.raises(TypeError):
    segment("x", mode="turns")
  with pytest.raises(TypeError):
    segment(EnvSample("i", "s", ()), mode="lines")


# ---- agent trajectories -----------------------------------------------------------------------

def sample(*turns):
  return EnvSample(id="t1", source="unit", turns=tuple(Turn(*t) for t in turns))


def test_turns_assistant_with_its_tool_call():
  s = sample(("system", "be brief"), ("user", "count files"),
             ("assistant", "I will list them."), ("tool_call", "ls | wc -l", "bash"),
             ("observation", "3", "bash"), ("assistant", "There are 3 files."))
  segs, rep = segment(s, mode="turns")
  assert texts(segs) == ["I will list them.\nls | wc -l", "There are 3 files."]
  assert [(g.start, g.end) for g in segs] == [(2, 4), (5, 6)]
  assert all(g.unit == "turn" for g in segs)
  assert segs[0].context == s.turns[:2] and segs[1].context == s.turns[:5]
  assert [t.role for t in segs[0].turns] == ["assistant", "tool_call"]
  assert rep.num_actions == 2 and rep.dropped_empty == 0


def test_turns_no_assistant_turn():
  s = sample(("system", "x"), ("user", "hello"), ("observation", "o", "bash"))
  segs, rep = segment(s, mode="turns")
  assert segs == [] and rep.num_actions == 0 and rep.dropped_empty == 0
  segs, rep = segment(EnvSample("e", "unit", ()), mode="turns")
  assert segs == [] and rep.num_segments == 0


def test_turns_lone_tool_call_and_empty_assistant():
  s = sample(("user", "go"), ("tool_call", "ls", "bash"), ("observation", "a", "bash"),
             ("assistant", "  \n"), ("user", "again"), ("assistant", ""),
             ("tool_call", "pwd", "bash"))
  segs, rep = segment(s, mode="turns")
  # the lone tool_call is an action; the whitespace-only assistant turn is dropped and counted;
  # an empty assistant turn followed by a tool call is not empty
  assert texts(segs) == ["ls", "\npwd"]
  assert [(g.start, g.end) for g in segs] == [(1, 2), (5, 7)]
  assert rep.dropped_empty == 1 and rep.num_actions == 2
  segs, rep = segment(s, mode="turns", drop_empty=False)
  assert len(segs) == 3 and rep.kept_empty == 1 and rep.dropped_empty == 0


def test_turns_one_long_action_split():
  text = "\n".join(f"step {i}" for i in range(6))  # 6 lines, 6 chars each + newlines
  s = sample(("user", "plan"), ("assistant", text))
  segs, rep = segment(s, mode="turns", max_action_chars=15)
  assert rep.num_actions == 1 and rep.split_actions == 1
  assert "".join(texts(segs)) == text and all(len(g.text) <= 15 for g in segs)
  for g in segs:
    assert (g.start, g.end) == (1, 2) and text[g.text_offset:].startswith(g.text)
