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
from tests.train_fixtures import ROOT, SMALL_MODEL


def small_recipe(tokenizer_path, variant="tiny"):
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"recipe.py:{variant}"))
  config.unlock()
  mt = config.midtrain
  for k, v in {**SMALL_MODEL, "vocab_size": 400}.items():
    mt.model[k] = v
  config.recipe_data.num_samples = 120  # -> WORKDIR/data/*.jsonl, mt.data.mix reads them
  config.recipe_data.no_tool_rate = 0.3  # the knob works (the recipe's default plants nothing)
  mt.data.mix.calculator.eval_num_samples = 4
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


@pytest.mark.parametrize("variant", ["tiny", "agentflow"])
def test_recipe_config_layout(variant):
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"recipe.py:{variant}"))
  assert config.job == "recipe" and "model" not in config
  mix = config.midtrain.data.mix
  assert list(mix) == ["calculator"] and mix.calculator.kind == "jsonl"
  assert mix.calculator.path == "{data}/episodes.jsonl"
  assert config.rl.loss == "flow_grpo" and config.rl.env == "calculator"
  assert config.rl.env_options.level == config.recipe_data.level == "basic"
  assert config.rl.eval_tasks >= 64
  # nothing planted: every demonstration is a correct solution with the tool
  d = config.recipe_data
  assert d.no_tool_rate == d.slip_rate == 0.0
  assert config.rl.mode == d.format == ("agentflow" if variant == "agentflow" else "plain")
  # every context the RL stage builds fits the model's positions
  assert config.rl.seq_len <= config.midtrain.model.max_position_embeddings
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
  with open(os.path.join(workdir, "data", "episodes.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == data["written"] == data["episodes"]
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


def test_agentflow_recipe_writes_planner_samples_and_runs_agentflow_rl(tokenizer_path, tmp_path):
  """The agentflow variant: stage 0 writes one planner sample per action (only the plan is a
  target), mid-training reads them, and the RL stage runs in agentflow mode from the result."""
  config = small_recipe(tokenizer_path, "agentflow")
  config.unlock()
  config.recipe_data.level = config.rl.env_options.level = "basic"  # short: 2-3 planner steps
  config.recipe_data.no_tool_rate = 0.0
  config.midtrain.data.seq_len = 256
  r = config.rl
  r.max_turns = r.eval_max_turns = 3
  r.max_context_tokens, r.seq_len = 232, 256
  config.train.num_steps = 1
  config.lock()
  res = recipe.run(config, str(tmp_path), handle_signals=False)
  assert res["status"] == "completed", res
  data = res["data"]
  assert data["format"] == "agentflow" and data["too_long_for_planner"] == 0
  with open(os.path.join(str(tmp_path), "data", "episodes.jsonl")) as f:
    records = [json.loads(line) for line in f]
  # the plain episodes, then 2-3 planner samples per episode
  planner = [r for r in records if "-plan" in r["id"]]
  assert len(records) == data["written"] == data["episodes"] + len(planner)
  assert len(planner) >= 2 * data["episodes"]
  for rec in planner:
    trained = [t for t in rec["turns"] if t.get("weight", 1.0) != 0.0]
    assert len(trained) == 1 and trained[0]["role"] == "assistant"
    assert trained[0]["content"].split("\n")[-1] in ("Tool: calc", "Tool: answer")
  with open(os.path.join(str(tmp_path), "rl", "summary.json")) as f:
    assert json.load(f)["mode"] == "agentflow"


def test_recipe_data_options_are_checked():
  config = config_lib.load_config(os.path.join(ROOT, "configs", "recipe.py:tiny"))
  config.unlock()
  config.recipe_data.format = "agentflow"  # planner samples but a plain RL stage
  with pytest.raises(config_lib.ConfigError, match="config.recipe_data.format"):
    recipe.validate_recipe(config)
  config.recipe_data.format = "plane"
  with pytest.raises(config_lib.ConfigError, match="config.recipe_data.format: expected one of"):
    recipe.validate_recipe(config)
  config.recipe_data.format = "plain"
  config.recipe_data.level = "hard"
  with pytest.raises(config_lib.ConfigError, match="config.recipe_data.level"):
    recipe.validate_recipe(config)
