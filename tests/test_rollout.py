"""Rollout engine: episodes and training rows built by hand with a scripted sampler, malformed
tool calls, stop reasons, group/traj layout, and (real model) sampler log-probs against a
teacher-forced forward of policy_batch rows, plus determinism."""

import dataclasses
from fractions import Fraction

import jax
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.data.builtin import calculator
from agentic_jax.data.builtin.protocol import INFO_ERROR, INFO_TOOL, StepResult
from agentic_jax.data.tokenizer import ByteTokenizer
from agentic_jax.objectives.rl import validate_rollout_batch
from agentic_jax.rl import rollout as R

TOK = ByteTokenizer()
BOS, EOS, SYSTEM, USER, ASSISTANT, TOOL_CALL, OBSERVATION, END_TURN = 1, 2, 4, 5, 6, 7, 8, 9


def B(text):
  """ByteTokenizer ids by its definition: byte b -> 16 + b."""
  return [16 + b for b in text.encode()]


@dataclasses.dataclass(frozen=True)
class Task:
  id: str
  question: str
  answer: int


class AddEnv:
  """add(1) -> "2"; answer(X) ends (correct iff X == task.answer); anything else -> error."""
  system_prompt = "S"

  def reset(self, task):
    self.task = task
    return task.question

  def step(self, action):
    if action == "add(1)":
      return StepResult("2", False, 0.0, {INFO_TOOL: "add", INFO_ERROR: False})
    if action.startswith("answer("):
      ok = action == f"answer({self.task.answer})"
      return StepResult("ok" if ok else "no", True, float(ok),
                        {INFO_TOOL: "answer", INFO_ERROR: False, "correct": ok})
    return StepResult("error: bad", False, 0.0, {INFO_TOOL: None, INFO_ERROR: True})


def call(name, arg, thought=None):
  """Token ids of a policy turn: [<|assistant|>thought<|end_turn|>]<|tool_call|>name\\ncall<|end_turn|>."""
  ids = [ASSISTANT] + B(thought) + [END_TURN] if thought else []
  return ids + [TOOL_CALL] + B(f"{name}\n{name}({arg})") + [END_TURN]


class ScriptedSampler:
  """Returns rounds[r][i] for active row i of round r; log-prob of token j in round r is
  -(r + 1) / 10 - j / 1000; records the contexts it saw."""

  def __init__(self, rounds, truncated=False):
    self.rounds, self.truncated, self.seen = rounds, truncated, []

  def generate(self, variables, contexts, seed):
    r = len(self.seen)
    self.seen.append([np.asarray(c).tolist() for c in contexts])
    out = []
    for i in range(len(contexts)):
      toks = self.rounds[r][i] if isinstance(self.rounds[r], list) and isinstance(
          self.rounds[r][0], list) else self.rounds[r]
      lp = -(r + 1) / 10 - np.arange(len(toks)) / 1000
      out.append(R.Generation(np.asarray(toks, np.int32), lp.astype(np.float32), self.truncated))
    return out


def logp_of(r, n):
  return list(-(r + 1) / 10 - np.arange(n) / 1000)


CTX0 = [BOS, SYSTEM] + B("S") + [END_TURN, USER] + B("Q") + [END_TURN]


