"""AgentFlow episodes (agentic_jax.rl.agentflow): memory / plan / record layout on a scripted
planner, only planner turns trainable, Flow-GRPO rows through policy_batch(mode="turn"), the
scripted and reference executor/verifier/generator, stop reasons, determinism on the real Sampler.

Expected prompts are built independently with data/render.py's `render` of the equivalent
EnvSample; expected rewards follow from the scripted planner's rules stated in each test."""

from __future__ import annotations

import re
from fractions import Fraction

import jax
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.data import render as render_lib
from agentic_jax.data.builtin import calculator
from agentic_jax.data.schema import EnvSample, Turn
from agentic_jax.data.tokenizer import ByteTokenizer
from agentic_jax.rl import agentflow, envs
from agentic_jax.rl.rollout import Generation, policy_batch
from agentic_jax.rl.sampler import Sampler

TOK = ByteTokenizer()
END, ASST, CALL = (TOK.special_id(m) for m in ("<|end_turn|>", "<|assistant|>", "<|tool_call|>"))


def _problem(n_steps: int, start: int = 0) -> calculator.Problem:
  """The first basic-level problem (seed 0) from index `start` on with `n_steps` steps."""
  for i in range(start, start + 200):
    p = calculator.make_problem(0, i, "basic")
    if len(p.steps) == n_steps:
      return p
  raise AssertionError("no such problem")


def _turn_ids(thought: str, call: str) -> list[int]:
  """<|assistant|>THOUGHT<|end_turn|><|tool_call|>NAME\\nCALL<|end_turn|>, NAME = call's tool."""
  name = call.split("(", 1)[0]
  return [ASST] + TOK.encode(thought) + [END, CALL] + TOK.encode(f"{name}\n{call}") + [END]


class ScriptedPlanner:
  """A Sampler stand-in that follows each problem's worked solution. It reads the question and
  the calc results from the prompt text; at the answer step, batch rows listed in `wrong_rows`
  answer the correct value + 1. `script`, if given, replaces the plan: script(text, row) -> ids.
  Log-probs are -(k + 1) / 100 for the k-th response token (checked in the batch test)."""

  max_new_tokens = 64

  def __init__(self, problems, wrong_rows=(), script=None):
    self.by_question = {p.task.question: p for p in problems}
    self.wrong_rows, self.script = set(wrong_rows), script
    self.calls = []  # (number of contexts, seed) per generate call

  def plan(self, text: str, row: int) -> list[int]:
    question = re.search(r"<\|user\|>(.*?)<\|end_turn\|>", text, re.S).group(1)
    p = self.by_question[question]
    results = re.findall(r"<\|observation\|>calc\n(.*?)<\|end_turn\|>", text, re.S)
    if len(results) < len(p.steps):
      step = p.steps[len(results)]
      expr = step.expr.format(**{f"r{i}": r for i, r in enumerate(results)})
      return _turn_ids(step.thought, f"calc({expr})")
    value = Fraction(results[-1]) + (1 if row in self.wrong_rows else 0)
    return _turn_ids("Done.", f"answer({value})")

  def generate(self, variables, contexts, seed):
    self.calls.append((len(contexts), seed))
    out = []
    for row, ctx in enumerate(contexts):
      assert int(ctx[0]) == TOK.bos_id
      text = TOK.decode(ctx)
      ids = self.script(text, row) if self.script else self.plan(text, row)
      out.append(Generation(np.asarray(ids, np.int32),
                            -np.arange(1, len(ids) + 1, dtype=np.float32) / 100, False))
    return out


def _calc_env():
  return envs.CalculatorEnv()


def _expected_prompt(env, question: str, memory_turns: list[Turn]) -> np.ndarray:
  """The planner prompt by render.py: the EnvSample's tokens without the closing </s>."""
  sample = EnvSample("x", "x", (Turn("system", env.system_prompt), Turn("user", question),
                                *memory_turns))
  return render_lib.render(sample, TOK, "all").tokens[:-1]


