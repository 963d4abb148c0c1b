"""AgentFlow in-the-flow episodes (objectives-spec §1): planner, executor, verifier, generator.

    episodes = run_agentflow(sampler, params, make_env, tasks, tokenizer, group_size=8, seed=0,
                             max_turns=3)                       # scripted executor/verifier/generator
    batch = rollout.policy_batch(episodes, seq_len=256, mode="turn")   # one row per planner turn

Per task, `group_size` trajectories run in lockstep (one batched planner call per step). Step t:
  1. planner (the trained policy) reads the query and the memory of steps 1..t-1 (its own prompt,
     rebuilt every step, never a growing transcript) and writes a plan: an optional thought (the
     sub-goal) and the tool call it proposes;
  2. executor turns the plan into a tool call. "scripted": the call written in the plan;
     "reference": the frozen reference model writes the call after the plan. A call to one of
     the env's answer tools (calculator answer, code/repo submit) is not executed: it is the
     proposed final answer. Any other call runs in the environment; (plan, call, result) joins
     the memory;
  3. verifier decides STOP/CONTINUE. "scripted": STOP iff the call is a proposed answer;
     "reference": the reference model's reply starts with STOP. The environment ending the
     episode itself (e.g. its step limit) always stops.
Planning ends at STOP ("answer" with a proposed answer, "verifier" without), after max_turns
planner steps ("max_turns"), when a planner prompt exceeds max_context_tokens ("token_budget"),
when the planner writes </s> instead of a call ("eos"), or when the environment ends the
episode during execution ("env_step_limit" / "env_done": its reward is final, no generator).
Then the generator writes the final answer, which the environment scores (that reward is the
trajectory's R_i). "scripted": the proposed answer if any, else one built from the memory
(answer tool with an argument: the last successful result; with a body: the body of the last
successful body-taking call; without argument: `submit()`); "reference": the reference model's
tool call, submitted if it calls an answer tool. No answer -> reward 0. A malformed call of an
answer tool is executed like any call (its error joins the memory, planning goes on).

Only planner turns are trainable (TurnRecord.role "planner"); executor/verifier/generator turns
are recorded with trainable=False (a scripted one: its decision as text with zero log-probs, and
as context what it read: the planner's prompt + plan for the executor, head + memory for the
verifier and generator; policy_batch needs every turn to have a context). Each
planner TurnRecord.context is exactly the prompt the planner saw and its response the sampled
tokens, so a trajectory is T_i single-turn samples and Flow-GRPO's broadcast of R_i to every
planner turn applies exactly as in the paper. Episode.transcript is None.

Prompt formats (special tokens by id, text tokenized as data/render.py does, i.e. each turn is
`render_turn`; `[x]` only if present; SYSTEM = env.system_prompt, QUERY = env.reset(task)):

  head        <s><|system|>SYSTEM<|end_turn|><|user|>QUERY<|end_turn|>
  memory k    [<|assistant|>PLAN_k<|end_turn|>][<|tool_call|>TOOL_k\\nCALL_k<|end_turn|>]
              <|observation|>TOOL_k\\nRESULT_k<|end_turn|>
              (TOOL_k = the tool the environment parsed, "invalid" when it could not; a plan with
              no call has no tool_call turn and RESULT_k explains the error)
  planner t   head + memory 1..t-1                          -> generates
              [<|assistant|>PLAN<|end_turn|>]<|tool_call|>TOOL\\nCALL<|end_turn|>
  executor    head + memory 1..t-1 [+ <|assistant|>PLAN<|end_turn|>]   -> generates the tool call
  verifier    head + memory 1..t + <|user|>VERIFY_PROMPT<|end_turn|>   -> "STOP" / "CONTINUE"
  generator   head + memory 1..T + <|user|>ANSWER_PROMPT<|end_turn|>   -> the answer tool call
With the scripted executor the planner's prompt is the render of the plain multi-turn episode so
far: what a model mid-trained on our environment episodes already knows how to continue.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from agentic_jax.data.builtin.envs import (INFO_ERROR, INFO_TOOL, INVALID_TOOL, ActionError,
                                           StepResult, parse_action)
from agentic_jax.data.render import render_turn
from agentic_jax.data.schema import Turn
from agentic_jax.rl import envs as envs_lib
from agentic_jax.rl.rollout import TOOL_CALL_ID, Episode, TurnRecord, tool_call_action

MODULES = ("scripted", "reference")
VERIFY_PROMPT = ("Verify the steps so far. If the final answer can be given now, reply STOP; "
                 "otherwise reply CONTINUE.")
ANSWER_PROMPT = "Give the final answer now, as one tool call."


@dataclasses.dataclass(frozen=True)
class Plan:
  thought: str            # the assistant turn's text ('' when absent)
  call: Optional[str]     # the tool call's text after its NAME line (None: no <|tool_call|>)


@dataclasses.dataclass(frozen=True)
class MemoryEntry:
  plan: str
  call: str               # '' when the plan had no usable call
  tool: str               # the environment's parsed tool name, or "invalid"
  result: str
  error: bool


def parse_plan(tokens: Sequence[int], tokenizer) -> Plan:
  """The thought (the first assistant turn's text) and the call of a generated policy turn; the
  call is extracted exactly as plain rollouts do (`rollout.tool_call_action`)."""
  ids = np.asarray(tokens, np.int32)
  thought = ""
  asst, end = tokenizer.special_id("<|assistant|>"), tokenizer.special_id("<|end_turn|>")
  hits = np.flatnonzero(ids == asst)
  if hits.size:
    rest = ids[hits[0] + 1:]
    stops = np.flatnonzero((rest == end) | (rest == TOOL_CALL_ID))
    # kept verbatim: the memory re-renders it as the planner wrote it
    thought = tokenizer.decode(rest[:stops[0]] if stops.size else rest)
  return Plan(thought, tool_call_action(ids, tokenizer))


def _derive_seed(seed: int, *parts: Any) -> int:
  digest = hashlib.sha256(":".join(map(str, (seed,) + parts)).encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclasses.dataclass
class _State:
  """One trajectory in flight."""
  task: Any
  group_id: int
  traj_id: int
  env: Any
  head: list[int]
  memory: list[MemoryEntry] = dataclasses.field(default_factory=list)
  memory_ids: list[int] = dataclasses.field(default_factory=list)  # rendered memory (cached)
  turns: list[TurnRecord] = dataclasses.field(default_factory=list)
  proposed: Optional[str] = None       # a proposed answer call, awaiting the verifier
  stop_reason: Optional[str] = None    # set when the planning loop ended
  final: Optional[StepResult] = None   # the environment's last result once it said done
  env_steps: int = 0

  def context(self, *extra: Turn, tok) -> list[int]:
    out = self.head + self.memory_ids
    for turn in extra:
      out = out + render_turn(turn, tok)
    return out

  def remember(self, entry: MemoryEntry, tok) -> None:
    self.memory.append(entry)
    if entry.plan:
      self.memory_ids += render_turn(Turn("assistant", entry.plan), tok)
    if entry.call:
      self.memory_ids += render_turn(Turn("tool_call", entry.call, entry.tool), tok)
    self.memory_ids += render_turn(Turn("observation", entry.result, entry.tool), tok)


def _record(role: str, context: Sequence[int], tok, *, gen=None, text: str = "",
            trainable: bool = False) -> TurnRecord:
  """A model turn (gen given) or a scripted one (`text`, zero log-probs). `context` is what the
  module read, in the prompt format above (policy_batch needs every turn to have one)."""
  if gen is not None:
    response, logprobs = np.asarray(gen.tokens, np.int32), np.asarray(gen.logprobs, np.float32)
    text, truncated = tok.decode(response), bool(gen.truncated)
  else:
    response = np.asarray(tok.encode(text), np.int32)
    logprobs, truncated = np.zeros(len(response), np.float32), False
  return TurnRecord(context=np.asarray(context, np.int32), response=response, logprobs=logprobs,
                    trainable=trainable, truncated=truncated, text=text, observation="", role=role)


def _is_answer(call: Optional[str], env) -> bool:
  """A well-formed call of an answer tool (a malformed one runs as a normal step, so its error
  reaches the memory and the planner can correct it)."""
  if not call:
    return False
  try:
    return parse_action(call, env.tools).name in envs_lib.answer_tools(env)
  except ActionError:
    return False


def _fallback_answer(s: _State) -> Optional[str]:
  """The scripted generator's answer when none was proposed (module docstring)."""
  tools = s.env.tools
  ok = [m for m in reversed(s.memory) if not m.error]
  for name in envs_lib.answer_tools(s.env):
    tool = tools[name]
    if tool.takes_body:  # e.g. code submit(): the last body that ran without a call error
      body = next((m.call.partition("\n")[2] for m in ok
                   if m.tool in tools and tools[m.tool].takes_body), None)
      if body is not None and not tool.needs_arg:
        return f"{name}()\n{body}"
    elif tool.needs_arg:  # e.g. calculator answer(VALUE): the last result
      result = next((m.result.strip() for m in ok if m.result.strip()), None)
      if result is not None and "\n" not in result:
        return f"{name}({result})"
    else:
      return f"{name}()"
  return None


def _success(result: StepResult) -> bool:
  """The rule of plain rollouts: info["success"] / info["correct"] if reported, else reward >= 1."""
  for key in ("success", "correct"):
    if key in result.info:
      return bool(result.info[key])
  return float(result.reward) >= 1.0


def _check_args(executor: str, verifier: str, generator: str, reference_variables,
                group_size: int, max_turns: int, max_context_tokens: Optional[int]) -> None:
  for key, value in (("executor", executor), ("verifier", verifier), ("generator", generator)):
    if value not in MODULES:
      raise ValueError(f"config.rl.agentflow.{key}: expected one of {list(MODULES)}, got {value!r}")
    if value == "reference" and reference_variables is None:
      raise ValueError(f"config.rl.agentflow.{key}='reference' needs the frozen reference model: "
                       f"pass reference_variables")
  for key, value in (("group_size", group_size), ("max_turns", max_turns),
                     ("max_context_tokens", max_context_tokens)):
    if value is None and key == "max_context_tokens":
      continue
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"config.rl.{key}: expected an int >= 1, got {value!r}")


