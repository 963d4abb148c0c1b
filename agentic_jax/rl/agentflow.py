"""AgentFlow in-the-flow episodes (objectives-spec §1): query analysis, then per step planner ->
executor -> environment -> verifier, then the generator.

    episodes = run_agentflow(sampler, params, make_env, tasks, tokenizer, group_size=8, seed=0,
                             max_turns=3)                       # scripted modules
    batch = rollout.policy_batch(episodes, seq_len=256, mode="turn")   # one row per planner turn

Per task, `group_size` trajectories run in lockstep (one batched call per module per step; the
commands of a step, and the final answers, run in their environments together: env_pool,
at most `env_workers` at a time, results applied in row order, an environment's exception an
error result).
  0. analyzer writes the query analysis once per trajectory. "scripted": the tools with their
     signatures, the answer tool(s) and the numbers the query states; "reference": the frozen
     reference model's reply to ANALYSIS_PROMPT.
  Step t = 1..T (T = max_turns):
  1. planner (the trained policy) reads the query, the analysis, the memory of steps 1..t-1 and
     the step count, and writes a plan that ENDS in a sub-goal and a tool choice
     (`[free text]Sub-goal: ...\\nTool: NAME`, agentflow_modules), never the command;
  2. executor turns (sub-goal, tool) into the command. "scripted": a deterministic rule read off
     the tool's signature (`scripted_command`: calc(EXPRESSION) / answer(VALUE) take the longest
     arithmetic stretch of the sub-goal, other arguments a `quoted` text or what follows the last
     ':', a body the sub-goal's fenced code block); "reference": the frozen reference model
     writes the call text after `<|assistant|>SUB-GOAL<|end_turn|><|tool_call|>TOOL\\n`. A command
     that does not call the chosen tool is not run (error in memory). A command of an answer
     tool (calculator answer, code/repo submit) is not run either: it is the proposed final
     answer. Any other command runs in the environment; (plan, command, result) joins the memory;
  3. verifier decides STOP/CONTINUE. "scripted": STOP iff an answer was proposed; "reference":
     the reference model's reply starts with STOP. The environment ending the episode (e.g. its
     step limit) always stops.
Planning ends at STOP ("answer" with a proposed answer, "verifier" without), after T steps
("max_turns"), when a planner prompt exceeds max_context_tokens ("token_budget"), when the
planner writes </s> instead of a plan ("eos"), or when the environment ends the episode during
execution ("env_step_limit" / "env_done": its reward is final, no generator). Then the
generator writes the final answer, which the environment scores (that reward is the
trajectory's R_i). "scripted": the proposed answer if any, else one built from the memory
(answer tool with an argument: the last successful result; with a body: the body of the last
successful body-taking command; without argument: `submit()`); "reference": the reference
model's tool call, submitted if it calls an answer tool. No answer -> reward 0. A plan without a
usable tool, or one the executor cannot turn into a command, costs the step: its error joins
the memory and planning goes on.

What is trained. Only the planner's tokens (TurnRecord.role "planner", trainable=True): its plan
is the one action of the trained policy that reaches the environment (through the executor).
Every other module's turn is recorded with trainable=False (a scripted one: its output as text
with zero log-probs, and as context what it read), so policy_batch gives them no rows and no
weight. Each planner TurnRecord.context is exactly the prompt it saw and its response exactly
its plan, so a trajectory is T_i single-turn samples and Flow-GRPO's broadcast of R_i applies as
in the paper. Every module's turn ends at its first <|end_turn|> (sampler.module_turn; the
generator keeps the tool-call rule, sampler.policy_turn): the plain policy rule would let the
planner run on into a
tool call of its own, tokens that would be trained without ever acting. Episode.transcript is
None.

Prompt formats (special tokens by id, text as data/render.py's `render_turn`; `[x]` only if
present; SYSTEM = env.system_prompt, QUERY = env.reset(task)):

  head        <s><|system|>SYSTEM<|end_turn|><|user|>QUERY<|end_turn|>
  analysis    <|user|>Query analysis:\\nANALYSIS<|end_turn|>
  memory k    <|assistant|>PLAN_k<|end_turn|>[<|tool_call|>TOOL_k\\nCOMMAND_k<|end_turn|>]
              <|observation|>TOOL_k\\nRESULT_k<|end_turn|>
              (PLAN_k = `Sub-goal: ...\\nTool: NAME` re-rendered from the parsed plan, or the raw
              text of an unusable plan; TOOL_k = the environment's parsed tool, the chosen tool
              when nothing ran, "invalid" when no tool was chosen)
  planner t   head + analysis + memory 1..t-1 + <|user|>STEP_TEXT(t, T)<|end_turn|>
              -> generates <|assistant|>[TEXT\\n]Sub-goal: SUB-GOAL\\nTool: NAME<|end_turn|>
  executor    head + <|assistant|>SUB-GOAL<|end_turn|><|tool_call|>NAME\\n -> generates COMMAND
  verifier    head + analysis + memory 1..t + <|user|>VERIFY_PROMPT<|end_turn|> -> STOP/CONTINUE
  generator   head + memory 1..T + <|user|>ANSWER_PROMPT<|end_turn|>   -> the answer tool call
  analyzer    head + <|user|>ANALYSIS_PROMPT<|end_turn|>                -> ANALYSIS

Choices and the released code they follow (lupantech/AgentFlow at commit b940064, files under
agentflow/agentflow/ unless named; L = line):
  - query analysis once, before the loop, by the fixed engine: solver.py L79
    (`planner.analyze_query`), planner.py L126 (`llm_engine_fixed`) -> a frozen module here.
  - the planner's inputs: query, query analysis, tools, previous steps (planner.py L263-266)
    and the step count "Current Step: t in T steps / Remaining Steps: T - t" (planner.py
    L204-205). That count is in the multimodal branch; the default text-only branch
    (L258-280) lacks it. We always show it (spec §1 lists it among the planner's inputs).
  - the plan ends in Context / Sub-Goal / Tool Name; the last match is taken and the tool name
    normalised (planner.py L132, L175-178). Ours drops the separate Context section: the
    sub-goal carries the data (planner.py L237), the free text before it is kept as written.
  - a tool that is not available gets no command and no result, and the step is spent
    (solver.py L110).
  - the executor reads the query, sub-goal, tool name, tool metadata and the planner's context,
    not the memory (executor.py L82-91): ours reads the query (head, with the tools in SYSTEM),
    the sub-goal and the tool. It runs only the chosen tool (executor.py L299, L317: the
    command is executed against that tool's instance) -> a command calling another tool is
    refused.
  - memory entry = (tool, sub-goal, command, result) per step (solver.py L150, memory.py L65).
  - the verifier reads query, analysis and memory (verifier.py L114) and runs after every step;
    STOP ends the loop (solver.py L155, L171); the fixed engine (verifier.py L141).
  - the final answer from query + memory by the fixed engine (solver.py L183-189,
    planner.py L363/L413).
  - only the planner is trained: train/rollout.py L44 model_engine = [planner_main=trainable,
    planner_fixed, executor]; only `generate_next_step`'s calls (planner.py L287,
    `self.llm_engine`) hit the trainable engine.
  Differences kept on purpose: our answer tools let the planner propose the final answer
  itself (scripted verifier STOPs on it); plans, commands and results are chat turns of our
  render format, not one JSON-ish text prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Optional, Sequence

import numpy as np

from agentic_jax import envs as envs_lib
from agentic_jax.data.builtin.protocol import (
    INFO_ERROR, INFO_TOOL, INVALID_TOOL, ActionError, StepResult, parse_action)
from agentic_jax.data.render import render_turn
from agentic_jax.data.schema import Turn
from agentic_jax.rl import env_pool
# ANALYSIS_PROMPT / ANSWER_PROMPT / VERIFY_PROMPT are re-exported: the prompts of this module
from agentic_jax.rl.agentflow_modules import (  # noqa: F401
    ANALYSIS_HEADER, ANALYSIS_PROMPT, ANSWER_PROMPT, VERIFY_PROMPT, Plan, calls_tool,
    first_turn, format_plan, missing_argument, parse_plan, scripted_analysis, scripted_command,
    step_text, turn_text, with_stop)
from agentic_jax.rl.rollout import Episode, TurnRecord, tool_call_action
from agentic_jax.rl.sampler import any_rows, module_turn, policy_turn

MODULES = ("scripted", "reference")


@dataclasses.dataclass(frozen=True)
class MemoryEntry:
  plan: str               # the plan as the memory shows it (module doc)
  sub_goal: str           # '' when the plan had none
  tool: str               # the environment's parsed tool, the chosen one, or "invalid"
  call: str               # the executor's command ('' when none)
  result: str
  error: bool


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
  query: str
  head: list[int]
  analysis: str = ""
  analysis_ids: list[int] = dataclasses.field(default_factory=list)
  memory: list[MemoryEntry] = dataclasses.field(default_factory=list)
  memory_ids: list[int] = dataclasses.field(default_factory=list)  # rendered memory (cached)
  turns: list[TurnRecord] = dataclasses.field(default_factory=list)
  proposed: Optional[str] = None       # a proposed answer call, awaiting the verifier
  stop_reason: Optional[str] = None    # set when the planning loop ended
  final: Optional[StepResult] = None   # the environment's last result once it said done
  env_steps: int = 0

  def set_analysis(self, text: str, tok) -> None:
    self.analysis = text
    self.analysis_ids = render_turn(Turn("user", ANALYSIS_HEADER + text), tok)

  def planner_context(self, step: int, max_steps: int, tok) -> list[int]:
    return (self.head + self.analysis_ids + self.memory_ids
            + render_turn(Turn("user", step_text(step, max_steps)), tok))

  def verifier_context(self, tok) -> list[int]:
    return (self.head + self.analysis_ids + self.memory_ids
            + render_turn(Turn("user", VERIFY_PROMPT), tok))

  def generator_context(self, tok, *, prompt: bool) -> list[int]:
    extra = render_turn(Turn("user", ANSWER_PROMPT), tok) if prompt else []
    return self.head + self.memory_ids + extra

  def executor_context(self, plan: Plan, tok) -> list[int]:
    return (self.head + render_turn(Turn("assistant", plan.sub_goal), tok)
            + [tok.special_id("<|tool_call|>")] + tok.encode(plan.tool + "\n"))

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
  ok = [m for m in reversed(s.memory) if not m.error and m.call]
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


def _check_args(modules: dict, reference_variables, group_size: int, max_turns: int,
                max_context_tokens: Optional[int]) -> None:
  for key, value in modules.items():
    where = f"config.rl.agentflow.{key}"
    if value not in MODULES:
      raise ValueError(f"{where}: expected one of {list(MODULES)}, got {value!r}")
    if value == "reference" and reference_variables is None:
      raise ValueError(f"{where}='reference' needs the frozen reference model: pass "
                       f"reference_variables")
  for key, value in (("group_size", group_size), ("max_turns", max_turns),
                     ("max_context_tokens", max_context_tokens)):
    if value is None and key == "max_context_tokens":
      continue
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"config.rl.{key}: expected an int >= 1, got {value!r}")


def _generate(sampler, variables, contexts: list[list[int]], seed: int, tok) -> list:
  """One module call over `contexts`, each generation cut after its first turn (module_turn)."""
  gens = sampler.generate(variables, [np.asarray(c, np.int32) for c in contexts], seed)
  if len(gens) != len(contexts):
    raise RuntimeError(f"run_agentflow: the sampler returned {len(gens)} generations for "
                       f"{len(contexts)} contexts")
  return [first_turn(g, tok) for g in gens]


def _ended_by_eos(gen, tok) -> bool:
  return (not gen.truncated and len(gen.tokens) > 0 and int(gen.tokens[-1]) == tok.eos_id)


def run_agentflow(planner, planner_variables, make_env: Callable[[], Any], tasks: Sequence,
                  tokenizer, *, group_size: int, seed: int, max_turns: int,
                  executor: str = "scripted", verifier: str = "scripted",
                  generator: str = "scripted", analyzer: str = "scripted",
                  reference_variables=None, reference_sampler=None,
                  max_context_tokens: Optional[int] = None, first_group: int = 0,
                  env_workers: int = env_pool.DEFAULT_WORKERS) -> list[Episode]:
  """AgentFlow episodes, Q tasks x G trajectories ordered by task then trajectory (group_id =
  task index, traj_id = 0..G-1).

  planner / reference_sampler: `.generate(variables, contexts, seed) -> list[Generation]` (a
  rollout.Sampler, whose stop rule is set per module here; tests script one); the frozen
  modules use reference_sampler (default: the planner's) with reference_variables.
  executor / verifier / generator / analyzer: "scripted" | "reference" (module doc).
  max_context_tokens: a planner prompt longer than this is not sampled. first_group: group_id
  of the first task (across processes each passes its share of the step's tasks; every module
  call is then a collective, made by every process, rows or not). env_workers: the environment
  steps of a step (and the final submissions) run at most this many at a time
  (env_pool.step_all; 1 = one after the other); the episodes are the same for any value.
  Deterministic given seed. stop_reason: "answer", "verifier", "eos", "env_step_limit",
  "env_done", "max_turns", "token_budget" (module doc).
  """
  modules = {"executor": executor, "verifier": verifier, "generator": generator,
             "analyzer": analyzer}
  _check_args(modules, reference_variables, group_size, max_turns, max_context_tokens)
  env_pool.check_workers(env_workers, "config.rl.env_workers")
  tok = tokenizer
  ref = reference_sampler if reference_sampler is not None else planner
  planner_turn, ref_turn = with_stop(planner, module_turn(tok)), with_stop(ref, module_turn(tok))
  states: list[_State] = []
  for q, task in enumerate(tasks):
    for g in range(group_size):
      env = make_env()
      query = env.reset(task)
      head = ([tok.bos_id] + render_turn(Turn("system", env.system_prompt), tok)
              + render_turn(Turn("user", query), tok))
      states.append(_State(task, first_group + q, g, env, query, head))

  # 0. query analysis (once per trajectory, before the loop)
  if analyzer == "reference":
    ctxs = [s.head + render_turn(Turn("user", ANALYSIS_PROMPT), tok) for s in states]
    gens = _generate(ref_turn, reference_variables, ctxs, _derive_seed(seed, "analyzer"), tok)
    for s, ctx, gen in zip(states, ctxs, gens):
      s.turns.append(_record("analyzer", ctx, tok, gen=gen))
      s.set_analysis(turn_text(gen.tokens, tok).strip(), tok)
  else:
    for s in states:
      text = scripted_analysis(s.env, s.query)
      s.turns.append(_record("analyzer", s.head, tok, text=text))
      s.set_analysis(text, tok)

  for step in range(max_turns):
    contexts = {}
    for s in states:
      if s.stop_reason is None:
        ctx = s.planner_context(step + 1, max_turns, tok)
        if max_context_tokens is not None and len(ctx) > max_context_tokens:
          s.stop_reason = "token_budget"
        else:
          contexts[id(s)] = ctx
    active = [s for s in states if s.stop_reason is None]
    if not any_rows(planner_turn, active):
      break
    # 1. planner: the only trainable module
    ctxs = [contexts[id(s)] for s in active]
    gens = _generate(planner_turn, planner_variables, ctxs, _derive_seed(seed, "planner", step),
                     tok)
    plans = []
    for s, ctx, gen in zip(active, ctxs, gens):
      s.turns.append(_record("planner", ctx, tok, gen=gen, trainable=True))
      plan = parse_plan(gen.tokens, tok, s.env.tools)
      if plan.error is not None and _ended_by_eos(gen, tok):
        s.stop_reason = "eos"  # the planner wrote </s> instead of a plan: planning is over
      plans.append(plan)
    # 2. executor: (sub-goal, tool) -> command, for the usable plans
    todo = [(s, p) for s, p in zip(active, plans) if p.error is None and s.stop_reason is None]
    commands: dict[int, Optional[str]] = {}
    if executor == "reference" and any_rows(ref_turn, todo):
      ctxs = [s.executor_context(p, tok) for s, p in todo]
      gens = _generate(ref_turn, reference_variables, ctxs, _derive_seed(seed, "executor", step),
                       tok)
      for (s, _), ctx, gen in zip(todo, ctxs, gens):
        s.turns.append(_record("executor", ctx, tok, gen=gen))
        commands[id(s)] = turn_text(gen.tokens, tok).strip() or None
    else:
      for s, p in todo:
        command = scripted_command(p.sub_goal, s.env.tools[p.tool])
        s.turns.append(_record("executor", s.executor_context(p, tok), tok, text=command or ""))
        commands[id(s)] = command
    runs = []  # (state, plan, command) of the commands that run in the environment
    for s, plan in zip(active, plans):
      if s.stop_reason is None:
        command = _act(s, plan, commands.get(id(s)), tok)
        if command is not None:
          runs.append((s, plan, command))
    results = env_pool.step_all([s.env for s, _, _ in runs], [c for _, _, c in runs],
                                workers=env_workers)  # together; applied in row order
    for (s, plan, command), result in zip(runs, results):
      _observe(s, plan, command, result, tok)
    # 3. verifier
    pending = [s for s in active if s.stop_reason is None]
    if verifier == "reference" and any_rows(ref_turn, pending):
      ctxs = [s.verifier_context(tok) for s in pending]
      gens = _generate(ref_turn, reference_variables, ctxs, _derive_seed(seed, "verifier", step),
                       tok)
      for s, ctx, gen in zip(pending, ctxs, gens):
        rec = _record("verifier", ctx, tok, gen=gen)
        s.turns.append(rec)
        words = turn_text(gen.tokens, tok).split()
        if words and words[0].strip(".:,!").upper() == "STOP":
          s.stop_reason = "answer" if s.proposed else "verifier"
        else:
          s.proposed = None  # not accepted: planning goes on
    else:
      for s in pending:
        stop = s.proposed is not None
        s.turns.append(_record("verifier", s.verifier_context(tok), tok,
                               text="STOP" if stop else "CONTINUE"))
        if stop:
          s.stop_reason = "answer"
  for s in states:
    if s.stop_reason is None:
      s.stop_reason = "max_turns"

  # 4. generator (unless the environment already ended the episode)
  submits: list = []  # (state, final call or None), submitted together below
  todo_states = [s for s in states if s.final is None]
  if generator == "reference" and any_rows(ref_turn, todo_states):
    ctxs = [s.generator_context(tok, prompt=True) for s in todo_states]
    # the generator writes a tool call: the plain policy's (tool-call) stop rule
    gens = with_stop(ref, policy_turn(tok)).generate(
        reference_variables, [np.asarray(c, np.int32) for c in ctxs],
        _derive_seed(seed, "generator"))
    for s, ctx, gen in zip(todo_states, ctxs, gens):
      s.turns.append(_record("generator", ctx, tok, gen=gen))
      call = tool_call_action(np.asarray(gen.tokens, np.int32), tok)
      submits.append((s, call if _is_answer(call, s.env) else None))
  else:
    for s in todo_states:
      call = s.proposed if s.proposed is not None else _fallback_answer(s)
      s.turns.append(_record("generator", s.generator_context(tok, prompt=False), tok,
                             text=call or ""))
      submits.append((s, call))
  _submit_all(submits, env_workers)
  return [_episode(s) for s in states]


def _act(s: _State, plan: Plan, command: Optional[str], tok) -> Optional[str]:
  """The environment side of one step: an unusable plan or command costs the step (its error
  joins the memory); an answer command becomes the proposed answer; any other command is
  returned, to run in the environment (`_observe` then applies its result; None: nothing runs).
  The outcome is written to this step's last record (the executor's, or the planner's when no
  executor ran)."""
  rec = s.turns[-1]
  if plan.error is not None:
    entry = MemoryEntry(plan.text, plan.sub_goal or "", INVALID_TOOL, "", f"error: {plan.error}",
                        True)
  elif command is None or not calls_tool(command, plan.tool):
    tool = s.env.tools[plan.tool]
    result = (missing_argument(tool) if command is None else
              f"error: the command does not call the chosen tool {plan.tool}")
    entry = MemoryEntry(format_plan(plan.sub_goal, plan.tool), plan.sub_goal, plan.tool,
                        command or "", result, True)
  elif _is_answer(command, s.env):
    s.proposed = command
    return None
  else:
    return command
  s.remember(entry, tok)
  rec.observation = entry.result
  return None


def _observe(s: _State, plan: Plan, command: str, result: StepResult, tok) -> None:
  """Applies the environment's `result` of the `command` that `_act` returned for this step."""
  rec = s.turns[-1]
  s.env_steps += 1
  entry = MemoryEntry(format_plan(plan.sub_goal, plan.tool), plan.sub_goal,
                      result.info.get(INFO_TOOL) or INVALID_TOOL, command, result.observation,
                      bool(result.info.get(INFO_ERROR)))
  if result.done:
    s.final = result
    s.stop_reason = "env_step_limit" if result.info.get("step_limit") else "env_done"
  s.remember(entry, tok)
  rec.observation = entry.result


