"""Scripted agents and the episode recorder for the built-in environments.

A policy is a generator: it yields `(thought, action)` and receives the environment's
`StepResult` for that action, so every later step is built from the real tool output (the
calculator agent copies the values it was shown into its next expression; the repository agent
reads the failing test names from the real test output). `run_episode` records the turns:

    system, user (reset observation), then per step: assistant (thought), tool_call (action,
    error flag from the environment), observation (the environment's text); reward = final reward.
"""

from __future__ import annotations

import random
import re
from typing import Generator, Optional

from agentic_jax.data.builtin import arith, calculator, edit_blocks, pyrepo, testrun
from agentic_jax.data.builtin.protocol import INFO_ERROR, INFO_TOOL, INVALID_TOOL, StepResult
from agentic_jax.data.builtin.pyrepo_templates import TEMPLATES as REPO_TEMPLATES
from agentic_jax.data.schema import EnvSample, Turn

Policy = Generator[tuple[str, str], StepResult, None]

CALC_ERROR_RATE = 0.3   # episodes with one failing calculator call (then corrected)
CALC_SLIP_RATE = 0.2    # episodes whose agent slips and answers wrongly (reward 0)


def run_episode(env, task, policy: Policy, *, sample_id: str, source: str) -> EnvSample:
  turns = [Turn("system", env.system_prompt), Turn("user", env.reset(task))]
  thought, action = next(policy)
  while True:
    result = env.step(action)
    name = result.info.get(INFO_TOOL) or INVALID_TOOL
    if thought:
      turns.append(Turn("assistant", thought))
    turns.append(Turn("tool_call", action, name, bool(result.info.get(INFO_ERROR))))
    turns.append(Turn("observation", result.observation, name))
    if result.done:
      return EnvSample(sample_id, source, tuple(turns), float(result.reward))
    try:
      thought, action = policy.send(result)
    except StopIteration:
      raise RuntimeError(f"{sample_id}: the scripted policy stopped before the episode ended") from None


# ---------------------------------------------------------------------------------------------
# calculator

_NUMBER = re.compile(r"(?<![\w.{])\d+(?:\.\d+)?(?![\w.}])")
_BINOP = re.compile(r" (\*\*|//|[-+*/%]) ")
_DIVISOR = re.compile(r"(//|/|%) ([1-9]\d*)(?![\d.])")  # a literal integer divisor
_FIXES = {
    "extra_op": "I typed an extra operator; here is the expression again.",
    "unbalanced": "The parentheses were unbalanced; writing it again without the stray one.",
    "trailing": "The expression ended with a dangling operator; fixing it.",
    "name": "The calculator only takes numbers, so I'll write the value itself.",
    "caret": "Powers are written with ** here.",
    "div0": "I mistyped the divisor as 0; it should be {divisor}.",
    "no_parens": "The tool call needs parentheses around the expression.",
}
_NO_TOOL_THOUGHT = "This is easy enough to do in my head."
_ESTIMATE_ERRORS = (-10, -2, -1, 1, 2, 10)
_FINAL = ("So the answer is {v}.", "That gives {v}, which answers the question.",
          "The result is {v}.")


def _operand(value: str) -> str:
  """An earlier result pasted into a new expression (fractions and negatives parenthesised)."""
  return f"({value})" if "/" in value or value.startswith("-") else value


def _error_kinds(expr: str) -> list[str]:
  """The planted mistakes that surely fail on this expression."""
  kinds = ["unbalanced", "trailing", "no_parens"]
  if _BINOP.search(expr):
    kinds.append("extra_op")
  if _NUMBER.search(expr):
    kinds.append("name")
  if "**" in expr:
    kinds.append("caret")
  if _DIVISOR.search(expr):
    kinds.append("div0")
  return kinds


