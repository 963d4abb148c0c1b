"""agentic_jax/train/runner.py, the pieces both run loops share, against hand-computed cases:
checkpoint cadence, NaN policy, stop decisions and statuses, the Run bookkeeping and its
messages, resume, summary keys, summary.json, the metrics writer (jsonl, TensorBoard, progress
line, truncation on resume), the stop flag, the plot. No model, no jit: milliseconds each."""

from __future__ import annotations

import io
import json
import os
import signal
import time
import types

import numpy as np
import pytest

from agentic_jax.train import runner
from agentic_jax.train import runtime
from agentic_jax.train import tensorboard


# ------------------------------------------------------------------ decisions

def test_checkpoint_cadence():
  # every 2 of 5 steps: after 2, 4 and the last step 5; stopping forces a save
  assert [runner.checkpoint_due(s, every=2, num_steps=5) for s in range(1, 6)] == [
      False, True, False, True, True]
  assert runner.checkpoint_due(3, every=2, num_steps=5, stopping=True)
  assert not runner.checkpoint_due(3, every=2, num_steps=5, stopping=None)


def test_nan_action():
  assert runner.nan_action(False, "skip") is None and runner.nan_action(False, "halt") is None
  assert runner.nan_action(True, "skip") == "skip"
  assert runner.nan_action(True, "halt") == "halt"
  with pytest.raises(ValueError, match="nan_policy must be one of"):
    runner.nan_action(True, "ignore")


def test_stop_status_and_final_status():
  assert runner.stop_status(1, False, None) is None
  assert runner.stop_status(1, False, 2) is None
  assert runner.stop_status(2, False, 2) == "stopped"
  assert runner.stop_status(1, True, 2) == "preempted"  # a signal wins
  assert runner.stop_status(3, True, 2) == "preempted"
  assert runner.final_status("completed", 3, 3) == "all_skipped"
  assert runner.final_status("stopped", 2, 2) == "all_skipped"
  assert runner.final_status("completed", 3, 2) == "completed"
  assert runner.final_status("halted", 1, 1) == "halted"
  assert runner.final_status("completed", 0, 0) == "completed"  # nothing ran: nothing skipped


# ------------------------------------------------------------------ Run

def _drive(run: runner.Run, skipped=(), signal_at=None) -> list[int]:
  """A loop over Run as train/loop.py drives it; returns the steps it saved at."""
  saved = []
  while run.running():
    run.step += 1
    if run.on_update(run.step in skipped):
      break
    stopping = run.stop_status(run.step == signal_at)
    if run.checkpoint_due(stopping):
      saved.append(run.step)
    if stopping:
      run.stopped(stopping, "SIGTERM" if run.step == signal_at else "stop_after_steps")
  run.finish(lr=0.1)
  return saved


def test_run_resumed_and_stopped_after_steps():
  said = []
  run = runner.Run(2, 6, 3, "skip", stop_after_steps=3, tag="t", say=said.append)
  assert run.step == 2 and run.ran == 0
  # steps 3, 4, 5: 3 is on the cadence, 5 is the third of this invocation (stopping)
  assert _drive(run) == [3, 5]
  assert (run.status, run.step, run.ran) == ("stopped", 5, 3)
  assert said == ["[t] stop_after_steps: checkpoint saved at step 5; rerun the same command to "
                  "resume"]


def test_run_completes_and_preempts():
  run = runner.Run(0, 4, 2, say=lambda m: None)
  assert _drive(run) == [2, 4] and run.status == "completed" and run.step == 4
  said = []
  run = runner.Run(0, 10, 4, say=said.append, tag="rl")
  assert _drive(run, signal_at=3) == [3]
  assert run.status == "preempted" and said == [
      "[rl] SIGTERM: checkpoint saved at step 3; rerun the same command to resume"]


def test_run_nan_policies():
  said = []
  run = runner.Run(0, 4, 2, "skip", say=said.append)
  assert _drive(run, skipped={2, 3}) == [2, 4]
  assert run.status == "completed" and run.skipped_steps == 2
  assert said == ["[train] non-finite loss/gradient at step 2: update skipped (nan_policy=skip; "
                  "further skips are counted in metrics)"]  # once
  said = []
  run = runner.Run(0, 4, 1, "halt", say=said.append)
  assert _drive(run, skipped={3}) == [1, 2]  # step 3 is not saved: step 2 is the last good one
  assert run.status == "halted" and run.step == 3
  assert said == ["[train] non-finite loss/gradient at step 3: halting (nan_policy=halt); the "
                  "newest checkpoint is the last good state"]


