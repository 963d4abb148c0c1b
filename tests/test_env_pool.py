"""Concurrent environment steps (agentic_jax.rl.env_pool, config.rl.env_workers): results in row
order whatever the actions' durations, at most `workers` steps at a time, an exception or a
sandboxed interpreter's crash as an observation, plain and AgentFlow episodes identical between
env_workers=1 and 4, and a bad config.rl.env_workers as a one-line ConfigError."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
import pytest

from agentic_jax import envs, sandbox
from agentic_jax.data.builtin.protocol import INFO_ERROR, INFO_TOOL, StepResult
from agentic_jax.data.tokenizer import ByteTokenizer
from agentic_jax.rl import agentflow, env_pool
from agentic_jax.rl import config as rl_config
from agentic_jax.rl import rollout as R
from agentic_jax.train import config as config_lib
from tests.train_fixtures import ROOT

TOK = ByteTokenizer()
ASST, CALL, END = (TOK.special_id(m) for m in ("<|assistant|>", "<|tool_call|>", "<|end_turn|>"))


class Gauge:
  """Counts the steps in flight; `peak` is the most at once, `threads` the threads that stepped."""

  def __init__(self):
    self.lock, self.now, self.peak, self.threads = threading.Lock(), 0, 0, set()

  def __enter__(self):
    with self.lock:
      self.now += 1
      self.peak = max(self.peak, self.now)
      self.threads.add(threading.get_ident())

  def __exit__(self, *exc):
    with self.lock:
      self.now -= 1


class SleepEnv:
  """step(action) sleeps `delay` s and answers "NAME:ACTION"; raises on an action "boom()"."""
  tools = {}

  def __init__(self, name, delay, gauge):
    self.name, self.delay, self.gauge = name, delay, gauge

  def step(self, action):
    with self.gauge:
      time.sleep(self.delay)
      if action == "boom()":
        raise RuntimeError("the tool exploded")
      return StepResult(f"{self.name}:{action}", False, 0.0, {INFO_TOOL: "t", INFO_ERROR: False})


def test_results_keep_row_order_with_actions_of_different_durations():
  gauge = Gauge()
  n = 8
  # the first row is the slowest, the last the fastest: completion order is the reverse
  sleeps = [0.04 * (n - i) for i in range(n)]
  es = [SleepEnv(f"e{i}", sleeps[i], gauge) for i in range(n)]
  t0 = time.perf_counter()
  out = env_pool.step_all(es, [f"a{i}" for i in range(n)], workers=n)
  wall = time.perf_counter() - t0
  assert [r.observation for r in out] == [f"e{i}:a{i}" for i in range(n)]
  assert gauge.peak == n and wall < 0.6 * sum(sleeps)  # about the slowest, not the sum (1.44 s)


@pytest.mark.parametrize("workers", [1, 3])
def test_at_most_workers_steps_at_a_time(workers):
  gauge = Gauge()
  es = [SleepEnv(f"e{i}", 0.03, gauge) for i in range(9)]
  out = env_pool.step_all(es, ["x"] * 9, workers=workers)
  assert [r.observation for r in out] == [f"e{i}:x" for i in range(9)]
  assert gauge.peak == workers
  if workers == 1:  # one after the other, in the calling thread
    assert gauge.threads == {threading.get_ident()}
  else:
    assert len(gauge.threads) == workers and threading.get_ident() not in gauge.threads


def test_bad_worker_counts_and_shared_envs_are_refused():
  env = SleepEnv("e", 0.0, Gauge())
  for bad in (0, -1, 2.0, True, None):
    with pytest.raises(ValueError, match="env_workers: expected an int >= 1"):
      env_pool.step_all([env], ["x"], workers=bad)
  with pytest.raises(ValueError, match="2 environments but 1 actions"):
    env_pool.step_all([env, env], ["x"], workers=2)
  with pytest.raises(ValueError, match="appears more than once"):  # two threads, one env
    env_pool.step_all([env, env], ["x", "y"], workers=2)


def test_an_exception_becomes_an_error_observation_and_the_others_finish():
  gauge = Gauge()
  calc = envs.make_env_factory("calculator")[0]()
  calc.step = lambda action: 1 / 0  # an environment with a tool table whose step raises
  es = [SleepEnv("e0", 0.05, gauge), SleepEnv("e1", 0.01, gauge), calc,
        SleepEnv("e3", 0.02, gauge)]
  out = env_pool.step_all(es, ["a", "boom()", "calc(1 + 1)", "d"], workers=4)
  assert [r.observation for r in out[::3]] == ["e0:a", "e3:d"]
  boom, zero = out[1], out[2]
  assert boom.observation == "error: the tool call raised RuntimeError: the tool exploded"
  assert (boom.done, boom.reward) == (False, 0.0)
  assert boom.info == {INFO_TOOL: None, INFO_ERROR: True, "exception": "RuntimeError"}
  # the tool the action names is parsed from the env's tool table, as for any tool error
  assert zero.info[INFO_TOOL] == "calc" and zero.info["exception"] == "ZeroDivisionError"
  assert zero.observation == "error: the tool call raised ZeroDivisionError: division by zero"


def test_a_missing_sandbox_is_raised_not_observed():
  class NoSandbox:
    def step(self, action):
      raise sandbox.SandboxUnavailable("no bwrap")
  with pytest.raises(sandbox.SandboxUnavailable, match="no bwrap"):
    env_pool.step_all([SleepEnv("e", 0.0, Gauge()), NoSandbox()], ["x", "y"], workers=2)


def test_sandboxed_actions_that_crash_their_interpreter_are_observations():
  make_env, make_tasks = envs.make_env_factory("pycode")
  tasks = make_tasks(0, 4)
  es = [make_env() for _ in tasks]
  for e, t in zip(es, tasks):
    e.reset(t)
  actions = ["run()\n    return None",
             "run()\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)",
             "run()\n    import ctypes\n    ctypes.string_at(0)",  # segfault
             "run()\n    while True:\n        pass"]
  for e in es:
    e.timeout_s = 1.0  # the endless loop's limit
  out = env_pool.step_all(es, actions, workers=4)
  assert tasks[0].entry_point in out[0].observation and "examples pass" in out[0].observation
  assert out[1].observation == "the program was stopped: signal SIGKILL"
  assert out[2].observation == "the program was stopped: signal SIGSEGV"
  assert "the program was stopped: it ran past the 1 s time limit" in out[3].observation
  assert all(not r.done and r.info[INFO_TOOL] == "run" for r in out)
  # the episodes go on: the next step of the crashed rows runs normally
  again = env_pool.step_all(es[1:3], ["run()\n    return 0"] * 2, workers=2)
  assert all("examples pass" in r.observation for r in again)


# ------------------------------------------------------------------ whole episodes


class Jittered:
  """An environment of `make_env` whose step sleeps (later rows less, so they finish first),
  raises on an action containing "13", and is counted by `gauge`."""

  def __init__(self, inner, index, gauge):
    self.inner, self.index, self.gauge = inner, index, gauge
    self.system_prompt, self.tools = inner.system_prompt, inner.tools
    self.answer_tools = envs.answer_tools(inner)

  def reset(self, task):
    return self.inner.reset(task)

  def step(self, action):
    with self.gauge:
      time.sleep(0.002 * (12 - self.index % 12))
      if "13" in action:
        raise RuntimeError("boom")
      return self.inner.step(action)


def jittered_factory(gauge):
  make_env, make_tasks = envs.make_env_factory("calculator")
  count = iter(range(10 ** 6))
  return (lambda: Jittered(make_env(), next(count), gauge)), make_tasks


def pick(context, row, options):
  """A deterministic choice from the context (so a result applied to the wrong row changes the
  next contexts) and the row."""
  digest = hashlib.sha256(np.asarray(context, np.int32).tobytes() + bytes([row])).digest()
  return options[digest[0] % len(options)]


class HashSampler:
  """A policy writing one of OPTIONS per row, chosen from its context (`pick`)."""

  OPTIONS = [[CALL] + TOK.encode(f"calc\n{c}") + [END] for c in
             ("calc(12 * 7)", "calc(5 / 0)", "calc(2 +", "calc(13 - 1)", "answer(84)", "answer(3)")]
  OPTIONS += [[ASST] + TOK.encode("thinking") + [END], TOK.encode("bye") + [TOK.eos_id]]

  def generate(self, variables, contexts, seed):
    out = []
    for row, ctx in enumerate(contexts):
      ids = pick(ctx, row, self.OPTIONS)
      out.append(R.Generation(np.asarray(ids, np.int32),
                              -np.arange(1, len(ids) + 1, dtype=np.float32) / 100, False))
    return out


class HashPlanner(HashSampler):
  """An AgentFlow planner writing one of PLANS (sub-goal + tool) per row, chosen from its context."""

  OPTIONS = [[ASST] + TOK.encode(f"Sub-goal: {g}\nTool: {t}") + [END] for g, t in
             (("compute 12 * 7", "calc"), ("compute 5 / 0", "calc"), ("compute 13 - 1", "calc"),
              ("submit 84", "answer"), ("compute 3 + 4", "calc"), ("nothing", "nope"))]


def dump(episodes):
  return [(e.task_id, e.group_id, e.traj_id, e.reward, e.success, e.stop_reason,
           None if e.transcript is None else e.transcript.tolist(), repr(e.info),
           [(t.context.tolist(), t.response.tolist(), t.logprobs.tolist(), t.text, t.observation,
             t.role, t.trainable, t.truncated) for t in e.turns])
          for e in episodes]


def test_rollout_episodes_are_identical_for_any_env_workers():
  runs, peaks = {}, {}
  for workers in (1, 4):
    gauge = Gauge()
    make_env, make_tasks = jittered_factory(gauge)
    eps = R.rollout(HashSampler(), None, make_env, make_tasks(0, 4), TOK, group_size=3, seed=5,
                    max_turns=4, max_context_tokens=2000, env_workers=workers)
    runs[workers], peaks[workers] = dump(eps), gauge.peak
  assert runs[1] == runs[4] and peaks == {1: 1, 4: 4}
  eps = runs[1]
  # the script covers what the pool must keep: raised steps, tool errors, answers, </s>
  observations = [t[4] for e in eps for t in e[-1]]
  assert "error: the tool call raised RuntimeError: boom" in observations
  assert {e[5] for e in eps} >= {"answer", "eos"} and any(e[3] == 1.0 for e in eps)
  with pytest.raises(ValueError, match="env_workers must be an int >= 1"):
    R.rollout(HashSampler(), None, make_env, make_tasks(0, 1), TOK, group_size=1, seed=0,
              max_turns=1, max_context_tokens=2000, env_workers=0)


def test_agentflow_episodes_are_identical_for_any_env_workers():
  runs, peaks = {}, {}
  for workers in (1, 4):
    gauge = Gauge()
    make_env, make_tasks = jittered_factory(gauge)
    eps = agentflow.run_agentflow(HashPlanner(), None, make_env, make_tasks(0, 4), TOK,
                                  group_size=3, seed=5, max_turns=3, env_workers=workers)
    runs[workers], peaks[workers] = dump(eps), gauge.peak
    if workers == 1:
      first = eps
  assert runs[1] == runs[4] and peaks == {1: 1, 4: 4}
  eps = first
  memory = [m for e in eps for m in e.info["memory"]]
  assert any(m["result"] == "error: the tool call raised RuntimeError: boom" for m in memory)
  assert any(m["result"] == "84" for m in memory)
  with pytest.raises(ValueError, match="config.rl.env_workers: expected an int >= 1"):
    agentflow.run_agentflow(HashPlanner(), None, make_env, make_tasks(0, 1), TOK, group_size=1,
                            seed=0, max_turns=1, env_workers=0)


def test_config_env_workers_default_and_one_line_error():
  config = config_lib.load_config(os.path.join(ROOT, "configs", "flow_grpo.py") + ":tiny")
  assert config.rl.env_workers == env_pool.DEFAULT_WORKERS
  rl_config.check_rl_config(config, num_devices=1)
  for bad in (0, -2):
    config.rl.env_workers = bad
    with pytest.raises(config_lib.ConfigError) as e:
      rl_config.check_rl_config(config, num_devices=1)
    assert str(e.value) == f"config.rl.env_workers: expected an int >= 1, got {bad!r}"
