"""AgentFlow episodes (agentic_jax.rl.agentflow): the planner writes a sub-goal and a tool, the
executor (scripted rule or frozen reference) writes the command, only the planner's tokens carry
weight through policy_batch and the RL loop's packed batch, the planner's context holds the query
analysis and the step count; stop reasons, the frozen modules, determinism on the real Sampler.

Expected prompts are built independently with data/render.py's `render` of the equivalent
EnvSample and literal strings; expected commands and rewards follow from the scripted planner's
rules stated in each test."""

from __future__ import annotations

import os
import re
from collections import Counter
from fractions import Fraction

import jax
import numpy as np
import pytest

from agentic_jax import envs, models
from agentic_jax.data import render as render_lib
from agentic_jax.data.builtin import calculator
from agentic_jax.data.schema import EnvSample, Turn
from agentic_jax.data.tokenizer import ByteTokenizer
from agentic_jax.rl import agentflow
from agentic_jax.rl import agentflow_modules as modules
from agentic_jax.rl.rollout import Generation, policy_batch
from agentic_jax.rl.sampler import Sampler
from tests.train_fixtures import ROOT

TOK = ByteTokenizer()
END, ASST, CALL = (TOK.special_id(m) for m in ("<|end_turn|>", "<|assistant|>", "<|tool_call|>"))
# what a planner that ignored its stop rule would write after its plan: never run, never trained
TAIL = [CALL] + TOK.encode("calc\ncalc(999 * 999)") + [END]


def _problem(n_steps: int, start: int = 0) -> calculator.Problem:
  """The first basic-level problem (seed 0) from index `start` on with `n_steps` steps."""
  for i in range(start, start + 200):
    p = calculator.make_problem(0, i, "basic")
    if len(p.steps) == n_steps:
      return p
  raise AssertionError("no such problem")


def _plan_ids(thought: str, sub_goal: str, tool: str) -> list[int]:
  """<|assistant|>THOUGHT\\nSub-goal: SUB_GOAL\\nTool: TOOL<|end_turn|>, written out by hand."""
  return [ASST] + TOK.encode(f"{thought}\nSub-goal: {sub_goal}\nTool: {tool}") + [END]


class ScriptedPlanner:
  """A Sampler stand-in that plans each problem's worked solution: at step k (k = number of calc
  results in its prompt) the sub-goal is "compute EXPR" with tool calc, then "submit VALUE" with
  tool answer; batch rows in `wrong_rows` submit the correct value + 1. With `tail`, TAIL follows
  every plan. `script(text, row) -> ids` replaces the plan. Log-probs are -(k + 1) / 100 for the
  k-th returned token."""

  max_new_tokens = 64

  def __init__(self, problems, wrong_rows=(), script=None, tail=False):
    self.by_question = {p.task.question: p for p in problems}
    self.wrong_rows, self.script, self.tail = set(wrong_rows), script, tail
    self.prompts = []

  def plan(self, text: str, row: int) -> list[int]:
    question = re.search(r"<\|user\|>(.*?)<\|end_turn\|>", text, re.S).group(1)
    p = self.by_question[question]
    results = re.findall(r"<\|observation\|>calc\n(.*?)<\|end_turn\|>", text, re.S)
    if len(results) < len(p.steps):
      step = p.steps[len(results)]
      expr = step.expr.format(**{f"r{i}": r for i, r in enumerate(results)})
      return _plan_ids(step.thought, f"compute {expr}", "calc")
    value = Fraction(results[-1]) + (1 if row in self.wrong_rows else 0)
    return _plan_ids("Done.", f"submit {value}", "answer")

  def generate(self, variables, contexts, seed):
    out = []
    for row, ctx in enumerate(contexts):
      assert int(ctx[0]) == TOK.bos_id
      text = TOK.decode(ctx)
      self.prompts.append(text)
      ids = self.script(text, row) if self.script else self.plan(text, row)
      ids = ids + (TAIL if self.tail else [])
      out.append(Generation(np.asarray(ids, np.int32),
                            -np.arange(1, len(ids) + 1, dtype=np.float32) / 100, False))
    return out


