"""The run loop end to end (small model, synthetic data): bitwise resume after a stop,
outputs (metrics.jsonl, summary.json, loss.png, TensorBoard), NaN skip/halt, and the
launcher in a subprocess (SIGTERM saves and exits 0, rerun resumes; config typos rejected)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest

from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import input as input_lib
from agentic_jax.train import loop
from agentic_jax.train import metrics as metrics_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from tests.tensorboard_fixtures import read_events, scalars
from tests.train_fixtures import ROOT, small_config

LAUNCH = os.path.join(ROOT, "launch", "train.py")


def _final_state(config, workdir):
  model_cfg = config_lib.model_config(config.model)
  abstract = state_lib.abstract_state(model_cfg, optim_lib.make_optimizer(config.optim), config.seed)
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).restore_latest(abstract)[0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  config = small_config(**{"optim.grad_accum": 2})  # the full step with accumulation
  workdir = str(tmp_path_factory.mktemp("full"))
  return config, workdir, loop.run(config, workdir, handle_signals=False)


def test_resume_after_stop_gives_bitwise_identical_losses(uninterrupted, tmp_path):
  config, full_dir, full = uninterrupted
  workdir = str(tmp_path)
  first = loop.run(config, workdir, stop_after_steps=3, handle_signals=False)
  assert first["status"] == "stopped" and first["final_step"] == 3
  assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [2, 3]
  second = loop.run(config, workdir, handle_signals=False)
  assert second["start_step"] == 3 and second["final_step"] == 6 and second["status"] == "completed"
  losses = dict(full["losses"])
  resumed = dict(first["losses"] + second["losses"])
  assert sorted(resumed) == list(range(1, 7))
  for step in range(1, 7):  # bitwise: same float32 bits
    assert losses[step].tobytes() == resumed[step].tobytes(), (step, losses[step], resumed[step])
  jax.tree.map(np.testing.assert_array_equal, _final_state(config, full_dir),
               _final_state(config, workdir))
  # metrics.jsonl: the stop flushed the partial window (step 3); the resumed run continues
  # with its own windows, each step logged once.
  recs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in recs] == [2, 3, 4, 6]
  # TensorBoard: one event file per invocation; the resumed one starts by purging steps >= 4
  events = read_events(os.path.join(workdir, "tb"))
  assert [e.step for e in events if e.HasField("session_log")] == [1, 4]
  assert [step for step, _ in scalars(events)["loss"]] == [2, 3, 4, 6]


def test_outputs_of_a_run(uninterrupted):
  config, workdir, result = uninterrupted
  recs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in recs] == [2, 4, 6]
  for r in recs:
    assert np.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1
    assert r["loss/kind/context"] == pytest.approx(r["loss"], rel=1e-5)  # one kind, one source
    assert r["loss/source/synthetic"] == pytest.approx(r["loss"], rel=1e-5)
    assert len(r["moe/expert_load"]) == 6 and 0 <= r["moe/zero_expert_share"] <= 1
    assert r["moe/dropped_slots"] == 0 and r["nan_skips"] == 0
  # Window means: the record at step 2 averages the per-step losses of steps 1 and 2.
  per_step = dict(result["losses"])
  assert recs[0]["loss"] == pytest.approx((per_step[1] + per_step[2]) / 2, rel=1e-6)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  assert summary["status"] == "completed" and summary["final_step"] == 6
  assert summary["final_loss"] == pytest.approx(recs[-1]["loss"])
  assert summary["checkpoints"]["steps"][-1] == 6
  with open(os.path.join(workdir, "loss.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # TensorBoard (tensorboardX): one event file, every scalar of every record at its step
  tb_dir = os.path.join(workdir, "tb")
  assert len(os.listdir(tb_dir)) == 1
  events = read_events(tb_dir)
  assert events[0].file_version == "brain.Event:2"
  tb = scalars(events)
  for key in ("loss", "tokens_per_s", "mfu", "lr", "loss/kind/context"):
    assert [step for step, _ in tb[key]] == [2, 4, 6], key
  assert [v for _, v in tb["loss"]] == pytest.approx([r["loss"] for r in recs], rel=1e-6)
  # the per-expert load list is no scalar: a histogram per record, over its 6 experts
  hists = [(e.step, v.histo) for e in events for v in e.summary.value
           if v.tag == "moe/expert_load"]
  assert [step for step, _ in hists] == [2, 4, 6] and all(h.num == 6 for _, h in hists)


class _NanAt(grain.DatasetIterator):
  """Wraps an iterator; the batch with 1-based index `at` gets a NaN weight."""

  def __init__(self, inner, at):
    super().__init__()
    self.inner, self.at, self.n = inner, at, 0

  def __next__(self):
    batch = dict(next(self.inner))
    self.n += 1
    if self.n == self.at:
      batch["weights"] = batch["weights"].copy()
      batch["weights"][0, 0] = np.nan
    return batch

  def get_state(self):
    return {"inner": self.inner.get_state(), "n": self.n}

  def set_state(self, state):
    self.inner.set_state(state["inner"])
    self.n = state["n"]


@pytest.mark.parametrize("policy", ["skip", "halt"])
def test_nan_policy(policy, tmp_path, monkeypatch):
  build = input_lib.build_input

  def with_nan(*args, **kwargs):
    inp = build(*args, **kwargs)
    inp.iterator = _NanAt(inp.iterator, at=3)
    return inp

  monkeypatch.setattr(input_lib, "build_input", with_nan)
  config = small_config(**{"train.nan_policy": policy, "optim.grad_accum": 2})
  result = loop.run(config, str(tmp_path), handle_signals=False)
  steps = ckpt_lib.Checkpointer(os.path.join(str(tmp_path), "checkpoints")).all_steps()
  if policy == "skip":
    assert result["status"] == "completed" and result["final_step"] == 6
    assert result["nan_skips"] == 1
    recs = [json.loads(line) for line in open(os.path.join(str(tmp_path), "metrics.jsonl"))]
    assert [r["skipped"] for r in recs] == [0, 1, 0]
    assert np.isfinite(recs[1]["loss"])  # the window mean leaves the skipped step out
  else:
    assert result["status"] == "halted" and result["final_step"] == 3
    assert steps == [2]  # the last good checkpoint; nothing saved at or after the NaN


def _launch(workdir, *extra, config_file, cache_dir=None):
  env = dict(os.environ)
  if cache_dir:  # the rerun loads the first run's compiled step
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return subprocess.Popen([sys.executable, LAUNCH, f"--config={config_file}", f"--workdir={workdir}",
                           *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)


def test_sigterm_saves_checkpoint_and_rerun_resumes(tmp_path, compile_cache):
  config_file = tmp_path / "small.py"
  config_file.write_text(
      "import sys\n"
      f"sys.path.insert(0, {ROOT!r})\n"
      "from tests.train_fixtures import small_config\n"
      "def get_config():\n"
      "  c = small_config(**{'train.num_steps': 150, 'train.log_every': 1, 'checkpoint.every': 1000})\n"
      "  c.unlock()\n"
      "  return c\n")
  workdir = tmp_path / "run"
  proc = _launch(workdir, config_file=config_file, cache_dir=compile_cache)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.2)
  assert proc.poll() is None, proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM: checkpoint saved at step" in out
  saved = int(out.split("SIGTERM: checkpoint saved at step ")[1].split(";")[0])
  assert 3 <= saved < 150
  assert ckpt_lib.Checkpointer(str(workdir / "checkpoints")).all_steps() == [saved]

  proc = _launch(workdir, config_file=config_file, cache_dir=compile_cache)  # the same command
  out = proc.communicate(timeout=180)[0]
  assert proc.returncode == 0, out[-3000:]
  assert f"resumed from step {saved}" in out
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["status"] == "completed" and summary["start_step"] == saved
  assert summary["final_step"] == 150


def test_config_typo_is_rejected_with_a_clear_message(tmp_path):
  proc = _launch(tmp_path, "--config.optim.lrr=1",
                 config_file=os.path.join(ROOT, "configs", "midtrain.py") + ":tiny")
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2, out[-2000:]
  assert "unknown config key" in out and "--config.optim.lrr" in out
  assert 'Did you mean "lr"' in out
  assert "Traceback" not in out
  assert not os.path.exists(tmp_path / "checkpoints")


def test_launcher_rejects_unknown_job_and_bad_process_flags(tmp_path):
  """config.job picks the job (midtrain / rl / recipe); anything else, and an inconsistent
  --process_id, exit 2 with a message before any training or distributed setup."""
  config_file = tmp_path / "job.py"
  config_file.write_text(
      "import sys\n"
      f"sys.path.insert(0, {ROOT!r})\n"
      "from tests.train_fixtures import small_config\n"
      "def get_config():\n"
      "  c = small_config()\n"
      "  c.unlock()\n"
      "  c.job = 'pretrain'\n"
      "  return c\n")
  proc = _launch(tmp_path / "run", config_file=config_file)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2, out[-2000:]
  assert "config.job='pretrain' is not a known job" in out and "'recipe'" in out
  assert "Traceback" not in out and not os.path.exists(tmp_path / "run")

  proc = _launch(tmp_path / "run", "--num_processes=2", "--process_id=2",
                 "--coordinator_address=localhost:1",
                 config_file=os.path.join(ROOT, "configs", "midtrain.py") + ":tiny")
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2, out[-2000:]
  assert "process_id must be in [0, 2), got 2" in out and "Traceback" not in out


def test_progress_postfix():
  rec = {"step": 4, "loss": 2.345678, "tokens_per_s": 12345.6, "mfu": 0.0123, "skipped": 0}
  assert metrics_lib.progress_postfix(rec) == {"loss": "2.3457", "tok/s": "12,346", "MFU": "1.2%"}
  # skipped steps and an eval loss join; a non-finite loss (null) and no MFU (no peak) show so
  rec.update(loss=None, mfu=None, skipped=2, eval_loss=2.5)
  assert metrics_lib.progress_postfix(rec) == {"loss": "nan", "tok/s": "12,346", "skipped": 2,
                                               "eval": "2.5000"}
