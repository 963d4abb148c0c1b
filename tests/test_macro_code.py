"""The macro-operation programs (data/builtin/macro_code.py) and their RL environment
(envs/macro_code.py). The sandbox tests need bubblewrap, like tests/test_rl_envs.py.

Expected values of the reference semantics are written here by hand; the templates are checked
against the reference by exec'ing them in-process (trusted, generated code) on random inputs."""

from __future__ import annotations

import random

import pytest

from agentic_jax import envs
from agentic_jax.data.builtin import macro_code
from agentic_jax.envs import code as code_env
from agentic_jax.envs import macro_code as macro_env


def _ids_and_sources(progs):
  return [(p.id, p.prompt, p.body, p.test) for p in progs]


# ------------------------------------------------------------------------------------ generator


def test_programs_are_deterministic_and_seeds_differ():
  a, b = macro_code.programs(0, 30), macro_code.programs(0, 30)
  assert a == b
  assert _ids_and_sources(macro_code.programs(0, 10)) == _ids_and_sources(a[:10])  # a prefix
  assert _ids_and_sources(macro_code.programs(1, 30)) != _ids_and_sources(a)
  assert [p.id for p in a[:2]] == ["macro/train/0/0", "macro/train/0/1"]
  assert macro_code.programs(0, 5, split="eval")[0].id == "macro/eval/0/0"
  assert len({p.ops for p in a}) > 5  # varied compositions, not one repeated


def test_program_shape_prompt_and_lengths():
  for p in macro_code.programs(3, 100, min_ops=2, max_ops=3):
    assert 2 <= len(p.ops) <= 3 and p.entry_point == "solve"
    assert p.blocks[-1] == macro_code.Block("return", "return", ("    return xs\n",))
    doc = ", ".join(b.phrase for b in p.blocks[:-1])
    assert p.prompt == f'def solve(xs):\n    """Steps: {doc}."""\n'
    assert all(line.endswith("\n") and line.startswith("    ") for b in p.blocks
               for line in b.lines)
    assert all(b.lines[-1].startswith("    xs = out") for b in p.blocks[:-1])  # ops compose
    assert len((p.prompt + p.body).split()) < 120
    assert (p.prompt + p.body).count("\n") <= 20
    assert p.test.startswith("def check(candidate):\n") and p.test.count("assert ") >= 3
  longest = macro_code.programs(0, 50, min_ops=5, max_ops=5)
  assert max(len((p.prompt + p.body).split()) for p in longest) < 120


def test_ops_share_first_lines_and_phrases_are_short():
  firsts = [macro_code.block(op, (macro_code.params(op) or [None])[0]).lines[:2]
            for op in macro_code.OPS]
  assert len(macro_code.OPS) == 8
  assert max(firsts.count(f) for f in firsts) >= 5  # the shared `out = []` / `for x in xs:`
  for op in macro_code.OPS:
    ks = macro_code.params(op) or [None]
    for k in ks:
      assert k is None or 0 <= k <= 9
      b = macro_code.block(op, k)
      assert 2 <= len(b.lines) <= 5 and len(b.phrase.split()) <= 2
  assert macro_code.phrase("add", 3) == "add 3" and macro_code.phrase("evens") == "evens"


def test_split_is_by_composition_and_disjoint():
  train = macro_code.programs(0, 300)
  held_out = macro_code.programs(0, 300, split="eval")
  assert all(macro_code.split_of(p.ops) == "eval" for p in held_out)
  assert all(macro_code.split_of(p.ops) == "train" for p in train)
  assert not {p.ops for p in train} & {p.ops for p in held_out}
  # ~20% of compositions are held out, and every op still occurs in training
  for length in (2, 3):
    n_eval = len(macro_code.compositions(length, "eval"))
    n_all = n_eval + len(macro_code.compositions(length, "train"))
    assert 0.12 < n_eval / n_all < 0.3
  assert {op for p in train for op in p.ops} == set(macro_code.OPS)
  # parameters do not matter: programs with the same ops but other parameters share a split
  by_ops: dict = {}
  for p in train:
    by_ops.setdefault(p.ops, set()).add(p.blocks)
  assert any(len(variants) > 1 for variants in by_ops.values())


def test_reference_semantics_by_hand():
  xs = [3, -1, 4, -6, 0]
  assert macro_code.apply("add", 3, xs) == [6, 2, 7, -3, 3]
  assert macro_code.apply("times", 2, xs) == [6, -2, 8, -12, 0]
  assert macro_code.apply("square", None, xs) == [9, 1, 16, 36, 0]
  assert macro_code.apply("above", 0, xs) == [3, 4]
  assert macro_code.apply("evens", None, xs) == [4, -6, 0]
  assert macro_code.apply("reverse", None, xs) == [0, -6, 4, -1, 3]
  assert macro_code.apply("cumsum", None, xs) == [3, 2, 6, 0, 0]
  assert macro_code.apply("drop", 2, xs) == [4, -6, 0]
  assert macro_code.apply("drop", 3, [1]) == [] and macro_code.apply("cumsum", None, []) == []
  assert xs == [3, -1, 4, -6, 0]  # not mutated
  # evens, times 2, cumsum on [1, 2, 3, 4, -2]: [2, 4, -2] -> [4, 8, -4] -> [4, 12, 8]
  steps = [("evens", None), ("times", 2), ("cumsum", None)]
  assert macro_code.run_steps(steps, [1, 2, 3, 4, -2]) == [4, 12, 8]
  p = macro_code.make_program(steps)
  assert p.prompt == 'def solve(xs):\n    """Steps: evens, times 2, cumsum."""\n'
  assert "    assert candidate([3, -1, 4, 1, -5, 9, 2, 6]) == [8, 12, 24]\n" in p.test


