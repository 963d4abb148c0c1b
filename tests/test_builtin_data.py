"""Built-in environments and the embedded default data (agentic_jax.data.builtin)."""

import ast
import builtins
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from fractions import Fraction

import pytest

from agentic_jax.data import builtin, schema
from agentic_jax.data.builtin import (agent, arith, calculator, edit_blocks, pyrepo, stdlib_edits,
                                      testrun)
from agentic_jax.data.builtin.protocol import Environment, StepResult

N = 200


def _clear_caches():
  testrun._CACHE.clear()
  stdlib_edits._PROBE_CACHE.clear()


@pytest.fixture(scope="module")
def data():
  """200 samples of each source from a cold cache, and how long that took."""
  _clear_caches()
  start = time.perf_counter()
  calc = agent.calculator_episodes(0, N)
  repo = agent.pyrepo_episodes(0, N)
  stats = {}
  edits = stdlib_edits.stdlib_edit_samples(0, N, stats)
  return {"calculator": calc, "pyrepo": repo, "stdlib_edits": edits, "stats": stats,
          "seconds": time.perf_counter() - start}


def _dump(samples):
  return json.dumps([schema.to_record(s) for s in samples], sort_keys=True)


# --------------------------------------------------------------------------- expression parser

@pytest.mark.parametrize("expr,expected", [
    ("2**3**2", 512), ("7-2-1", 4), ("-2**2", -4), ("(-2)**2", 4), ("2**-2", Fraction(1, 4)),
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("8 / 2 / 2", 2), ("7 // 2", 3), ("-7 // 2", -4),
    ("7 % 3", 1), ("-7 % 3", 2), ("1.5 * 4", 6), ("10 / 4", Fraction(5, 2)),
    ("1/3 + 1/6", Fraction(1, 2)), (".5 + .25", Fraction(3, 4)), ("2 * -3", -6), ("--3", 3),
    ("100 - 2 ** 3 * 5", 60), ("2 ** 3 ** 0", 2), ("0.1 + 0.2", Fraction(3, 10)),
    ("  ( ( 4 ) )  ", 4), ("-(3 - 5) ** 2", -4), ("2 ** (1 + 1) * 3", 12),
])
def test_parser_values(expr, expected):
  assert arith.evaluate(expr) == expected


@pytest.mark.parametrize("value,text", [
    (Fraction(7), "7"), (Fraction(5, 2), "2.5"), (Fraction(1, 3), "1/3"), (Fraction(-1, 8), "-0.125"),
    (Fraction(1, 20), "0.05"), (Fraction(-7, 3), "-7/3"), (Fraction(1001, 1000), "1.001"),
    (Fraction(0), "0"), (Fraction(-3, 4), "-0.75"),
])
def test_format_value(value, text):
  assert arith.format_value(value) == text
  assert arith.parse_number(text) == value


@pytest.mark.parametrize("expr,message", [
    ("1/0", "division by zero"),
    ("1 // (2 - 2)", "division by zero"),
    ("5 % 0", "modulo by zero"),
    ("0 ** -1", "division by zero (0 raised to a negative power)"),
    ("(1 + 2", "missing ')' for the '(' at position 0"),
    ("1 + 2)", "unmatched ')' at position 5"),
    ("2 +", "expected a number or '(' at position 3, found the end of the expression"),
    ("2 * * 3", "expected a number or '(' at position 4, found '*'"),
    ("", "empty expression"),
    ("2 3", "expected an operator at position 2, found the number 3"),
    ("2^3", "unexpected character '^' at position 1; use ** for powers"),
    ("1,000", "unexpected character ',' at position 1"),
    ("1.2.3", "malformed number '1.2.3' at position 0"),
    ("2 ** 0.5", "non-integer exponent 0.5 is not supported (the result would not be rational)"),
    ("2 ** 100000", "result too large (more than about 3000 digits)"),
])
def test_parser_errors(expr, message):
  with pytest.raises(arith.CalcError) as e:
    arith.evaluate(expr)
  assert str(e.value) == message