def test_layout_memory_and_records_on_a_two_step_problem():
  p = _problem(2)
  planner = ScriptedPlanner([p])
  eps = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=2, seed=0,
                                max_turns=5)
  assert [(e.group_id, e.traj_id) for e in eps] == [(0, 0), (0, 1)]
  ep = eps[0]
  # three planner steps (calc, calc, answer proposed -> verifier STOP), then the generator
  assert [t.role for t in ep.turns] == ["planner", "executor", "verifier"] * 3 + ["generator"]
  assert [t.trainable for t in ep.turns] == [t.role == "planner" for t in ep.turns]
  assert [t.text for t in ep.turns if t.role == "verifier"] == ["CONTINUE", "CONTINUE", "STOP"]
  r0 = str(calculator.arith.evaluate(p.steps[0].expr))
  call0 = f"calc({p.steps[0].expr})"
  call1 = f"calc({p.steps[1].expr.format(r0=r0)})"
  answer = f"answer({calculator.arith.format_value(p.task.answer)})"
  assert [t.text for t in ep.turns if t.role == "executor"] == [call0, call1, answer]
  assert ep.turns[1].observation == r0  # the executor ran the planner's call
  assert ep.turns[-1].text == answer and ep.turns[-1].observation == "correct"
  assert (ep.reward, ep.success, ep.stop_reason, ep.transcript) == (1.0, True, "answer", None)
  assert ep.info["env_steps"] == 3 and ep.info["planner_turns"] == 3
  assert [m["call"] for m in ep.info["memory"]] == [call0, call1]
  # each planner prompt = query + memory of the previous steps, in render.py's format
  env = _calc_env()
  q = p.task.question
  mem = [Turn("assistant", p.steps[0].thought), Turn("tool_call", call0, "calc"),
         Turn("observation", r0, "calc")]
  r1 = ep.info["memory"][1]["result"]
  mem2 = mem + [Turn("assistant", p.steps[1].thought), Turn("tool_call", call1, "calc"),
                Turn("observation", r1, "calc")]
  planners = [t for t in ep.turns if t.role == "planner"]
  for turn, memory in zip(planners, ([], mem, mem2)):
    np.testing.assert_array_equal(turn.context, _expected_prompt(env, q, memory))
  # responses are the sampled tokens, untouched
  np.testing.assert_array_equal(planners[0].response,
                                _turn_ids(p.steps[0].thought, call0))
  assert Fraction(r1) == p.task.answer


def test_flow_grpo_rows_broadcast_the_trajectory_reward():
  p = _problem(1)
  # answer step: batch rows 1 and 3 (traj 1 and 3: all four are active then) answer wrongly
  planner = ScriptedPlanner([p], wrong_rows={1, 3})
  eps = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=4, seed=3,
                                max_turns=4)
  assert [e.reward for e in eps] == [1.0, 0.0, 1.0, 0.0]
  batch = policy_batch(eps, seq_len=512, mode="turn")
  # one row per planner turn (2 per trajectory), rewards broadcast to all of a trajectory's rows
  assert batch["traj_id"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  assert batch["turn_index"].tolist() == [0, 1] * 4
  assert batch["group_id"].tolist() == [0] * 8
  assert batch["rewards"].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
  planners = [t for e in eps for t in e.turns if t.role == "planner"]
  for i, t in enumerate(planners):
    c, r = len(t.context), len(t.response)
    seq = np.concatenate([t.context, t.response])
    np.testing.assert_array_equal(batch["inputs"][i, :c + r - 1], seq[:-1])
    np.testing.assert_array_equal(batch["targets"][i, :c + r - 1], seq[1:])
    # trained on exactly the response tokens (targets c-1 .. c+r-2), with the sampler's logprobs
    expected_mask = np.zeros(512, np.float32)
    expected_mask[c - 1:c - 1 + r] = 1
    np.testing.assert_array_equal(batch["mask"][i], expected_mask)
    np.testing.assert_allclose(batch["old_logp"][i, c - 1:c - 1 + r],
                               -np.arange(1, r + 1) / 100, rtol=1e-6)
    assert batch["response_len"][i] == r


def test_max_turns_then_the_scripted_generator_answers_from_memory():
  p = _problem(1)
  planner = ScriptedPlanner([p])
  (ep,) = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=1,
                                  seed=0, max_turns=1)
  # one step (calc) and no proposed answer: the generator submits the last result, which for a
  # one-step problem is the answer
  assert ep.stop_reason == "max_turns"
  assert ep.turns[-1].role == "generator"
  assert ep.turns[-1].text == f"answer({calculator.arith.format_value(p.task.answer)})"
  assert ep.reward == 1.0


def test_malformed_plan_reaches_memory_and_eos_ends_planning():
  p = _problem(1)

  def script(text, row):
    if "<|observation|>" not in text:
      return [ASST] + TOK.encode("hmm") + [END] + TOK.encode("calc 2+2") + [END]  # no tool_call
    return [ASST] + TOK.encode("I give up") + [END, TOK.eos_id]

  planner = ScriptedPlanner([p], script=script)
  (ep,) = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=1,
                                  seed=0, max_turns=5)
  mem = ep.info["memory"]
  assert len(mem) == 1 and mem[0]["tool"] == "invalid" and mem[0]["error"]
  assert mem[0]["result"].startswith("error: empty action")  # the environment's explanation
  second = [t for t in ep.turns if t.role == "planner"][1]
  assert "<|observation|>invalid\nerror: empty action" in TOK.decode(second.context)
  assert ep.stop_reason == "eos"
  # no successful result in memory: the scripted generator has nothing to submit
  assert ep.turns[-1].role == "generator" and ep.turns[-1].text == ""
  assert ep.turns[-1].observation == "no final answer"
  assert (ep.reward, ep.success) == (0.0, False)


def test_token_budget_stops_planning():
  p = _problem(2)
  head_len = len(_expected_prompt(_calc_env(), p.task.question, []))
  (ep,) = agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK,
                                  group_size=1, seed=0, max_turns=5, max_context_tokens=head_len)
  # the first prompt fits exactly; the second (with one memory entry) does not
  assert sum(t.role == "planner" for t in ep.turns) == 1
  assert ep.stop_reason == "token_budget"


