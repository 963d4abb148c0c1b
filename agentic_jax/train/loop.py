"""The run loop: build data and model, resume, train, checkpoint, report.

    result = run(config, workdir)        # rerunning with the same workdir resumes

Order of a run: data (generation, tokenizer, rendering) -> state (restored from the latest
readable checkpoint in WORKDIR/checkpoints, else initialised from config.seed) -> the jitted
step compiled ahead of time (timed apart from training) -> steps until train.num_steps ->
final checkpoint, summary.json, loss.png, a printed summary.

Stopping early:
  * SIGTERM (preemption) or SIGINT: the current step finishes, a checkpoint is written,
    the run returns status "preempted" (launch/train.py exits 0); rerunning resumes.
  * `stop_after_steps=k` (tests, debugging): the same after k steps of this invocation,
    status "stopped".
  * Non-finite loss or gradient: the step itself skipped the update (step.py). With
    train.nan_policy="skip" training goes on (skips counted in metrics and summary); with
    "halt" the loop stops at once WITHOUT saving, so the newest checkpoint is the last good
    state, and returns status "halted" (launch/train.py exits 1).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import numpy as np

from agentic_jax import models, objectives
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import flops as flops_lib
from agentic_jax.train import input as input_lib
from agentic_jax.train import metrics as metrics_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from agentic_jax.train import step as step_lib

NAN_POLICIES = ("skip", "halt")


def _say(msg: str) -> None:
  print(msg, flush=True)


class _StopFlag:
  """Set by SIGTERM/SIGINT; handlers installed only from the main thread, restored after."""

  def __init__(self, install: bool):
    self.signal: Optional[str] = None
    self._old = {}
    if install and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, _frame):
    self.signal = signal.Signals(signum).name

  def restore(self) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _config_json(config: Any) -> dict:
  return json.loads(config.to_json_best_effort())


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def run(config: Any, workdir: str, *, stop_after_steps: Optional[int] = None,
        handle_signals: bool = True) -> dict:
  """Trains per `config` in `workdir`; returns the summary plus per-step `losses`."""
  t_start = time.perf_counter()
  stop = _StopFlag(handle_signals)  # from the start: a signal during setup stops before step 1
  try:
    return _run(config, workdir, stop, t_start, stop_after_steps)
  finally:
    stop.restore()


def _run(config: Any, workdir: str, stop: _StopFlag, t_start: float,
         stop_after_steps: Optional[int]) -> dict:
  config_lib.check_required(config)
  if config.train.nan_policy not in NAN_POLICIES:
    raise ValueError(f"config.train.nan_policy must be one of {NAN_POLICIES}, "
                     f"got {config.train.nan_policy!r}")
  os.makedirs(workdir, exist_ok=True)
  model_cfg = config_lib.model_config(config.model)
  num_steps = int(config.train.num_steps)
  # Validate the rest of the config before spending time on data.
  tx = optim_lib.make_optimizer(config.optim)
  optim_lib.schedule_from_config(config)
  step_lib.make_bias_update(model_cfg, config.moe)
  objectives.get_loss(config.objective.name)

  # ---- data
  inp = input_lib.build_input(config, workdir, vocab_limit=model_cfg.vocab_size,
                              process_index=jax.process_index(), process_count=jax.process_count())
  t_data = time.perf_counter() - t_start
  _say(f"[data] sources {list(inp.source_names)} ready in {t_data:.1f}s "
       f"({json.dumps(inp.report.get('tokenizer', {}))})")

  # ---- state
  step_fn = step_lib.make_train_step(model_cfg, config, num_kinds=len(inp.kind_names),
                                     num_sources=len(inp.source_names))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save)
  abstract = state_lib.abstract_state(model_cfg, tx, config.seed)
  restored = ckpt.restore_latest(abstract, inp.iterator)
  config_json = _config_json(config)
  if restored is not None:
    state, meta = restored
    start = int(state.step)
    _say(f"[ckpt] resumed from step {start} ({ckpt.directory}/{start})")
    diff = _config_diff(meta.get("config", {}), config_json)
    if diff:
      _say("[ckpt] config differs from the checkpoint's: " + "; ".join(diff[:10]))
  else:
    state = jax.jit(lambda: state_lib.init_state(model_cfg, tx, config.seed))()
    # Committed to the device like a restored state, so a fresh and a resumed run compile
    # the step to the same program (uncommitted inputs lower without sharding annotations).
    state = jax.device_put(state, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    start = 0
  n_params = models.count_params(model_cfg)
  fm = flops_lib.flop_model(model_cfg)
  _say(f"[model] {config.model.preset}-style {model_cfg.layer_type}: {n_params:,} params, "
       f"{fm.dense_matmul_params + fm.expert_params:,} in matmuls")

  result: dict[str, Any] = {"status": "completed", "start_step": start, "losses": []}
  if start >= num_steps:
    _say(f"[train] nothing to do: checkpoint step {start} >= train.num_steps {num_steps}")
    ckpt.close()
    result.update(status="completed", final_step=start)
    return result

  # ---- compile (timed apart from the steps)
  batch = next(inp.iterator)
  t0 = time.perf_counter()
  compiled = step_lib.jit_train_step(step_fn).lower(state, batch).compile()
  t_compile = time.perf_counter() - t0
  _say(f"[train] step compiled in {t_compile:.1f}s; steps {start + 1}..{num_steps}, "
       f"batch {config.data.batch_size}x{config.data.seq_len}")

  logger = metrics_lib.MetricsLogger(
      workdir, kind_names=inp.kind_names, source_names=inp.source_names, flop_model=fm,
      seq_len=config.data.seq_len, peak_flops=config.train.peak_flops, num_steps=num_steps,
      log_every=config.train.log_every, start_step=start, progress=config.train.progress)
  step = start
  warned_skip = False
  t_loop = time.perf_counter()
  if stop.signal is not None:
    result["status"] = "preempted"
    _say(f"[train] {stop.signal} during setup: exiting before step {start + 1} (nothing new to save)")
  try:
    while step < num_steps and result["status"] == "completed":
      t0 = time.perf_counter()
      if batch is None:
        batch = next(inp.iterator)
      state, m = compiled(state, batch)
      batch = None
      m = jax.device_get(m)
      step += 1
      result["losses"].append((step, np.float32(m["loss"])))
      logger.step(step, m, time.perf_counter() - t0)
      if int(m["skipped"]):
        if config.train.nan_policy == "halt":
          logger.flush()
          _say(f"[train] non-finite loss/gradient at step {step}: halting (nan_policy=halt); "
               f"the newest checkpoint is the last good state")
          result["status"] = "halted"
          break
        if not warned_skip:
          _say(f"[train] non-finite loss/gradient at step {step}: update skipped "
               f"(nan_policy=skip; further skips are counted in metrics)")
          warned_skip = True
      stopping = stop.signal is not None or (
          stop_after_steps is not None and step - start >= stop_after_steps)
      if step % config.checkpoint.every == 0 or step == num_steps or stopping:
        ckpt.save(state, inp.iterator, config_json)
      if stopping:
        result["status"] = "preempted" if stop.signal else "stopped"
        _say(f"[train] {stop.signal or 'stop_after_steps'}: checkpoint saved at step {step}; "
             f"rerun the same command to resume")
        break
  finally:
    logger.close()
    ckpt.close()
  t_train = time.perf_counter() - t_loop

  recs = logger.records
  losses = [r["loss"] for r in recs if r.get("loss") is not None]
  summary = {
      "status": result["status"], "start_step": start, "final_step": step, "num_steps": num_steps,
      "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
      "final_record": recs[-1] if recs else None,
      "tokens_per_s": logger.total_tokens / logger.total_seconds if logger.total_seconds else None,
      "mfu": (logger.total_flops / logger.total_seconds / config.train.peak_flops
              if logger.total_seconds else None),
      "peak_flops": config.train.peak_flops,
      "nan_skips": int(jax.device_get(state.nan_skips)),
      "params": n_params,
      "seconds": {"data": round(t_data, 2), "compile": round(t_compile, 2),
                  "train": round(t_train, 2), "total": round(time.perf_counter() - t_start, 2)},
      "data": inp.report, "pipeline": input_lib.pipeline_stats(inp),
      "checkpoints": {"directory": ckpt.directory, "steps": ckpt.all_steps()},
      "outputs": {"metrics": logger.jsonl_path, "tensorboard": os.path.join(workdir, "tb")},
  }
  png = metrics_lib.plot_losses(workdir, title=f"midtrain {config.get('variant', '')} "
                                f"({config.model.preset})")
  summary["outputs"]["loss_png"] = png
  summary["outputs"]["summary"] = metrics_lib.write_summary(workdir, summary)
  summary["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
  _print_summary(summary)
  result.update(summary)
  return result


def _print_summary(s: dict) -> None:
  def f(x, spec):
    return "n/a" if x is None else format(x, spec)
  lines = [
      f"== {s['status']}: steps {s['start_step']}->{s['final_step']} of {s['num_steps']}"
      f" | loss {f(s['first_loss'], '.4f')} -> {f(s['final_loss'], '.4f')}"
      f" | {f(s['tokens_per_s'], ',.0f')} tokens/s | MFU {f(s['mfu'] and 100 * s['mfu'], '.1f')}%"
      f" of {s['peak_flops']:.3g} FLOP/s | NaN skips {s['nan_skips']}",
      f"   time: data {s['seconds']['data']}s, compile {s['seconds']['compile']}s, "
      f"train {s['seconds']['train']}s, total {s['seconds']['total']}s",
      _data_line(s),
      f"   outputs: {s['outputs']['summary']}, {s['outputs']['metrics']}, "
      f"{s['outputs']['loss_png']}, {s['outputs']['tensorboard']}/, {s['checkpoints']['directory']}/",
  ]
  _say("\n".join(line for line in lines if line))


def _data_line(s: dict) -> str:
  """Anything the data path skipped, split or dropped (never silent)."""
  parts = []
  for name, rep in s["data"].get("sources", {}).items():
    if rep.get("skipped"):
      parts.append(f"{name}: {rep['skipped']} bad records skipped")
  pipe = s.get("pipeline", {})
  if pipe.get("split_overlong"):
    parts.append(f"{pipe['split_overlong']} over-length samples split into {pipe['split_chunks']} chunks")
  if pipe.get("dropped_overlong"):
    parts.append(f"{pipe['dropped_overlong']} over-length samples dropped")
  if pipe.get("batches"):
    parts.append(f"padding {100 * pipe.get('padding_fraction', 0):.1f}%")
  return "   data: " + "; ".join(parts) if parts else ""