def _calc_env():
  return envs.CalculatorEnv()


def _render(env, question: str, turns: list[Turn]) -> np.ndarray:
  """system + user(question) + turns by render.py, without the closing </s>."""
  sample = EnvSample("x", "x", (Turn("system", env.system_prompt), Turn("user", question), *turns))
  return render_lib.render(sample, TOK, "all").tokens[:-1]


def _analysis(numbers: str) -> str:
  return f"Tools: calc(EXPRESSION), answer(VALUE). Final answer with answer. Given: {numbers}."


def _step(t: int, n: int) -> Turn:
  return Turn("user", f"Step {t} of {n}, {n - t} left after it. Reply with 'Sub-goal: ...' and "
                      "'Tool: NAME'.")


def _numbers(question: str) -> str:
  return ", ".join(re.findall(r"\d+", question))


# ---------------------------------------------------------------------------------------------
# roles, memory and prompts


def test_two_step_problem_planner_plans_executor_commands_memory_and_prompts():
  p = _problem(2)
  planner = ScriptedPlanner([p])
  eps = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=2, seed=0,
                                max_turns=5)
  assert [(e.group_id, e.traj_id) for e in eps] == [(0, 0), (0, 1)]
  ep = eps[0]
  # analysis, three steps (calc, calc, answer proposed -> verifier STOP), then the generator
  assert [t.role for t in ep.turns] == (["analyzer"] + ["planner", "executor", "verifier"] * 3
                                        + ["generator"])
  assert [t.trainable for t in ep.turns] == [t.role == "planner" for t in ep.turns]
  assert [t.text for t in ep.turns if t.role == "verifier"] == ["CONTINUE", "CONTINUE", "STOP"]
  r0 = str(calculator.arith.evaluate(p.steps[0].expr))
  e0, e1 = p.steps[0].expr, p.steps[1].expr.format(r0=r0)
  answer = f"answer({calculator.arith.format_value(p.task.answer)})"
  # the planner never wrote a call; the executor wrote each command from the sub-goal
  planners = [t for t in ep.turns if t.role == "planner"]
  assert all(CALL not in t.response for t in planners)
  assert [t.text for t in ep.turns if t.role == "executor"] == [f"calc({e0})", f"calc({e1})",
                                                                answer]
  assert ep.turns[2].observation == r0  # the executor's command ran
  assert ep.turns[-1].text == answer and ep.turns[-1].observation == "correct"
  assert (ep.reward, ep.success, ep.stop_reason, ep.transcript) == (1.0, True, "answer", None)
  assert ep.info["env_steps"] == 3 and ep.info["planner_turns"] == 3
  assert [(m["sub_goal"], m["tool"], m["call"]) for m in ep.info["memory"]] == [
      (f"compute {e0}", "calc", f"calc({e0})"), (f"compute {e1}", "calc", f"calc({e1})")]
  # each planner prompt = query + analysis + memory of the previous steps + step count
  env, q = _calc_env(), p.task.question
  analysis = Turn("user", "Query analysis:\n" + _analysis(_numbers(q)))
  r1 = ep.info["memory"][1]["result"]
  mem1 = [Turn("assistant", f"Sub-goal: compute {e0}\nTool: calc"),
          Turn("tool_call", f"calc({e0})", "calc"), Turn("observation", r0, "calc")]
  mem2 = mem1 + [Turn("assistant", f"Sub-goal: compute {e1}\nTool: calc"),
                 Turn("tool_call", f"calc({e1})", "calc"), Turn("observation", r1, "calc")]
  for t, (turn, memory) in enumerate(zip(planners, ([], mem1, mem2)), start=1):
    np.testing.assert_array_equal(turn.context, _render(env, q, [analysis, *memory, _step(t, 5)]))
  # responses are the sampled tokens, untouched
  np.testing.assert_array_equal(planners[0].response,
                                _plan_ids(p.steps[0].thought, f"compute {e0}", "calc"))
  # the executor read the query and (sub-goal, tool) only, not the memory
  executors = [t for t in ep.turns if t.role == "executor"]
  prefix = _render(env, q, [Turn("assistant", f"compute {e1}")])
  np.testing.assert_array_equal(executors[1].context,
                                np.concatenate([prefix, [CALL], TOK.encode("calc\n")]))
  assert Fraction(r1) == p.task.answer


