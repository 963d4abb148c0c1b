"""Issue 10 parts 2 and 6: config values are checked before anything is built or compiled, and
a checkpoint written under another config is a config error, not corruption.

  * every invalid value (zero / negative sizes and intervals, non-finite or non-positive
    learning rates, unknown choices, a mesh the devices do not fill) of the mid-training, RL and
    recipe configs raises config.ConfigError whose one-line message starts with the key
    (table-driven, through config.validate); a sample of them through launch/train.py: exit 2,
    one `error: config.KEY: ...` line, no traceback, nothing written to WORKDIR;
  * resuming with a changed model size names the differing parameters, exits 2 and changes no
    file; the next run with the right config resumes from the newest checkpoint;
  * a run whose every step was skipped as non-finite reports "all_skipped" and exits 1
    (mid-training through the launcher; the RL loop's case is in test_rl_loop.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from agentic_jax import jobs
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import loop
from tests.train_fixtures import ROOT, set_dotted, small_config, tree_digest

LAUNCH = os.path.join(ROOT, "launch", "train.py")
CONFIGS = os.path.join(ROOT, "configs")
NAN, INF = math.nan, math.inf


def _config(spec: str, overrides: dict):
  config = config_lib.load_config(os.path.join(CONFIGS, spec))
  config.unlock()
  set_dotted(config, overrides)
  return config


# (config file, {dotted key: bad value}, the key the message must start with)
MIDTRAIN_CASES = [
    ({"train.step_timeout_s": float("nan")}, "train.step_timeout_s"),
    ({"data.batch_size": 0}, "data.batch_size"),
    ({"data.batch_size": -8}, "data.batch_size"),
    ({"data.seq_len": 0}, "data.seq_len"),
    ({"data.tokenizer.vocab_size": 0}, "data.tokenizer.vocab_size"),
    ({"data.mask_policy": "everything"}, "data.mask_policy"),
    ({"data.on_bad_record": "ignore"}, "data.on_bad_record"),
    ({"data.overlong": "truncate"}, "data.overlong"),
    ({"data.mix.pyrepo.weight": -1.0}, "data.mix.pyrepo.weight"),
    ({"data.mix.pyrepo.weight": NAN}, "data.mix.pyrepo.weight"),
    ({"data.mix.calculator.weight": 0.0, "data.mix.pyrepo.weight": 0.0,
      "data.mix.stdlib_edits.weight": 0.0}, "data.mix"),
    ({"data.mix.calculator.loss_weight": INF}, "data.mix.calculator.loss_weight"),
    ({"data.mix.pyrepo.num_samples": -1}, "data.mix.pyrepo.num_samples"),
    ({"data.mix.stdlib_edits.eval_num_samples": -64}, "data.mix.stdlib_edits.eval_num_samples"),
    ({"data.mix.pyrepo.kind": "nope"}, "data.mix.pyrepo.kind"),
    ({"data.stages": ({"until_step": 0, "weights": {"calculator": 1.0}}, {"weights": None})},
     "data.stages[0].until_step"),
    ({"data.batch_size": 6, "optim.grad_accum": 4}, "data.batch_size"),
    ({"data.pack_groups": 0}, "data.pack_groups"),
    ({"data.pack_groups": 3}, "data.pack_groups"),  # does not divide batch_size 8
    ({"optim.lr": NAN}, "optim.lr"),
    ({"optim.lr": INF}, "optim.lr"),
    ({"optim.lr": -3e-4}, "optim.lr"),
    ({"optim.lr": 0.0}, "optim.lr"),
    ({"optim.schedule": "linear"}, "optim.schedule"),
    ({"optim.warmup_steps": -1}, "optim.warmup_steps"),
    ({"optim.warmup_steps": 1000}, "optim.warmup_steps"),  # past train.num_steps
    ({"optim.b1": 1.0}, "optim.b1"),
    ({"optim.b2": -0.1}, "optim.b2"),
    ({"optim.eps": 0.0}, "optim.eps"),
    ({"optim.weight_decay": -0.1}, "optim.weight_decay"),
    ({"optim.clip_norm": NAN}, "optim.clip_norm"),
    ({"optim.decay_fraction": 1.5}, "optim.decay_fraction"),
    ({"optim.min_lr_ratio": -0.1}, "optim.min_lr_ratio"),
    ({"optim.grad_accum": 0}, "optim.grad_accum"),
    ({"train.num_steps": 0}, "train.num_steps"),
    ({"train.log_every": 0}, "train.log_every"),
    ({"train.nan_policy": "ignore"}, "train.nan_policy"),
    ({"train.peak_flops": 0.0}, "train.peak_flops"),
    ({"train.eval_every": -1}, "train.eval_every"),
    ({"train.eval_batches": 0}, "train.eval_batches"),  # eval_every is 80
    ({"checkpoint.every": 0}, "checkpoint.every"),
    ({"checkpoint.keep": 0}, "checkpoint.keep"),
    ({"mesh.data": 3}, "mesh.data"),  # the tests run on one device
    ({"mesh.fsdp": 0}, "mesh.fsdp"),
    ({"mesh.tensor": -2}, "mesh.tensor"),
    ({"seed": -1}, "seed"),
    ({"objective.name": "cross_entropy"}, "objective.name"),
    ({"objective.balance_loss": "global"}, "objective.balance_loss"),
    ({"objective.balance_groups": 0}, "objective.balance_groups"),
    ({"objective.balance_alpha": -1.0}, "objective.balance_alpha"),
    ({"objective.z_loss": NAN}, "objective.z_loss"),
    ({"moe.bias_update": "sign"}, "moe.bias_update"),
    ({"moe.bias_rate": -0.1}, "moe.bias_rate"),
    ({"moe.target_ffn_per_token": 0.0}, "moe.target_ffn_per_token"),
    ({"moe.target_ffn_per_token": 5.0}, "moe.target_ffn_per_token"),  # > top-k = 2
    ({"model.hidden_size": -4}, "model.hidden_size"),
    ({"model.layer_type": "rnn"}, "model.layer_type"),
    ({"model.moe_dispatch": "magic"}, "model.moe_dispatch"),
]
RL_CASES = [
    ({"train.step_timeout_s": -1.0}, "train.step_timeout_s"),
    ({"rl.loss": "ppo"}, "rl.loss"),
    ({"rl.preset": "papr"}, "rl."),
    ({"rl.mode": "chat"}, "rl.mode"),
    ({"rl.batch_mode": "episode"}, "rl.batch_mode"),
    ({"rl.env": "chess"}, "rl.env"),
    ({"rl.agentflow.executor": "human"}, "rl.agentflow.executor"),
    ({"rl.agentflow.analyzer": "oracle"}, "rl.agentflow.analyzer"),
    ({"rl.old_logp": "guess"}, "rl.old_logp"),
    ({"rl.group_size": 0}, "rl.group_size"),
    ({"rl.tasks_per_step": -1}, "rl.tasks_per_step"),
    ({"rl.minibatches": 0}, "rl.minibatches"),
    ({"rl.ppo_epochs": 0}, "rl.ppo_epochs"),
    ({"rl.seq_len": 0}, "rl.seq_len"),
    ({"rl.eval_tasks": -1}, "rl.eval_tasks"),
    ({"rl.eval_every": -1}, "rl.eval_every"),
    ({"rl.temperature": NAN}, "rl.temperature"),
    ({"rl.top_p": 0.0}, "rl.top_p"),
    ({"rl.eval_temperature": -1.0}, "rl.eval_temperature"),
    ({"rl.old_logp_tolerance": -1.0}, "rl.old_logp_tolerance"),
    ({"optim.lr": NAN}, "optim.lr"),
    ({"optim.lr": -1e-4}, "optim.lr"),
    ({"train.num_steps": 0}, "train.num_steps"),
    ({"train.nan_policy": "ignore"}, "train.nan_policy"),
    ({"checkpoint.every": 0}, "checkpoint.every"),
    ({"checkpoint.keep": -1}, "checkpoint.keep"),
    ({"mesh.data": 3}, "mesh.data"),
    ({"tokenizer.vocab_size": 0}, "tokenizer.vocab_size"),
    ({"model.num_layers": 0}, "model.num_layers"),
]
RECIPE_CASES = [
    ({"recipe_data.no_tool_rate": 1.5}, "recipe_data.no_tool_rate"),
    ({"recipe_data.num_samples": 0}, "recipe_data.num_samples"),
    ({"midtrain.data.batch_size": 0}, "midtrain.data.batch_size"),
    ({"midtrain.data.mix.calculator.path": ""}, "midtrain.data.mix.calculator.path"),
    ({"midtrain.optim.lr": NAN}, "midtrain.optim.lr"),
    ({"midtrain.model.hidden_size": 0}, "midtrain.model.hidden_size"),
    ({"optim.lr": -3e-4}, "optim.lr"),  # the RL stage's
    ({"rl.group_size": 0}, "rl.group_size"),
]
TABLE = ([("midtrain.py:tiny", o, k) for o, k in MIDTRAIN_CASES]
         + [("flow_grpo.py:tiny", o, k) for o, k in RL_CASES]
         + [("recipe.py:tiny", o, k) for o, k in RECIPE_CASES])


@pytest.mark.parametrize("spec,overrides,key", TABLE,
                         ids=[f"{s.split('.')[0]}-{'-'.join(map(str, o.items()))}"
                              for s, o, _ in TABLE])
def test_every_invalid_value_is_a_config_error_naming_the_key(spec, overrides, key):
  config = _config(spec, overrides)
  with pytest.raises(config_lib.ConfigError) as info:
    jobs.validate(config)
  msg = str(info.value)
  assert msg.startswith(f"config.{key}"), msg
  assert "\n" not in msg


@pytest.mark.parametrize("spec", ["midtrain.py:tiny", "flow_grpo.py:tiny", "flow_grpo.py:tiny_code",
                                  "grpo.py:tiny", "dapo.py:tiny", "dr_grpo.py:tiny",
                                  "recipe.py:tiny"])
def test_shipped_configs_are_valid(spec):
  jobs.validate(config_lib.load_config(os.path.join(CONFIGS, spec)))


def _launch(workdir, *args, env=None):
  return subprocess.run([sys.executable, LAUNCH, f"--workdir={workdir}", *args],
                        capture_output=True, text=True, timeout=300, env=env)


def _assert_one_line_error(proc, starts: str, code: int = 2) -> str:
  out = proc.stdout + proc.stderr
  assert proc.returncode == code, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: {starts}"), proc.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize("args,starts", [
    (("--config=configs/midtrain.py:tiny", "--config.data.batch_size=0"),
     "config.data.batch_size: "),
    (("--config=configs/midtrain.py:tiny", "--config.checkpoint.every=0"),
     "config.checkpoint.every: "),
    (("--config=configs/midtrain.py:tiny", "--config.optim.lr=nan"), "config.optim.lr: "),
    (("--config=configs/midtrain.py:tiny", "--config.optim.lr=-0.001"), "config.optim.lr: "),
    (("--config=configs/midtrain.py:tiny", "--config.mesh.data=3"), "config.mesh.data: "),
    (("--config=configs/midtrain.py:tiny", "--config.model.hidden_size=-4"),
     "config.model.hidden_size: "),
    (("--config=configs/midtrain.py:huge",), "configs/midtrain.py: unknown variant 'huge'"),
    (("--config=configs/no_such_config.py",), "--config: "),
    (("--config=configs/flow_grpo.py:tiny", "--config.rl.group_size=0"), "config.rl.group_size: "),
    (("--config=configs/recipe.py:tiny", "--config.midtrain.data.batch_size=0"),
     "config.midtrain.data.batch_size: "),
])
def test_launcher_rejects_invalid_values_with_one_line_and_exit_2(tmp_path, args, starts):
  workdir = tmp_path / "run"
  _assert_one_line_error(_launch(workdir, *[a.replace("configs/", CONFIGS + "/") for a in args]),
                         starts)
  assert not workdir.exists()  # rejected before anything was written, built or compiled


def _config_file(tmp_path, name: str, overrides: dict) -> str:
  path = tmp_path / f"{name}.py"
  path.write_text("import sys\n"
                  f"sys.path.insert(0, {ROOT!r})\n"
                  "from tests.train_fixtures import small_config\n"
                  "def get_config():\n"
                  f"  c = small_config(**{overrides!r})\n"
                  "  c.unlock()\n"
                  "  return c\n")
  return str(path)


def test_mistyped_model_size_on_resume_changes_nothing_then_the_right_config_resumes(tmp_path,
                                                                                     compile_cache):
  workdir = str(tmp_path / "run")
  first = loop.run(small_config(), workdir, stop_after_steps=2, handle_signals=False)
  assert first["status"] == "stopped" and first["final_step"] == 2
  ckpt_dir = os.path.join(workdir, "checkpoints")
  before = tree_digest(ckpt_dir)

  with pytest.raises(ckpt_lib.CheckpointMismatchError) as info:
    loop.run(small_config(**{"model.hidden_size": 48}), workdir, handle_signals=False)
  msg = str(info.value)
  assert msg.startswith("config.model.hidden_size: checkpoint step 2")
  assert "params.embed_tokens.embedding: checkpoint (128, 32) float32, config (128, 48) float32" in msg
  assert tree_digest(ckpt_dir) == before  # nothing renamed, moved or rewritten

  # the same through the launcher: exit 2, one line, no traceback, still nothing touched
  proc = _launch(workdir, f"--config={_config_file(tmp_path, 'wide', {'model.hidden_size': 48})}")
  line = _assert_one_line_error(proc, "config.model.hidden_size: checkpoint step 2")
  assert "params.embed_tokens.embedding" in line
  assert tree_digest(ckpt_dir) == before

  second = loop.run(small_config(), workdir, handle_signals=False)
  assert second["start_step"] == 2 and second["final_step"] == 6
  assert second["status"] == "completed"


def test_run_with_every_step_skipped_is_not_a_success(tmp_path, compile_cache):
  # parameters of size ~1e30 overflow the forward pass: every loss is non-finite, so every
  # update is skipped (nan_policy=skip) and the parameters never leave that state
  config_file = _config_file(tmp_path, "overflow", {"model.initializer_range": 1e30,
                                                    "train.num_steps": 3, "train.eval_every": 0})
  workdir = tmp_path / "run"
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  proc = _launch(workdir, f"--config={config_file}", env=env)
  _assert_one_line_error(proc, "the run ended with status 'all_skipped'", code=1)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "all_skipped" and summary["nan_skips"] == 3
  assert "all 3 steps of this run were skipped" in proc.stdout



def test_jobs_table_checks_each_job_and_train_refuses_other_jobs():
  """agentic_jax.jobs dispatches the check on config.job; train.config.validate checks only
  mid-training configs (train no longer imports rl's checks)."""
  rl = config_lib.load_config(os.path.join(CONFIGS, "flow_grpo.py:tiny"))
  jobs.validate(rl)
  with pytest.raises(config_lib.ConfigError, match="config.job: 'rl' is not a mid-training job"):
    config_lib.validate(rl)
  rl.unlock()
  rl.job = "rlhf"
  with pytest.raises(config_lib.ConfigError, match=r"config.job: expected one of \['midtrain', "
                                                   r"'ra3', 'recipe', 'rl'\], got 'rlhf'"):
    jobs.validate(rl)
