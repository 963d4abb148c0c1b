"""Multi-turn tool-use rollouts on our cached decoder, their training rows, and greedy evaluation.

Text format = `data/render.py`'s, so a mid-trained model sees in RL what it saw in mid-training:

  context 0    <s><|system|>SYSTEM<|end_turn|><|user|>FIRST OBSERVATION<|end_turn|>
  policy turn  <|assistant|>THOUGHT<|end_turn|><|tool_call|>NAME\\nCALL<|end_turn|>  (sampled)
  env answer   <|observation|>NAME\\nOBSERVATION<|end_turn|>                        (rendered)

`rollout` runs Q tasks x G rollouts in lockstep: each round, one batched `Sampler.generate` over
the contexts of the unfinished episodes, then every row's turn is recorded, the rows'
environments are stepped with their turns' tool calls together (`env_pool.step_all`: at most
`env_workers` at a time, so a round of sandboxed code actions costs about its slowest one), and
in row order context <- context + response + rendered observation. An environment that raises
gives the error observation of a failed tool call (env_pool), never a crash. Generated tokens
are kept exactly as sampled (never re-tokenized). Each round re-prefills the whole context (no
cache is kept between turns): simpler, still one batched call per round, and cheap at these
context lengths.

The action given to the environment is the text after <|tool_call|> (without the closing
<|end_turn|>), minus its first line (the NAME line); a turn with no <|tool_call|> gives the
action "" and the environment answers with an explanatory error. An episode stops when:

  "answer"          the environment says done (an answer was submitted)
  "env_step_limit"  the environment ended it at its own step limit (info["step_limit"])
  "eos"             the policy emitted </s> before completing a tool call (reward 0)
  "max_turns"       `max_turns` policy turns were taken
  "token_budget"    the next context would exceed `max_context_tokens`

Determinism: round r samples with fold_in(PRNGKey(seed), r); rows are ordered by (task, rollout),
so the same seed, variables and tasks give identical episodes, for any env_workers (each row's
environment sees only its own actions; results are applied in row order).

Training rows: `policy_batch(episodes, seq_len=..., mode=...)`:
  mode "turn"        one row per trainable turn (Flow-GRPO / AgentFlow): the sequence is that turn's
                     context + response; turn_index = order among the episode's trainable turns.
  mode "trajectory"  one row per episode (plain multi-turn GRPO): the sequence is the transcript;
                     the responses of trainable turns are trained on, everything else (prompt,
                     observations, frozen turns) is not; turn_index = 0.

Every row is right-padded to `seq_len`: inputs = seq[:-1], targets = seq[1:], positions 0..L-1,
segment_ids 1 on real tokens. mask[t] = 1 where targets[t] is a generated token of a trainable turn;
old_logp[t] is the sampler's log-prob of that token (0 elsewhere). response_len = number of such
tokens; truncated = the turn (trajectory: any trainable turn) hit max_new_tokens.

A row longer than seq_len + 1 tokens is never cut. on_overlong="error" (default) raises naming the
episode; "drop" keeps every row of that episode with sample_mask False and zero tokens (the whole
trajectory goes, so the surviving rows of each trajectory still have turns 0..T-1), counted in
`stats`. Rows are padded with sample_mask False rows (group_id = traj_id = -1) up to a multiple of
`pad_rows_to`. `stats` (if given) receives rows, padding_rows, dropped_rows,
dropped_trajectories and tokens (sum of mask).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from agentic_jax.data.builtin.protocol import INFO_ERROR, INFO_TOOL, INVALID_TOOL, StepResult
from agentic_jax.data.render import render_turn
from agentic_jax.data.schema import Turn
from agentic_jax.data.tokenizer import Tokenizer
from agentic_jax.rl import env_pool
from agentic_jax.rl.sampler import (POLICY_TURN, Generation, Sampler, StopRule,  # noqa: F401
                                    any_rows, policy_turn, turn_end_ids)

MODES = ("turn", "trajectory")
ON_OVERLONG = ("error", "drop")
STOP_REASONS = ("answer", "env_step_limit", "eos", "max_turns", "token_budget")


@dataclasses.dataclass
class TurnRecord:
  context: np.ndarray    # int32 [c]: the exact prompt the model saw (starts with <s>)
  response: np.ndarray   # int32 [r]: sampled tokens, stop token included
  logprobs: np.ndarray   # float32 [r]: the sampler's log-probs of `response`
  trainable: bool        # False for frozen-model / scripted turns
  truncated: bool        # response hit max_new_tokens
  text: str              # tokenizer.decode(response)
  observation: str       # the environment's answer to this turn ('' if none)
  role: str = "policy"   # "policy" | "planner" | "executor" | "verifier" | "generator"


@dataclasses.dataclass
class Episode:
  task_id: str
  group_id: int
  traj_id: int
  turns: list[TurnRecord]
  reward: float
  success: bool
  stop_reason: str
  transcript: Optional[np.ndarray]  # int32 [t]: last context + last response (None: AgentFlow)
  info: dict = dataclasses.field(default_factory=dict)


def initial_context(tokenizer: Tokenizer, system_prompt: str, first_observation: str) -> np.ndarray:
  """<s><|system|>SYSTEM<|end_turn|><|user|>FIRST OBSERVATION<|end_turn|> as int32 ids."""
  ids = [tokenizer.bos_id] + render_turn(Turn("system", system_prompt), tokenizer)
  ids += render_turn(Turn("user", first_observation), tokenizer)
  return np.asarray(ids, np.int32)


def observation_ids(tokenizer: Tokenizer, result: StepResult) -> np.ndarray:
  """<|observation|>NAME\\nOBSERVATION<|end_turn|>, NAME = the parsed tool (or "invalid")."""
  name = result.info.get(INFO_TOOL) or INVALID_TOOL
  return np.asarray(render_turn(Turn("observation", result.observation, name), tokenizer), np.int32)


def tool_call_action(response: np.ndarray, tokenizer: Tokenizer) -> Optional[str]:
  """The action text of a policy turn (module doc), or None when it has no <|tool_call|>."""
  hits = np.flatnonzero(np.asarray(response) == tokenizer.special_id("<|tool_call|>"))
  if hits.size == 0:
    return None
  body = [int(t) for t in response[hits[0] + 1:]]
  if body and body[-1] in turn_end_ids(tokenizer):
    body = body[:-1]
  text = tokenizer.decode(body)
  return text.split("\n", 1)[1] if "\n" in text else text


def check_stop_rule(sampler: Any, tokenizer: Tokenizer) -> None:
  """ValueError when a `Sampler`'s stop rule is not `policy_turn(tokenizer)`: a rule of another
  tokenizer's ids (e.g. the default layout with a checkpoint's tokenizer) would never stop a turn
  where the episode expects. Other samplers (scripted stand-ins) are not checked."""
  if isinstance(sampler, Sampler) and sampler.stop != policy_turn(tokenizer):
    raise ValueError(f"rollout: the sampler's stop rule {sampler.stop} does not use the "
                     f"tokenizer's ids {policy_turn(tokenizer)}; build it with "
                     f"Sampler(..., stop=sampler.policy_turn(tokenizer))")


def _success(result: StepResult) -> bool:
  """info["success"] or info["correct"] when the environment reports one, else reward >= 1."""
  for key in ("success", "correct"):
    if key in result.info:
      return bool(result.info[key])
  return float(result.reward) >= 1.0


def _check_positive(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"rollout: {name} must be an int >= 1, got {value!r}")
  return int(value)


@dataclasses.dataclass
class _Slot:
  env: Any
  task_id: str
  group_id: int
  traj_id: int
  context: np.ndarray
  turns: list = dataclasses.field(default_factory=list)
  done: bool = False
  stop_reason: str = ""
  reward: float = 0.0
  success: bool = False
  tool_errors: int = 0
  final_info: dict = dataclasses.field(default_factory=dict)


def rollout(sampler: Sampler, variables: dict, make_env: Callable[[], Any], tasks: Sequence[Any],
            tokenizer: Tokenizer, *, group_size: int, seed: int, max_turns: int,
            max_context_tokens: int, first_group: int = 0,
            env_workers: int = env_pool.DEFAULT_WORKERS) -> list[Episode]:
  """Q tasks x `group_size` episodes in lockstep (module doc). Episodes are ordered by task then
  rollout; group_id = first_group + task index, traj_id = 0 .. group_size - 1. `sampler` is
  anything with `generate(variables, contexts, seed) -> list[Generation]` (a `Sampler`; tests
  script one). Across processes (a collective Sampler) each process passes its own share of
  the tasks, starting at task `first_group` of the step's list: the rounds run until no
  process has an unfinished episode. env_workers: environment steps of a round run at most this
  many at a time (1 = one after the other; the episodes are the same either way)."""
  group_size = _check_positive("group_size", group_size)
  max_turns = _check_positive("max_turns", max_turns)
  max_context_tokens = _check_positive("max_context_tokens", max_context_tokens)
  env_workers = _check_positive("env_workers", env_workers)
  check_stop_rule(sampler, tokenizer)
  slots = []
  for q, task in enumerate(tasks):
    for g in range(group_size):
      env = make_env()
      ctx = initial_context(tokenizer, env.system_prompt, env.reset(task))
      slot = _Slot(env, str(getattr(task, "id", first_group + q)), first_group + q, g, ctx)
      if len(ctx) > max_context_tokens:  # the prompt alone is over budget: no turn is taken
        slot.done, slot.stop_reason = True, "token_budget"
      slots.append(slot)
  base_key = jax.random.key(seed)
  for rnd in range(max_turns):
    active = [s for s in slots if not s.done]
    if not any_rows(sampler, active):  # across processes: until every process is done
      break
    gens = sampler.generate(variables, [s.context for s in active], jax.random.fold_in(base_key, rnd))
    if len(gens) != len(active):
      raise RuntimeError(f"rollout: the sampler returned {len(gens)} generations for "
                         f"{len(active)} contexts")
    # every row's turn first, then the rows' environment steps together, applied in row order
    stepped = []
    for slot, gen in zip(active, gens):
      action = _record_turn(slot, gen, tokenizer)
      if action is not None:  # None: the policy ended the episode (</s>)
        stepped.append((slot, action))
    results = env_pool.step_all([s.env for s, _ in stepped], [a for _, a in stepped],
                                workers=env_workers)
    for (slot, _), result in zip(stepped, results):
      _apply_result(slot, result, tokenizer, last_round=rnd == max_turns - 1,
                    max_context_tokens=max_context_tokens)
  return [Episode(s.task_id, s.group_id, s.traj_id, s.turns, s.reward, s.success, s.stop_reason,
                  _transcript(s), {"tool_errors": s.tool_errors, "final_info": s.final_info})
          for s in slots]


def _record_turn(slot: _Slot, gen: Generation, tokenizer: Tokenizer) -> Optional[str]:
  """Records one policy turn of `slot`; returns the action for its environment ("" for a turn
  without a tool call), or None when the turn ended the episode (</s>)."""
  response = np.asarray(gen.tokens, np.int32)
  action = tool_call_action(response, tokenizer)
  ended_by_eos = not gen.truncated and response.size > 0 and int(response[-1]) == tokenizer.eos_id
  turn = TurnRecord(slot.context, response, np.asarray(gen.logprobs, np.float32), True,
                    bool(gen.truncated), tokenizer.decode(response), "", "policy")
  slot.turns.append(turn)
  if ended_by_eos:
    # </s> ends a sample in the training format: the policy ended the episode without an answer
    # (a tool call cannot precede it: the row would have stopped at the call's <|end_turn|>)
    slot.done, slot.stop_reason = True, "eos"
    return None
  return action if action is not None else ""


def _apply_result(slot: _Slot, result: StepResult, tokenizer: Tokenizer, *, last_round: bool,
                  max_context_tokens: int) -> None:
  """Applies the environment's answer to `slot`'s last turn (recorded by _record_turn)."""
  turn = slot.turns[-1]
  response = turn.response
  turn.observation = result.observation
  slot.tool_errors += int(bool(result.info.get(INFO_ERROR)))
  slot.final_info = dict(result.info)
  if result.done:
    slot.done = True
    slot.stop_reason = "env_step_limit" if result.info.get("step_limit") else "answer"
    slot.reward, slot.success = float(result.reward), _success(result)
    return
  nxt = np.concatenate([slot.context, response, observation_ids(tokenizer, result)])
  if last_round:
    slot.done, slot.stop_reason = True, "max_turns"
  elif len(nxt) > max_context_tokens:
    slot.done, slot.stop_reason = True, "token_budget"
  else:
    slot.context = nxt


def _transcript(slot: _Slot) -> np.ndarray:
  if not slot.turns:
    return slot.context.copy()
  last = slot.turns[-1]
  return np.concatenate([last.context, last.response]).astype(np.int32)


def evaluate(sampler: Sampler, variables: dict, make_env: Callable[[], Any], tasks: Sequence[Any],
             tokenizer: Tokenizer, *, max_turns: int, max_context_tokens: int,
             seed: int = 0, env_workers: int = env_pool.DEFAULT_WORKERS) -> dict:
  """Greedy rollouts (the sampler's settings with temperature 0), one per task:
  {"success_rate", "reward_mean", "turns_mean", "episodes"}."""
  greedy = sampler.greedy() if isinstance(sampler, Sampler) else sampler
  episodes = rollout(greedy, variables, make_env, tasks, tokenizer, group_size=1, seed=seed,
                     max_turns=max_turns, max_context_tokens=max_context_tokens,
                     env_workers=env_workers)
  n = max(len(episodes), 1)
  return {"success_rate": sum(e.success for e in episodes) / n,
          "reward_mean": sum(e.reward for e in episodes) / n,
          "turns_mean": sum(len(e.turns) for e in episodes) / n,
          "episodes": episodes}


# ---------------------------------------------------------------------------------------------
# training rows

class _Row:
  def __init__(self, ep: int, seq: np.ndarray, spans: list, group: int, traj: int, turn: int,
               reward: float, truncated: bool):
    self.ep, self.seq, self.spans = ep, seq, spans  # spans: (start in seq, logprobs [n])
    self.group, self.traj, self.turn = group, traj, turn
    self.reward, self.truncated = reward, truncated
    self.response_len = sum(len(lp) for _, lp in spans)


def _rows(episodes: Sequence[Episode], mode: str) -> list[_Row]:
  rows = []
  for e, ep in enumerate(episodes):
    trainable = [t for t in ep.turns if t.trainable]
    for k, t in enumerate(ep.turns):
      if len(t.context) == 0 or len(t.logprobs) != len(t.response):
        raise ValueError(f"policy_batch: episode {e} (task {ep.task_id!r}) turn {k}: expected a "
                         f"non-empty context and one logprob per response token, got "
                         f"{len(t.context)} context tokens, {len(t.logprobs)} logprobs for "
                         f"{len(t.response)} response tokens")
    if mode == "turn":
      for k, t in enumerate(trainable):
        seq = np.concatenate([t.context, t.response]).astype(np.int32)
        rows.append(_Row(e, seq, [(len(t.context), np.asarray(t.logprobs, np.float32))],
                         ep.group_id, ep.traj_id, k, ep.reward, bool(t.truncated)))
      continue
    if ep.transcript is None:
      raise ValueError(f"policy_batch: episode {e} (task {ep.task_id!r}) has no transcript "
                       "(an AgentFlow episode); use mode='turn'")
    seq = np.asarray(ep.transcript, np.int32)
    spans = []
    for k, t in enumerate(ep.turns):
      c, r = len(t.context), len(t.response)
      if not (np.array_equal(seq[:c], t.context) and np.array_equal(seq[c:c + r], t.response)):
        raise ValueError(f"policy_batch: episode {e} (task {ep.task_id!r}) turn {k}: its context + "
                         "response is not a prefix of the transcript")
      if t.trainable:
        spans.append((c, np.asarray(t.logprobs, np.float32)))
    rows.append(_Row(e, seq, spans, ep.group_id, ep.traj_id, 0, ep.reward,
                     any(t.truncated for t in trainable)))
  return rows


def policy_batch(episodes: Sequence[Episode], *, seq_len: int, mode: str,
                 pad_rows_to: Optional[int] = None, on_overlong: str = "error",
                 stats: Optional[dict] = None) -> dict[str, np.ndarray]:
  """Rows of `episodes` in the layout of objectives/rl.py (see the module doc). Keys: inputs,
  targets, positions, segment_ids int32 [N, T]; mask, old_logp float32 [N, T]; group_id, traj_id,
  turn_index, response_len int32 [N]; rewards float32 [N]; truncated, sample_mask bool [N]."""
  if mode not in MODES:
    raise ValueError(f"policy_batch: mode must be one of {list(MODES)}, got {mode!r}")
  if on_overlong not in ON_OVERLONG:
    raise ValueError(f"policy_batch: on_overlong must be one of {list(ON_OVERLONG)}, got "
                     f"{on_overlong!r}")
  for name, v, allow_none in (("seq_len", seq_len, False), ("pad_rows_to", pad_rows_to, True)):
    if v is None and allow_none:
      continue
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"policy_batch: {name} must be an int >= 1, got {v!r}")
  rows = _rows(episodes, mode)
  over = {r.ep for r in rows if len(r.seq) - 1 > seq_len}
  if over and on_overlong == "error":
    r = next(r for r in rows if len(r.seq) - 1 > seq_len)  # the row that is over, not its first
    raise ValueError(f"policy_batch: episode {r.ep} (task {episodes[r.ep].task_id!r}, group "
                     f"{r.group}, traj {r.traj}, turn {r.turn}) needs {len(r.seq) - 1} positions "
                     f"> seq_len={seq_len}; raise seq_len or pass on_overlong='drop'")
  n = len(rows)
  total = n if not pad_rows_to else -(-max(n, 1) // pad_rows_to) * pad_rows_to
  out = {k: np.zeros((total, seq_len), np.int32) for k in ("inputs", "targets", "positions",
                                                           "segment_ids")}
  out["mask"] = np.zeros((total, seq_len), np.float32)
  out["old_logp"] = np.zeros((total, seq_len), np.float32)
  out["group_id"] = np.full((total,), -1, np.int32)
  out["traj_id"] = np.full((total,), -1, np.int32)
  out["turn_index"] = np.zeros((total,), np.int32)
  out["response_len"] = np.zeros((total,), np.int32)
  out["rewards"] = np.zeros((total,), np.float32)
  out["truncated"] = np.zeros((total,), bool)
  out["sample_mask"] = np.zeros((total,), bool)
  for i, r in enumerate(rows):
    out["group_id"][i], out["traj_id"][i], out["turn_index"][i] = r.group, r.traj, r.turn
    out["rewards"][i], out["truncated"][i] = r.reward, r.truncated
    out["response_len"][i] = r.response_len
    if r.ep in over:
      continue  # dropped: sample_mask stays False
    length = len(r.seq) - 1
    out["inputs"][i, :length] = r.seq[:-1]
    out["targets"][i, :length] = r.seq[1:]
    out["positions"][i, :length] = np.arange(length, dtype=np.int32)
    out["segment_ids"][i, :length] = 1
    out["sample_mask"][i] = True
    for start, logp in r.spans:
      # the token at sequence index p is the target of input position p - 1
      out["mask"][i, start - 1:start - 1 + len(logp)] = 1.0
      out["old_logp"][i, start - 1:start - 1 + len(logp)] = logp
  if stats is not None:
    dropped = [r for r in rows if r.ep in over]
    stats.update(rows=n, padding_rows=total - n, dropped_rows=len(dropped),
                 dropped_trajectories=len(over), tokens=int(out["mask"].sum()))
  return out