def test_flow_grpo_rows_broadcast_the_trajectory_reward():
  p = _problem(1)
  # answer step: batch rows 1 and 3 (traj 1 and 3: all four are active then) answer wrongly
  planner = ScriptedPlanner([p], wrong_rows={1, 3})
  eps = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=4, seed=3,
                                max_turns=4)
  assert [e.reward for e in eps] == [1.0, 0.0, 1.0, 0.0]
  batch = policy_batch(eps, seq_len=1024, mode="turn")
  # one row per planner turn (2 per trajectory), rewards broadcast to all of a trajectory's rows
  assert batch["traj_id"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  assert batch["turn_index"].tolist() == [0, 1] * 4
  assert batch["group_id"].tolist() == [0] * 8
  assert batch["rewards"].tolist() == [1, 1, 0, 0, 1, 1, 0, 0]


# ---------------------------------------------------------------------------------------------
# what is trained


class ScriptedReference:
  """Reference-model stand-in for every frozen module, told apart by how its prompt ends:
  analyzer -> `analysis`; verifier -> `verdict`; generator -> a tool call of `answer` (default:
  answer(the last calc result in its prompt)); executor
  (prompt ends with <|tool_call|>TOOL\\n) -> `executor(sub_goal, tool)` (default: TOOL(the longest
  run of digits, spaces and + - * / in the sub-goal)). Log-probs are -0.5; prompts are kept."""

  def __init__(self, verdict="CONTINUE", answer=None, analysis="ANALYSIS-XYZ",
               executor=None):
    self.verdict, self.answer, self.analysis = verdict, answer, analysis
    self.executor = executor or (lambda sub_goal, tool: "{}({})".format(
        tool, max(re.findall(r"[\d+\-*/ ]+", sub_goal), key=lambda s: len(s.strip())).strip()))
    self.prompts = []

  def generate(self, variables, contexts, seed):
    out = []
    for ctx in contexts:
      text = TOK.decode(ctx)
      self.prompts.append(text)
      exe = re.search(r"<\|assistant\|>([^<]*)<\|end_turn\|><\|tool_call\|>(\w+)\n$", text)
      if text.endswith(agentflow.VERIFY_PROMPT + "<|end_turn|>"):
        ids = [ASST] + TOK.encode(self.verdict) + [END]
      elif text.endswith(agentflow.ANSWER_PROMPT + "<|end_turn|>"):
        results = re.findall(r"<\|observation\|>calc\n(.*?)<\|end_turn\|>", text, re.S)
        call = self.answer or f"answer({results[-1]})"
        ids = [ASST] + TOK.encode("ok") + [END, CALL] + TOK.encode(f"answer\n{call}") + [END]
      elif text.endswith(agentflow.ANALYSIS_PROMPT + "<|end_turn|>"):
        ids = [ASST] + TOK.encode(self.analysis) + [END]
      elif exe:
        ids = TOK.encode(self.executor(exe.group(1), exe.group(2))) + [END]
      else:
        raise AssertionError(f"unexpected reference prompt: {text[-200:]!r}")
      out.append(Generation(np.asarray(ids, np.int32), np.full(len(ids), -0.5, np.float32), False))
    return out


def _rl_config(**over):
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py:tiny"))
  config.unlock()
  r = config.rl
  r.mode, r.minibatches, r.row_bucket, r.sample_bucket = "agentflow", 1, 1, 1
  r.max_new_tokens, r.max_context_tokens, r.seq_len = 160, 860, 1024
  for k, v in over.items():
    r[k] = v
  return config


@pytest.mark.parametrize("module", ["scripted", "reference"])
def test_only_the_planners_tokens_carry_weight(module):
  """Hand-built check through run_agentflow -> policy_batch -> the RL loop's packed batch: the
  trained positions are exactly the planner's plan tokens (not the tool call it wrote past its
  plan, not any frozen or scripted module's tokens), with the planner's log-probs."""
  from agentic_jax.rl import loop  # pylint: disable=import-outside-toplevel
  p2, p1 = _problem(2), _problem(1)
  ref = ScriptedReference(verdict="CONTINUE")
  eps = agentflow.run_agentflow(
      ScriptedPlanner([p2, p1], tail=True), None, _calc_env, [p2.task, p1.task], TOK,
      group_size=2, seed=0, max_turns=3, executor=module, verifier=module, generator=module,
      analyzer=module, reference_variables={}, reference_sampler=ref)
  # by hand: the planner of p2 plans calc, calc, answer; of p1 calc, answer, answer (the
  # scripted verifier stops at the first answer, the reference one says CONTINUE throughout)
  n_plans = [3, 3, 2, 2] if module == "scripted" else [3, 3, 3, 3]
  plans = []  # (context, plan tokens without TAIL) of every planner turn, in episode order
  for e, n in zip(eps, n_plans):
    planners = [t for t in e.turns if t.role == "planner"]
    assert len(planners) == n and all(t.trainable for t in planners)
    assert not any(t.trainable for t in e.turns if t.role != "planner")
    for t in planners:
      # the plan ends at its first <|end_turn|>: TAIL was cut before the turn was recorded
      assert int(t.response[-1]) == END and list(t.response).count(END) == 1
      plans.append((t.context, t.response))
    if module == "reference":  # the frozen modules' tokens were generated with log-probs
      assert {t.role for t in e.turns if t.logprobs.size and t.logprobs[0] == -0.5} == {
          "analyzer", "executor", "verifier", "generator"}
  assert all(e.success for e in eps)
  total = sum(len(r) for _, r in plans)

  batch = policy_batch(eps, seq_len=1024, mode="turn")
  assert batch["mask"].shape[0] == len(plans) and batch["mask"].sum() == total
  for i, (ctx, resp) in enumerate(plans):
    expected = np.zeros(1024, np.float32)
    expected[len(ctx) - 1:len(ctx) - 1 + len(resp)] = 1.0  # targets c-1 .. c+r-2 = the plan
    np.testing.assert_array_equal(batch["mask"][i], expected)
    np.testing.assert_array_equal(batch["targets"][i][expected > 0], resp)
    np.testing.assert_allclose(batch["old_logp"][i][expected > 0],
                               -np.arange(1, len(resp) + 1) / 100, rtol=1e-6)

  packed, counts = loop.make_batch(_rl_config(), eps)
  assert counts["samples"] == len(plans)
  trained = Counter()
  for j, k in zip(*np.nonzero(packed["sample_mask"])):
    m = packed["mask"][j, k] > 0
    toks = packed["targets"][j][packed["index"][j, k][m]]
    np.testing.assert_allclose(packed["old_logp"][j, k][m], -np.arange(1, m.sum() + 1) / 100,
                               rtol=1e-6)
    trained[tuple(toks.tolist())] += 1
  assert trained == Counter(tuple(r.tolist()) for _, r in plans)
  assert packed["mask"].sum() == total


# ---------------------------------------------------------------------------------------------
# the executor


def test_scripted_executor_rule():
  calc, answer = calculator.TOOLS["calc"], calculator.TOOLS["answer"]
  assert modules.scripted_command("compute 12 * 7", calc) == "calc(12 * 7)"
  assert modules.scripted_command("First the product 12 * 7.", calc) == "calc(12 * 7)"
  assert modules.scripted_command("compute (3 + 4) * 2, step 2", calc) == "calc((3 + 4) * 2)"
  assert modules.scripted_command("compute 84 - 5 (the rest)", calc) == "calc(84 - 5)"
  assert modules.scripted_command("add the two numbers", calc) is None
  assert modules.scripted_command("submit 84 as the final answer", answer) == "answer(84)"
  assert modules.scripted_command("give -7/3.", answer) == "answer(-7/3)"
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  assert (modules.scripted_command("try it\n```python\nreturn a + b\n```", code_env.TOOLS["run"])
          == "run()\nreturn a + b")
  from agentic_jax.data.builtin import pyrepo  # pylint: disable=import-outside-toplevel
  assert modules.scripted_command("read `pkg/core.py`", pyrepo.TOOLS["cat"]) == "cat(pkg/core.py)"
  assert modules.scripted_command("list the files", pyrepo.TOOLS["ls"]) == "ls()"


def test_scripted_executor_turns_the_planners_subgoal_and_tool_into_the_command():
  p = _problem(1)
  expr = p.steps[0].expr

  def script(text, row):
    step = len(re.findall(r"<\|observation\|>", text))
    return [  # no data in the sub-goal; then a call the planner wrote itself (no Tool line);
        _plan_ids("", "add the two numbers", "calc"),
        [ASST] + TOK.encode(f"calc({expr})") + [END],
        # then the data, phrased as a sentence; then the answer from the last result
        _plan_ids("Now with numbers.", f"the sum of {expr}, please", "Calc"),
        _plan_ids("", f"submit {p.task.answer} now", "answer")][step]

  (ep,) = agentflow.run_agentflow(ScriptedPlanner([p], script=script), None, _calc_env,
                                  [p.task], TOK, group_size=1, seed=0, max_turns=5)
  mem = ep.info["memory"]
  # step 1: valid plan, nothing to compute in it -> the step is spent, nothing ran
  assert (mem[0]["tool"], mem[0]["call"], mem[0]["error"]) == ("calc", "", True)
  assert mem[0]["result"] == ("error: the executor found no EXPRESSION for calc(EXPRESSION) in "
                              "the sub-goal")
  # step 2: a literal call is not a plan: no executor turn, no command
  assert (mem[1]["tool"], mem[1]["call"], mem[1]["error"]) == ("invalid", "", True)
  assert mem[1]["result"].startswith("error: the plan names no tool")
  # step 3: the executor extracted the expression from the sub-goal (tool name case-folded)
  assert (mem[2]["sub_goal"], mem[2]["call"]) == (f"the sum of {expr}, please", f"calc({expr})")
  assert Fraction(mem[2]["result"]) == p.task.answer and not mem[2]["error"]
  roles = [t.role for t in ep.turns]
  assert roles == ["analyzer", "planner", "executor", "verifier", "planner", "verifier",
                   "planner", "executor", "verifier", "planner", "executor", "verifier",
                   "generator"]
  assert ep.info["env_steps"] == 2 and ep.reward == 1.0 and ep.stop_reason == "answer"


def test_reference_executor_writes_the_command_from_subgoal_and_tool():
  p = _problem(1)
  expr = p.steps[0].expr
  ref = ScriptedReference()
  (ep,) = agentflow.run_agentflow(
      ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1, seed=0, max_turns=3,
      executor="reference", reference_variables={"frozen": True}, reference_sampler=ref)
  exe = [t for t in ep.turns if t.role == "executor"]
  assert [t.text for t in exe] == [f"calc({expr})<|end_turn|>",
                                   f"answer({p.task.answer})<|end_turn|>"]
  assert not any(t.trainable for t in exe)
  # its prompt: the query, then the planner's sub-goal and tool, and nothing of the memory
  env = _calc_env()
  for t, (sub_goal, tool) in zip(exe, [(f"compute {expr}", "calc"),
                                       (f"submit {p.task.answer}", "answer")]):
    want = _render(env, p.task.question, [Turn("assistant", sub_goal)])
    np.testing.assert_array_equal(t.context, np.concatenate([want, [CALL],
                                                             TOK.encode(f"{tool}\n")]))
  assert ep.info["memory"][0]["call"] == f"calc({expr})" and ep.reward == 1.0
  # a command that calls another tool than the planner chose is not run
  ref2 = ScriptedReference(executor=lambda sub_goal, tool: "answer(1)")
  (ep2,) = agentflow.run_agentflow(
      ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1, seed=0, max_turns=1,
      executor="reference", reference_variables={}, reference_sampler=ref2)
  m = ep2.info["memory"][0]
  assert (m["tool"], m["call"], m["error"]) == ("calc", "answer(1)", True)
  assert m["result"] == "error: the command does not call the chosen tool calc"
  assert ep2.info["env_steps"] == 0 and ep2.stop_reason == "max_turns"


# ---------------------------------------------------------------------------------------------
# the planner's context


@pytest.mark.parametrize("analyzer", ["scripted", "reference"])
def test_planner_context_holds_the_query_analysis_and_the_step_count(analyzer):
  p = _problem(2)
  planner, ref = ScriptedPlanner([p]), ScriptedReference()
  (ep,) = agentflow.run_agentflow(planner, None, _calc_env, [p.task], TOK, group_size=1, seed=0,
                                  max_turns=4, analyzer=analyzer, reference_variables={},
                                  reference_sampler=ref)
  want = _analysis(_numbers(p.task.question)) if analyzer == "scripted" else "ANALYSIS-XYZ"
  assert ep.info["analysis"] == want
  first = ep.turns[0]
  assert first.role == "analyzer" and not first.trainable and first.text.count(want) == 1
  if analyzer == "reference":  # the frozen model was asked once, after the query
    np.testing.assert_array_equal(first.context, _render(_calc_env(), p.task.question, [
        Turn("user", agentflow.ANALYSIS_PROMPT)]))
  assert len(planner.prompts) == 3
  for t, prompt in enumerate(planner.prompts, start=1):
    assert f"<|user|>Query analysis:\n{want}<|end_turn|>" in prompt
    assert prompt.endswith(f"<|user|>Step {t} of 4, {4 - t} left after it. Reply with "
                           "'Sub-goal: ...' and 'Tool: NAME'.<|end_turn|>")
  # the analysis comes before the memory, once
  assert planner.prompts[2].count("Query analysis:") == 1
  assert planner.prompts[2].index("Query analysis:") < planner.prompts[2].index("<|observation|>")


# ---------------------------------------------------------------------------------------------
# stopping, the frozen modules, arguments


def test_max_turns_then_the_scripted_generator_answers_from_memory():
  p = _problem(1)
  (ep,) = agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK,
                                  group_size=1, seed=0, max_turns=1)
  # one step (calc) and no proposed answer: the generator submits the last result, which for a
  # one-step problem is the answer
  assert ep.stop_reason == "max_turns"
  assert ep.turns[-1].role == "generator"
  assert ep.turns[-1].text == f"answer({calculator.arith.format_value(p.task.answer)})"
  assert ep.reward == 1.0


