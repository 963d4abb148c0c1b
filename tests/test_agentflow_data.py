"""Planner-format mid-training samples (agentic_jax.rl.agentflow_data): rendered, each sample is
exactly the context the planner of run_agentflow sees at that step followed by its plan, and only
the plan is a target.

The check replays the samples as the planner: a Sampler stand-in answers a context only if it is
token for token the prefix of one sample (everything before its last <|assistant|>), with that
sample's plan; the real agentflow loop (scripted executor, verifier, generator) must then solve
the task, reward 1, asking exactly the samples' contexts in order."""

from __future__ import annotations

import numpy as np
import pytest

from agentic_jax import envs
from agentic_jax.data import render as render_lib
from agentic_jax.data import schema
from agentic_jax.data.builtin import agent, calculator
from agentic_jax.data.tokenizer import ByteTokenizer
from agentic_jax.rl import agentflow, agentflow_data
from agentic_jax.rl.rollout import Generation

TOK = ByteTokenizer()
ASST, END = TOK.special_id("<|assistant|>"), TOK.special_id("<|end_turn|>")
ENV = envs.CalculatorEnv(level="multistep")


def _split(rendered) -> tuple[tuple[int, ...], list[int]]:
  """(context, plan): the tokens before the last <|assistant|>, and from it to its <|end_turn|>."""
  ids = rendered.tokens.tolist()
  k = len(ids) - 1 - ids[::-1].index(ASST)
  return tuple(ids[:k]), ids[k:ids.index(END, k) + 1]


class Replay:
  max_new_tokens = 64

  def __init__(self, samples):
    self.plans = dict(_split(render_lib.render(s, TOK, "assistant_only")) for s in samples)
    self.asked = []

  def generate(self, variables, contexts, seed):
    out = []
    for ctx in contexts:
      key = tuple(np.asarray(ctx).tolist())
      assert key in self.plans, "the planner saw a context no sample renders:\n" + TOK.decode(ctx)
      self.asked.append(key)
      ids = self.plans[key]
      out.append(Generation(np.asarray(ids, np.int32), np.zeros(len(ids), np.float32), False))
    return out


def _episodes(n=12, **kw):
  return agent.calculator_episodes(3, n, level="multistep", slip_rate=0.0, **kw)


@pytest.mark.parametrize("error_rate", [0.0, 1.0])
def test_samples_are_the_planners_contexts_and_plans(error_rate):
  for problem, episode in _episodes(error_rate=error_rate)[:6]:
    samples = agentflow_data.planner_samples(episode, ENV.tools, answer_tools=ENV.answer_tools,
                                             max_steps=6)
    assert len(samples) == len(problem.steps) + 1  # each calc step, then the answer
    replay = Replay(samples)
    eps = agentflow.run_agentflow(replay, None, lambda: envs.CalculatorEnv(level="multistep"),
                                  [problem.task], TOK, group_size=1, seed=0, max_turns=6)
    assert eps[0].reward == 1.0 and eps[0].stop_reason == "answer"
    contexts = [_split(render_lib.render(s, TOK, "assistant_only"))[0] for s in samples]
    assert replay.asked == contexts
    # memory shows no failed call: the recovered step's fix is the only call of that step
    assert all(not m["error"] for m in eps[0].info["memory"])


@pytest.mark.parametrize("policy", render_lib.POLICIES)
def test_only_the_plan_is_a_target_under_every_policy(policy):
  _, episode = _episodes(1)[0]
  samples = agentflow_data.planner_samples(episode, ENV.tools, answer_tools=ENV.answer_tools,
                                           max_steps=6)
  last = samples[-1]
  r = render_lib.render(last, TOK, policy)
  _, plan = _split(r)
  nonzero = np.flatnonzero(r.loss_weights)
  # the plan's tokens, marker and <|end_turn|> included (the final </s> only under "all")
  end = len(r.tokens) - 1
  expected = list(range(end - len(plan), end)) + ([end] if policy in ("all", "all_error_masked")
                                                 else [])
  assert nonzero.tolist() == expected
  assert TOK.decode(r.tokens[end - len(plan):end]).endswith("Tool: answer<|end_turn|>")


def test_sub_goals_round_trip_and_fit():
  tools = ENV.tools
  assert agentflow_data.sub_goal_for("calc(12 * 7)", tools["calc"], answer=False) == "compute 12 * 7"
  assert agentflow_data.sub_goal_for("answer(7/3)", tools["answer"], answer=True) == \
      "submit 7/3 as the final answer"
  _, episode = _episodes(1)[0]
  # four planner steps do not fit in three
  assert agentflow_data.planner_samples(episode, tools, answer_tools=("answer",), max_steps=3) == []
  with pytest.raises(ValueError, match="max_steps"):
    agentflow_data.planner_samples(episode, tools, answer_tools=("answer",), max_steps=0)


def test_samples_survive_the_jsonl_schema():
  _, episode = _episodes(1)[0]
  for s in agentflow_data.planner_samples(episode, ENV.tools, answer_tools=("answer",),
                                          max_steps=6):
    assert schema.parse_record(schema.to_record(s)) == s


def test_multistep_level_tasks():
  """Every multistep question is its own worked solution: the answer read off the question text
  (parsed by the calculator's parser for the arithmetic ones) equals the task's answer; three or
  four steps, each later step using an earlier result."""
  templates = set()
  for i in range(400):
    p = calculator.make_problem(0, i, "multistep")
    templates.add(p.template)
    assert 3 <= len(p.steps) <= 4
    assert all("{r" in s.expr for s in p.steps[2:])
    q = p.task.question
    if q.startswith("What is "):
      from agentic_jax.data.builtin import arith
      assert arith.evaluate(q[len("What is "):-1]) == p.task.answer
    assert p.task.answer > 0 and p.task.answer.denominator == 1
  assert templates == set(calculator.MULTISTEP_TEMPLATES)
  # scripted episodes without slips all succeed, with the level's short system prompt
  eps = _episodes(40, error_rate=0.5)
  assert all(s.reward == 1.0 for _, s in eps)
  assert eps[0][1].turns[0].content == calculator.BASIC_SYSTEM_PROMPT
  assert sum(any(t.error for t in s.turns) for _, s in eps) > 5