def _generate(sampler, variables, contexts: list[list[int]], seed: int) -> list:
  gens = sampler.generate(variables, [np.asarray(c, np.int32) for c in contexts], seed)
  if len(gens) != len(contexts):
    raise RuntimeError(f"run_agentflow: the sampler returned {len(gens)} generations for "
                       f"{len(contexts)} contexts")
  return gens


def run_agentflow(planner, planner_variables, make_env: Callable[[], Any], tasks: Sequence,
                  tokenizer, *, group_size: int, seed: int, max_turns: int,
                  executor: str = "scripted", verifier: str = "scripted",
                  generator: str = "scripted", reference_variables=None,
                  reference_sampler=None,
                  max_context_tokens: Optional[int] = None) -> list[Episode]:
  """AgentFlow episodes, Q tasks x G trajectories ordered by task then trajectory (group_id =
  task index, traj_id = 0..G-1).

  planner / reference_sampler: `.generate(variables, contexts, seed) -> list[Generation]` (a
  rollout.Sampler; tests script one); the reference modules use reference_sampler (default: the
  planner's) with reference_variables. max_context_tokens: a planner prompt longer than this is
  not sampled (as plain rollouts). Deterministic given seed. stop_reason (why planning ended):
  "answer" (an answer was proposed and the verifier stopped), "verifier" (the verifier stopped
  without one), "eos" (the planner wrote </s> instead of a tool call), "env_step_limit" (the
  environment ended the episode at its step limit), "env_done" (ended it otherwise),
  "max_turns", "token_budget". The generator then answers unless the environment is done.
  """
  _check_args(executor, verifier, generator, reference_variables, group_size, max_turns,
              max_context_tokens)
  tok = tokenizer
  ref = reference_sampler if reference_sampler is not None else planner
  states: list[_State] = []
  for q, task in enumerate(tasks):
    for g in range(group_size):
      env = make_env()
      query = env.reset(task)
      head = ([tok.bos_id] + render_turn(Turn("system", env.system_prompt), tok)
              + render_turn(Turn("user", query), tok))
      states.append(_State(task, q, g, env, head))

  for step in range(max_turns):
    for s in states:
      if (s.stop_reason is None and max_context_tokens is not None
          and len(s.head) + len(s.memory_ids) > max_context_tokens):
        s.stop_reason = "token_budget"
    active = [s for s in states if s.stop_reason is None]
    if not active:
      break
    # 1. planner: the only trainable module
    contexts = [s.context(tok=tok) for s in active]
    gens = _generate(planner, planner_variables, contexts, _derive_seed(seed, "planner", step))
    plans = []
    for s, ctx, gen in zip(active, contexts, gens):
      s.turns.append(_record("planner", ctx, tok, gen=gen, trainable=True))
      plans.append(parse_plan(gen.tokens, tok))
    # 2. executor
    planner_gens = gens
    if executor == "reference":
      ctxs = [s.context(*([Turn("assistant", p.thought)] if p.thought else []), tok=tok)
              for s, p in zip(active, plans)]
      gens = _generate(ref, reference_variables, ctxs, _derive_seed(seed, "executor", step))
      for s, ctx, gen in zip(active, ctxs, gens):
        s.turns.append(_record("executor", ctx, tok, gen=gen))
      plans = [Plan(p.thought, parse_plan(g.tokens, tok).call) for p, g in zip(plans, gens)]
    else:
      for s, plan in zip(active, plans):
        plan_ctx = np.concatenate([s.turns[-1].context, s.turns[-1].response])  # reads the plan
        s.turns.append(_record("executor", plan_ctx, tok, text=plan.call or ""))
    for s, plan, gen in zip(active, plans, planner_gens):
      _execute(s, plan, gen, tok)
    # 3. verifier
    pending = [s for s in active if s.stop_reason is None]
    if verifier == "reference" and pending:
      ctxs = [s.context(Turn("user", VERIFY_PROMPT), tok=tok) for s in pending]
      gens = _generate(ref, reference_variables, ctxs, _derive_seed(seed, "verifier", step))
      for s, ctx, gen in zip(pending, ctxs, gens):
        rec = _record("verifier", ctx, tok, gen=gen)
        s.turns.append(rec)
        words = [w for w in rec.text.replace("<|", " <|").replace("|>", "|> ").split()
                 if not (w.startswith("<|") or w in ("<s>", "</s>"))]
        if words and words[0].strip(".:,!").upper() == "STOP":
          s.stop_reason = "answer" if s.proposed else "verifier"
        else:
          s.proposed = None  # not accepted: planning goes on
    else:
      for s in pending:
        stop = s.proposed is not None
        s.turns.append(_record("verifier", s.context(tok=tok), tok,
                               text="STOP" if stop else "CONTINUE"))
        if stop:
          s.stop_reason = "answer"
  for s in states:
    if s.stop_reason is None:
      s.stop_reason = "max_turns"

  # 4. generator (unless the environment already ended the episode)
  todo = [s for s in states if s.final is None]
  if generator == "reference" and todo:
    ctxs = [s.context(Turn("user", ANSWER_PROMPT), tok=tok) for s in todo]
    gens = _generate(ref, reference_variables, ctxs, _derive_seed(seed, "generator"))
    for s, ctx, gen in zip(todo, ctxs, gens):
      s.turns.append(_record("generator", ctx, tok, gen=gen))
      call = parse_plan(gen.tokens, tok).call
      _submit(s, call if _is_answer(call, s.env) else None)
  else:
    for s in todo:
      call = s.proposed if s.proposed is not None else _fallback_answer(s)
      s.turns.append(_record("generator", s.context(tok=tok), tok, text=call or ""))
      _submit(s, call)
  return [_episode(s) for s in states]