def test_eos_instead_of_a_plan_ends_planning():
  p = _problem(1)

  def script(text, row):
    if "<|observation|>" not in text:
      return [ASST] + TOK.encode("hmm") + [END]  # no sub-goal, no tool
    return [ASST] + TOK.encode("I give up") + [TOK.eos_id]

  (ep,) = agentflow.run_agentflow(ScriptedPlanner([p], script=script), None, _calc_env,
                                  [p.task], TOK, group_size=1, seed=0, max_turns=5)
  mem = ep.info["memory"]
  assert len(mem) == 1 and mem[0]["tool"] == "invalid" and mem[0]["error"]
  second = [t for t in ep.turns if t.role == "planner"][1]
  assert "<|assistant|>hmm<|end_turn|><|observation|>invalid\nerror: the plan names no tool" in (
      TOK.decode(second.context))
  assert ep.stop_reason == "eos"
  # no successful result in memory: the scripted generator has nothing to submit
  assert ep.turns[-1].role == "generator" and ep.turns[-1].text == ""
  assert ep.turns[-1].observation == "no final answer"
  assert (ep.reward, ep.success) == (0.0, False)


def test_token_budget_stops_planning():
  p = _problem(2)
  env = _calc_env()
  analysis = Turn("user", "Query analysis:\n" + _analysis(_numbers(p.task.question)))
  first = len(_render(env, p.task.question, [analysis, _step(1, 5)]))
  (ep,) = agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK,
                                  group_size=1, seed=0, max_turns=5, max_context_tokens=first)
  # the first prompt fits exactly; the second (with one memory entry) does not
  assert sum(t.role == "planner" for t in ep.turns) == 1
  assert ep.stop_reason == "token_budget"


