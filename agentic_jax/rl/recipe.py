"""The tiny end-to-end recipe (configs/recipe.py): data, mid-training, eval, Flow-GRPO, eval.

    result = run(config, workdir)   # WORKDIR/data, WORKDIR/midtrain, WORKDIR/rl

Stage 0 writes the mid-training data (config.recipe_data): `num_samples` scripted calculator
episodes of `level` (agentic_jax.data.builtin.agent, seed `seed`; `no_tool_rate`, `slip_rate`
and `error_rate` set the shares that answer without the calculator, slip unnoticed, or fail a
call and correct it) minus every episode whose question is in the RL environment's held-out eval
split (envs.calculator_split, counted), as one JSONL file in our schema, WORKDIR/data/episodes.jsonl.
`format` "plain" writes the episodes; "agentflow" writes them and one planner sample per action
(rl/agentflow_data.py: the planner's exact context with only its plan as the target), for the
RL stage's agentflow mode. config.midtrain's data mix refers to the file as a "jsonl" source
with path "{data}/episodes.jsonl" (config.midtrain.data.mix.calculator.path).
Stage 1 runs agentic_jax.train.loop.run(config.midtrain, WORKDIR/midtrain). Stage 2 runs
agentic_jax.rl.loop.run on the top-level RL keys with init_from = WORKDIR/midtrain and
model = config.midtrain.model, in WORKDIR/rl; its evaluations on held-out tasks before the
first and after the last RL step are the recipe's success_rate_before_rl / success_rate_after_rl.
Each stage resumes from its own checkpoints, and a completed stage (its summary.json says so) is
not run again, so rerunning the same command resumes stage by stage. `stop_after_steps` counts
training steps of this invocation across both stages (tests).

WORKDIR/summary.json: status, success_rate_before_rl, success_rate_after_rl (sampled),
greedy_success_rate_before_rl, greedy_success_rate_after_rl (greedy decoding), seconds per stage
(this invocation) and each stage's summary (abridged).
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any, Optional

from agentic_jax import fs
from agentic_jax.train import metrics as metrics_lib

STAGES = ("data", "midtrain", "rl")
DATA_FILE = "episodes.jsonl"
_MT_KEYS = ("status", "final_step", "num_steps", "first_loss", "final_loss", "tokens_per_s",
            "seconds", "nan_skips")
_RL_KEYS = ("status", "final_step", "num_steps", "success_rate_before", "success_rate_after",
            "greedy_success_rate_before", "greedy_success_rate_after",
            "eval_before", "eval_after", "train_reward_first", "train_reward_last",
            "dropped_rows", "nan_skips", "seconds", "objective_options")


def _say(msg: str) -> None:
  print(msg, flush=True)


def _finished(workdir: str, num_steps: int) -> Optional[dict]:
  """The stage's summary if it completed all `num_steps` steps, else None."""
  path = fs.join(workdir, metrics_lib.SUMMARY_FILE)
  if not fs.exists(path):
    return None
  s = json.loads(fs.read_text(path))
  done = s.get("status") == "completed" and s.get("final_step") == num_steps
  return s if done else None