class ScriptedReference:
  """Reference-model stand-in: the verifier always says `verdict`; the generator answers
  `answer`; as the executor it rewrites every call to calc(1 + 1)."""

  def __init__(self, verdict: str, answer: str):
    self.verdict, self.answer = verdict, answer

  def generate(self, variables, contexts, seed):
    out = []
    for ctx in contexts:
      text = TOK.decode(ctx)
      if text.endswith(agentflow.VERIFY_PROMPT + "<|end_turn|>"):
        ids = [ASST] + TOK.encode(self.verdict) + [END]
      elif text.endswith(agentflow.ANSWER_PROMPT + "<|end_turn|>"):
        ids = _turn_ids("", self.answer)
      else:
        ids = [CALL] + TOK.encode("calc\ncalc(1 + 1)") + [END]
      out.append(Generation(np.asarray(ids, np.int32), np.full(len(ids), -0.5, np.float32), False))
    return out


def test_reference_modules_are_recorded_frozen_and_drive_the_episode():
  p = _problem(1)
  ref = ScriptedReference("STOP.", f"answer({calculator.arith.format_value(p.task.answer)})")
  (ep,) = agentflow.run_agentflow(
      ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1, seed=0, max_turns=3,
      executor="reference", verifier="reference", generator="reference",
      reference_variables={"frozen": True}, reference_sampler=ref)
  # step 1: the executor replaces the plan's call; the verifier stops at once (no proposal)
  assert [t.role for t in ep.turns] == ["planner", "executor", "verifier", "generator"]
  assert [t.trainable for t in ep.turns] == [True, False, False, False]
  assert ep.info["memory"][0]["call"] == "calc(1 + 1)" and ep.info["memory"][0]["result"] == "2"
  assert ep.stop_reason == "verifier"
  assert ep.turns[-1].observation == "correct" and ep.reward == 1.0
  for t in ep.turns[1:]:
    np.testing.assert_allclose(t.logprobs, -0.5)  # the reference's log-probs are kept
    assert int(t.context[0]) == TOK.bos_id
  # a generator call that is not an answer tool is not submitted
  ref2 = ScriptedReference("STOP", "calc(3)")
  (ep2,) = agentflow.run_agentflow(
      ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1, seed=0, max_turns=3,
      verifier="reference", generator="reference", reference_variables={},
      reference_sampler=ref2)
  assert ep2.turns[-1].observation == "no final answer" and ep2.reward == 0.0


def test_bad_arguments_name_the_config_key():
  p = _problem(1)
  with pytest.raises(ValueError, match=r"config\.rl\.agentflow\.executor"):
    agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1,
                            seed=0, max_turns=1, executor="oracle")
  with pytest.raises(ValueError, match=r"config\.rl\.agentflow\.generator='reference'.*"
                                       r"reference_variables"):
    agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1,
                            seed=0, max_turns=1, generator="reference")
  with pytest.raises(ValueError, match=r"config\.rl\.group_size"):
    agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=0,
                            seed=0, max_turns=1)


class ShortCalculatorEnv(envs.CalculatorEnv):
  system_prompt = "Use calc(X) and answer(X)."  # short prompts: few decoder shapes to compile


def test_real_sampler_is_deterministic_and_rows_carry_its_logprobs():
  cfg = models.presets.get("longcat_flash_tiny").replace(vocab_size=TOK.vocab_size,
                                                         max_position_embeddings=512)
  variables = models.init_variables(cfg, jax.random.key(0))
  sampler = Sampler(cfg, max_new_tokens=12, temperature=1.0, prompt_bucket=256, batch_bucket=4)
  tasks = [calculator.make_problem(0, i, "basic").task for i in range(2)]
  kw = dict(group_size=2, max_turns=2, executor="reference", reference_variables=variables)
  a = agentflow.run_agentflow(sampler, variables, ShortCalculatorEnv, tasks, TOK, seed=7, **kw)
  b = agentflow.run_agentflow(sampler, variables, ShortCalculatorEnv, tasks, TOK, seed=7, **kw)
  c = agentflow.run_agentflow(sampler, variables, ShortCalculatorEnv, tasks, TOK, seed=8, **kw)

  def tokens(eps):
    return [t.response.tolist() for e in eps for t in e.turns]

  assert tokens(a) == tokens(b) and [e.reward for e in a] == [e.reward for e in b]
  assert tokens(a) != tokens(c)
  # an untrained model never completes a call here: every trajectory takes both planner steps
  for e in a:
    roles = [t.role for t in e.turns]
    assert roles.count("planner") == 2 and roles.count("executor") == 2
    assert [t.trainable for t in e.turns] == [r == "planner" for r in roles]
  batch = policy_batch(a, seq_len=256, mode="turn")
  planners = [t for e in a for t in e.turns if t.role == "planner"]
  assert batch["inputs"].shape[0] == len(planners) == 8
  for i, t in enumerate(planners):
    c_len, r = len(t.context), len(t.response)
    np.testing.assert_array_equal(batch["old_logp"][i, c_len - 1:c_len - 1 + r], t.logprobs)
    assert batch["mask"][i].sum() == r
