"""Planner-format mid-training samples from plain agent episodes (AgentFlow in-the-flow mode).

    samples = planner_samples(episode, env.tools, answer_tools=("answer",), max_steps=6)

`run_agentflow` (rl/agentflow.py) trains only the planner, whose prompt at step t is the head,
the query analysis, the memory of steps 1..t-1 and the step count. A policy mid-trained on plain
episodes has never seen that prompt, so the agentflow recipe mid-trains on what the planner
will read and write instead: every action of a plain episode becomes one planner sample whose
turns render (data/render.py) to exactly the planner's context at that step followed by its
plan, and only the plan is a target (the other turns carry the schema's `weight` 0, so the
memory's earlier plans and the executor's commands are context, under any mask policy).

One sample, for step t of an episode whose successful actions are a_1..a_n (n <= max_steps):

  system SYSTEM, user QUERY                                   (the episode's first two turns)
  user "Query analysis:\\n" + scripted_analysis(env, QUERY)    (the scripted analyzer's text)
  per earlier step k < t:  assistant format_plan(g_k, tool_k),
                           tool_call a_k (name tool_k), observation r_k (name tool_k)
  user step_text(t, max_steps)
  assistant [THOUGHT_t "\\n"] format_plan(g_t, tool_t)         (weight 1: the target)

The sub-goal g_k is written so that the scripted executor (`scripted_command`) turns it back
into exactly a_k: "compute EXPRESSION" / "submit VALUE as the final answer" for arithmetic
arguments, the argument in backticks otherwise, a fenced block for a body. An action whose
sub-goal would not round-trip raises ValueError (a bug in this rule, not a data issue).

Choices. Failed calls (tool_call error=True) and their rationale are left out: the scripted
executor cannot write a malformed command, so a failure the planner never caused would only
teach it to expect one; the thought after a left-out failure (its fix) is dropped with it, since
it speaks of a call the memory no longer shows. A step with an answer tool ends the sample
series: the agentflow loop does not run it (it is the proposed answer the verifier accepts).
An episode that needs more than `max_steps` planner steps yields no samples (counted by the
caller as too long); so does one without an action.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from agentic_jax.data.builtin.protocol import Tool
from agentic_jax.data.schema import EnvSample, Turn
from agentic_jax.rl.agentflow_modules import (ANALYSIS_HEADER, ARITHMETIC_ARGS, format_plan,
                                              placeholder, scripted_analysis, scripted_command,
                                              step_text)


class _Tools:
  """What scripted_analysis reads of an environment: its tools and answer tools."""

  def __init__(self, tools: Mapping[str, Tool], answer_tools: Sequence[str]):
    self.tools = dict(tools)
    self.answer_tools = tuple(answer_tools)


def sub_goal_for(command: str, tool: Tool, *, answer: bool) -> str:
  """A sub-goal from which the scripted executor writes `command` again (module doc)."""
  first, _, body = command.partition("\n")
  arg = first[len(tool.name) + 1:first.rfind(")")] if tool.needs_arg else ""
  if not tool.needs_arg:
    goal = f"call {tool.name}"
  elif placeholder(tool) in ARITHMETIC_ARGS:
    goal = f"submit {arg} as the final answer" if answer else f"compute {arg}"
  else:
    goal = f"use {tool.name} with `{arg}`"
  if tool.takes_body:
    goal += f"\n```\n{body}\n```"
  return goal


def _steps(sample: EnvSample) -> list[tuple[str, Turn, Turn]]:
  """(thought, tool_call, observation) of the successful actions, in order (module doc)."""
  out, thought, after_failure = [], "", False
  turns = sample.turns
  for k, t in enumerate(turns):
    if t.role == "assistant":
      thought = t.content
    elif t.role == "tool_call":
      obs = turns[k + 1] if k + 1 < len(turns) and turns[k + 1].role == "observation" else None
      if t.error or obs is None:
        after_failure, thought = True, ""
        continue
      out.append(("" if after_failure else thought, t, obs))
      thought, after_failure = "", False
  return out


def planner_samples(sample: EnvSample, tools: Mapping[str, Tool], *,
                    answer_tools: Sequence[str], max_steps: int,
                    system_prompt: Optional[str] = None) -> list[EnvSample]:
  """The planner samples of one plain episode (module doc); [] when it does not fit."""
  if max_steps < 1:
    raise ValueError(f"max_steps must be >= 1, got {max_steps}")
  system = sample.turns[0] if sample.turns and sample.turns[0].role == "system" else None
  user = next((t for t in sample.turns if t.role == "user"), None)
  if user is None:
    raise ValueError(f"{sample.id}: an episode needs a user turn (the query)")
  head = [Turn("system", system_prompt if system_prompt is not None else system.content, weight=0.0)
          ] if (system is not None or system_prompt is not None) else []
  head.append(Turn("user", user.content, weight=0.0))
  head.append(Turn("user", ANALYSIS_HEADER + scripted_analysis(_Tools(tools, answer_tools),
                                                                user.content), weight=0.0))
  steps = []
  for thought, call, obs in _steps(sample):
    tool = tools.get(call.name)
    if tool is None:
      raise ValueError(f"{sample.id}: tool {call.name!r} is not one of {sorted(tools)}")
    answer = call.name in answer_tools
    goal = sub_goal_for(call.content, tool, answer=answer)
    if scripted_command(goal, tool) != call.content:
      raise ValueError(f"{sample.id}: sub-goal {goal!r} does not give back {call.content!r}")
    steps.append((thought, call, obs, goal, answer))
    if answer:
      break
  if not steps or len(steps) > max_steps:
    return []
  out, memory = [], []
  for t, (thought, call, obs, goal, answer) in enumerate(steps, start=1):
    plan = format_plan(goal, call.name)
    target = Turn("assistant", f"{thought}\n{plan}" if thought else plan)
    turns = head + memory + [Turn("user", step_text(t, max_steps), weight=0.0), target]
    out.append(EnvSample(f"{sample.id}-plan{t}", sample.source, tuple(turns), sample.reward))
    memory += [Turn("assistant", plan, weight=0.0),
               Turn("tool_call", call.content, call.name, weight=0.0),
               Turn("observation", obs.content, obs.name, weight=0.0)]
  return out
