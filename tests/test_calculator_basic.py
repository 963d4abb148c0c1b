"""Calculator level "basic": answers checked by an independent computation from the question
text, seeded streams, and the scripted-agent source "calculator_basic"."""

import ast
import json
import operator
import re
from fractions import Fraction

import pytest

from agentic_jax.data import builtin, schema
from agentic_jax.data.builtin import agent, arith, calculator
from agentic_jax.data.render import render
from agentic_jax.data.tokenizer import ByteTokenizer

N = 300
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def _eval_ast(node):
  """Exact value of + - * / and parentheses over integer literals (Python's own parser)."""
  if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
    return _OPS[type(node.op)](_eval_ast(node.left), _eval_ast(node.right))
  if isinstance(node, ast.Constant) and isinstance(node.value, int):
    return Fraction(node.value)
  raise AssertionError(f"unexpected syntax {ast.dump(node)}")


# question pattern -> answer from the captured integers
_WORD = [
    (r"\w+ has (\d+) \w+ and gets (\d+) more\. How many \w+ does \w+ have now\?", lambda a, b: a + b),
    (r"\w+ has (\d+) \w+ and gives away (\d+)\. How many \w+ are left\?", lambda a, b: a - b),
    (r"There are (\d+) boxes with (\d+) \w+ in each\. How many \w+ are there in total\?",
     lambda a, b: a * b),
    (r"(\d+) \w+ are shared equally among (\d+) friends\. How many \w+ does each friend get\?",
     lambda a, b: Fraction(a, b)),
    (r"\w+ buys (\d+) packs of (\d+) \w+ and gives away (\d+)\. How many \w+ does \w+ have left\?",
     lambda a, b, c: a * b - c),
]


def independent_answer(question: str) -> Fraction:
  m = re.fullmatch(r"What is ([\d +\-*/()]+)\?", question)
  if m:
    return _eval_ast(ast.parse(m.group(1), mode="eval").body)
  hits = [(p, f) for p, f in _WORD if re.fullmatch(p, question)]
  assert len(hits) == 1, question
  pattern, f = hits[0]
  return Fraction(f(*map(int, re.fullmatch(pattern, question).groups())))


def test_basic_answers_match_an_independent_computation():
  problems = [calculator.make_problem(3, i, "basic") for i in range(N)]
  assert {p.template for p in problems} == set(calculator.BASIC_TEMPLATES)
  for p in problems:
    assert p.task.answer == independent_answer(p.task.question), p.task
    assert p.task.answer.denominator == 1 and p.task.answer > 0
    assert 1 <= len(p.steps) <= 2
    assert p.task.id.startswith("calc-basic-3-")


def test_worked_solutions_reach_the_answer_through_the_real_calculator():
  env = calculator.CalculatorEnv()
  for i in range(60):
    problem = calculator.make_problem(0, i, "basic")
    sample = agent.run_episode(env, problem.task, agent.calculator_policy(
        problem, __import__("random").Random(i)), sample_id="x", source="calculator_basic")
    assert sample.reward == 1.0, sample
    calls = [t.content for t in sample.turns if t.role == "tool_call"]
    assert len(calls) == len(problem.steps) + 1 and calls[-1].startswith("answer(")


def test_task_streams_are_seeded_and_levels_checked():
  a = calculator.make_tasks(5, 20, level="basic")
  assert a == calculator.make_tasks(5, 20, level="basic")
  assert a[10:] == calculator.make_tasks(5, 10, start=10, level="basic")  # prefix stable
  other = calculator.make_tasks(6, 20, level="basic")
  assert sum(x.question != y.question for x, y in zip(a, other)) >= 15
  assert calculator.make_tasks(5, 3) == calculator.make_tasks(5, 3, level="word")
  assert all(t.id.startswith("calc-5-") for t in calculator.make_tasks(5, 3))
  with pytest.raises(ValueError, match="calculator level must be one of"):
    calculator.make_tasks(0, 1, level="hard")