def write_data(config: Any, data_dir: str) -> dict:
  """Stage 0 (module docstring); returns its counts. Skipped when its files exist."""
  from agentic_jax.data import schema  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.builtin import agent  # pylint: disable=import-outside-toplevel
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  path = fs.join(data_dir, DATA_FILE)
  report_path = fs.join(data_dir, "report.json")
  if fs.exists(path) and fs.exists(report_path):
    return json.loads(fs.read_text(report_path))
  d = config.recipe_data
  _check_data_options(d)
  episodes = agent.calculator_episodes(d.seed, d.num_samples, level=d.level,
                                       no_tool_rate=d.no_tool_rate, slip_rate=d.slip_rate,
                                       error_rate=d.error_rate)
  kept = [(p, s) for p, s in episodes if envs.calculator_split(p.task.question) == "train"]
  too_long = 0
  if d.format == "agentflow":
    from agentic_jax.rl import agentflow_data  # pylint: disable=import-outside-toplevel
    env = envs.CalculatorEnv(level=d.level)
    # the plain episodes too: their failed calls and corrections (which planner samples leave
    # out) are what teaches a tiny model to copy numbers at all; without them the planner
    # mid-trained on planner samples alone solved 0 of 64 held-out tasks
    samples = [s for _, s in kept]
    for _, s in kept:
      planner = agentflow_data.planner_samples(s, env.tools, answer_tools=env.answer_tools,
                                               max_steps=config.rl.max_turns)
      too_long += not planner
      samples += planner
  else:
    samples = [s for _, s in kept]
  fs.makedirs(data_dir)
  fs.write_text(path, "".join(json.dumps(schema.to_record(s)) + "\n" for s in samples))
  no_tool = sum(1 for _, s in kept if not any(t.role == "tool_call" and t.content.startswith("calc")
                                              for t in s.turns))
  report = {"generated": len(episodes), "held_out_questions_dropped": len(episodes) - len(kept),
            "episodes": len(kept), "written": len(samples), "format": d.format,
            "too_long_for_planner": too_long,
            "level": d.level, "no_tool": no_tool,
            "reward_1": sum(1 for _, s in kept if s.reward == 1.0)}
  fs.write_text(report_path, json.dumps(report))  # last: its presence marks the stage done
  return report


FORMATS = ("plain", "agentflow")


def _check_data_options(d: Any) -> None:
  from agentic_jax.data.builtin import calculator  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  if d.level not in calculator.LEVELS:
    raise config_lib.ConfigError(f"config.recipe_data.level: expected one of "
                                 f"{list(calculator.LEVELS)}, got {d.level!r}")
  if d.format not in FORMATS:
    raise config_lib.ConfigError(f"config.recipe_data.format: expected one of {list(FORMATS)}, "
                                 f"got {d.format!r}")


def midtrain_stage_config(config: Any, data_dir: str) -> Any:
  """config.midtrain with "{data}" in the paths of its file sources (data.mix.NAME.path)
  replaced by the data directory."""
  c = copy.deepcopy(config.midtrain)
  c.unlock()
  for source in c.data.mix.values():
    if "path" in source:
      source.path = source.path.replace("{data}", data_dir)
  c.lock()
  return c


def rl_stage_config(config: Any, midtrain_dir: str) -> Any:
  """The RL stage's config: the top-level keys, job "rl", init_from and model from midtrain."""
  c = copy.deepcopy(config)
  c.unlock()
  mt = c.midtrain
  del c.midtrain
  if "recipe_data" in c:
    del c.recipe_data
  c.job = "rl"
  c.init_from = midtrain_dir
  c.model = mt.model
  # init_from brings WORKDIR/midtrain/tokenizer.model when mid-training trained one, else it
  # used data.tokenizer.path, which the RL stage then needs too
  c.tokenizer = copy.deepcopy(mt.data.tokenizer)
  c.lock()
  return c


def validate_recipe(config: Any, workdir: str = "WORKDIR") -> None:
  """config.recipe_data and both stages' configs as they will run; ConfigError naming the
  recipe's key (config.midtrain.* for the mid-training stage)."""
  from agentic_jax.rl import config as rl_config  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  for key, low in (("recipe_data.seed", 0), ("recipe_data.num_samples", 1)):
    config_lib.check_int(config, key, low)
  for key in ("no_tool_rate", "slip_rate", "error_rate"):
    config_lib.check_number(config, f"recipe_data.{key}", 0.0, 1.0)
  _check_data_options(config.recipe_data)
  if config.recipe_data.format == "agentflow" and config.rl.mode != "agentflow":
    raise config_lib.ConfigError("config.recipe_data.format: 'agentflow' (planner samples) needs "
                                 f"config.rl.mode='agentflow', got {config.rl.mode!r}")
  if "midtrain" not in config:
    raise config_lib.ConfigError("config.midtrain: required section is missing")
  try:
    config_lib.validate_midtrain(midtrain_stage_config(config, fs.join(workdir, "data")))
  except config_lib.ConfigError as e:  # its keys live under config.midtrain
    msg = str(e)
    raise config_lib.ConfigError("config.midtrain." + msg[len("config."):]
                                 if msg.startswith("config.") else msg) from None
  with config_lib.config_errors("config"):
    rl_cfg = rl_stage_config(config, fs.join(workdir, "midtrain"))
  rl_config.check_rl_config(rl_cfg)


