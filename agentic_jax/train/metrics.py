"""What a mid-training run reports: progress bar, WORKDIR/metrics.jsonl, TensorBoard events,
summary.json, and a PNG of the loss curves.

Every `log_every` steps one record is written (JSONL line and TensorBoard scalars; MoE
per-expert lists such as `moe/expert_load` also as TensorBoard histograms). Values
are over the steps since the previous record (the "window"): `loss`, `accuracy`,
`grad_norm` and the MoE statistics are means over the window's non-skipped steps;
`loss/kind/<k>` and `loss/source/<s>` are weight-summed over the window (kinds or sources
without weight in the window are left out), and so is a model's MTP cross-entropy
(`mtp_loss/depth_<k>` per depth, `mtp_loss` their mean; only with model.num_mtp_layers > 0);
`tokens_per_s` and `mfu` are window tokens and model FLOPs over the window's wall time
(compilation is timed separately and excluded);
`lr` is the last step's; `skipped` counts skipped steps in the window and `nan_skips` the
run total. Non-finite values are written as null (JSON has no NaN). Held-out evaluation
results (`eval_loss`, `eval_accuracy`, `eval_loss/kind/<k>`, `eval_loss/source/<s>`, ...;
train/eval.py) join the record of the step they were computed at: a step with an eval
result always closes a window.

The progress bar (tqdm, train.progress) moves every step and shows the last record's loss,
tokens/s and MFU, plus the window's skipped steps and the eval loss when there are any; its
elapsed<remaining times are tqdm's. Off a terminal it writes one line per record instead.

Multi-process runs: every process keeps the records (same numbers: metrics are global), but
only the one with `write=True` (process 0) writes files and draws the progress bar.

The files and the bar (metrics.jsonl, tb/, progress, Weights & Biases, summary.json, the PNG)
are the shared runner's (train/runner.py: MetricsWriter, write_summary, plot_metrics), as in
every other job; this module only turns per-step metrics into mid-training records and says
which of their numbers the bar shows.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from agentic_jax.train import runner
from agentic_jax.train.flops import FlopModel, executed_ffn_experts_per_token
# re-exported: the shared runner's file names and helpers
from agentic_jax.train.runner import (METRICS_FILE, SUMMARY_FILE, read_jsonl,  # noqa: F401
                                      truncate_jsonl, write_summary)

PLOT_FILE = "loss.png"
_MEAN_KEYS = ("grad_norm", "accuracy", "objective", "balance_loss", "router_z_loss")
_clean = runner.clean


class MetricsLogger:
  """Collects per-step host metrics and writes a record every `log_every` steps through the
  shared runner.MetricsWriter (`wandb`: its wandb.init keyword arguments, None = no wandb)."""

  def __init__(self, workdir: str, *, kind_names: Sequence[str], source_names: Sequence[str],
               flop_model: FlopModel, seq_len: int, peak_flops: float, num_steps: int,
               log_every: int, start_step: int = 0, progress: bool = True,
               tensorboard: bool = True, write: bool = True,
               wandb: Optional[Mapping[str, Any]] = None):
    self.workdir = workdir
    self.kinds, self.sources = list(kind_names), list(source_names)
    self.flop_model, self.seq_len, self.peak = flop_model, seq_len, peak_flops
    self.num_steps, self.log_every = num_steps, max(1, log_every)
    self.writer = runner.MetricsWriter(workdir, start_step, write=write, tensorboard=tensorboard,
                                       progress=progress_postfix if progress else None,
                                       num_steps=num_steps, desc="train", wandb=wandb)
    self.jsonl_path = self.writer.path
    self._window: list[tuple[int, dict, float]] = []
    self._extra: dict = {}
    self.start_step = start_step
    self.total_tokens = 0
    self.total_seconds = 0.0
    self.total_flops = 0.0

  @property
  def records(self) -> list[dict]:
    return self.writer.records

  def step(self, step: int, metrics: Mapping[str, Any], seconds: float,
           extra: Optional[Mapping[str, Any]] = None) -> Optional[dict]:
    """Adds step `step` (1-based: steps completed); returns the record if one was written.
    `extra` (e.g. eval results) goes into this step's record, which it closes."""
    self._window.append((step, dict(metrics), seconds))
    self.writer.advance(step)  # the bar moves every step, the numbers every record
    if extra:
      self._extra.update(extra)
    if step % self.log_every == 0 or step == self.num_steps or extra:
      return self.flush()
    return None

  def _step_flops(self, m: Mapping[str, Any]) -> float:
    tokens = int(m["tokens"])
    ffn = executed_ffn_experts_per_token(m, tokens)
    return self.flop_model.step_flops(batch=tokens // self.seq_len, seq_len=self.seq_len,
                                      ffn_experts_per_token=ffn)

  def flush(self) -> Optional[dict]:
    if not self._window:
      return None
    win, self._window = self._window, []
    step = win[-1][0]
    good = [m for _, m, _ in win if not int(m["skipped"])]
    secs = sum(s for _, _, s in win)
    tokens = sum(int(m["tokens"]) for _, m, _ in win)
    flops = sum(self._step_flops(m) for _, m, _ in win if not int(m["skipped"]))
    self.total_tokens += tokens
    self.total_seconds += secs
    self.total_flops += flops
    rec: dict[str, Any] = {"step": step}
    rec["loss"] = float(np.mean([float(m["loss"]) for m in good])) if good else float("nan")
    for k in _MEAN_KEYS:
      if good and k in good[0]:
        rec[k] = float(np.mean([float(m[k]) for m in good]))
    last = win[-1][1]
    rec["lr"] = float(last["lr"])
    rec["tokens_per_s"] = tokens / secs if secs > 0 else float("nan")
    rec["mfu"] = flops / secs / self.peak if secs > 0 and self.peak else float("nan")
    rec["step_seconds"] = secs / len(win)
    rec["skipped"] = sum(int(m["skipped"]) for _, m, _ in win)
    rec["nan_skips"] = int(last["nan_skips"])
    for prefix, names in (("kind", self.kinds), ("source", self.sources)):
      if good and f"{prefix}_ce_sum" in good[0]:
        num = np.sum([np.asarray(m[f"{prefix}_ce_sum"]) for m in good], axis=0)
        den = np.sum([np.asarray(m[f"{prefix}_weight"]) for m in good], axis=0)
        for i, name in enumerate(names[:len(num)]):
          if den[i] > 0:
            rec[f"loss/{prefix}/{name}"] = float(num[i] / den[i])
        unassigned = sum(float(m[f"{prefix}_unassigned_weight"]) for m in good)
        if unassigned:
          rec[f"{prefix}_unassigned_weight"] = unassigned
    if good and "mtp_ce_sum" in good[0]:  # the MTP module's per-depth cross-entropy
      num = np.sum([np.asarray(m["mtp_ce_sum"], np.float64) for m in good], axis=0).reshape(-1)
      den = np.sum([np.asarray(m["mtp_weight"], np.float64) for m in good], axis=0).reshape(-1)
      depth = num / np.where(den > 0, den, 1.0)
      rec["mtp_loss"] = float(depth.mean())
      for k, value in enumerate(depth, start=1):
        rec[f"mtp_loss/depth_{k}"] = float(value)
    moe_keys = sorted(k for k in (good[0] if good else {}) if k.startswith("moe/"))
    for k in moe_keys:
      vals = np.asarray([np.asarray(m[k], np.float64) for m in good])
      if k in ("moe/dropped_slots", "moe/expert_rows"):
        rec[k] = float(vals.sum())
      elif vals.ndim == 1:
        rec[k] = float(vals.mean())
      else:
        rec[k] = vals.mean(0).round(5).tolist()
        # per-expert lists are no scalars: TensorBoard gets their spread (load balance)
        self.writer.histogram(k, rec[k], step)
    rec.update(self._extra)
    self._extra = {}
    return self.writer.write(rec)

  def close(self) -> None:
    self.flush()
    self.writer.close()