@pytest.mark.parametrize("expr,message", [
    ("x + 1", "names are not allowed ('x' at position 0)"),
    ("abs(-3)", "names are not allowed ('abs' at position 0)"),
    ("__import__('os').system('true')", "names are not allowed ('__import__' at position 0)"),
    ("(1).real", "attribute access is not allowed ('.' at position 3)"),
    ("1 .real", "attribute access is not allowed ('.' at position 2)"),
    ("[1][0]", "unexpected character '[' at position 0"),
    ("'1'", "unexpected character \"'\" at position 0"),
])
def test_parser_refuses_names_attributes_and_calls(expr, message):
  with pytest.raises(arith.CalcError) as e:
    arith.evaluate(expr)
  assert str(e.value).startswith(message)


def test_parser_limits():
  with pytest.raises(arith.CalcError, match="nested too deeply"):
    arith.evaluate("(" * 150 + "1" + ")" * 150)
  with pytest.raises(arith.CalcError, match="expression too long"):
    arith.evaluate("1+" * 1500 + "1")
  assert arith.evaluate("(" * 50 + "1" + ")" * 50) == 1


def test_parser_never_uses_python_eval(monkeypatch):
  def boom(*a, **k):
    raise AssertionError("eval/exec/compile called")
  for name in ("eval", "exec", "compile"):
    monkeypatch.setattr(builtins, name, boom)
  monkeypatch.setattr(ast, "literal_eval", boom)
  assert arith.evaluate("(1 + 2) ** 2 / 4") == Fraction(9, 4)
  env = calculator.CalculatorEnv()
  env.reset(calculator.CalcTask("t", "q", Fraction(9, 4)))
  assert env.step("calc((1 + 2) ** 2 / 4)").observation == "2.25"
  assert env.step("answer(9/4)").reward == 1.0


# --------------------------------------------------------------------------- environments

def test_calculator_env_protocol_and_rewards():
  env = calculator.CalculatorEnv(max_steps=3)
  assert isinstance(env, Environment) and isinstance(pyrepo.PyRepoEnv(), Environment)
  r = env.step("calc(1)")  # before reset: explained, never raised
  assert r.done and r.observation.startswith("error: the episode is over; call reset(task)")
  task = calculator.CalcTask("t", "What is 6 * 7?", Fraction(42))
  assert env.reset(task) == "What is 6 * 7?"
  r = env.step("calc(6 * 7)")
  assert (r.observation, r.done, r.reward, r.info["error"]) == ("42", False, 0.0, False)
  r = env.step("calc(6 / 0)")
  assert (r.observation, r.done, r.info["error"], r.info["tool"]) == (
      "error: division by zero", False, True, "calc")
  r = env.step("answer(42)")
  assert (r.observation, r.done, r.reward) == ("correct", True, 1.0)
  assert env.step("calc(1)").observation.startswith("error: the episode is over")
  env.reset(task)
  r = env.step("answer(41.5)")
  assert (r.observation, r.done, r.reward) == ("incorrect", True, 0.0)
  env.reset(task)
  assert env.step("answer(6 * 7)").observation == ("error: answer: expected a single number such "
                                                   "as 42, -3.5 or 7/3")
  env.step("calc(1)")
  r = env.step("calc(2)")  # third call: the step limit ends the episode without reward
  assert r.done and r.reward == 0.0 and r.observation.endswith("no answer was given")


