"""RL environments: the registry (agentic_jax.envs), the sandboxed code tasks (envs/code.py) and
the failing-test repositories (envs/pyrepo.py). Needs bubblewrap, like tests/test_sandbox.py.

Expected rewards come from the tasks' own reference material (HumanEval's canonical solutions,
the pyrepo templates' correct snippets via the scripted agent) or from solutions written here."""

from __future__ import annotations

import hashlib
import random

import pytest

from agentic_jax.data.builtin import agent, calculator, pyrepo, testrun
from agentic_jax import envs
from agentic_jax.envs import code as code_env
from agentic_jax.envs import pyrepo as repo_env
from agentic_jax import sandbox


# ------------------------------------------------------------------------------------ registry


def test_registry_rejects_unknown_names_options_and_types():
  with pytest.raises(ValueError, match=r"config\.rl\.env: unknown environment 'chess'"):
    envs.make_env_factory("chess")
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.levle: unknown option"):
    envs.make_env_factory("calculator", levle="basic")
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.level: expected one of"):
    envs.make_env_factory("calculator", level="hard")
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.max_steps: expected int"):
    envs.make_env_factory("calculator", max_steps="3")
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.timeout_s: expected > 0"):
    envs.make_env_factory("pycode", timeout_s=0)
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.shell: expected bool"):
    envs.make_env_factory("pyrepo", shell=1)
  # None = a config placeholder (not set), even for another environment's option
  envs.make_env_factory("calculator", level=None, shell=None)


def _held_out(question: str) -> bool:
  """The documented rule, recomputed: sha256(question) as a little-endian int, mod 8 == 0."""
  return int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "little") % 8 == 0


def test_calculator_factory_levels_and_splits():
  make_env, make_tasks = envs.make_env_factory("calculator", level="basic")
  train, held_out = make_tasks(0, 400), make_tasks(0, 64, split="eval")
  stream = [calculator.make_problem(0, i, "basic").task for i in range(12)]
  expected = [t for t in stream if not _held_out(t.question)][:5]
  assert [t.id for t in train[:5]] == [t.id for t in expected]
  assert len(expected) < len(stream)  # the filter did skip some (so this checks it)
  assert all(_held_out(t.question) for t in held_out)
  assert all(int(t.id.rsplit("-", 1)[1]) >= envs.EVAL_START for t in held_out)
  assert not {t.question for t in train} & {t.question for t in held_out}
  env = make_env()
  assert env.answer_tools == ("answer",) and set(env.tools) == {"calc", "answer"}
  env.reset(train[0])
  assert env.step("answer(x y)").info["error"]  # malformed: an explanation, no exception
  word = envs.make_env_factory("calculator", level="word")[1](0, 2)
  assert all(t.id.startswith("calc-0-") and not _held_out(t.question) for t in word)
  with pytest.raises(ValueError, match="split"):
    make_tasks(0, 1, split="test")


def test_without_bubblewrap_code_envs_refuse_unless_unisolated_is_allowed(monkeypatch):
  monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None)  # no bwrap on PATH
  with pytest.raises(sandbox.SandboxUnavailable,
                     match=r"config\.rl\.env_options\.allow_unisolated is False"):
    envs.make_env_factory("pycode")
  with pytest.raises(sandbox.SandboxUnavailable, match="allow_unisolated"):
    envs.make_env_factory("pyrepo")
  make_env, make_tasks = envs.make_env_factory("pycode", allow_unisolated=True)
  env = make_env()
  task = code_env.builtin_tasks()[0]  # add(a, b)
  env.reset(task)
  assert env.step("submit()\n    return a + b").reward == 1.0  # ran, with limits only


# ---------------------------------------------------------------------------------- code tasks


def test_humaneval_split_is_fixed_and_disjoint():
  train, held_out = code_env.humaneval_tasks("train"), code_env.humaneval_tasks("eval")
  assert (len(train), len(held_out)) == (131, 33)  # 164 problems, N % 5 == 0 -> eval
  assert {t.id for t in held_out} == {f"HumanEval/{n}" for n in range(0, 164, 5)}
  assert not {t.id for t in train} & {t.id for t in held_out}
  _, make_tasks = envs.make_env_factory("humaneval")
  a, b = make_tasks(3, 40), make_tasks(3, 40)
  assert [t.id for t in a] == [t.id for t in b] and len({t.id for t in a}) == 40
  assert len({t.id for t in make_tasks(3, 33, split="eval")}) == 33
  cycled = make_tasks(1, 140)  # more than the pool: a second (reshuffled) pass
  assert len({t.id for t in cycled[:131]}) == 131
  with pytest.raises(ValueError, match="only 33"):
    make_tasks(0, 34, split="eval")


@pytest.fixture(scope="module")
def he0():
  task = next(t for t in code_env.humaneval_tasks("eval") if t.id == "HumanEval/0")
  env = code_env.CodeEnv(timeout_s=2.0)
  return task, env


def test_canonical_solution_passes_and_a_wrong_one_fails(he0):
  task, env = he0
  env.reset(task)
  res = env.step("submit()\n" + task.canonical_solution)
  assert (res.done, res.reward, res.observation) == (True, 1.0, "submitted: all tests pass")
  env.reset(task)
  res = env.step("submit()\n    return False")  # check()'s first assert expects True
  assert (res.done, res.reward) == (True, 0.0)
  assert res.observation.startswith("submitted, but the tests fail") and "AssertionError" in \
      res.observation
  assert res.info == {"tool": "submit", "error": False, "passed": False, "timed_out": False,
                      "killed_reason": None}


