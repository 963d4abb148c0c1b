"""The RL environment registry (agentic_jax/envs/): a tiny "echo" environment registered only
inside these tests (one options dataclass + one register_env call) gets config.rl.env's choice,
a typed config.rl.env_options placeholder and a plain rollout whose rewards are checked by hand;
the built-in environments' documented options pass through the RL config, and wrong types,
bad values and options of another environment give one-line errors naming
config.rl.env_options.KEY."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agentic_jax import envs
from agentic_jax.data.builtin.protocol import (INFO_ERROR, INFO_TOOL, ActionError, StepResult,
                                               Tool, error_result, parse_action)
from agentic_jax.data.tokenizer import ByteTokenizer
from agentic_jax.rl import config as rl_config
from agentic_jax.rl import rollout as R
from agentic_jax.rl.sampler import END_TURN_ID, TOOL_CALL_ID
from agentic_jax.train import config as config_lib
from tests.rl_fixtures import rl_test_config

TOK = ByteTokenizer()

# ------------------------------------------------------------------- the example environment


@dataclasses.dataclass(frozen=True)
class EchoOptions(envs.EnvOptions):
  times: int = envs.option(1, positive=True, doc="how often the word is to be repeated")


@dataclasses.dataclass(frozen=True)
class EchoTask:
  id: str
  word: str


SAY = Tool("say", "say(TEXT)", "says TEXT and ends the task")
WORDS = ("apple", "river", "stone", "cloud")


class EchoEnv:
  """say(TEXT) ends the task: reward 1 iff TEXT is the word repeated `times` times."""

  system_prompt = "Repeat the word with say(TEXT)."
  tools = {"say": SAY}
  answer_tools = ("say",)

  def __init__(self, times: int):
    self.times = times

  def reset(self, task: EchoTask) -> str:
    self.task = task
    return f"Say {task.word!r} {self.times} times."

  def step(self, action: str) -> StepResult:
    try:
      act = parse_action(action, self.tools)
    except ActionError as e:
      return error_result(str(e), e.tool)
    ok = act.arg.split() == [self.task.word] * self.times
    return StepResult("right" if ok else "wrong", True, float(ok),
                      {INFO_TOOL: "say", INFO_ERROR: False})


def make_echo(options: EchoOptions):
  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    envs.check_split(split)
    envs.check_n(n)
    offset = 0 if split == "train" else 2  # train words 0, 1; eval words 2, 3
    return [EchoTask(f"echo-{seed}-{split}-{i}", WORDS[offset + (seed + i) % 2]) for i in range(n)]

  return (lambda: EchoEnv(options.times)), make_tasks


@pytest.fixture
def echo():
  spec = envs.register_env(envs.EnvSpec(name="echo", options=EchoOptions, factory=make_echo))
  yield spec
  envs.unregister_env("echo")
  assert "echo" not in envs.env_names()


class SayingSampler:
  """A stand-in policy: rounds[r][i] is the text active episode i says in round r, sampled as
  <|tool_call|>say\\nsay(TEXT)<|end_turn|> with log-prob -0.1 per token."""

  def __init__(self, rounds):
    self.rounds, self.seen = rounds, []

  def generate(self, variables, contexts, seed):
    del variables, seed
    said = self.rounds[len(self.seen)]
    self.seen.append(len(contexts))
    assert len(said) == len(contexts)
    out = []
    for text in said:
      toks = np.asarray([TOOL_CALL_ID] + TOK.encode(f"say\nsay({text})") + [END_TURN_ID], np.int32)
      out.append(R.Generation(toks, np.full(len(toks), -0.1, np.float32), False))
    return out


def test_registered_example_env_runs_a_plain_rollout_with_hand_checked_rewards(echo):
  assert echo.name in envs.env_names()
  make_env, make_tasks = envs.make_env_factory("echo", times=2)
  tasks = make_tasks(0, 2)
  assert [t.word for t in tasks] == ["apple", "river"]
  assert [t.word for t in make_tasks(0, 2, split="eval")] == ["stone", "cloud"]
  # task 0: right, then once only; task 1: an empty say() (an error, the episode goes on) then
  # right, and a wrong word
  sampler = SayingSampler([["apple apple", "apple", "", "river pear"],
                           ["river river"]])
  eps = R.rollout(sampler, None, make_env, tasks, TOK, group_size=2, seed=0, max_turns=3,
                  max_context_tokens=1000)
  assert sampler.seen == [4, 1]  # round 1 only for the episode whose call was malformed
  assert [(e.group_id, e.traj_id) for e in eps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert [e.reward for e in eps] == [1.0, 0.0, 1.0, 0.0]
  assert [e.success for e in eps] == [True, False, True, False]
  assert [len(e.turns) for e in eps] == [1, 1, 2, 1]
  assert [e.stop_reason for e in eps] == ["answer"] * 4
  assert eps[2].turns[0].observation.startswith("error: say needs an argument")
  assert eps[2].info["tool_errors"] == 1 and eps[0].info["tool_errors"] == 0
  batch = R.policy_batch(eps, seq_len=256, mode="trajectory")
  assert batch["rewards"].tolist() == [1.0, 0.0, 1.0, 0.0]
  assert envs.answer_tools(make_env()) == ("say",)
  # the typed options instance works as well as option values
  make_env, _ = envs.make_env_factory("echo", EchoOptions(times=3))
  assert make_env().times == 3


def test_registered_example_env_gets_a_config_choice_and_a_typed_placeholder(echo):
  del echo
  config = rl_test_config("grpo")  # built after the registration: the section has `times`
  assert config.rl.env_options.times is None
  config.rl.env = "echo"
  assert rl_config.env_options(config) == EchoOptions(times=1)  # None = the env's default
  config.rl.env_options.times = 3
  rl_config.check_rl_config(config, num_devices=1)
  assert rl_config.env_options(config) == EchoOptions(times=3)
  config.rl.env = "calculator"  # `times` is not a calculator option
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.rl\.env_options\.times: unknown option for env "
                           r"'calculator' \(leave it None\)"):
    rl_config.check_rl_config(config, num_devices=1)


def test_registration_rejects_clashes_and_untyped_options(echo):
  del echo

  @dataclasses.dataclass(frozen=True)
  class Clash(envs.EnvOptions):
    max_steps: float = 2.0  # an int in the built-in environments: one config section

  @dataclasses.dataclass(frozen=True)
  class NoDefault(envs.EnvOptions):
    times: int

  @dataclasses.dataclass(frozen=True)
  class Listed(envs.EnvOptions):
    words: list = dataclasses.field(default_factory=list)

  with pytest.raises(TypeError, match="max_steps"):
    envs.register_env(envs.EnvSpec(name="clash", options=Clash, factory=make_echo))
  with pytest.raises(TypeError, match="needs a default"):
    envs.register_env(envs.EnvSpec(name="nodefault", options=NoDefault, factory=make_echo))
  with pytest.raises(TypeError, match="not supported"):
    envs.register_env(envs.EnvSpec(name="listed", options=Listed, factory=make_echo))
  with pytest.raises(TypeError, match="EnvOptions"):
    envs.register_env(envs.EnvSpec(name="plain", options=dict, factory=make_echo))
  with pytest.raises(ValueError, match="already registered"):
    envs.register_env(envs.EnvSpec(name="echo", options=EchoOptions, factory=lambda o: None))
  assert not {"clash", "nodefault", "listed", "plain"} & set(envs.env_names())


# ----------------------------------------------------- the built-in environments' options


DOCUMENTED = {
    "calculator": {"level": "word", "max_steps": 3, "allow_unisolated": True},
    "humaneval": {"timeout_s": 2, "memory_mb": 256, "max_steps": 4, "allow_unisolated": True,
                  "builtin": True},
    "pycode": {"timeout_s": 3.0, "memory_mb": 128, "max_steps": 2},
    "pyrepo": {"timeout_s": 10.0, "memory_mb": 256, "max_steps": 5, "shell": True},
}


@pytest.mark.parametrize("env", sorted(DOCUMENTED))
def test_documented_options_pass_through_the_rl_config(env):
  config = rl_test_config("grpo")
  config.rl.env = env
  defaults = rl_config.env_options(config)  # every placeholder None: the env's defaults
  assert defaults == envs.get_spec(env).options()
  for key, value in DOCUMENTED[env].items():
    config.rl.env_options[key] = value
  rl_config.check_rl_config(config, num_devices=1)
  options = rl_config.env_options(config)
  assert isinstance(options, envs.get_spec(env).options)
  assert options.to_dict() == {**defaults.to_dict(), **DOCUMENTED[env]}
  if env == "humaneval":
    assert isinstance(options.timeout_s, float)  # an int for a float option is stored as float
  if env == "calculator":  # no sandbox needed: build it and look
    make_env, make_tasks = envs.make_env_factory(env, options)
    assert make_env().max_steps == 3 and make_tasks(0, 1)[0].id.startswith("calc-0-")


def test_documented_defaults_and_config_fields():
  assert envs.env_names() == ["calculator", "humaneval", "macro_code", "pycode", "pyrepo"]
  assert envs.CalculatorOptions() == envs.CalculatorOptions(level="basic", max_steps=12,
                                                            allow_unisolated=False)
  assert envs.PycodeOptions().to_dict() == {"timeout_s": 5.0, "memory_mb": 512, "max_steps": 8,
                                            "allow_unisolated": False}
  assert envs.HumanEvalOptions().builtin is False
  assert envs.RepoOptions().to_dict() == {"timeout_s": 20.0, "memory_mb": 512, "max_steps": 20,
                                          "allow_unisolated": False, "shell": False}
  section = rl_test_config("grpo").rl.env_options.to_dict()
  assert section == dict.fromkeys(["level", "max_steps", "allow_unisolated", "timeout_s",
                                   "memory_mb", "builtin", "min_ops", "max_ops", "shell"])


BAD = [  # (env, option, value set on the config, message after config.rl.env_options.KEY: )
    ("calculator", "max_steps", True, "expected int, got bool True (env 'calculator')"),
    ("calculator", "max_steps", 0, "expected > 0, got 0 (env 'calculator')"),
    ("calculator", "level", "hard", "expected one of ['word', 'basic', 'multistep', 'mixed'], "
                                    "got 'hard' (env 'calculator')"),
    ("calculator", "shell", True, "unknown option for env 'calculator' (leave it None)"),
    ("pycode", "builtin", False, "unknown option for env 'pycode' (leave it None)"),
    ("pyrepo", "timeout_s", -1.0, "expected > 0, got -1.0 (env 'pyrepo')"),
    ("humaneval", "level", "basic", "unknown option for env 'humaneval' (leave it None)"),
]


@pytest.mark.parametrize("env,key,value,message", BAD)
def test_bad_options_give_one_line_errors_naming_the_config_key(env, key, value, message):
  config = rl_test_config("grpo")
  config.rl.env = env
  config.rl.env_options[key] = value
  with pytest.raises(config_lib.ConfigError) as e:
    rl_config.check_rl_config(config, num_devices=1)
  text = str(e.value)
  assert text.startswith(f"config.rl.env_options.{key}: {message}") and "\n" not in text
  with pytest.raises(ValueError) as direct:  # the library call says the same
    envs.make_env_factory(env, **{key: value})
  assert str(direct.value) == text


def test_unknown_keys_and_types_outside_the_config_section():
  config = rl_test_config("grpo")
  config.unlock()
  config.rl.env_options.levle = "word"  # a key no environment has (a misspelt config file)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.rl\.env_options\.levle: unknown option for env "
                           r"'calculator'"):
    rl_config.check_rl_config(config, num_devices=1)
  config = rl_test_config("grpo")
  config.rl.env = "chess"
  with pytest.raises(config_lib.ConfigError, match=r"^config\.rl\.env: expected one of"):
    rl_config.check_rl_config(config, num_devices=1)
  with pytest.raises(ValueError, match=r"^config\.rl\.env_options\.max_steps: expected int, "
                                       r"got str '3'"):
    envs.make_env_factory("calculator", max_steps="3")
  with pytest.raises(ValueError, match=r"^config\.rl\.env: unknown environment 'chess'"):
    envs.make_env_factory("chess")
  with pytest.raises(TypeError, match="not both"):
    envs.make_env_factory("calculator", envs.CalculatorOptions(), level="word")