def _submit_all(submits: list, workers: int) -> None:
  """The final answers [(state, call or None)] run in their environments together (env_pool);
  each result is written to that state's last record (the generator's)."""
  for s, call in submits:
    if call is None:
      s.turns[-1].observation = "no final answer"
  run = [(s, call) for s, call in submits if call is not None]
  results = env_pool.step_all([s.env for s, _ in run], [c for _, c in run], workers=workers)
  for (s, _), result in zip(run, results):
    s.final = result
    s.env_steps += 1
    s.turns[-1].observation = result.observation


def _episode(s: _State) -> Episode:
  done = s.final is not None and s.final.done
  reward = float(s.final.reward) if done else 0.0
  return Episode(
      task_id=str(getattr(s.task, "id", s.group_id)), group_id=s.group_id, traj_id=s.traj_id,
      turns=s.turns, reward=reward, success=done and _success(s.final),
      stop_reason=s.stop_reason, transcript=None,
      info={"mode": "agentflow", "planner_turns": sum(t.role == "planner" for t in s.turns),
            "env_steps": s.env_steps, "analysis": s.analysis,
            "memory": [dataclasses.asdict(m) for m in s.memory],
            "final_observation": s.turns[-1].observation if s.turns else "",
            "tool_errors": sum(m.error for m in s.memory)})