def test_builtin_source_calculator_basic():
  assert builtin.SOURCES == ("calculator", "pyrepo", "stdlib_edits")  # default mixture unchanged
  assert "calculator_basic" in builtin.ALL_SOURCES
  samples = builtin.generate("calculator_basic", seed=0, num_samples=120)
  assert samples == builtin.generate("calculator_basic", seed=0, num_samples=120)
  tasks = calculator.make_tasks(0, 120, level="basic")
  env = calculator.CalculatorEnv()
  errors = 0
  for s, task in zip(samples, tasks):
    assert s.source == "calculator_basic" and s.id.startswith("calculator_basic-0-")
    assert [t.role for t in s.turns[:2]] == ["system", "user"]
    assert s.turns[0].content == calculator.BASIC_SYSTEM_PROMPT and s.turns[1].content == task.question
    # every observation is what the calculator really answers to that call
    env.reset(task)
    for k, t in enumerate(s.turns):
      if t.role == "tool_call":
        assert env.step(t.content).observation == s.turns[k + 1].content
        errors += t.error
    final = s.turns[-2].content
    assert final.startswith("answer(")
    assert s.reward == float(arith.parse_number(final[7:-1]) == task.answer)
    assert schema.parse_record(json.loads(json.dumps(schema.to_record(s))), file="g", line=1) == s
  rewards = [s.reward for s in samples]
  assert 0.8 <= sum(rewards) / len(rewards) < 1.0  # mostly right, some slips kept
  assert 0 < errors < len(samples)  # some planted failing calls (then corrected)
  tok = ByteTokenizer()
  lengths = [len(render(s, tok, "all")) for s in samples]
  assert max(lengths) < 1024  # short episodes (system prompt included) for a tiny model


def _calls(sample) -> list[str]:
  return [t.content for t in sample.turns if t.role == "tool_call"]


def test_no_tool_episodes_skip_the_calculator_and_are_wrong():
  default = agent.calculator_episodes(3, 40, level="basic")
  assert [s for _, s in agent.calculator_episodes(3, 40, level="basic", no_tool_rate=0.0)] == [
      s for _, s in default]  # rate 0: exactly the default stream
  for problem, sample in agent.calculator_episodes(3, 40, level="basic", no_tool_rate=1.0):
    calls = _calls(sample)
    assert len(calls) == 1 and calls[0].startswith("answer(")
    value = arith.parse_number(calls[0][len("answer("):-1])
    assert value != problem.task.answer and value > 0  # a mental estimate, off by a little
    assert abs(value - problem.task.answer) <= 10
    assert sample.turns[-1].content == "incorrect" and sample.reward == 0.0
  mixed = agent.calculator_episodes(3, 400, level="basic", no_tool_rate=0.3)
  share = sum(not any(c.startswith("calc(") for c in _calls(s)) for _, s in mixed) / 400
  assert 0.2 < share < 0.4
  with pytest.raises(ValueError, match="no_tool_rate"):
    agent.calculator_episodes(3, 1, level="basic", no_tool_rate=1.5)


def test_basic_level_uses_its_one_line_system_prompt_in_data_and_environment():
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  make_env, _ = envs.make_env_factory("calculator", level="basic")
  assert make_env().system_prompt == calculator.BASIC_SYSTEM_PROMPT
  make_word, _ = envs.make_env_factory("calculator", level="word")
  assert make_word().system_prompt == calculator.SYSTEM_PROMPT
  _, sample = agent.calculator_episodes(0, 1, level="basic")[0]
  assert sample.turns[0].role == "system"
  assert sample.turns[0].content == calculator.BASIC_SYSTEM_PROMPT
  _, word = agent.calculator_episodes(0, 1)[0]
  assert word.turns[0].content == calculator.SYSTEM_PROMPT
  with pytest.raises(ValueError, match="level"):
    calculator.CalculatorEnv(level="hard")
