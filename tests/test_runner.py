"""agentic_jax/train/runner.py, the pieces both run loops share, against hand-computed cases:
checkpoint cadence, NaN policy, stop decisions and statuses, the Run bookkeeping and its
messages, resume, summary keys, summary.json, the metrics writer (jsonl, TensorBoard, progress
bar, text and histograms, Weights & Biases through a fake module, truncation on resume), the stop
flag, the plot. No model, no jit: milliseconds each."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import time
import types

import numpy as np
import pytest

from agentic_jax.train import runner
from agentic_jax.train import runtime
from tests.tensorboard_fixtures import read_events, scalars


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

class _Terminal(io.StringIO):
  """A stream that says it is a terminal: the progress bar draws live (tqdm) on it."""

  def isatty(self):
    return True


def _postfix_every_2(rec):
  return {"loss": f"{rec['loss']:.2f}", "n": rec["step"]} if rec["step"] % 2 == 0 else None


def test_metrics_writer_files(tmp_path):
  w = runner.MetricsWriter(str(tmp_path))
  for step in (1, 2, 3):
    w.write({"step": step, "loss": np.float32(0.5) * step, "bad": float("nan"), "name": "x",
             "flag": True, "load": [0.25, 0.75]})
  w.write({"step": 4, "name": "only text"})  # no scalar: no TensorBoard event
  w.close()
  w.close()  # a second close does nothing
  recs = runner.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[2]["loss"] == 1.5
  assert recs[0]["bad"] is None and w.records == recs
  # TensorBoard through tensorboardX: every int/float value but "step" (a bool is an int),
  # one series per key; non-finite (None after cleaning), strings and lists are left out
  (tb_file,) = os.listdir(tmp_path / "tb")
  assert tb_file.startswith("events.out.tfevents.") and tb_file.endswith(".s0000000000")
  events = read_events(str(tmp_path / "tb"))
  assert events[0].file_version == "brain.Event:2"
  assert scalars(events) == {"loss": [(1, 0.5), (2, 1.0), (3, 1.5)],
                             "flag": [(1, 1.0), (2, 1.0), (3, 1.0)]}


def test_metrics_writer_progress_lines_off_a_terminal(tmp_path):
  out = io.StringIO()  # a log file: one line per record with a postfix, no "\r" redraws
  w = runner.MetricsWriter(str(tmp_path), progress=_postfix_every_2, num_steps=4, desc="job",
                           stream=out, tensorboard=False)
  for step in (1, 2, 3, 4):
    w.advance(step)  # between records: nothing off a terminal
    w.write({"step": step, "loss": 0.5 * step})
  w.close()
  lines = out.getvalue().split("\n")
  assert len(lines) == 3 and lines[-1] == "" and "\r" not in out.getvalue()
  # tqdm's meter: label, percentage, ascii bar, step/total, times and rate, then the postfix
  assert re.fullmatch(r"job:  50%\|#+ *\| 2/4 \[.*step/s, loss=1\.00, n=2\]", lines[0]), lines[0]
  assert re.fullmatch(r"job: 100%\|#+\| 4/4 \[.*, loss=2\.00, n=4\]", lines[1]), lines[1]


def test_metrics_writer_progress_bar_on_a_terminal(tmp_path):
  out = _Terminal()
  w = runner.MetricsWriter(str(tmp_path), start_step=1, progress=_postfix_every_2, num_steps=5,
                           desc="job", stream=out, tensorboard=False)
  assert w.bar.live and w.bar.bar.n == 1 and w.bar.bar.total == 5  # resumed: starts at 1
  for step in (2, 3, 4):
    w.write({"step": step, "loss": 0.5 * step})
  assert w.bar.bar.n == 4 and w.bar.bar.postfix == "loss=2.00, n=4"
  w.close()  # stopped at 4 of 5: the bar is closed where it is, drawn a last time
  assert w.bar.bar is None
  text = out.getvalue()
  assert "\r" in text and text.endswith("\n")  # redrawn in place, then left on its own line
  assert "4/5" in text.split("\r")[-1] and "loss=2.00, n=4" in text.split("\r")[-1]


def test_progress_postfix_text():
  assert runner.postfix_text({"a": "1.00", "b": 3, "c": 0.123456}) == "a=1.00, b=3, c=0.1235"
  assert runner.postfix_text("free text") == "free text" and runner.postfix_text(None) == ""


def test_metrics_writer_text_and_histograms(tmp_path):
  w = runner.MetricsWriter(str(tmp_path))
  w.text("rollouts", "```\nQ: 2+2\nA: 4\n```", 3)
  w.histogram("moe/load", np.array([[0.1, 0.2], [0.3, np.nan]]), 3)  # the NaN is left out
  w.histogram("empty", [np.inf], 3)  # nothing finite: no event
  w.close()
  by_tag = {v.tag: (e.step, v) for e in read_events(str(tmp_path / "tb")) for v in e.summary.value}
  step, text = by_tag["rollouts/text_summary"]
  assert step == 3 and text.metadata.plugin_data.plugin_name == "text"
  assert text.tensor.string_val == [b"```\nQ: 2+2\nA: 4\n```"]
  step, hist = by_tag["moe/load"]
  assert step == 3 and hist.histo.num == 3 and hist.histo.min == pytest.approx(0.1)
  assert hist.histo.max == pytest.approx(0.3) and hist.histo.sum == pytest.approx(0.6)
  assert "empty" not in by_tag
  # nothing is written where TensorBoard is off or the process writes nothing
  for kwargs in ({"tensorboard": False}, {"write": False}):
    w = runner.MetricsWriter(str(tmp_path / "off"), **kwargs)
    w.text("t", "x", 1)
    w.histogram("h", [1.0], 1)
    w.close()
  assert not os.path.exists(tmp_path / "off" / "tb")


class _FakeWandb(types.ModuleType):
  """Just enough of the wandb module: init returns a run that records log and finish calls."""

  def __init__(self):
    super().__init__("wandb")
    self.inits, self.logged, self.finished = [], [], 0

  def init(self, **kwargs):
    self.inits.append(kwargs)
    return self

  def log(self, data, step=None):
    self.logged.append((step, dict(data)))

  def finish(self):
    self.finished += 1


def test_metrics_writer_logs_scalars_to_wandb(tmp_path, monkeypatch):
  fake = _FakeWandb()
  monkeypatch.setitem(sys.modules, "wandb", fake)
  w = runner.MetricsWriter(str(tmp_path), tensorboard=False,
                           wandb={"project": "p", "name": "run-1"})
  w.write({"step": 1, "loss": np.float32(2.0), "bad": float("nan"), "name": "x"})
  w.write({"step": 2, "name": "only text"})  # no scalar: nothing logged
  w.close()
  w.close()
  assert fake.inits == [{"project": "p", "name": "run-1"}]
  assert fake.logged == [(1, {"loss": 2.0})] and fake.finished == 1
  # processes other than 0 and writers without wandb settings never call it
  runner.MetricsWriter(str(tmp_path / "b"), write=False, wandb={"project": "p"}).close()
  runner.MetricsWriter(str(tmp_path / "c"), tensorboard=False).close()
  assert len(fake.inits) == 1


def test_metrics_writer_without_the_wandb_package(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
  with pytest.warns(UserWarning, match="wandb package is not installed"):
    w = runner.MetricsWriter(str(tmp_path), tensorboard=False, wandb={"project": "p"})
  w.write({"step": 1, "loss": 1.0})
  w.close()
  assert runner.read_jsonl(str(tmp_path / "metrics.jsonl")) == [{"step": 1, "loss": 1.0}]


def test_wandb_settings():
  import ml_collections  # pylint: disable=import-outside-toplevel
  assert runner.wandb_settings(ml_collections.ConfigDict({"seed": 0})) is None
  config = ml_collections.ConfigDict({"wandb": {"project": "p", "tags": ["a"]}})
  assert runner.wandb_settings(config) == {"project": "p", "tags": ["a"]}
  assert runner.wandb_settings({"wandb": None}) is None


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
  # TensorBoard: the resumed run's own event file (named after its start step, after the first
  # one) opens with a SessionLog START at step 4, which makes TensorBoard purge steps >= 4
  files = sorted(os.listdir(tmp_path / "tb"))
  assert [f[-12:] for f in files] == [".s0000000000", ".s0000000003"]
  events = read_events(str(tmp_path / "tb"))
  assert [(e.step, e.session_log.status) for e in events if e.HasField("session_log")] == [
      (1, 1), (4, 1)]  # 1 = SessionLog.START
  assert [s for s, _ in scalars(events)["x"]] == [1, 2, 3, 4, 5, 4]
  assert runner.truncate_jsonl(str(tmp_path / "metrics.jsonl"), 2) == 2
  assert runner.truncate_jsonl(str(tmp_path / "absent.jsonl"), 2) == 0


def test_metrics_writer_that_does_not_write(tmp_path):
  for stream in (io.StringIO(), _Terminal()):  # no bar and no line, on a terminal or not
    w = runner.MetricsWriter(str(tmp_path / "w"), write=False, progress=lambda r: "x",
                             num_steps=3, stream=stream)
    assert w.write({"step": 1, "a": np.float64(2.0)}) == {"step": 1, "a": 2.0}
    w.advance(2)
    w.close()
    assert w.records == [{"step": 1, "a": 2.0}]
    assert not os.path.exists(tmp_path / "w") and stream.getvalue() == ""


def test_metrics_writer_without_progress_draws_nothing(tmp_path):
  out = _Terminal()  # train.progress False: no bar even on a terminal
  w = runner.MetricsWriter(str(tmp_path), num_steps=3, stream=out, tensorboard=False)
  w.write({"step": 1, "a": 1.0})
  w.close()
  assert out.getvalue() == "" and not w.bar.live


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


def test_plot_without_matplotlib_writes_no_png_and_says_so(tmp_path, monkeypatch, capsys):
  import sys  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import runner as runner_lib  # pylint: disable=import-outside-toplevel
  with open(tmp_path / runner_lib.METRICS_FILE, "w") as f:
    f.write('{"step": 1, "loss": 2.0}\n')
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
  monkeypatch.setattr(runner_lib, "_NO_MATPLOTLIB_SAID", [])
  assert runner_lib.plot_metrics(str(tmp_path), [("loss", ("loss",))], "x.png") is None
  assert not (tmp_path / "x.png").exists()
  assert "matplotlib is not installed" in capsys.readouterr().out


def test_plot_leaves_the_matplotlib_backend_alone(tmp_path):
  """plot_metrics used to call matplotlib.use("Agg"), which switched a notebook's inline plots
  off after a run; it now draws on a Figure of its own and leaves pyplot untouched."""
  matplotlib = pytest.importorskip("matplotlib")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  before = matplotlib.get_backend()
  matplotlib.use("svg")  # any backend other than Agg stands for the notebook's inline one
  try:
    w = runner.MetricsWriter(str(tmp_path), tensorboard=False)
    w.write({"step": 1, "loss": 1.0})
    w.close()
    figures = plt.get_fignums()
    assert runner.plot_metrics(str(tmp_path), [("", ("loss",))], "p.png") is not None
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
  finally:
    matplotlib.use(before)