def test_run_all_skipped_and_partial_updates():
  said = []
  run = runner.Run(1, 4, 10, "skip", say=said.append)
  _drive(run, skipped={2, 3, 4})
  assert run.status == "all_skipped" and run.skipped_steps == 3
  assert said[-1] == ("[train] all 3 steps of this run were skipped as non-finite "
                      "(nan_policy=skip): no update was applied; check the data and "
                      "config.optim (lr 0.1)")
  # RL: a step with some updates skipped but others applied is not a skipped step
  run = runner.Run(0, 2, 1, "skip", say=lambda m: None)
  for _ in range(2):
    run.step += 1
    assert not run.on_update(True, no_update=False)
  assert run.skipped_steps == 0 and run.finish() == "completed"


def test_run_stop_in_setup_and_bad_policy():
  said = []
  run = runner.Run(4, 8, 2, say=said.append)
  assert not run.stop_in_setup(False, None) and run.status == "completed"
  assert run.stop_in_setup(True, "SIGINT")
  assert run.status == "preempted" and not run.running()
  assert said == ["[train] SIGINT during setup: exiting before step 5 (nothing new to save)"]
  with pytest.raises(ValueError):
    runner.Run(0, 1, 1, "explode")


def test_warn_once():
  said = []
  run = runner.Run(0, 1, 1, say=said.append)
  for _ in range(3):
    run.warn_once("drop", "a")
  run.warn_once("logp", "b")
  assert said == ["a", "b"]


# ------------------------------------------------------------------ resume

class _FakeCheckpointer:
  directory = "/ck"

  def __init__(self, restored):
    self.restored, self.calls = restored, []

  def restore_latest(self, target, data_iterator=None, *, config_json=None):
    self.calls.append((target, data_iterator, config_json))
    return self.restored

  def all_steps(self):
    return [2, 4]


def test_config_diff():
  old = {"a": 1, "b": {"c": 2, "e": [1]}, "f": {"g": 1}}
  new = {"a": 1, "b": {"c": 3, "e": [1]}, "d": 4, "f": 5}
  assert runner.config_diff(old, new) == ["b.c: 2 -> 3", "d: None -> 4", "f: {'g': 1} -> 5"]
  assert runtime.config_diff is runner.config_diff and runtime.StopFlag is runner.StopFlag


def test_resume():
  said = []
  assert runner.resume(_FakeCheckpointer(None), "T", {}, say=said.append) is None and not said
  state = types.SimpleNamespace(step=np.int32(4))
  ck = _FakeCheckpointer((state, {"config": {"lr": 1.0, "seed": 0}}))
  got = runner.resume(ck, "T", {"lr": 2.0, "seed": 0}, data_iterator="it", say=said.append)
  assert got.state is state and got.step == 4 and got.meta["config"]["lr"] == 1.0
  assert ck.calls == [("T", "it", {"lr": 2.0, "seed": 0})]
  assert said == ["[ckpt] resumed from step 4 (/ck/4)",
                  "[ckpt] config differs from the checkpoint's: lr: 1.0 -> 2.0"]


# ------------------------------------------------------------------ summary

def test_summary_common_keys(tmp_path):
  run = runner.Run(2, 6, 2, say=lambda m: None)
  run.step = 6
  writer = runner.MetricsWriter(str(tmp_path), write=False)
  s = runner.summary(run, nan_skips=np.int32(1), seconds={"train": 1.234, "total": 2.0},
                     checkpointer=_FakeCheckpointer(None), writer=writer, job="x", final_loss=0.5)
  assert s == {"status": "completed", "start_step": 2, "final_step": 6, "num_steps": 6,
               "job": "x", "final_loss": 0.5, "nan_skips": 1,
               "seconds": {"train": 1.23, "total": 2.0},
               "checkpoints": {"directory": "/ck", "steps": [2, 4]},
               "outputs": {"metrics": str(tmp_path / "metrics.jsonl"),
                           "tensorboard": str(tmp_path / "tb")}}
  assert type(s["nan_skips"]) is int