def progress_postfix(rec: Mapping[str, Any]) -> dict:
  """The progress bar's numbers for a mid-training record: loss, tokens/s, MFU (as the line
  drawn by hand before showed them), then the window's skipped steps and the eval loss when
  there are any. Position, ETA and rate are the bar's own."""
  def f(key: str, spec: str) -> str:
    return "nan" if rec.get(key) is None else format(rec[key], spec)
  out = {"loss": f("loss", ".4f"), "tok/s": f("tokens_per_s", ",.0f")}
  if rec.get("mfu") is not None:
    out["MFU"] = f"{100 * rec['mfu']:.1f}%"
  if rec.get("skipped"):
    out["skipped"] = rec["skipped"]
  if rec.get("eval_loss") is not None:
    out["eval"] = f("eval_loss", ".4f")
  return out


def plot_losses(workdir: str, title: str = "") -> Optional[str]:
  """loss.png from metrics.jsonl: overall, eval and per-source loss (left), per mask kind
  (right). Returns the path, or None when there is nothing to plot."""
  return runner.plot_metrics(
      workdir, [("overall and per source", ("loss", "eval_loss", "loss/source/")),
                ("per mask kind", ("loss/kind/",))],
      PLOT_FILE, title=title, ylabel="cross-entropy (nats/token)")
