"""agentic_jax/rl/recipe.py on a shrunk configs/recipe.py:tiny (1-layer model, 4 mid-training
steps, 2 RL steps): the stages run in order, a stopped recipe resumes stage by stage, a
finished one is not rerun, and summary.json has the keys the README promises. The full recipe
is the main job, not a test."""

from __future__ import annotations

import json
import os

import pytest

from agentic_jax.rl import config as rl_config
from agentic_jax.rl import recipe
from agentic_jax.train import config as config_lib
# module fixtures shared with the RL loop tests: the compile cache and a small tokenizer
from tests.test_rl_loop import compile_cache, tokenizer_path  # noqa: F401
from tests.train_fixtures import ROOT, SMALL_MODEL


def small_recipe(tokenizer_path):
  config = config_lib.load_config(os.path.join(ROOT, "configs", "recipe.py:tiny"))
  config.unlock()
  mt = config.midtrain
  for k, v in {**SMALL_MODEL, "vocab_size": 400}.items():
    mt.model[k] = v
  config.recipe_data.num_samples = 120  # -> WORKDIR/data/*.jsonl, mt.data.sources read them
  mt.data.eval_num_samples = (4,)
  mt.data.tokenizer.path = tokenizer_path
  mt.data.batch_size, mt.data.seq_len = 2, 128
  mt.train.num_steps, mt.train.log_every, mt.train.progress = 4, 2, False
  mt.optim.warmup_steps = 1
  mt.checkpoint.every = 2
  r = config.rl
  r.tasks_per_step, r.group_size, r.max_turns, r.eval_max_turns, r.eval_tasks = 2, 2, 1, 1, 4
  r.max_new_tokens, r.max_context_tokens, r.seq_len = 12, 116, 128
  r.row_bucket, r.sample_bucket, r.minibatches = 4, 2, 1
  config.train.num_steps, config.train.progress = 2, False
  config.lock()
  return config


def test_recipe_config_layout():
  config = config_lib.load_config(os.path.join(ROOT, "configs", "recipe.py:tiny"))
  assert config.job == "recipe" and "model" not in config
  assert any("calculator_basic" in src for src in config.midtrain.data.sources)
  assert config.rl.loss == "flow_grpo" and config.rl.env == "calculator"
  assert config.rl.env_options.level == "basic" and config.rl.eval_tasks >= 64
  rl = recipe.rl_stage_config(config, "/somewhere/midtrain")
  rl_config.check_rl_config(rl)
  assert rl.job == "rl" and rl.init_from == "/somewhere/midtrain"
  assert rl.model.to_dict() == config.midtrain.model.to_dict()
  with pytest.raises(AttributeError, match="group_sise"):
    config.rl.group_sise = 2


def test_recipe_runs_resumes_stage_by_stage_and_writes_the_summary(tokenizer_path, tmp_path):
  config = small_recipe(tokenizer_path)
  workdir = str(tmp_path)
  first = recipe.run(config, workdir, stop_after_steps=2, handle_signals=False)
  assert first["status"] == "stopped" and first["success_rate_after_rl"] is None
  assert first["stages"]["midtrain"]["final_step"] == 2  # stopped inside mid-training
  assert not os.path.exists(os.path.join(workdir, "rl"))
  data = first["data"]  # stage 0: held-out eval questions never reach mid-training
  assert data["generated"] == 120 and data["held_out_questions_dropped"] > 0
  assert data["written"] == 120 - data["held_out_questions_dropped"]
  with open(os.path.join(workdir, "data", "calculator_basic.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == data["written"]
  no_tool = [r for r in records if not any(t["role"] == "tool_call" and t["content"].startswith(
      "calc(") for t in r["turns"])]
  assert len(no_tool) == data["no_tool"]
  assert abs(len(no_tool) / len(records) - config.recipe_data.no_tool_rate) < 0.15
  assert all(r["turns"][-1]["content"] == "incorrect" for r in no_tool)  # estimates are off

  second = recipe.run(config, workdir, handle_signals=False)
  assert second["status"] == "completed"
  assert second["stages"]["midtrain"]["final_step"] == 4 and second["stages"]["rl"]["final_step"] == 2
  assert set(second["seconds"]) >= {"midtrain", "rl"}
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  for key in ("success_rate_before_rl", "success_rate_after_rl",
              "greedy_success_rate_before_rl", "greedy_success_rate_after_rl"):
    assert 0.0 <= summary[key] <= 1.0
  assert summary["stages"]["rl"]["eval_after"]["tasks"] == 4
  # ... and greedy decoding, one episode per task, reported beside it
  greedy = summary["stages"]["rl"]["eval_after"]["greedy"]
  assert greedy["episodes"] == 4 and greedy["temperature"] == 0.0
  assert summary["greedy_success_rate_after_rl"] == greedy["success_rate"]
  # the recipe's eval samples config.rl.eval_samples episodes per task at the eval temperature
  assert summary["stages"]["rl"]["eval_after"]["episodes"] == 4 * config.rl.eval_samples
  assert summary["stages"]["rl"]["eval_after"]["temperature"] == config.rl.eval_temperature > 0
  with open(os.path.join(workdir, "rl", "summary.json")) as f:
    rl_summary = json.load(f)
  assert rl_summary["init"]["from"] == os.path.join(workdir, "midtrain")
  assert rl_summary["init"]["step"] == 4  # the mid-trained params, not a fresh init

  third = recipe.run(config, workdir, handle_signals=False)  # every stage already done
  assert third["status"] == "completed" and set(third["seconds"]) == {"data", "total_this_run"}
  for key in ("success_rate_before_rl", "success_rate_after_rl",
              "greedy_success_rate_before_rl", "greedy_success_rate_after_rl"):
    assert third[key] == summary[key]