def run(config: Any, workdir: str, *, stop_after_steps: Optional[int] = None,
        handle_signals: bool = True) -> dict:
  """Runs or resumes the recipe; returns the summary written to WORKDIR/summary.json."""
  from agentic_jax.rl import loop as rl_loop  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import loop as mt_loop  # pylint: disable=import-outside-toplevel
  validate_recipe(config, workdir)  # both stages, before anything is written or compiled
  workdir = fs.resolve(workdir)
  fs.makedirs(workdir)
  data_dir = fs.join(workdir, "data")
  mt_dir, rl_dir = fs.join(workdir, "midtrain"), fs.join(workdir, "rl")
  rl_cfg = rl_stage_config(config, mt_dir)
  mt_cfg = midtrain_stage_config(config, data_dir)
  seconds: dict[str, float] = {}
  t0 = time.perf_counter()
  data_report = write_data(config, data_dir)
  seconds["data"] = round(time.perf_counter() - t0, 2)
  budget = stop_after_steps
  summaries: dict[str, dict] = {}
  status = "completed"
  for name, cfg, wd, fn in (("midtrain", mt_cfg, mt_dir, mt_loop.run),
                            ("rl", rl_cfg, rl_dir, rl_loop.run)):
    done = _finished(wd, int(cfg.train.num_steps))
    if done is not None:
      _say(f"[recipe] stage {name}: already completed ({wd})")
      summaries[name] = done
      continue
    if budget is not None and budget <= 0:
      status = "stopped"
      break
    _say(f"[recipe] stage {name} -> {wd}")
    t0 = time.perf_counter()
    res = fn(cfg, wd, stop_after_steps=budget, handle_signals=handle_signals)
    seconds[name] = round(time.perf_counter() - t0, 2)
    summaries[name] = res
    if budget is not None:
      budget -= int(res.get("final_step", 0)) - int(res.get("start_step", 0))
    if res.get("status") != "completed":
      status = res.get("status", "failed")
      break

  rl_sum = summaries.get("rl", {}) if status == "completed" else {}
  summary = {
      "status": status, "job": "recipe",
      "success_rate_before_rl": rl_sum.get("success_rate_before"),
      "success_rate_after_rl": rl_sum.get("success_rate_after"),
      "greedy_success_rate_before_rl": rl_sum.get("greedy_success_rate_before"),
      "greedy_success_rate_after_rl": rl_sum.get("greedy_success_rate_after"),
      "seconds": {**seconds, "total_this_run": round(sum(seconds.values()), 2)},
      "stages": {"midtrain": {k: summaries.get("midtrain", {}).get(k) for k in _MT_KEYS},
                 "rl": {k: rl_sum.get(k) for k in _RL_KEYS} if rl_sum else None},
      "data": data_report,
      "workdirs": {"data": data_dir, "midtrain": mt_dir, "rl": rl_dir},
  }
  metrics_lib.write_summary(workdir, summary)
  if status == "completed":
    _say(f"== recipe: success rate before RL {summary['success_rate_before_rl']} -> after RL "
         f"{summary['success_rate_after_rl']}, greedy {summary['greedy_success_rate_before_rl']} "
         f"-> {summary['greedy_success_rate_after_rl']} "
         f"({summary['stages']['rl']['eval_after']['tasks']} held-out tasks) | seconds "
         f"{summary['seconds']}")
  else:
    _say(f"== recipe {status}: rerun the same command to resume")
  return summary
