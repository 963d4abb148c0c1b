"""RL environment "calculator": the arithmetic tasks of data/builtin/calculator.py with the
`calc`/`answer` tools (nothing is executed: our own expression parser).

    make_env, make_tasks = make_env_factory("calculator", level="basic")
    train, held_out = make_tasks(0, 64), make_tasks(0, 64, split="eval")

Tasks: the seeded `calculator.make_problem(seed, i, level)` stream; a question is held out iff
sha256(question) % EVAL_BUCKETS == 0 (`calculator_split`, data generators filter with it too);
train reads the stream from index 0, eval from index EVAL_START on, each keeping its split's
questions. Reward 1 iff `answer(VALUE)` equals the exact answer.
"""

from __future__ import annotations

import dataclasses
import hashlib

from agentic_jax.data.builtin import calculator  # the task generators and the base environment
from agentic_jax.envs.registry import (EnvOptions, EnvSpec, check_n, check_split, option,
                                       register_env)

EVAL_START = 1_000_000  # calculator eval tasks: this index of the seed's stream onwards
EVAL_BUCKETS = 8       # a calculator question is held out iff sha256(question) % 8 == 0
CALC_ANSWER_TOOLS = ("answer",)


@dataclasses.dataclass(frozen=True)
class CalculatorOptions(EnvOptions):
  level: str = option("basic", choices=calculator.LEVELS,
                      doc="task level: basic | word | multistep | mixed")
  max_steps: int = option(12, positive=True, doc="tool calls per episode")
  allow_unisolated: bool = option(False, doc="accepted, unused: nothing is executed")


class CalculatorEnv(calculator.CalculatorEnv):
  answer_tools = CALC_ANSWER_TOOLS


def calculator_split(question: str) -> str:
  """"eval" for 1 in EVAL_BUCKETS questions (by content), else "train": the basic level's
  question space is small, so index ranges alone would repeat train questions in eval (15 of
  64 eval questions were among 4096 train tasks). Data generators can filter with it too."""
  digest = hashlib.sha256(question.encode("utf-8")).digest()
  return "eval" if int.from_bytes(digest[:8], "little") % EVAL_BUCKETS == 0 else "train"


def make_calculator(options: CalculatorOptions):
  """(make_env, make_tasks) of the calculator at `options.level`."""

  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    check_split(split)
    check_n(n)
    out, i = [], 0 if split == "train" else EVAL_START
    while len(out) < n:
      if split == "train" and i >= EVAL_START:
        raise ValueError(f"n: at most ~{EVAL_START * 7 // 8} calculator train tasks per seed")
      task = calculator.make_problem(seed, i, options.level).task
      if calculator_split(task.question) == split:
        out.append(task)
      i += 1
    return out

  return (lambda: CalculatorEnv(max_steps=options.max_steps, level=options.level)), make_tasks


register_env(EnvSpec(name="calculator", options=CalculatorOptions, factory=make_calculator))