def test_scripted_episode_transcript_and_masks_by_hand():
  resp0 = call("add", "1", thought="t")
  resp1 = call("answer", "2")
  obs0 = [OBSERVATION] + B("add\n") + B("2") + [END_TURN]
  sampler = ScriptedSampler([resp0, resp1])
  (ep,) = R.rollout(sampler, None, AddEnv, [Task("t0", "Q", 2)], TOK, group_size=1, seed=0,
                    max_turns=4, max_context_tokens=1000)
  assert sampler.seen == [[CTX0], [CTX0 + resp0 + obs0]]
  assert (ep.task_id, ep.group_id, ep.traj_id, ep.stop_reason) == ("t0", 0, 0, "answer")
  assert ep.reward == 1.0 and ep.success and len(ep.turns) == 2
  assert [t.observation for t in ep.turns] == ["2", "ok"]
  assert ep.turns[0].text == "<|assistant|>t<|end_turn|><|tool_call|>add\nadd(1)<|end_turn|>"
  transcript = CTX0 + resp0 + obs0 + resp1
  assert ep.transcript.tolist() == transcript

  # trajectory row: only the two responses are targets; prompt and observation are not
  seq_mask = [0] * len(CTX0) + [1] * len(resp0) + [0] * len(obs0) + [1] * len(resp1)
  seq_logp = [0] * len(CTX0) + logp_of(0, len(resp0)) + [0] * len(obs0) + logp_of(1, len(resp1))
  T = 80
  L = len(transcript) - 1
  b = R.policy_batch([ep], seq_len=T, mode="trajectory")
  pad = [0] * (T - L)
  assert b["inputs"][0].tolist() == transcript[:-1] + pad
  assert b["targets"][0].tolist() == transcript[1:] + pad
  assert b["positions"][0].tolist() == list(range(L)) + pad
  assert b["segment_ids"][0].tolist() == [1] * L + pad
  assert b["mask"][0].tolist() == seq_mask[1:] + pad
  np.testing.assert_allclose(b["old_logp"][0], seq_logp[1:] + pad, atol=1e-7)
  assert b["response_len"].tolist() == [len(resp0) + len(resp1)]
  assert b["turn_index"].tolist() == [0] and b["rewards"].tolist() == [1.0]
  assert b["sample_mask"].tolist() == [True] and b["truncated"].tolist() == [False]

  # turn rows: each turn's own context + response, mask on that response only
  b = R.policy_batch([ep], seq_len=T, mode="turn")
  rows = [(CTX0, resp0, 0), (CTX0 + resp0 + obs0, resp1, 1)]
  for i, (ctx, resp, r) in enumerate(rows):
    seq = ctx + resp
    pad = [0] * (T - len(seq) + 1)
    assert b["inputs"][i].tolist() == seq[:-1] + pad
    assert b["mask"][i].tolist() == ([0] * len(ctx) + [1] * len(resp))[1:] + pad
    np.testing.assert_allclose(b["old_logp"][i], ([0] * len(ctx) + logp_of(r, len(resp)))[1:] + pad,
                               atol=1e-7)
  assert b["turn_index"].tolist() == [0, 1] and b["response_len"].tolist() == [len(resp0), len(resp1)]
  assert b["rewards"].tolist() == [1.0, 1.0]


def test_malformed_tool_call_gives_error_observation_and_the_episode_goes_on():
  task = calculator.CalcTask("c", "What is 3 + 4?", Fraction(7))
  bad = [TOOL_CALL] + B("calc\ncalc 3 + 4") + [END_TURN]
  sampler = ScriptedSampler([bad, call("calc", "3 + 4"), call("answer", "7")])
  (ep,) = R.rollout(sampler, None, calculator.CalculatorEnv, [task], TOK, group_size=1, seed=0,
                    max_turns=5, max_context_tokens=4000)
  assert ep.turns[0].observation.startswith("error: malformed tool call")
  assert [t.observation for t in ep.turns[1:]] == ["7", "correct"]
  assert ep.stop_reason == "answer" and ep.success and ep.reward == 1.0
  assert ep.info["tool_errors"] == 1
  # the error observation is in the next context, rendered as render.py does (tool name "calc")
  obs = [OBSERVATION] + B("calc\n" + ep.turns[0].observation) + [END_TURN]
  assert ep.turns[1].context.tolist() == ep.turns[0].context.tolist() + bad + obs


