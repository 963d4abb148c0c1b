"""Registry of the RL environments: `config.rl.env` + `config.rl.env_options` -> (make_env, make_tasks).

    make_env, make_tasks = make_env_factory("calculator", level="basic")
    env = make_env()                                  # a fresh Environment per episode slot
    train = make_tasks(seed=0, n=64)                  # split="train"
    held_out = make_tasks(seed=0, n=64, split="eval")

Every environment satisfies `data.builtin.envs.Environment` (reset(task) -> str, step(action)
-> StepResult, system_prompt; malformed actions give an explanatory observation, never an
exception) and carries `tools` and `answer_tools` (the tools that end a task) for AgentFlow.

| name       | options (default)                                     | tasks / split                      |
|------------|-------------------------------------------------------|------------------------------------|
| calculator | level ("basic"), max_steps (12), allow_unisolated     | calculator.make_problem stream;    |
|            | (accepted, unused: nothing is executed)               | split by question hash (1/8 eval), |
|            |                                                       | eval read from index EVAL_START on |
| humaneval  | timeout_s (5), memory_mb (512), max_steps (8),        | 164 HumanEval problems; eval iff   |
|            | allow_unisolated (False), builtin (False: add the     | N % 5 == 0 (code_env); seeded      |
|            | small built-in tasks)                                 | order, train cycles, eval <= pool  |
| pycode     | as humaneval (the built-in tasks only: fast, for CI)  | code_env.builtin_tasks             |
| pyrepo     | timeout_s (20), memory_mb (512), max_steps (20),      | templates x variants 0-3 (train),  |
|            | allow_unisolated (False), shell (False: add sh(...))  | variants 4-7 (eval), per seed      |

Sandbox policy: the environments that run model-written code (humaneval, pycode, pyrepo) start
one trivial sandbox run when the factory is built; without bubblewrap isolation this raises
SandboxUnavailable naming `config.rl.env_options.allow_unisolated`, unless that option is True
(then code runs with resource limits only, WITHOUT filesystem or network isolation).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

from agentic_jax.data.builtin import calculator, pyrepo
from agentic_jax.rl import code_env, repo_env, sandbox

EVAL_START = 1_000_000  # calculator eval tasks: this index of the seed's stream onwards
EVAL_BUCKETS = 8       # a calculator question is held out iff sha256(question) % 8 == 0
CALC_ANSWER_TOOLS = ("answer",)
SPLITS = ("train", "eval")

MakeEnv = Callable[[], Any]
MakeTasks = Callable[..., list]


class CalculatorEnv(calculator.CalculatorEnv):
  answer_tools = CALC_ANSWER_TOOLS


def _check_options(name: str, options: dict, allowed: dict) -> dict:
  """Defaults merged with `options`; unknown keys and wrongly typed values raise ValueError. A
  None value means "not set" (config placeholders), whatever the key."""
  out = dict(allowed)
  for key, value in options.items():
    if value is None:  # a config placeholder: this env's default (or not an option of this env)
      continue
    if key not in allowed:
      raise ValueError(f"config.rl.env_options.{key}: unknown option for env {name!r}; "
                       f"expected some of {sorted(allowed)}")
    default = allowed[key]
    kinds = (int, float) if isinstance(default, float) else type(default)
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kinds):
      raise ValueError(f"config.rl.env_options.{key}: expected {type(default).__name__} for env "
                       f"{name!r}, got {type(value).__name__} {value!r}")
    out[key] = value
  for key in ("max_steps", "memory_mb", "timeout_s"):
    if key in out and not out[key] > 0:
      raise ValueError(f"config.rl.env_options.{key}: expected > 0, got {out[key]!r}")
  return out


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")


def _check_n(n: int) -> None:
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f"n: expected a number of tasks >= 0, got {n!r}")


def check_sandbox(allow_unisolated: bool) -> None:
  """One trivial sandboxed run: fails early (not mid-rollout) when isolation is unavailable."""
  try:
    res = sandbox.run_python("pass", timeout_s=20.0, allow_unisolated=allow_unisolated)
  except sandbox.SandboxUnavailable as e:
    raise sandbox.SandboxUnavailable(
        f"config.rl.env_options.allow_unisolated is False and the sandbox cannot isolate "
        f"model-written code: {e}") from e
  if not res.ok:
    raise sandbox.SandboxUnavailable(f"the sandbox failed to run a trivial program: exit "
                                     f"{res.returncode}, {res.killed_reason}: {res.stderr[-500:]}")


def calculator_split(question: str) -> str:
  """"eval" for 1 in EVAL_BUCKETS questions (by content), else "train": the basic level's
  question space is small, so index ranges alone would repeat train questions in eval (15 of
  64 eval questions were among 4096 train tasks). Data generators can filter with it too."""
  digest = hashlib.sha256(question.encode("utf-8")).digest()
  return "eval" if int.from_bytes(digest[:8], "little") % EVAL_BUCKETS == 0 else "train"


def _calculator(options: dict) -> tuple[MakeEnv, MakeTasks]:
  o = _check_options("calculator", options, {"level": "basic", "max_steps": 12,
                                              "allow_unisolated": False})
  if o["level"] not in calculator.LEVELS:
    raise ValueError(f"config.rl.env_options.level: expected one of {list(calculator.LEVELS)}, "
                     f"got {o['level']!r}")

  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    _check_split(split)
    _check_n(n)
    out, i = [], 0 if split == "train" else EVAL_START
    while len(out) < n:
      if split == "train" and i >= EVAL_START:
        raise ValueError(f"n: at most ~{EVAL_START * 7 // 8} calculator train tasks per seed")
      task = calculator.make_problem(seed, i, o["level"]).task
      if calculator_split(task.question) == split:
        out.append(task)
      i += 1
    return out

  return (lambda: CalculatorEnv(max_steps=o["max_steps"], level=o["level"])), make_tasks


_CODE_OPTIONS = {"timeout_s": 5.0, "memory_mb": 512, "max_steps": 8, "allow_unisolated": False}


def _code(name: str, options: dict) -> tuple[MakeEnv, MakeTasks]:
  allowed = dict(_CODE_OPTIONS, **({"builtin": False} if name == "humaneval" else {}))
  o = _check_options(name, options, allowed)
  check_sandbox(o["allow_unisolated"])

  def pool(split: str) -> list:
    if name == "pycode":
      return code_env.builtin_tasks(split)
    return code_env.humaneval_tasks(split) + (code_env.builtin_tasks(split) if o["builtin"] else [])

  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    _check_split(split)
    _check_n(n)
    return code_env.select_tasks(pool(split), seed, n, split=split, name=name)

  def make_env() -> code_env.CodeEnv:
    return code_env.CodeEnv(max_steps=o["max_steps"], timeout_s=o["timeout_s"],
                            memory_mb=o["memory_mb"], allow_unisolated=o["allow_unisolated"])

  return make_env, make_tasks


def _pyrepo(options: dict) -> tuple[MakeEnv, MakeTasks]:
  o = _check_options("pyrepo", options, {"timeout_s": 20.0, "memory_mb": 512, "max_steps": 20,
                                          "allow_unisolated": False, "shell": False})
  check_sandbox(o["allow_unisolated"])
  names = sorted(pyrepo.TEMPLATES)
  # one runner (and its cache of test results) shared by all the factory's environments
  runner = repo_env.SandboxRunner(timeout_s=o["timeout_s"], memory_mb=o["memory_mb"],
                                  allow_unisolated=o["allow_unisolated"])

  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    _check_split(split)
    _check_n(n)
    if split == "train":
      return pyrepo.make_tasks(seed, n)  # cycles through templates x variants 0..VARIANTS-1
    distinct = len(names) * pyrepo.VARIANTS
    if n > distinct:
      raise ValueError(f"pyrepo: asked for {n} eval tasks but there are only {distinct} distinct "
                       f"eval repositories per seed")
    return [pyrepo.make_task(seed, names[i % len(names)], pyrepo.VARIANTS + i // len(names))
            for i in range(n)]

  def make_env() -> repo_env.RepoEnv:
    return repo_env.RepoEnv(max_steps=o["max_steps"], timeout_s=o["timeout_s"],
                            memory_mb=o["memory_mb"], allow_unisolated=o["allow_unisolated"],
                            shell=o["shell"], runner=runner)

  return make_env, make_tasks


ENVS: dict[str, Callable[[dict], tuple[MakeEnv, MakeTasks]]] = {
    "calculator": _calculator,
    "humaneval": lambda o: _code("humaneval", o),
    "pycode": lambda o: _code("pycode", o),
    "pyrepo": _pyrepo,
}


def make_env_factory(name: str, **options) -> tuple[MakeEnv, MakeTasks]:
  """(make_env, make_tasks(seed, n, split="train"|"eval")) for `config.rl.env` = name."""
  if name not in ENVS:
    raise ValueError(f"config.rl.env: unknown environment {name!r}; expected one of {sorted(ENVS)}")
  return ENVS[name](dict(options))


def answer_tools(env: Any) -> Sequence[str]:
  """The tools of `env` that end a task (its `answer_tools`, else those named answer/submit)."""
  tools = getattr(env, "tools", {})
  return tuple(getattr(env, "answer_tools", None) or
               [t for t in ("answer", "submit") if t in tools])