def _corrupt(expr: str, kind: str, rng: random.Random) -> tuple[str, dict]:
  """The action of a planted failing call (and details for the correction)."""
  if kind == "extra_op":
    m = _BINOP.search(expr)
    return f"calc({expr[:m.end()]}* {expr[m.end():]})", {}
  if kind == "unbalanced":
    return f"calc(({expr})", {}
  if kind == "trailing":
    return f"calc({expr} {rng.choice('+*')})", {}
  if kind == "name":
    m = _NUMBER.search(expr)
    word = rng.choice(["total", "x", "n", "value"])
    return f"calc({expr[:m.start()]}{word}{expr[m.end():]})", {}
  if kind == "caret":
    return f"calc({expr.replace('**', '^', 1)})", {}
  if kind == "div0":
    m = _DIVISOR.search(expr)
    return f"calc({expr[:m.start(2)]}0{expr[m.end(2):]})", {"divisor": m.group(2)}
  if kind == "no_parens":
    return f"calc {expr}", {}
  raise ValueError(kind)


def _slip(template: str, rng: random.Random) -> str:
  """A wrong step: an operator or a copied number changed (the agent does not notice)."""
  m = _BINOP.search(template)
  if m and m.group(1) in "+-" and rng.random() < 0.5:
    return template[:m.start(1)] + ("-" if m.group(1) == "+" else "+") + template[m.end(1):]
  m = _NUMBER.search(template)
  if m and "." not in m.group(0):
    return template[:m.start()] + str(int(m.group(0)) + rng.choice([1, 2, 9])) + template[m.end():]
  return template + " + 1"


def calculator_policy(problem: calculator.Problem, rng: random.Random, *,
                      error_step: Optional[int] = None,
                      slip: Optional[tuple[str, int]] = None,
                      no_tool: bool = False) -> Policy:
  """Works through `problem.steps`. error_step=k plants one failing call (a mistake drawn from
  `_error_kinds` of the real expression) before the correct call of step k; slip=("step", k)
  miscomputes step k, ("early", _) answers the second-to-last value, ("round", _) rounds a
  non-integer answer (the agent does not notice; reward 0). no_tool=True skips the calculator
  and answers a mental estimate that is off by a small amount (reward 0): the habit of
  answering without the tool, which outcome-reward RL should unlearn."""
  if no_tool:
    delta = rng.choice(_ESTIMATE_ERRORS)
    estimate = problem.task.answer + (delta if problem.task.answer + delta > 0 else abs(delta))
    yield _NO_TOOL_THOUGHT, f"answer({arith.format_value(estimate)})"
    return
  values: list[str] = []
  for k, step in enumerate(problem.steps):
    template = _slip(step.expr, rng) if slip and slip == ("step", k) else step.expr
    expr = template.format(**{f"r{i}": _operand(v) for i, v in enumerate(values)})
    thought = step.thought
    if error_step == k:
      kind = rng.choice(_error_kinds(expr))
      bad, details = _corrupt(expr, kind, rng)
      result = yield thought, bad
      if not result.info.get(INFO_ERROR):
        raise RuntimeError(f"planted {kind} error did not fail: {bad!r}")
      reason = result.observation.removeprefix("error: ").split(";")[0]
      thought = f"The call failed: {reason}. " + _FIXES[kind].format(**details)
    result = yield thought, f"calc({expr})"
    if result.info.get(INFO_ERROR) and slip is not None:
      # an earlier slip made this step fail (e.g. a zero divisor): the agent gives up
      last = values[-1] if values else "0"
      yield f"The calculation broke down; I'll answer with {last}.", f"answer({last})"
      return
    if result.info.get(INFO_ERROR):
      raise RuntimeError(f"{problem.task.id}: unexpected calculator error for {expr!r}: "
                         f"{result.observation}")
    values.append(result.observation)
  final = values[-1]
  if slip and slip[0] == "early" and len(values) > 1:
    final = values[-2]
  elif slip and slip[0] == "round":
    value = arith.evaluate(final)
    if value.denominator != 1:
      final = str(round(value))
  yield rng.choice(_FINAL).format(v=final), f"answer({final})"