@pytest.mark.parametrize("action,expected", [
    ("calc 2 + 3", "error: malformed tool call: expected NAME(ARGUMENT) on the first line; "
                   "available tools: calc(EXPRESSION), answer(VALUE)"),
    ("solve(3)", "error: unknown tool 'solve'; available tools: calc, answer"),
    ("calc()", "error: calc needs an argument: calc(EXPRESSION)"),
    ("calc(1)\nmore", "error: unexpected text after the call; calc takes everything on one line: "
                      "calc(EXPRESSION)"),
    ("", "error: empty action; available tools: calc(EXPRESSION), answer(VALUE)"),
    (None, "error: an action must be text, got NoneType"),
])
def test_malformed_actions_are_explained(action, expected):
  env = calculator.CalculatorEnv()
  env.reset(calculator.CalcTask("t", "q", Fraction(1)))
  r = env.step(action)
  assert (r.observation, r.done, r.info["error"]) == (expected, False, True)


def test_environments_never_raise_on_garbage_actions():
  import random
  rng = random.Random(0)
  alphabet = "calc()answer[]{}*/+-.0123456789 \n\"'=<>SEARCHREPLACE_edit"
  task = pyrepo.make_tasks(0, 1)[0]
  envs = [(calculator.CalculatorEnv(max_steps=1000), calculator.make_tasks(0, 1)[0]),
          (pyrepo.PyRepoEnv(runner=lambda files: testrun.TestRun(False, 1, "x"), max_steps=1000),
           task)]
  for env, t in envs:
    env.reset(t)
    for _ in range(300):
      text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
      r = env.step(text)
      assert isinstance(r, StepResult) and isinstance(r.observation, str) and r.observation
      if r.done:
        env.reset(t)


def test_pyrepo_env_tools():
  task = pyrepo.make_tasks(0, 1)[0]
  runs = []
  env = pyrepo.PyRepoEnv(runner=lambda files: runs.append(dict(files)) or testrun.TestRun(
      True, 0, "OK"))
  first = env.reset(task)
  assert first.startswith(pyrepo.STATEMENT) and all(p in first for p in task.files)
  module = next(p for p in task.files if not p.startswith("test_"))
  assert env.step(f"cat({module})").observation == task.files[module]
  assert env.step(f"cat('/repo/{module}')").observation == task.files[module]
  r = env.step("cat(../etc/passwd)")
  assert r.info["error"] and "expected a relative path inside the repo" in r.observation
  r = env.step("cat(nope.py)")
  assert r.info["error"] and r.observation.startswith("error: no such file: nope.py")
  first_line = task.files[module].split("\n")[0]
  r = env.step(f"edit({module})\n<<<<<<< SEARCH\nnot in the file\n=======\nx\n>>>>>>> REPLACE")
  assert r.info["error"] and "SEARCH text was not found" in r.observation
  r = env.step(f"edit({module})\n<<<<<<< SEARCH\n{first_line}\n=======\n# changed\n{first_line}\n"
               ">>>>>>> REPLACE")
  assert r.observation == f"edited {module}: replaced 1 line(s) with 2" and not r.info["error"]
  assert env.files[module] == "# changed\n" + task.files[module]
  assert task.files[module].split("\n")[0] == first_line  # the task itself is untouched
  r = env.step("submit()")
  assert (r.done, r.reward, r.observation) == (True, 1.0, "submitted: all tests pass")
  assert runs == [env.files]


def test_edit_blocks():
  block = edit_blocks.format_edit("a\nb", "c")
  assert block == "<<<<<<< SEARCH\na\nb\n=======\nc\n>>>>>>> REPLACE"
  assert edit_blocks.parse_edit(block) == ("a\nb", "c")
  assert edit_blocks.parse_edit(edit_blocks.format_edit("a", "")) == ("a", "")
  assert edit_blocks.apply_edit("x\na\nb\ny\n", "a\nb", "c") == "x\nc\ny\n"
  with pytest.raises(edit_blocks.EditError, match="occurs 2 times"):
    edit_blocks.apply_edit("a\na\n", "a", "b")
  with pytest.raises(edit_blocks.EditError, match="must end with"):
    edit_blocks.parse_edit("<<<<<<< SEARCH\na\n=======\nb")


# --------------------------------------------------------------------------- generated data