def test_reference_verifier_and_generator_drive_the_episode():
  p = _problem(1)
  ans = f"answer({calculator.arith.format_value(p.task.answer)})"
  ref = ScriptedReference(verdict="STOP.", answer=ans)
  (ep,) = agentflow.run_agentflow(
      ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1, seed=0, max_turns=3,
      executor="reference", verifier="reference", generator="reference", analyzer="reference",
      reference_variables={"frozen": True}, reference_sampler=ref)
  # step 1 computes; the verifier stops at once (no proposal); the generator answers
  assert [t.role for t in ep.turns] == ["analyzer", "planner", "executor", "verifier",
                                        "generator"]
  assert [t.trainable for t in ep.turns] == [False, True, False, False, False]
  assert ep.stop_reason == "verifier"
  assert ep.turns[-1].observation == "correct" and ep.reward == 1.0
  for t in ep.turns[2:]:
    np.testing.assert_allclose(t.logprobs, -0.5)  # the reference's log-probs are kept
    assert int(t.context[0]) == TOK.bos_id
  # the verifier read the analysis and the memory
  assert TOK.decode(ep.turns[3].context).endswith(
      "<|user|>Query analysis:\nANALYSIS-XYZ<|end_turn|><|assistant|>Sub-goal: compute "
      f"{p.steps[0].expr}\nTool: calc<|end_turn|><|tool_call|>calc\ncalc({p.steps[0].expr})"
      f"<|end_turn|><|observation|>calc\n{p.task.answer}<|end_turn|>"
      f"<|user|>{agentflow.VERIFY_PROMPT}<|end_turn|>")
  # a generator call that is not an answer tool is not submitted
  ref2 = ScriptedReference(verdict="STOP", answer="calc(3)")
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
  with pytest.raises(ValueError, match=r"analyzer"):
    agentflow.run_agentflow(ScriptedPlanner([p]), None, _calc_env, [p.task], TOK, group_size=1,
                            seed=0, max_turns=1, analyzer="human")
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
  assert sampler.shapes_used  # the module samplers' decoder calls are counted on it
  # an untrained model never writes a usable plan: every trajectory takes both planner steps
  for e in a:
    roles = [t.role for t in e.turns]
    assert roles.count("planner") == 2
    assert [t.trainable for t in e.turns] == [r == "planner" for r in roles]
    for t in e.turns:  # every module turn ended at its first <|end_turn|> (or ran out)
      if t.role == "planner":
        assert END not in t.response.tolist()[:-1]
  batch = policy_batch(a, seq_len=512, mode="turn")
  planners = [t for e in a for t in e.turns if t.role == "planner"]
  assert batch["inputs"].shape[0] == len(planners) == 8
  for i, t in enumerate(planners):
    c_len, r = len(t.context), len(t.response)
    np.testing.assert_array_equal(batch["old_logp"][i, c_len - 1:c_len - 1 + r], t.logprobs)
    assert batch["mask"][i].sum() == r