# (source name, episode rng prefix, planted-error rate, slip rate) per calculator level; basic
# episodes slip less often: they are the examples a tiny model should learn to get right.
_CALC_LEVELS = {"word": ("calculator", "calculator-episode", CALC_ERROR_RATE, CALC_SLIP_RATE),
                "basic": ("calculator_basic", "calculator-basic-episode", 0.2, 0.1),
                "multistep": ("calculator_multistep", "calculator-multistep-episode", 0.2, 0.1),
                "mixed": ("calculator_mixed", "calculator-mixed-episode", 0.2, 0.1)}


def calculator_episodes(seed: int, num_samples: int, level: str = "word", *,
                        no_tool_rate: float = 0.0, slip_rate: Optional[float] = None,
                        error_rate: Optional[float] = None
                        ) -> list[tuple[calculator.Problem, EnvSample]]:
  """Scripted episodes of calculator tasks of `level` ("word": source "calculator"; "basic":
  "calculator_basic"; "multistep": "calculator_multistep"). A `no_tool_rate` share of them answers
  without the calculator (one extra draw per episode; at rate 0 the stream is exactly the default
  one). `slip_rate` (unnoticed mistakes, reward 0) and `error_rate` (a failing call, then
  corrected) replace the level's defaults when given."""
  if level not in _CALC_LEVELS:
    raise ValueError(f"calculator level must be one of {list(_CALC_LEVELS)}, got {level!r}")
  for name, rate in (("no_tool_rate", no_tool_rate), ("slip_rate", slip_rate),
                     ("error_rate", error_rate)):
    if rate is not None and not 0.0 <= rate <= 1.0:
      raise ValueError(f"calculator_episodes: {name} must be in [0, 1], got {rate}")
  source, prefix, level_error_rate, level_slip_rate = _CALC_LEVELS[level]
  error_rate = level_error_rate if error_rate is None else error_rate
  slip_rate = level_slip_rate if slip_rate is None else slip_rate
  env, out = calculator.CalculatorEnv(level=level), []
  for i in range(num_samples):
    problem = calculator.make_problem(seed, i, level)
    rng = random.Random(f"{prefix}:{seed}:{i}")
    error_step = slip = None
    if rng.random() < error_rate:
      error_step = rng.randrange(len(problem.steps))
    if rng.random() < slip_rate:
      slip = rng.choice([("step", rng.randrange(len(problem.steps))), ("early", 0), ("round", 0)])
    no_tool = bool(no_tool_rate) and rng.random() < no_tool_rate
    policy = calculator_policy(problem, rng, error_step=error_step, slip=slip, no_tool=no_tool)
    out.append((problem, run_episode(env, problem.task, policy, sample_id=f"{source}-{seed}-{i:05d}",
                                     source=source)))
  return out


# ---------------------------------------------------------------------------------------------
# small repositories

_FAILED = re.compile(r"^(?:FAIL|ERROR): (\w+)", re.M)


def _edit(path: str, search: str, replace: str) -> str:
  return f"edit({path})\n{edit_blocks.format_edit(search, replace)}"