def test_write_summary_is_json_safe(tmp_path):
  path = runner.write_summary(str(tmp_path), {"loss": float("nan"), "n": np.int64(3),
                                              "v": np.array([1.5, np.inf]), "t": (1, 2)})
  assert path == str(tmp_path / "summary.json") and os.listdir(tmp_path) == ["summary.json"]
  with open(path) as f:
    assert json.load(f) == {"loss": None, "n": 3, "v": [1.5, None], "t": [1, 2]}


# ------------------------------------------------------------------ metrics writer

def test_metrics_writer_files_and_progress(tmp_path):
  out = io.StringIO()
  lines = lambda rec: f"step {rec['step']}" if rec["step"] % 2 == 0 else None  # noqa: E731
  w = runner.MetricsWriter(str(tmp_path), progress=lines, stream=out)
  for step in (1, 2, 3):
    w.write({"step": step, "loss": np.float32(0.5) * step, "bad": float("nan"), "name": "x"})
  w.write({"step": 4, "name": "only text"})  # no scalar: no TensorBoard event
  w.close()
  recs = runner.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[2]["loss"] == 1.5
  assert recs[0]["bad"] is None and w.records == recs
  assert out.getvalue() == "step 2\nstep 4\n"  # not a terminal: one line per progress line
  (tb_file,) = os.listdir(tmp_path / "tb")
  # the file_version event + one event per record with scalars ("step" and text excluded)
  assert len(tensorboard.read_records(str(tmp_path / "tb" / tb_file))) == 1 + 3


def test_metrics_writer_drops_records_past_the_resumed_step(tmp_path):
  w = runner.MetricsWriter(str(tmp_path))
  for step in range(1, 6):
    w.write({"step": step, "x": step})
  w.close()
  w = runner.MetricsWriter(str(tmp_path), start_step=3)  # resumed from the checkpoint of step 3
  w.write({"step": 4, "x": 40})
  w.close()
  recs = runner.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["x"]) for r in recs] == [(1, 1), (2, 2), (3, 3), (4, 40)]
  assert runner.truncate_jsonl(str(tmp_path / "metrics.jsonl"), 2) == 2
  assert runner.truncate_jsonl(str(tmp_path / "absent.jsonl"), 2) == 0


def test_metrics_writer_that_does_not_write(tmp_path):
  out = io.StringIO()
  w = runner.MetricsWriter(str(tmp_path / "w"), write=False, progress=lambda r: "x", stream=out)
  assert w.write({"step": 1, "a": np.float64(2.0)}) == {"step": 1, "a": 2.0}
  w.close()
  assert w.records == [{"step": 1, "a": 2.0}]
  assert not os.path.exists(tmp_path / "w") and out.getvalue() == ""


# ------------------------------------------------------------------ stop flag

def test_stop_flag_sets_on_sigterm_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with runner.stop_flag(True) as stop:
    assert stop.signal is None and signal.getsignal(signal.SIGTERM) is not before
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(200):  # the handler runs in the main thread at the next bytecode boundary
      if stop.signal is not None:
        break
      time.sleep(0.01)
    assert stop.signal == "SIGTERM"
    stop._handle(signal.SIGINT, None)  # pylint: disable=protected-access
    assert stop.signal == "SIGINT"
  assert signal.getsignal(signal.SIGTERM) is before
  with runner.stop_flag(False) as stop:  # install=False: handlers untouched
    assert signal.getsignal(signal.SIGTERM) is before and stop.signal is None


# ------------------------------------------------------------------ plot

def test_plot_metrics(tmp_path):
  panels = [("loss", ("loss", "eval_loss", "loss/kind/")), ("", ("kl",))]
  assert runner.plot_metrics(str(tmp_path), panels, "p.png") is None  # no metrics yet
  w = runner.MetricsWriter(str(tmp_path), tensorboard=False)
  for step in (1, 2, 3):
    w.write({"step": step, "loss": 3.0 / step, "loss/kind/a": 1.0, "kl": 0.01 * step,
             **({"eval_loss": 2.0} if step == 3 else {})})
  w.close()
  path = runner.plot_metrics(str(tmp_path), panels, "p.png", title="t")
  assert path == str(tmp_path / "p.png") and os.path.getsize(path) > 1000