def _execute(s: _State, plan: Plan, planner_gen, tok) -> None:
  """Runs the plan's call in the environment, or keeps an answer call as the proposed answer;
  the result goes to this step's executor record (s.turns[-1])."""
  ended = (plan.call is None and not planner_gen.truncated and len(planner_gen.tokens) > 0
           and int(planner_gen.tokens[-1]) == tok.eos_id)
  if ended:
    s.stop_reason = "eos"  # the planner wrote </s> instead of a call: planning is over
  elif _is_answer(plan.call, s.env):
    s.proposed = plan.call
  else:
    result = s.env.step(plan.call if plan.call is not None else "")  # "" -> the env explains
    s.env_steps += 1
    tool = result.info.get(INFO_TOOL) or INVALID_TOOL
    s.remember(MemoryEntry(plan.thought, plan.call or "", tool, result.observation,
                           bool(result.info.get(INFO_ERROR))), tok)
    s.turns[-1].observation = result.observation
    if result.done:
      s.final = result
      s.stop_reason = "env_step_limit" if result.info.get("step_limit") else "env_done"


def _submit(s: _State, call: Optional[str]) -> None:
  rec = s.turns[-1]
  if call is None:
    rec.observation = "no final answer"
    return
  s.final = s.env.step(call)
  s.env_steps += 1
  rec.observation = s.final.observation


def _episode(s: _State) -> Episode:
  done = s.final is not None and s.final.done
  reward = float(s.final.reward) if done else 0.0
  return Episode(
      task_id=str(getattr(s.task, "id", s.group_id)), group_id=s.group_id, traj_id=s.traj_id,
      turns=s.turns, reward=reward, success=done and _success(s.final),
      stop_reason=s.stop_reason, transcript=None,
      info={"mode": "agentflow", "planner_turns": sum(t.role == "planner" for t in s.turns),
            "env_steps": s.env_steps, "memory": [dataclasses.asdict(m) for m in s.memory],
            "final_observation": s.turns[-1].observation if s.turns else "",
            "tool_errors": sum(m.error for m in s.memory)})