def test_stop_reasons():
  def run(rounds, max_turns=3, budget=1000, make_env=AddEnv, truncated=False, task=Task("t", "Q", 2)):
    (ep,) = R.rollout(ScriptedSampler(rounds, truncated), None, make_env, [task], TOK,
                      group_size=1, seed=0, max_turns=max_turns, max_context_tokens=budget)
    return ep

  ep = run([[ASSISTANT] + B("hm") + [EOS]])
  assert (ep.stop_reason, len(ep.turns), ep.turns[0].observation, ep.reward) == ("eos", 1, "", 0.0)
  ep = run([call("add", "1")] * 2, max_turns=2)
  assert (ep.stop_reason, len(ep.turns), ep.reward, ep.success) == ("max_turns", 2, 0.0, False)
  # no tool call at all (truncated): the empty action gets the environment's error, then go on
  ep = run([[ASSISTANT] + B("x"), call("answer", "2")], truncated=True)
  assert ep.turns[0].observation == "error: bad" and ep.stop_reason == "answer"
  assert ep.turns[0].truncated
  # token budget: the next context would be len(CTX0 + resp + obs) tokens
  resp = call("add", "1")
  nxt = len(CTX0) + len(resp) + len([OBSERVATION] + B("add\n2") + [END_TURN])
  assert run([resp, call("answer", "2")], budget=nxt).stop_reason == "answer"
  ep = run([resp, call("answer", "2")], budget=nxt - 1)
  assert ep.stop_reason == "token_budget" and len(ep.turns) == 1
  assert ep.transcript.tolist() == CTX0 + resp
  ep = run([resp], budget=len(CTX0) - 1)  # the prompt alone is over budget
  assert ep.stop_reason == "token_budget" and ep.turns == [] and ep.transcript.tolist() == CTX0
  ep = run([call("calc", "1 + 1")], make_env=lambda: calculator.CalculatorEnv(max_steps=1),
           task=calculator.CalcTask("c", "Q", Fraction(2)))
  assert ep.stop_reason == "env_step_limit" and not ep.success


