"""Concurrent environment steps: one round's actions of a batch of rows, in a bounded thread pool.

    results = step_all(envs, actions, workers=8)   # list[StepResult], in the order of `envs`

The RL rollouts (rollout.rollout, agentflow.run_agentflow; config.rl.env_workers) first record
every row's turn of the round, then step all the rows' environments here, then apply the results
in row order. Each environment sees only its own action and rows share no environment (every
make_env() call returns a fresh one, the registry's contract; a resource they do share, like
pyrepo's cache of test runs, must be thread-safe, as that one is), so the episodes equal those of
stepping one environment after the other, while a round of sandboxed code actions costs about
its slowest action instead of the sum (benchmarks/rollout.py measures it).

Failures are observations. An exception out of env.step(action) becomes the observation of a
failed tool call, the protocol's `error_result` (data/builtin/protocol.py): "error: the tool call
raised TYPE: MESSAGE", done False, reward 0, info["error"] = True, info["tool"] = the tool the
action names (when the env's tool table parses it), info["exception"] = TYPE. The episode goes
on, or ends at its turn limit, as after any tool error; the run does not crash, and the
traceback is logged. The crash of an action's own process (a sandboxed interpreter that
segfaults, is killed, or exits early) never reaches here as an exception: the sandbox returns
the exit status and the environment describes it (code.CodeEnv: "the program was stopped: ...").
Raised, not converted: sandbox.SandboxUnavailable (the isolation itself is missing: a set-up
failure of every action, not one action's, which the environments document as propagating) and
BaseExceptions that are not Exceptions (KeyboardInterrupt, SystemExit).

Threads, not processes. An environment's step mostly waits: on its sandbox subprocess
(bubblewrap + python, for code and test runs; those run on any free core), a sleep, I/O, and
Python releases the GIL while waiting, so W threads overlap W actions. A pure-Python environment
that computes in the interpreter itself (the calculator: microseconds) holds the GIL: threads
give it no speed-up (they cost a few tens of microseconds per action and change no result). No
process-pool option is offered: environments are stateful objects of the trainer's process,
and moving them to worker processes would mean pickling every environment's state each step;
an environment with heavy CPU work should run it in a subprocess, as the sandbox does, which
the threads then overlap. workers = 1 steps the environments one after the other in the calling
thread (no thread is started). A pool of min(workers, len(actions)) threads lives for one call.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Sequence

from agentic_jax import sandbox
from agentic_jax.data.builtin.protocol import ActionError, StepResult, error_result, parse_action

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 8  # config.rl.env_workers's default
MAX_MESSAGE_CHARS = 500  # an exception's message in the observation is cut to this
RAISED = (sandbox.SandboxUnavailable,)  # not the action's failure: raised (module doc)


def check_workers(workers: Any, where: str = "env_workers") -> int:
  """`workers` as an int >= 1, else ValueError naming `where`."""
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise ValueError(f"{where}: expected an int >= 1 (1 = one environment step after the other), "
                     f"got {workers!r}")
  return workers


def _tool_name(env: Any, action: str):
  """The tool `action` calls per the env's tool table (None when it has none or it won't parse)."""
  tools = getattr(env, "tools", None)
  if not tools:
    return None
  try:
    return parse_action(action, tools).name
  except ActionError as e:
    return e.tool
  except Exception:  # pylint: disable=broad-except
    return None


def failure_result(env: Any, action: str, exc: BaseException) -> StepResult:
  """The error observation of an action whose env.step raised `exc` (module doc)."""
  message = str(exc)
  if len(message) > MAX_MESSAGE_CHARS:
    message = message[:MAX_MESSAGE_CHARS] + " [...]"
  name = type(exc).__name__
  return error_result(f"the tool call raised {name}" + (f": {message}" if message else ""),
                      _tool_name(env, action), exception=name)


def safe_step(env: Any, action: str) -> StepResult:
  """env.step(action), with an exception turned into an error observation (module doc)."""
  try:
    return env.step(action)
  except RAISED:
    raise
  except Exception as e:  # pylint: disable=broad-except
    log.warning("env_pool: %s.step raised %s; it becomes the action's error observation",
                type(env).__name__, type(e).__name__, exc_info=True)
    return failure_result(env, action, e)


def step_all(envs: Sequence[Any], actions: Sequence[str], *,
             workers: int = DEFAULT_WORKERS) -> list[StepResult]:
  """[safe_step(envs[i], actions[i])], at most `workers` at a time; results in the order of
  `envs`. With workers > 1 each environment may appear only once (ValueError otherwise: a
  stateful environment stepped from two threads at once would race)."""
  workers = check_workers(workers)
  if len(envs) != len(actions):
    raise ValueError(f"step_all: {len(envs)} environments but {len(actions)} actions")
  if workers == 1 or len(envs) <= 1:
    return [safe_step(e, a) for e, a in zip(envs, actions)]
  if len({id(e) for e in envs}) != len(envs):
    raise ValueError("step_all: an environment appears more than once in one batch; it would "
                     "be stepped from two threads at once (give each row its own, or workers=1)")
  with concurrent.futures.ThreadPoolExecutor(min(workers, len(envs)),
                                             thread_name_prefix="env_pool") as pool:
    futures = [pool.submit(safe_step, e, a) for e, a in zip(envs, actions)]
    return [f.result() for f in futures]