def test_generation_is_fast(data):
  assert data["seconds"] < 20.0, f"200 samples of each source took {data['seconds']:.1f} s"


def test_every_record_round_trips(data):
  for name in builtin.SOURCES:
    samples = data[name] if name == "stdlib_edits" else [s for _, s in data[name]]
    assert len(samples) == N and len({s.id for s in samples}) == N
    for s in samples:
      record = json.loads(json.dumps(schema.to_record(s)))
      assert schema.parse_record(record, file="gen", line=1) == s
      assert s.source == name


def test_generate_api():
  assert _dump(builtin.generate("calculator", seed=0, num_samples=3)) == _dump(
      [s for _, s in agent.calculator_episodes(0, 3)])
  assert builtin.generate("stdlib_edits", seed=0, num_samples=0) == []
  with pytest.raises(ValueError, match="unknown built-in source 'nope'"):
    builtin.generate("nope", seed=0, num_samples=1)
  with pytest.raises(ValueError, match="num_samples"):
    builtin.generate("calculator", seed=0, num_samples=-1)


def test_deterministic_in_process_across_processes_and_prefix_stable(data):
  _clear_caches()  # really recompute: test runs and probes included
  n = 30
  again = {"calculator": [s for _, s in agent.calculator_episodes(0, n)],
           "pyrepo": [s for _, s in agent.pyrepo_episodes(0, n)],
           "stdlib_edits": stdlib_edits.stdlib_edit_samples(0, n)}
  for name, samples in again.items():
    first = data[name][:n] if name == "stdlib_edits" else [s for _, s in data[name][:n]]
    assert _dump(samples) == _dump(first), name
  # another process, another hash seed: byte-identical records
  code = ("import json,sys; from agentic_jax.data import builtin, schema; "
          "print(json.dumps([schema.to_record(s) for n in builtin.SOURCES "
          "for s in builtin.generate(n, seed=0, num_samples=8)], sort_keys=True))")
  env = dict(os.environ, PYTHONHASHSEED="12345")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  expected = [schema.to_record(s) for name in builtin.SOURCES for s in again[name][:8]]
  assert out.stdout.strip() == json.dumps(expected, sort_keys=True)


def test_different_seeds_differ(data):
  for name in builtin.SOURCES:
    other = builtin.generate(name, seed=1, num_samples=10)
    mine = data[name][:10] if name == "stdlib_edits" else [s for _, s in data[name][:10]]
    body = lambda s: s.spans if isinstance(s, schema.ContextSample) else s.turns  # noqa: E731
    assert sum(body(a) != body(b) for a, b in zip(other, mine)) >= 8, name


def _tool_steps(sample):
  """(action, tool_call turn, observation turn) triples of an EnvSample."""
  turns = sample.turns
  return [(t.content, t, turns[i + 1]) for i, t in enumerate(turns) if t.role == "tool_call"]


def test_calculator_observations_are_real_tool_outputs(data):
  env = calculator.CalculatorEnv()
  rewards, errors = [], 0
  for problem, sample in data["calculator"]:
    assert [t.role for t in sample.turns[:2]] == ["system", "user"]
    assert sample.turns[0].content == calculator.SYSTEM_PROMPT
    assert env.reset(problem.task) == sample.turns[1].content
    steps = _tool_steps(sample)
    for k, (action, call, obs) in enumerate(steps):
      r = env.step(action)  # re-run the recorded call on a fresh environment
      assert (r.observation, call.error, obs.name, call.name) == (
          obs.content, r.info["error"], r.info["tool"] or "invalid", r.info["tool"] or "invalid")
      m = re.fullmatch(r"calc\((.*)\)", action)
      if m and not call.error:  # and independently of the environment
        assert arith.format_value(arith.evaluate(m.group(1))) == obs.content
      assert r.done == (k == len(steps) - 1)
    assert r.reward == sample.reward
    answer = re.fullmatch(r"answer\((.*)\)", steps[-1][0]).group(1)
    assert sample.reward == float(arith.parse_number(answer) == problem.task.answer)
    rewards.append(sample.reward)
    errors += any(t.error for t in sample.turns)
  # a seeded share of failing calls (then corrected) and of wrong final answers
  assert 0.15 * N < errors < 0.45 * N
  assert 0.05 * N < rewards.count(0.0) < 0.35 * N