def pyrepo_policy(spec, rng: random.Random, *, read_tests: bool, malformed: bool,
                  bad_search: bool, wrong_fix: bool, outcome: str) -> Policy:
  """outcome: "fixed" (reward 1), "untested" (submits the wrong fix without re-running the tests)
  or "gave_up" (re-runs, still failing, submits anyway)."""
  mod, test = spec.module_path, spec.test_path
  result = yield "Let me run the test suite first to see what fails.", "run_tests()"
  failing = _FAILED.findall(result.observation)
  if not failing or result.info.get("passed"):
    raise RuntimeError(f"{spec.template}: the initial test run did not fail")
  names = ", ".join(f"`{n}`" for n in dict.fromkeys(failing))
  if malformed:
    result = yield f"Failing: {names}. Let me look at {mod}.", f"cat {mod}"
    thought = "The call needs parentheses around the path."
  else:
    thought = f"Failing: {names}. These tests exercise `{spec.func}`; let me read {mod}."
  if read_tests:
    yield f"Failing: {names}. First I'll read what the tests expect.", f"cat({test})"
    thought = f"Now the implementation of `{spec.func}` in {mod}."
  result = yield thought, f"cat({mod})"
  if spec.bad not in result.observation:
    raise RuntimeError(f"{spec.template}: the buggy snippet is not in {mod}")
  current = spec.bad
  if wrong_fix and spec.wrong is not None:
    yield spec.wrong_thought, _edit(mod, spec.bad, spec.wrong)
    current = spec.wrong
    if outcome == "untested":
      yield "That should fix it. Submitting.", "submit()"
      return
    result = yield "Let me run the tests again.", "run_tests()"
    if result.info.get("passed"):
      raise RuntimeError(f"{spec.template}: the wrong fix passes the tests")
    if outcome == "gave_up":
      yield "The tests still fail and I could not find a better fix; submitting what I have.", \
          "submit()"
      return
    thought = "Still failing, so that was not the real problem. " + spec.diagnosis
  else:
    thought = spec.diagnosis
  if bad_search:
    # copied with one indentation level too many: the search text does not match the file
    shifted = "\n".join("    " + line for line in current.split("\n"))
    result = yield thought, _edit(mod, shifted, "\n".join("    " + l for l in spec.good.split("\n")))
    if not result.info.get(INFO_ERROR):
      raise RuntimeError(f"{spec.template}: the planted bad edit did not fail")
    thought = "The search text must match the file exactly, including indentation. Again:"
  yield thought, _edit(mod, current, spec.good)
  result = yield "Let me re-run the tests.", "run_tests()"
  if not result.info.get("passed"):
    raise RuntimeError(f"{spec.template}: the fix does not pass the tests:\n{result.observation}")
  yield "All tests pass now. Submitting.", "submit()"


def pyrepo_episodes(seed: int, num_samples: int,
                    runner: pyrepo.Runner = testrun.run_unittest
                    ) -> list[tuple[pyrepo.RepoTask, EnvSample]]:
  names = sorted(REPO_TEMPLATES)
  plans = []
  for i in range(num_samples):
    rng = random.Random(f"pyrepo-episode:{seed}:{i}")
    template, variant = names[rng.randrange(len(names))], rng.randrange(pyrepo.VARIANTS)
    spec = pyrepo.make_spec(seed, template, variant)
    wrong_fix = spec.wrong is not None and rng.random() < 0.3
    behaviour = dict(read_tests=rng.random() < 0.4, malformed=rng.random() < 0.08,
                     bad_search=rng.random() < 0.15, wrong_fix=wrong_fix,
                     outcome=rng.choice(["fixed", "fixed", "untested", "gave_up"])
                     if wrong_fix else "fixed")
    plans.append((i, template, variant, spec, rng, behaviour))
  if runner is testrun.run_unittest:  # warm the cache in one batch: one interpreter start
    states = {}
    for _, template, variant, spec, _, _ in plans:
      states[(template, variant)] = [spec.files, spec.buggy_files()] + (
          [spec.with_snippet(spec.wrong)] if spec.wrong else [])
    testrun.run_unittests([s for group in states.values() for s in group])
  env, out = pyrepo.PyRepoEnv(runner=runner), []
  for i, template, variant, spec, rng, behaviour in plans:
    task = pyrepo.make_task(seed, template, variant)
    policy = pyrepo_policy(spec, rng, **behaviour)
    out.append((task, run_episode(env, task, policy, sample_id=f"pyrepo-{seed}-{i:05d}",
                                  source="pyrepo")))
  return out
