"""The RL environments: `config.rl.env` + `config.rl.env_options` -> (make_env, make_tasks).

    from agentic_jax import envs
    make_env, make_tasks = envs.make_env_factory("calculator", level="basic")
    env = make_env()                                  # a fresh Environment per episode slot
    train = make_tasks(seed=0, n=64)                  # split="train"
    held_out = make_tasks(seed=0, n=64, split="eval")
    envs.make_env_factory("pyrepo", envs.RepoOptions(shell=True))   # or a typed options instance

To add an environment: one module in agentic_jax/envs/ with its options dataclass and a
register_env call (registry.py shows one; this package imports every module in it, so the
environment appears in config.rl.env's choices and its options in config.rl.env_options).
tests/test_env_registry.py registers a tiny "echo" environment inside a test.

Every environment satisfies the protocol of data/builtin/protocol.py (re-exported here:
reset(task) -> str, step(action) -> StepResult, system_prompt; a malformed action gives an
explanatory observation, never an exception) and carries `tools` and `answer_tools` (the tools
that end a task) for AgentFlow.

| name       | module        | options dataclass: option (default)                  | tasks / split             |
|------------|---------------|------------------------------------------------------|---------------------------|
| calculator | calculator.py | CalculatorOptions: level ("basic"), max_steps (12),  | make_problem stream;      |
|            |               | allow_unisolated (accepted, unused)                  | eval iff sha256 % 8 == 0, |
|            |               |                                                      | read from EVAL_START on   |
| humaneval  | code.py       | HumanEvalOptions: timeout_s (5.0), memory_mb (512),  | 164 HumanEval problems;   |
|            |               | max_steps (8), allow_unisolated (False), builtin     | eval iff N % 5 == 0       |
|            |               | (False: add the built-in pycode tasks)               | seeded order              |
| macro_code | macro_code.py | MacroCodeOptions: as pycode, plus min_ops (2) and    | data/builtin/macro_code;  |
|            |               | max_ops (3), the macro-ops per program (at most 5)   | eval iff the op sequence's|
|            |               |                                                      | sha256 % 5 == 0           |
| pycode     | code.py       | PycodeOptions: as humaneval without builtin          | code.builtin_tasks        |
| pyrepo     | pyrepo.py     | RepoOptions: timeout_s (20.0), memory_mb (512),      | templates x variants 0-3  |
|            |               | max_steps (20), allow_unisolated (False), shell      | (train), 4-7 (eval)       |
|            |               | (False: add sh(COMMAND))                             |                           |

config.rl.env_options holds a typed placeholder for every option of every registered
environment (None = the chosen environment's default); setting one the chosen environment does
not have, a wrong type or a bad value is a one-line error naming config.rl.env_options.KEY.
Sandbox policy: humaneval, macro_code, pycode and pyrepo run model-written code; building their
factory starts one trivial sandbox run that raises SandboxUnavailable without bubblewrap
isolation, unless allow_unisolated is True (code.py).

Imports flow rl -> envs -> data and envs -> sandbox (agentic_jax/sandbox/, which imports nothing
else from agentic_jax); nothing here imports rl (tests/test_layering.py checks it).
"""

from __future__ import annotations

import importlib
import pkgutil

from agentic_jax.data.builtin.protocol import (ActionError, Environment, StepResult, Tool,
                                               parse_action)
from agentic_jax.envs.registry import (EnvOptions, EnvSpec, MakeEnv, MakeTasks, OptionError,
                                       answer_tools, check_n, check_split, config_option_types,
                                       env_names, get_spec, make_env_factory, make_options, option,
                                       register_env, unregister_env)

# every environment module of this package registers itself on import
for _module in pkgutil.iter_modules(__path__):
  if not _module.name.startswith("_") and _module.name != "registry":
    importlib.import_module(f"{__name__}.{_module.name}")

# pylint: disable=wrong-import-position
from agentic_jax.envs.calculator import (EVAL_BUCKETS, EVAL_START, CalculatorEnv,
                                         CalculatorOptions, calculator_split)
from agentic_jax.envs.code import CodeEnv, HumanEvalOptions, PycodeOptions, check_sandbox
from agentic_jax.envs.macro_code import MacroCodeOptions, macro_tasks
from agentic_jax.envs.pyrepo import RepoEnv, RepoOptions

__all__ = [
    # the registry (registry.py)
    "EnvOptions", "EnvSpec", "MakeEnv", "MakeTasks", "OptionError", "answer_tools", "check_n",
    "check_split", "config_option_types", "env_names", "get_spec", "make_env_factory",
    "make_options", "option", "register_env", "unregister_env",
    # the environment protocol (data/builtin/protocol.py)
    "ActionError", "Environment", "StepResult", "Tool", "parse_action",
    # the built-in environments
    "EVAL_BUCKETS", "EVAL_START", "CalculatorEnv", "CalculatorOptions", "calculator_split",
    "CodeEnv", "HumanEvalOptions", "PycodeOptions", "check_sandbox", "RepoEnv", "RepoOptions",
    "MacroCodeOptions", "macro_tasks",
]