def test_calculator_templates_answer_matches_worked_solution():
  # the scripted agent without mistakes reaches the template's own answer for every template
  env = calculator.CalculatorEnv()
  seen = set()
  for i in range(300):
    problem = calculator.make_problem(7, i)
    seen.add(problem.template)
    policy = agent.calculator_policy(problem, __import__("random").Random(i))
    sample = agent.run_episode(env, problem.task, policy, sample_id="x", source="calculator")
    assert sample.reward == 1.0, (problem.template, sample.turns)
  assert seen == set(calculator.TEMPLATES)


def test_calculator_episodes_over_many_seeds():
  # planted mistakes must fail and correct steps must not, whatever numbers a seed draws
  env = calculator.CalculatorEnv()
  for seed in range(1, 21):
    for problem, sample in agent.calculator_episodes(seed, 40):
      env.reset(problem.task)
      for action, call, obs in _tool_steps(sample):
        assert env.step(action).observation == obs.content


@pytest.mark.parametrize("seed", [1, 2])
def test_pyrepo_templates_fail_before_and_pass_after_the_fix(seed):
  from agentic_jax.data.builtin.pyrepo_templates import TEMPLATES
  specs = [pyrepo.make_spec(seed, t, v) for t in TEMPLATES for v in range(pyrepo.VARIANTS)]
  states = [[s.files, s.buggy_files()] + ([s.with_snippet(s.wrong)] if s.wrong else [])
            for s in specs]
  runs = iter(testrun.run_unittests([x for group in states for x in group]))
  for spec, group in zip(specs, states):
    good, bad, *wrong = [next(runs) for _ in group]
    assert good.passed and good.output.rstrip().endswith("OK"), (spec.template, good.output)
    assert not bad.passed and "FAILED (" in bad.output, spec.template
    assert all(not w.passed for w in wrong), spec.template


def test_pyrepo_trajectories_replay_with_real_test_runs(data):
  episodes = data["pyrepo"]
  rewards = [s.reward for _, s in episodes]
  assert 0.05 * N < rewards.count(0.0) < 0.3 * N
  for task, sample in episodes:
    steps = _tool_steps(sample)
    assert steps[0][0] == "run_tests()" and steps[-1][0] == "submit()"
    first = steps[0][2].content
    assert re.search(r"^FAILED \((failures|errors)=\d+", first, re.M), first
    assert "/repo/" in first and "/tmp" not in first
    tests = [obs.content for action, _, obs in steps if action == "run_tests()"]
    if sample.reward == 1.0:
      assert tests[-1].rstrip().endswith("OK")
    else:
      assert "FAILED (" in steps[-1][2].content
  # re-run a few trajectories on a fresh environment with uncached, real test runs
  testrun._CACHE.clear()
  picked = [episodes[0], next(e for e in episodes if e[1].reward == 0.0),
            next(e for e in episodes if any(t.error for t in e[1].turns))]
  for task, sample in picked:
    env = pyrepo.PyRepoEnv()
    assert env.reset(task) == sample.turns[1].content
    for action, call, obs in _tool_steps(sample):
      r = env.step(action)
      assert (r.observation, r.info["error"]) == (obs.content, call.error)
    assert r.done and r.reward == sample.reward


