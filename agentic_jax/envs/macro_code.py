"""RL environment "macro_code": the synthetic macro-operation programs of
data/builtin/macro_code.py as sandboxed function-writing tasks (RA3, issue 13).

    make_env, make_tasks = make_env_factory("macro_code", min_ops=2, max_ops=3)
    tasks = make_tasks(seed=0, n=64)                  # split="train"
    held_out = make_tasks(seed=0, n=64, split="eval") # unseen compositions of known ops
    tasks = macro_tasks(0, 64, "eval")                # the same CodeTasks, without the registry

Each program becomes a `code.CodeTask` (prompt = `def solve(xs):` + the "Steps: ..." docstring,
test = the program's `check`, canonical_solution = its body), so everything else is pycode's:
the environment is `code.CodeEnv` (tools run()/submit(), reward 1 iff the hidden check passes,
the per-run token against faked passes), with the same sandbox policy (`code.check_sandbox` when
the factory is built). run() finds no `>>>` examples in these docstrings, so it only reports
whether the code runs; the hidden tests are the signal.

Split: the generator's, by composition (`macro_code.split_of`: ~20% of op sequences are "eval",
whatever their parameters), mapped one to one to the registry's "train"/"eval". The task stream
is fresh programs, not a fixed pool: make_tasks never runs out, for either split.

Options: pycode's (timeout_s, memory_mb, max_steps, allow_unisolated) plus min_ops / max_ops, the
number of ops per program (1 <= min_ops <= max_ops <= macro_code.MAX_OPS).
"""

from __future__ import annotations

import dataclasses

from agentic_jax.data.builtin import macro_code
from agentic_jax.envs.code import CodeEnv, CodeTask, PycodeOptions, check_sandbox
from agentic_jax.envs.registry import EnvSpec, OptionError, check_n, check_split, option, \
    register_env


def macro_tasks(seed: int, n: int, split: str, *, min_ops: int = 2,
                max_ops: int = 3) -> list[CodeTask]:
  """`n` CodeTasks from macro_code.programs(seed, n, split=...) (for evaluation code that does not
  go through the registry); deterministic in all arguments."""
  check_split(split)
  check_n(n)
  return [CodeTask(p.id, p.prompt, p.entry_point, p.test, canonical_solution=p.body)
          for p in macro_code.programs(seed, n, split=split, min_ops=min_ops, max_ops=max_ops)]


@dataclasses.dataclass(frozen=True)
class MacroCodeOptions(PycodeOptions):
  min_ops: int = option(2, positive=True, doc="fewest macro-ops per program")
  max_ops: int = option(3, positive=True, doc=f"most macro-ops per program (<= "
                                                f"{macro_code.MAX_OPS})")

  def __post_init__(self):
    super().__post_init__()
    # the cross-field checks EnvOptions cannot express, reported the same way (one line, the key)
    if self.max_ops > macro_code.MAX_OPS:
      raise OptionError("max_ops", f"expected <= {macro_code.MAX_OPS}, got {self.max_ops}")
    if self.min_ops > self.max_ops:
      raise OptionError("min_ops", f"expected <= max_ops ({self.max_ops}), got {self.min_ops}")


def _macro_code(options: MacroCodeOptions):
  """(make_env, make_tasks) of "macro_code"; fails early when the sandbox cannot isolate."""
  check_sandbox(options.allow_unisolated)

  def make_tasks(seed: int, n: int, split: str = "train") -> list[CodeTask]:
    return macro_tasks(seed, n, split, min_ops=options.min_ops, max_ops=options.max_ops)

  def make_env() -> CodeEnv:
    return CodeEnv(max_steps=options.max_steps, timeout_s=options.timeout_s,
                   memory_mb=options.memory_mb, allow_unisolated=options.allow_unisolated)

  return make_env, make_tasks


register_env(EnvSpec(name="macro_code", options=MacroCodeOptions, factory=_macro_code))
