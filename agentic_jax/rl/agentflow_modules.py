"""The AgentFlow modules' text: the planner's plan format, the scripted executor's rule, the
scripted query analysis, the step-count line and the prompts of the frozen modules.

Used by `agentflow.run_agentflow` (the episode loop and the choices' sources are in its module
docstring). Kept apart so the episode loop stays readable and a data generator can write
planner-format samples with the same `format_plan`.

    format_plan("compute 12 * 7", "calc")           -> "Sub-goal: compute 12 * 7\\nTool: calc"
    plan = parse_plan(tokens, tokenizer, env.tools)  # Plan(text, sub_goal, tool, error)
    scripted_command("compute 12 * 7", TOOLS["calc"])          -> "calc(12 * 7)"
    scripted_command("submit 84 as the answer", TOOLS["answer"]) -> "answer(84)"

The plan format. The released planner ends its reply with `Context: / Sub-Goal: / Tool Name:`
sections (planner.py, generate_next_step's Response Format). Ours is the same idea in two lines
so a small model's turn budget holds it: optional free text (its justification / context), then
`Sub-goal: SUB-GOAL` and, last, `Tool: NAME` (NAME one of the environment's tools; matched
case-insensitively, as the released `normalize_tool_name` does). The sub-goal must carry the data
the tool needs (the released rule: it "MUST contain any involved data ... from Previous Steps"),
because the executor reads the sub-goal and the tool, not the memory.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from agentic_jax import envs as envs_lib
from agentic_jax.data.builtin import arith
from agentic_jax.data.builtin.protocol import Tool
from agentic_jax.data.tokenizer import Tokenizer
from agentic_jax.rl.sampler import Generation, Sampler, StopRule, turn_end_ids

SUBGOAL_KEY, TOOL_KEY = "Sub-goal:", "Tool:"
# A module's turn (plan, command, verdict, analysis) ends at its first <|end_turn|> or </s>
# (`sampler.module_turn(tokenizer)`): the plain policy's rule (stop at the <|end_turn|> after a
# <|tool_call|>) would let the planner run on past its plan into a tool call of its own, i.e.
# write the command the executor owns.
ANALYSIS_PROMPT = ("Analyse the query before solving it: its goal, the data it gives, and the "
                   "tools it will need.")
VERIFY_PROMPT = ("Verify the steps so far. If the final answer can be given now, reply STOP; "
                 "otherwise reply CONTINUE.")
ANSWER_PROMPT = "Give the final answer now, as one tool call."
ANALYSIS_HEADER = "Query analysis:\n"
# placeholders of a tool signature whose argument is a number or an arithmetic expression
ARITHMETIC_ARGS = ("EXPRESSION", "VALUE", "NUMBER")
MAX_ANALYSIS_NUMBERS = 8


@dataclasses.dataclass(frozen=True)
class Plan:
  text: str                # the plan as written, special tokens removed
  sub_goal: Optional[str]  # None when the plan has no `Sub-goal:` before its `Tool:` line
  tool: Optional[str]      # a tool of the environment (its own spelling), or None
  error: Optional[str]     # why the plan cannot go to the executor (None: it can)


def format_plan(sub_goal: str, tool: str) -> str:
  """The canonical plan text (what the memory shows of a valid plan)."""
  return f"{SUBGOAL_KEY} {sub_goal.strip()}\n{TOOL_KEY} {tool}"


def step_text(step: int, max_steps: int) -> str:
  """The step count of the released planner prompt ("Current Step: t in T steps", "Remaining
  Steps: T - t"), shortened."""
  return (f"Step {step} of {max_steps}, {max_steps - step} left after it. Reply with "
          f"'{SUBGOAL_KEY} ...' and '{TOOL_KEY} NAME'.")


def first_turn(gen: Generation, tokenizer: Tokenizer) -> Generation:
  """`gen` cut after its first <|end_turn|> or </s> of `tokenizer` (module_turn): what a sampler
  with that stop rule returns. Tokens past it (a stand-in sampler that ignores the rule) never
  reach the environment, so they are dropped before the turn is recorded and never trained."""
  toks = np.asarray(gen.tokens, np.int32)
  stops = np.flatnonzero(np.isin(toks, turn_end_ids(tokenizer)))
  if not stops.size or stops[0] == len(toks) - 1:
    return gen
  n = int(stops[0]) + 1
  return Generation(toks[:n], np.asarray(gen.logprobs, np.float32)[:n], False)


def with_stop(sampler: Any, stop: StopRule) -> Any:
  """`sampler` with stop rule `stop` (a Sampler; anything else is returned as is and its output
  cut by `first_turn`). The copy records its decoder shapes in the original's set."""
  if not isinstance(sampler, Sampler) or sampler.stop == stop:
    return sampler
  out = sampler.replace(stop=stop)
  out.shapes_used = sampler.shapes_used
  return out


def turn_text(tokens: Sequence[int], tokenizer: Tokenizer) -> str:
  """The text of a module's turn: the tokens up to its first <|end_turn|> / </s>, without special
  tokens (role markers; whatever `tokenizer.special_ids` holds)."""
  ids = []
  ends, special = turn_end_ids(tokenizer), tokenizer.special_ids
  for t in np.asarray(tokens, np.int64).tolist():
    if t in ends:
      break
    if t not in special:
      ids.append(t)
  return tokenizer.decode(ids)


_TOOL_LINE = re.compile(r"^\s*tool(?:[ _]name)?\s*:\s*(.*?)\s*$", re.I | re.M)
_SUBGOAL = re.compile(r"sub[- _]?goal\s*:", re.I)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_plan(tokens: Sequence[int], tokenizer, tools: Mapping[str, Tool]) -> Plan:
  """The sub-goal and tool of a planner turn (module doc). The last `Tool:` line counts (as the
  released parser takes the last match) and the sub-goal is the text after the last `Sub-goal:`
  before it."""
  text = turn_text(tokens, tokenizer).strip()
  lines = list(_TOOL_LINE.finditer(text))
  if not lines:
    return Plan(text, None, None, f"the plan names no tool: end it with '{SUBGOAL_KEY} ...' and "
                                  f"'{TOOL_KEY} NAME' (tools: {', '.join(tools)})")
  last = lines[-1]
  word = _NAME.match(last.group(1).strip("`'\"*"))
  by_lower = {name.lower(): name for name in tools}
  tool = by_lower.get(word.group(0).lower()) if word else None
  heads = list(_SUBGOAL.finditer(text, 0, last.start()))
  sub_goal = text[heads[-1].end():last.start()].strip() if heads else None
  if tool is None:
    return Plan(text, sub_goal, None, f"unknown tool {last.group(1)!r} in the plan; tools: "
                                      f"{', '.join(tools)}")
  if not sub_goal:
    return Plan(text, None, tool, f"the plan has no sub-goal: write '{SUBGOAL_KEY} ...' before "
                                  f"'{TOOL_KEY} {tool}'")
  return Plan(text, sub_goal, tool, None)


# ---------------------------------------------------------------------------------------------
# the scripted executor

_ARITH = re.compile(r"[0-9.+\-*/%() ]*[0-9][0-9.+\-*/%() ]*")
_QUOTED = re.compile(r"`([^`\n]+)`|\"([^\"\n]+)\"")
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*\n(.*?)```", re.S)


def _trim(s: str) -> str:
  """`s` without the sentence around it: operators, dots and parentheses left dangling at its
  ends, e.g. ' 84 - 5 (' -> '84 - 5', '(3 + 4) * 2).' -> '(3 + 4) * 2'."""
  prev = None
  while s != prev:
    prev = s
    s = s.strip().rstrip("(+-*/%.").lstrip(")+*/%").strip()
    if s.endswith(")") and s.count(")") > s.count("("):
      s = s[:-1]
    if s.startswith("(") and s.count("(") > s.count(")"):
      s = s[1:]
  return s


def arithmetic_span(text: str) -> Optional[str]:
  """The longest stretch of `text` that the calculator's parser accepts (ties: the later one),
  e.g. 'first the product 12 * 7.' -> '12 * 7'."""
  best: Optional[tuple[int, int, str]] = None
  for m in _ARITH.finditer(text):
    s = _trim(m.group(0))
    if not any(c.isdigit() for c in s):
      continue
    try:
      arith.evaluate(s)
    except arith.CalcError:
      continue
    if best is None or (len(s), m.start()) >= best[:2]:
      best = (len(s), m.start(), s)
  return best[2] if best else None


def placeholder(tool: Tool) -> str:
  """The argument placeholder of a tool's signature, upper-cased: calc(EXPRESSION) -> EXPRESSION."""
  m = re.search(r"\((.*?)\)", tool.signature)
  return m.group(1).strip().upper() if m else ""


def _argument(text: str, tool: Tool) -> Optional[str]:
  """The argument of `tool` named in the sub-goal's first line: an arithmetic one (calc's
  EXPRESSION, answer's VALUE) by `arithmetic_span`; any other: the first `quoted` text, else the
  text after the line's last ':'."""
  if placeholder(tool) in ARITHMETIC_ARGS:
    return arithmetic_span(text)
  q = _QUOTED.search(text)
  if q:
    return (q.group(1) or q.group(2)).strip()
  _, colon, tail = text.rpartition(":")
  arg = tail.strip().rstrip(".").strip() if colon else ""
  return arg or None


def scripted_command(sub_goal: str, tool: Tool) -> Optional[str]:
  """The command the scripted executor writes for (sub-goal, tool), or None when the sub-goal
  lacks what the tool needs. Deterministic and read off the tool's metadata only (as the
  released executor reads the tool's metadata): `NAME(ARG)` with ARG from the sub-goal's first
  line (`_argument`), `NAME()` for a tool without one, and for a tool that takes a body the
  sub-goal's first fenced code block (else its lines after the first) on the next lines."""
  first, _, rest = sub_goal.strip().partition("\n")
  arg = ""
  if tool.needs_arg:
    arg = _argument(first, tool)
    if arg is None:
      return None
  call = f"{tool.name}({arg})"
  if tool.takes_body:
    fence = _FENCE.search(sub_goal)
    body = fence.group(1) if fence else rest
    if not body.strip():
      return None
    call += "\n" + body.rstrip()
  return call


def missing_argument(tool: Tool) -> str:
  """The memory's explanation when the scripted executor found nothing to run."""
  need = [f"{placeholder(tool) or 'argument'} for {tool.signature}"] if tool.needs_arg else []
  if tool.takes_body:
    need.append(f"code for {tool.name} (a fenced block, or the lines after the first)")
  return f"error: the executor found no {' and no '.join(need)} in the sub-goal"


def calls_tool(command: str, tool: str) -> bool:
  """Whether `command` starts with a call of `tool` (the released executor can only run the
  chosen tool: it instantiates that tool and executes the command against it)."""
  m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(", command)
  return bool(m) and m.group(1) == tool


# ---------------------------------------------------------------------------------------------
# the scripted query analysis

_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:/\d+)?")


def scripted_analysis(env: Any, query: str) -> str:
  """A deterministic query analysis (the released step 0, `analyze_query`, written by the fixed
  engine): the tools with their signatures, which of them gives the final answer, and the
  numbers the query states (at most MAX_ANALYSIS_NUMBERS)."""
  tools = getattr(env, "tools", {})
  parts = [f"Tools: {', '.join(t.signature for t in tools.values())}."] if tools else []
  answers = envs_lib.answer_tools(env)
  if answers:
    parts.append(f"Final answer with {' or '.join(answers)}.")
  numbers = _NUMBER.findall(query)[:MAX_ANALYSIS_NUMBERS]
  if numbers:
    parts.append(f"Given: {', '.join(numbers)}.")
  return " ".join(parts)