def test_every_template_agrees_with_the_reference():
  rng = random.Random(0)
  inputs = [[], [0], [-3]] + [[rng.randint(-9, 9) for _ in range(rng.randint(1, 8))]
                              for _ in range(40)]
  for op in macro_code.OPS:
    for k in macro_code.params(op) or [None]:
      src = "def f(xs):\n" + "".join(macro_code.block(op, k).lines) + "    return xs\n"
      ns: dict = {}
      exec(src, ns)  # pylint: disable=exec-used  (generated here, trusted)
      for xs in inputs:
        assert ns["f"](list(xs)) == macro_code.apply(op, k, xs), (op, k, xs)


def test_canonical_programs_pass_their_own_tests_in_process():
  for p in macro_code.programs(5, 60, min_ops=1, max_ops=4) + macro_code.programs(
      5, 30, split="eval"):
    ns: dict = {}
    exec(p.prompt + p.body + p.test, ns)  # pylint: disable=exec-used
    ns["check"](ns["solve"])


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match="split"):
    macro_code.programs(0, 1, split="test")
  with pytest.raises(ValueError, match="n: expected"):
    macro_code.programs(0, -1)
  with pytest.raises(ValueError, match="min_ops"):
    macro_code.programs(0, 1, min_ops=3, max_ops=2)
  with pytest.raises(ValueError, match="max_ops"):
    macro_code.programs(0, 1, max_ops=macro_code.MAX_OPS + 1)
  with pytest.raises(ValueError, match="seed"):
    macro_code.programs("0", 1)
  with pytest.raises(ValueError, match="op: expected one of"):
    macro_code.split_of(["add", "sort"])
  with pytest.raises(ValueError, match="expected k in"):
    macro_code.block("add", 12)
  with pytest.raises(ValueError, match="takes no parameter"):
    macro_code.block("evens", 2)


# ------------------------------------------------------------------------- sandbox and the env


def test_bodies_pass_hidden_tests_in_the_sandbox_and_a_wrong_body_fails():
  tasks = macro_env.macro_tasks(0, 3, "train") + macro_env.macro_tasks(0, 2, "eval")
  for task in tasks:
    out = code_env.run_candidate(task, task.canonical_solution, hidden=True)
    assert out.passed, (task.id, out.output)
  wrong = tasks[0].canonical_solution.replace("    return xs\n", "    return xs[::-1] + [0]\n")
  out = code_env.run_candidate(tasks[0], wrong, hidden=True)
  assert not out.passed and "AssertionError" in out.output


def test_registered_env_rewards_the_canonical_solution():
  assert "macro_code" in envs.env_names()
  make_env, make_tasks = envs.make_env_factory("macro_code", max_ops=2, timeout_s=5.0)
  train, held_out = make_tasks(1, 4), make_tasks(1, 4, split="eval")
  assert all(isinstance(t, code_env.CodeTask) for t in train + held_out)
  assert all(macro_code.split_of(_program_of(t).ops) == "train" for t in train)
  assert all(macro_code.split_of(_program_of(t).ops) == "eval" for t in held_out)
  assert [t.id for t in held_out] == [t.id for t in macro_env.macro_tasks(1, 4, "eval",
                                                                          max_ops=2)]
  env = make_env()
  assert isinstance(env, code_env.CodeEnv) and env.answer_tools == ("submit",)
  obs = env.reset(held_out[0])
  assert held_out[0].prompt in obs
  res = env.step("submit()\n" + held_out[0].canonical_solution)
  assert (res.done, res.reward) == (True, 1.0)
  env.reset(train[0])
  res = env.step("submit()\n    return xs")
  assert (res.done, res.reward) == (True, 0.0)


def _program_of(task):
  """The generator's program behind a task id "macro/{split}/{seed}/{i}"."""
  _, split, seed, i = task.id.split("/")
  prog = macro_code.programs(int(seed), int(i) + 1, split=split, max_ops=2)[int(i)]
  assert prog.body == task.canonical_solution
  return prog


def test_env_options_are_checked():
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.min_ops: expected <= max_ops"):
    envs.make_env_factory("macro_code", min_ops=3, max_ops=2)
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.max_ops: expected <= 5"):
    envs.make_env_factory("macro_code", max_ops=6)
  with pytest.raises(ValueError, match=r"config\.rl\.env_options\.min_ops: expected > 0"):
    envs.make_env_factory("macro_code", min_ops=0)
  assert envs.MacroCodeOptions().to_dict() == {
      "timeout_s": 5.0, "memory_mb": 512, "max_steps": 8, "allow_unisolated": False,
      "min_ops": 2, "max_ops": 3}
  with pytest.raises(ValueError, match="split"):
    macro_env.macro_tasks(0, 1, "test")
