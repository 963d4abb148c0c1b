"""The environment protocol shared by the built-in environments, the RL environments
(agentic_jax/envs/, which re-exports these names) and the RL rollout engine.

An environment is reset with a task and then stepped with the policy's raw action text:

    env = CalculatorEnv()
    first_observation = env.reset(task)
    result = env.step("calc(12 * 7)")      # StepResult(observation="84", done=False, reward=0.0, ...)

Actions are tool calls written as `NAME(ARGUMENT)` on the first line; tools that take a body (the
search/replace block of `edit`) read it from the following lines. A malformed action never raises:
it yields an observation that explains what was wrong, with `info["error"] = True`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

# info keys every step fills: "tool" (the parsed tool name or None) and "error" (the call failed)
INFO_TOOL = "tool"
INFO_ERROR = "error"
# name recorded on tool_call / observation turns whose tool name could not be parsed
INVALID_TOOL = "invalid"


@dataclasses.dataclass(frozen=True)
class StepResult:
  observation: str
  done: bool
  reward: float = 0.0
  info: dict = dataclasses.field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
  """reset(task) -> first observation; step(action text) -> StepResult. Never raises on actions."""

  system_prompt: str

  def reset(self, task: Any) -> str:
    ...

  def step(self, action: str) -> StepResult:
    ...


@dataclasses.dataclass(frozen=True)
class Tool:
  name: str
  signature: str  # e.g. "calc(EXPRESSION)"
  help: str
  needs_arg: bool = True
  takes_body: bool = False


@dataclasses.dataclass(frozen=True)
class Action:
  name: str
  arg: str
  body: str  # lines after the first one ('' when none)


class ActionError(ValueError):
  """A malformed tool call; `tool` is the tool name when it could be parsed."""

  def __init__(self, message: str, tool: Optional[str] = None):
    super().__init__(message)
    self.tool = tool


_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\((.*)\)\s*")


def tools_help(tools: Mapping[str, Tool]) -> str:
  width = max(len(t.signature) for t in tools.values())
  return "\n".join(f"  {t.signature:<{width}}  {t.help}" for t in tools.values())


def parse_action(text: str, tools: Mapping[str, Tool]) -> Action:
  """Splits `NAME(ARG)` (+ optional body lines) and checks it against the tool table."""
  if not isinstance(text, str):
    raise ActionError(f"an action must be text, got {type(text).__name__}")
  text = text.strip()
  if not text:
    raise ActionError("empty action; " + _expected(tools))
  first, _, body = text.partition("\n")
  m = _CALL.fullmatch(first.strip())
  if m is None:
    word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", first)
    name = word.group(0) if word and word.group(0) in tools else None
    raise ActionError("malformed tool call: expected NAME(ARGUMENT) on the first line; "
                      + _expected(tools), name)
  name, arg = m.group(1), m.group(2).strip()
  tool = tools.get(name)
  if tool is None:
    raise ActionError(f"unknown tool {name!r}; available tools: {', '.join(tools)}")
  if tool.needs_arg and not arg:
    raise ActionError(f"{name} needs an argument: {tool.signature}", name)
  if not tool.needs_arg and arg:
    raise ActionError(f"{name} takes no argument: {tool.signature}", name)
  if body.strip() and not tool.takes_body:
    raise ActionError(f"unexpected text after the call; {name} takes everything on one line: "
                      f"{tool.signature}", name)
  if tool.takes_body and not body.strip():
    raise ActionError(f"{name} needs a body on the lines after the call", name)
  return Action(name, arg, body)


def _expected(tools: Mapping[str, Tool]) -> str:
  return "available tools: " + ", ".join(t.signature for t in tools.values())


def error_result(message: str, tool: Optional[str], *, done: bool = False, **info) -> StepResult:
  return StepResult(f"error: {message}", done, 0.0, {INFO_TOOL: tool, INFO_ERROR: True, **info})


def limited_step(env, action: str, *, limit_note: str) -> StepResult:
  """The step protocol every built-in environment shares: refuse a finished episode, count the
  call, `env._dispatch(action)`, and end the episode (reward 0, `step_limit` in info,
  `limit_note` appended to the observation) when `env.max_steps` calls were made without an
  ending. Uses env._task, env._done, env._steps."""
  if env._task is None or env._done:  # pylint: disable=protected-access
    return error_result("the episode is over; call reset(task) to start a new one", None, done=True)
  env._steps += 1  # pylint: disable=protected-access
  result = env._dispatch(action)  # pylint: disable=protected-access
  if not result.done and env._steps >= env.max_steps:  # pylint: disable=protected-access
    result = dataclasses.replace(result, done=True, reward=0.0,
                                 observation=result.observation + "\n" + limit_note,
                                 info={**result.info, "step_limit": True})
  env._done = result.done  # pylint: disable=protected-access
  return result