def test_unittest_driver_matches_the_real_command_line():
  spec = pyrepo.make_spec(0, "mean", 0)
  files = spec.buggy_files()
  with tempfile.TemporaryDirectory() as d:
    for path, text in files.items():
      with open(os.path.join(d, path), "w") as f:
        f.write(text)
    proc = subprocess.run([sys.executable, "-m", "unittest"], cwd=d, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONHASHSEED="0"), timeout=60)
    real = testrun.normalise_output(proc.stdout + proc.stderr, os.path.realpath(d))
  testrun._CACHE.clear()
  ours = testrun.run_unittest(files)
  assert (ours.output, ours.returncode, ours.passed) == (real, proc.returncode, False)
  assert "ZeroDivisionError" in real and "Ran 4 tests in 0.000s" in real


def test_unittest_runner_times_out():
  files = {"test_loop.py": "import unittest\n\nclass T(unittest.TestCase):\n"
                           "    def test(self):\n        while True:\n            pass\n"}
  run = testrun.run_unittest(files, timeout_s=0.5)
  assert run.timed_out and not run.passed
  assert run.output.endswith("[the test run was killed after 0.5 s]")


def _stdlib_file(path):
  assert path.startswith("Lib/")
  with open(os.path.join(sysconfig.get_paths()["stdlib"], path[4:]), encoding="utf-8") as f:
    return f.read()


def test_stdlib_edit_restores_the_original_source(data):
  assert data["stats"].get("probe_errors", 0) == 0
  assert data["stats"].get("described", 0) < 0.1 * N  # nearly all issues show real outputs
  for s in data["stdlib_edits"]:
    assert [sp.kind for sp in s.spans] == ["context", "file", "summary", "edit"]
    file_span, edit = s.spans[1], s.spans[3]
    assert file_span.path == edit.path
    real = _stdlib_file(file_span.path)
    search, replace = edit_blocks.parse_edit(edit.text)
    fixed = edit_blocks.apply_edit(file_span.text, search, replace)
    assert fixed in real                  # the fix gives back the interpreter's own source
    assert file_span.text not in real     # and the file span really carries a bug


_REPRO = re.compile(r">>> import (\S+)\n    >>> \1\.(\w+)\((.*)\)\n    (.*)\n\nThe expected "
                    r"result is:\n\n    (.*)\n")


def test_stdlib_issue_outputs_are_real(data):
  """The shown outputs are what the real library function and the buggy copy return."""
  import importlib
  checked = 0
  for s in data["stdlib_edits"]:
    m = _REPRO.search(s.spans[0].text)
    if m is None or m.group(4).startswith(("Traceback", "(the call")):
      continue
    module, func, args_text, buggy_shown, expected = m.groups()
    args = ast.literal_eval(f"({args_text},)") if args_text else ()
    mod = importlib.import_module(module)
    assert repr(getattr(mod, func)(*args)) == expected, s.id
    # the buggy function: the real source with the fix reverted
    fn = stdlib_edits.load_function(next(t for t in stdlib_edits.TARGETS
                                         if (t.module, t.func) == (module, func)))
    search, replace = edit_blocks.parse_edit(s.spans[3].text)
    if not replace or fn.source.count(replace) != 1:
      continue  # (a dropped guard, or the fixed text is not unique inside the function alone)
    buggy_src = edit_blocks.apply_edit(fn.source, replace, search)
    namespace = dict(vars(mod))
    exec(compile(buggy_src, fn.filename, "exec"), namespace)  # noqa: S102 - our own test code
    assert repr(namespace[func](*args)) == buggy_shown, s.id
    checked += 1
  assert checked >= 0.3 * N


def test_corpus_texts():
  texts = builtin.corpus_texts(0, samples_per_source=5, stdlib_files=3, max_file_chars=5000)
  assert len(texts) == 3 * 5 + 3 and all(isinstance(t, str) and t for t in texts)
  assert texts == builtin.corpus_texts(0, samples_per_source=5, stdlib_files=3, max_file_chars=5000)
  assert "    " in "".join(texts) and all(len(t) <= 5000 for t in texts[-3:])