def test_group_and_traj_layout_and_objective_batch_contract():
  tasks = [Task("a", "Q", 2), Task("b", "Q", 3), Task("c", "Q", 2)]
  # round 0: every row adds; round 1: rows answer 2 (rows 0..5 = task-major, rollout-minor)
  sampler = ScriptedSampler([call("add", "1"), call("answer", "2")])
  eps = R.rollout(sampler, None, AddEnv, tasks, TOK, group_size=2, seed=0, max_turns=3,
                  max_context_tokens=1000)
  assert [(e.task_id, e.group_id, e.traj_id) for e in eps] == [
      ("a", 0, 0), ("a", 0, 1), ("b", 1, 0), ("b", 1, 1), ("c", 2, 0), ("c", 2, 1)]
  assert [e.reward for e in eps] == [1, 1, 0, 0, 1, 1]
  assert len(sampler.seen[0]) == 6 and len(sampler.seen[1]) == 6
  stats = {}
  b = R.policy_batch(eps, seq_len=64, mode="turn", pad_rows_to=8, stats=stats)
  assert b["group_id"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1, -1]
  assert b["traj_id"].tolist() == [0, 0, 1, 1] * 3 + [-1] * 4
  assert b["turn_index"].tolist() == [0, 1] * 6 + [0] * 4
  assert b["rewards"].tolist() == [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4
  assert b["sample_mask"].tolist() == [True] * 12 + [False] * 4
  assert not b["mask"][12:].any() and not b["segment_ids"][12:].any()
  assert stats == {"rows": 12, "padding_rows": 4, "dropped_rows": 0, "dropped_trajectories": 0,
                   "tokens": int(b["response_len"].sum())}
  counts = validate_rollout_batch({**b, "logp": b["old_logp"]})
  assert counts["rows"] == 12 and counts["trajectories"] == 6 and counts["groups"] == 3
  t = R.policy_batch(eps, seq_len=64, mode="trajectory")
  assert t["group_id"].tolist() == [0, 0, 1, 1, 2, 2] and t["traj_id"].tolist() == [0, 1] * 3
  assert validate_rollout_batch({**t, "logp": t["old_logp"]})["trajectories"] == 6


def test_overlong_rows_raise_or_are_dropped_and_counted():
  sampler = ScriptedSampler([[call("add", "1")] * 2, [call("answer", "2"), call("add", "1")],
                             [call("answer", "2")]])
  eps = R.rollout(sampler, None, AddEnv, [Task("a", "Q", 2)], TOK, group_size=2, seed=0,
                  max_turns=3, max_context_tokens=1000)
  lens = [len(e.transcript) - 1 for e in eps]
  assert lens[0] < lens[1]
  with pytest.raises(ValueError, match=r"episode 1 .* needs \d+ positions > seq_len"):
    R.policy_batch(eps, seq_len=lens[0], mode="trajectory")
  stats = {}
  b = R.policy_batch(eps, seq_len=lens[0], mode="turn", on_overlong="drop", stats=stats)
  # episode 1's longest turn is over: all 3 of its rows go, episode 0's 2 rows stay
  assert b["sample_mask"].tolist() == [True, True, False, False, False]
  assert stats["dropped_rows"] == 3 and stats["dropped_trajectories"] == 1
  assert not b["mask"][2:].any() and not b["inputs"][2:].any()
  with pytest.raises(ValueError, match="mode must be one of"):
    R.policy_batch(eps, seq_len=64, mode="turns")


def test_evaluate_is_greedy_with_one_rollout_per_task():
  tasks = [Task("a", "Q", 2), Task("b", "Q", 3)]
  res = R.evaluate(ScriptedSampler([call("answer", "2")]), None, AddEnv, tasks, TOK, max_turns=2,
                   max_context_tokens=100, seed=0)
  assert (res["success_rate"], res["reward_mean"], res["turns_mean"]) == (0.5, 0.5, 1.0)
  assert [e.traj_id for e in res["episodes"]] == [0, 0]
  cfg = models.presets.get("longcat_flash_tiny")
  assert R.Sampler(cfg, max_new_tokens=4, temperature=0.7).greedy().temperature == 0.0


# --------------------------------------------------------------------------- real model

@pytest.fixture(scope="module")
def real():
  cfg = models.presets.get("longcat_flash_tiny", vocab_size=TOK.vocab_size, num_layers=1,
                           moe_dispatch="dropless")
  variables = models.init_variables(cfg, jax.random.key(3))
  sampler = R.Sampler(cfg, max_new_tokens=12, temperature=1.0, prompt_bucket=96, batch_bucket=8)
  tasks = [Task("a", "Q", 2), Task("b", "QQ", 3)]
  kw = dict(group_size=3, max_turns=3, max_context_tokens=96)
  eps = R.rollout(sampler, variables, AddEnv, tasks, TOK, seed=7, **kw)
  return cfg, variables, sampler, tasks, kw, eps


def test_sampler_logprobs_equal_teacher_forced_logprobs(real):
  cfg, variables, sampler, _, _, eps = real
  assert sampler.shapes_used == {(8, 96)}  # one compile for the whole rollout
  assert sum(len(e.turns) for e in eps) > len(eps)  # multi-turn: observations in the context
  forward = jax.jit(models.build(cfg).apply)
  for mode in ("trajectory", "turn"):
    b = R.policy_batch(eps, seq_len=120, mode=mode, pad_rows_to=16)
    logits = forward(variables, b["inputs"], segment_ids=b["segment_ids"], positions=b["positions"])
    lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), b["targets"][..., None],
                            -1)[..., 0]
    on = b["mask"] > 0
    assert on.sum() == sum(len(t.response) for e in eps for t in e.turns)
    np.testing.assert_allclose(lp[on], b["old_logp"][on], atol=1e-4)


def test_rollout_is_deterministic_given_seed(real):
  _, variables, sampler, tasks, kw, eps = real

  def dump(episodes):
    return [(e.stop_reason, e.transcript.tolist(), [t.logprobs.tolist() for t in e.turns])
            for e in episodes]

  assert dump(R.rollout(sampler, variables, AddEnv, tasks, TOK, seed=7, **kw)) == dump(eps)
  assert dump(R.rollout(sampler, variables, AddEnv, tasks, TOK, seed=8, **kw)) != dump(eps)