def test_infinite_loop_is_stopped_with_a_structured_result(he0):
  task, env = he0
  env.reset(task)
  res = env.step("submit()\n    while True:\n        pass")
  assert (res.done, res.reward) == (True, 0.0)
  assert res.info["timed_out"] and res.info["killed_reason"] == "timeout"
  assert "2 s time limit" in res.observation


def test_malformed_calls_are_explained_not_raised(he0):
  task, env = he0
  env.reset(task)
  for action, expected in (("submit()", "needs a body"), ("submit", "malformed tool call"),
                           ("exec()\n    pass", "unknown tool 'exec'"),
                           ("run(x)\n    pass", "takes no argument"), ("", "empty action")):
    res = env.step(action)
    assert not res.done and res.info["error"] and expected in res.observation, action
  # a syntax error in the candidate is an observation too (the call itself was well formed)
  res = env.step("run()\n    return (")
  assert not res.done and not res.info["error"] and "SyntaxError" in res.observation


def test_run_shows_the_docstring_examples(he0):
  task, env = he0
  env.reset(task)
  res = env.step("run()\n    return False")
  # HumanEval/0's docstring: f([1.0, 2.0, 3.0], 0.5) -> False, f([1.0, 2.8, ...], 0.3) -> True
  assert "example 1: has_close_elements([1.0, 2.0, 3.0], 0.5) returned False, expected False: ok" \
      in res.observation
  assert "expected True: WRONG" in res.observation and "1 of 2 examples pass" in res.observation
  assert not res.done and res.reward == 0.0


def test_candidate_forms_and_exit_tricks():
  task = code_env.builtin_tasks()[3]  # second_largest(values)
  env = code_env.CodeEnv(timeout_s=5.0)
  for body, reward in (
      ("    return sorted(set(values))[-2]", 1.0),                       # body
      ("return sorted(set(values))[-2]", 1.0),                           # unindented body
      ("def second_largest(values):\n    return sorted(set(values))[-2]", 1.0),  # whole def
      ("    import sys\n    sys.exit(0)", 0.0),                          # exits inside check
      ("    import os\n    os._exit(0)", 0.0),
      ("    print('passed')\n    return 0", 0.0)):
    env.reset(task)
    assert env.step("submit()\n" + body).reward == reward, body


def test_code_env_step_limit():
  env = code_env.CodeEnv(max_steps=2)
  env.reset(code_env.builtin_tasks()[0])
  assert not env.step("run()\n    return 0").done
  res = env.step("run()\n    return 0")
  assert res.done and res.reward == 0.0 and res.info["step_limit"]


# ------------------------------------------------------------------------------- repositories


@pytest.fixture(scope="module")
def repo_factory():
  return envs.make_env_factory("pyrepo")


def test_scripted_fix_earns_reward_and_a_no_op_does_not(repo_factory):
  make_env, _ = repo_factory
  env = make_env()
  spec = pyrepo.make_spec(0, "mean", 1)
  task = pyrepo.make_task(0, "mean", 1)
  policy = agent.pyrepo_policy(spec, random.Random(0), read_tests=True, malformed=False,
                               bad_search=False, wrong_fix=False, outcome="fixed")
  sample = agent.run_episode(env, task, policy, sample_id="t", source="pyrepo")
  assert sample.reward == 1.0 and sample.turns[-1].content == "submitted: all tests pass"
  env.reset(task)
  res = env.step("submit()")
  assert (res.done, res.reward) == (True, 0.0) and "FAIL" in res.observation


def test_sandboxed_test_output_equals_the_mid_training_runner(repo_factory):
  make_env, _ = repo_factory
  env = make_env()
  task = pyrepo.make_task(0, "clamp", 2)
  env.reset(task)
  res = env.step("run_tests()")
  # testrun runs the same tests in a plain subprocess: same text after the same normalisation
  assert res.observation == testrun.run_unittest(task.files).output
  assert "/repo/" in res.observation and "/tmp/scratch" not in res.observation


def test_paths_outside_the_repository_are_refused(repo_factory):
  make_env, _ = repo_factory
  env = make_env()
  env.reset(pyrepo.make_task(0, "vowels", 0))
  for action in ("cat(../../etc/passwd)", "cat(/etc/passwd)", "cat(/repo/../etc/passwd)",
                 "edit(../x.py)\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE"):
    res = env.step(action)
    assert not res.done and res.info["error"], action
    assert "expected a relative path inside the repo" in res.observation, action


def test_pyrepo_splits_differ():
  _, make_tasks = envs.make_env_factory("pyrepo")
  train, held_out = make_tasks(0, 44), make_tasks(0, 44, split="eval")
  assert len({t.id for t in train}) == len({t.id for t in held_out}) == 44
  assert not {t.id for t in train} & {t.id for t in held_out}
  with pytest.raises(ValueError, match="only 44"):
    make_tasks(0, 45, split="eval")


def test_shell_tool_is_confined_and_throwaway():
  env = repo_env.RepoEnv(shell=True)
  task = pyrepo.make_task(0, "rotate", 0)
  env.reset(task)
  assert "sh(COMMAND)" in env.system_prompt
  res = env.step("sh(wc -l < " + sorted(task.files)[0] + ")")
  assert res.observation.strip() == str(task.files[sorted(task.files)[0]].count("\n"))
  res = env.step("sh(cat /etc/shadow; ls /work; echo x > /outside; rm *.py; ls)")
  assert "Permission denied" in res.observation or "No such file" in res.observation
  assert "Read-only file system" in res.observation
  assert env.step("ls()").observation.split() == sorted(task.files)  # rm was on a copy
