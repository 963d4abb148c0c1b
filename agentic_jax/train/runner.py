"""The shared runner under every run loop: mid-training (train/loop.py), RL (rl/loop.py) and any
later job. A new job = a step function + the runner: the job builds its state and its jitted step,
the runner does everything around them.

    with runner.stop_flag(handle_signals) as stop:          # SIGTERM/SIGINT -> stop.signal
      ckpt = Checkpointer(fs.join(workdir, "checkpoints"), ...)
      resumed = runner.resume(ckpt, target, config_json, say=say)   # Resumed | None
      run = runner.Run(start, num_steps, config.checkpoint.every, config.train.nan_policy,
                       stop_after_steps, tag="myjob", say=say)
      writer = runner.MetricsWriter(workdir, start, progress=my_postfix, num_steps=num_steps,
                                    desc="myjob", wandb=runner.wandb_settings(config))
      run.stop_in_setup(stop.signal is not None, stop.signal)
      while run.running():
        state, m = step(state, batch); run.step += 1
        writer.write({"step": run.step, **m})
        if run.on_update(skipped=bool(m["skipped"])):    # nan_policy "halt": status halted
          break
        stopping = run.stop_status(stop.signal is not None)
        if run.checkpoint_due(stopping):
          ckpt.save(state, data_iterator, config_json)
        if stopping:
          run.stopped(stopping, stop.signal or "stop_after_steps"); break
      run.finish(lr=config.optim.lr)                         # "all_skipped" if nothing updated
      summary = runner.summary(run, seconds=..., checkpointer=ckpt, writer=writer, **job_keys)
      runner.write_summary(workdir, summary); runner.plot_metrics(workdir, panels, "job.png")

Pieces (small, pure where they can be; no trainer class to subclass):
  StopFlag / stop_flag   SIGTERM/SIGINT set a flag (handlers from the main thread only, restored
                         on exit); the loop finishes the step, saves and returns "preempted"
  config_diff / resume   restore the newest readable checkpoint, print where from and how the
                         config differs from the checkpoint's
  checkpoint_due         save every `every` steps, at the last step and when stopping
  nan_action             a non-finite step: None (finite), "skip" (go on) or "halt" (stop at once
                         WITHOUT saving: the newest checkpoint is the last good state)
  stop_status            "preempted" (a signal), "stopped" (stop_after_steps) or None
  final_status           "all_skipped" when every step of this invocation applied no update
  Run                    the bookkeeping of one invocation (step, status, messages) over those
  summary / write_summary  summary.json's common keys (status, start_step, final_step,
                         num_steps, nan_skips, seconds, checkpoints, outputs) + the job's own
  MetricsWriter          the one metrics writer: WORKDIR/metrics.jsonl (records past the
                         resumed step dropped), tb/ TensorBoard scalars, text and histograms
                         (tensorboardX), the run's tqdm progress bar (progress.py:
                         ProgressBar), optional Weights & Biases scalars
  plot_metrics           one PNG of metric curves from metrics.jsonl, panels of keys / prefixes

Statuses (launch/train.py maps them to exit codes): completed, stopped, preempted (exit 0);
halted, all_skipped (exit 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import warnings
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TextIO, Union

import numpy as np

# postfix_text: also runner's (older import path)
from agentic_jax import fs
from agentic_jax.train.progress import ProgressBar, postfix_text  # noqa: F401

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"
NAN_POLICIES = ("skip", "halt")


# ------------------------------------------------------------------ signals

class StopFlag:
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
    self._old = {}


@contextlib.contextmanager
def stop_flag(install: bool) -> Iterator[StopFlag]:
  """A StopFlag for the body of a run; the previous handlers are back afterwards."""
  stop = StopFlag(install)
  try:
    yield stop
  finally:
    stop.restore()


# ------------------------------------------------------------------ resume

def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  """"key.path: old -> new" for every leaf that differs between two nested dicts."""
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


@dataclasses.dataclass
class Resumed:
  state: Any
  meta: dict
  step: int


def resume(checkpointer: Any, target: Any, config_json: dict, *, data_iterator: Any = None,
           say: Callable[[str], None] = print) -> Optional[Resumed]:
  """The newest readable checkpoint restored into `target` (an abstract state, with shardings
  where the state is sharded) and `data_iterator` (restored in place), or None when there is
  none. Says where it resumed from and up to 10 config keys that differ from the checkpoint's.
  Mismatched or damaged checkpoints raise / fall back as train/checkpoint.py documents."""
  restored = checkpointer.restore_latest(target, data_iterator, config_json=config_json)
  if restored is None:
    return None
  import jax  # pylint: disable=import-outside-toplevel
  state, meta = restored
  step = int(jax.device_get(state.step))
  say(f"[ckpt] resumed from step {step} ({checkpointer.directory}/{step})")
  diff = config_diff(meta.get("config", {}), config_json)
  if diff:
    say("[ckpt] config differs from the checkpoint's: " + "; ".join(diff[:10]))
  return Resumed(state, meta, step)


# ------------------------------------------------------------------ decisions (pure)

def checkpoint_due(step: int, *, every: int, num_steps: int, stopping: bool = False) -> bool:
  """Save after step `step` (1-based: steps completed)?"""
  return step % every == 0 or step == num_steps or bool(stopping)


def nan_action(skipped: bool, policy: str) -> Optional[str]:
  """What a step whose update was skipped as non-finite means: None (it was not), "skip" or
  "halt" (train.nan_policy)."""
  if policy not in NAN_POLICIES:
    raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {policy!r}")
  return policy if skipped else None


def stop_status(ran: int, signalled: bool, stop_after_steps: Optional[int]) -> Optional[str]:
  """After `ran` steps of this invocation: "preempted" (a stop signal; wins), "stopped"
  (stop_after_steps reached) or None (go on)."""
  if signalled:
    return "preempted"
  if stop_after_steps is not None and ran >= stop_after_steps:
    return "stopped"
  return None


def final_status(status: str, ran: int, skipped_steps: int) -> str:
  """"all_skipped" when this invocation ran steps and every one applied no update (a run that
  did not train is not "completed"); else `status`. A halted run stays "halted"."""
  if status != "halted" and ran and skipped_steps == ran:
    return "all_skipped"
  return status


# ------------------------------------------------------------------ one invocation

@dataclasses.dataclass
class Run:
  """The bookkeeping of one invocation of a run loop: where it started, the step it is at
  (the loop increments `step`), its status and the messages every loop prints the same way
  (prefixed "[tag]")."""
  start: int
  num_steps: int
  checkpoint_every: int
  nan_policy: str = "skip"
  stop_after_steps: Optional[int] = None
  tag: str = "train"
  say: Callable[[str], None] = print
  step: int = -1
  status: str = "completed"
  skipped_steps: int = 0
  warned: set = dataclasses.field(default_factory=set)

  def __post_init__(self):
    if self.step < 0:
      self.step = self.start
    nan_action(False, self.nan_policy)  # checks the policy

  @property
  def ran(self) -> int:
    return self.step - self.start

  def running(self) -> bool:
    return self.step < self.num_steps and self.status == "completed"

  def warn_once(self, key: str, message: str) -> None:
    if key not in self.warned:
      self.warned.add(key)
      self.say(message)

  def stop_in_setup(self, signalled: bool, why: Optional[str] = None) -> bool:
    """A stop signal (`why`: its name) before the first step: status "preempted", nothing new
    to save; True when so."""
    if not signalled:
      return False
    self.status = "preempted"
    self.say(f"[{self.tag}] {why or 'signal'} during setup: exiting before step "
             f"{self.start + 1} (nothing new to save)")
    return True

  def on_update(self, skipped: bool, no_update: Optional[bool] = None) -> bool:
    """After step `step`: `skipped` = some update of it was non-finite (and skipped),
    `no_update` = it applied none (default: `skipped`). Applies train.nan_policy; True when
    the loop must stop at once ("halt": status "halted", nothing saved)."""
    self.skipped_steps += int(skipped if no_update is None else no_update)
    action = nan_action(skipped, self.nan_policy)
    if action == "halt":
      self.status = "halted"
      self.say(f"[{self.tag}] non-finite loss/gradient at step {self.step}: halting "
               f"(nan_policy=halt); the newest checkpoint is the last good state")
      return True
    if action == "skip":
      self.warn_once("nan", f"[{self.tag}] non-finite loss/gradient at step {self.step}: update "
                            f"skipped (nan_policy=skip; further skips are counted in metrics)")
    return False

  def stop_status(self, signalled: bool) -> Optional[str]:
    return stop_status(self.ran, signalled, self.stop_after_steps)

  def checkpoint_due(self, stopping: Any = False) -> bool:
    return checkpoint_due(self.step, every=self.checkpoint_every, num_steps=self.num_steps,
                          stopping=bool(stopping))

  def stopped(self, status: str, why: str) -> None:
    """After the stop checkpoint was written: `status` from stop_status, `why` the signal's
    name or "stop_after_steps"."""
    self.status = status
    self.say(f"[{self.tag}] {why}: checkpoint saved at step {self.step}; rerun the same "
             f"command to resume")

  def finish(self, lr: Any = None) -> str:
    """The final status (see final_status), said when it is "all_skipped"."""
    status = final_status(self.status, self.ran, self.skipped_steps)
    if status == "all_skipped" and self.status != status:
      self.say(f"[{self.tag}] all {self.ran} steps of this run were skipped as non-finite "
               f"(nan_policy=skip): no update was applied; check the data and config.optim "
               f"(lr {lr})")
    self.status = status
    return status


# ------------------------------------------------------------------ summary

def clean(x: Any) -> Any:
  """JSON-safe: numpy -> python, non-finite floats -> None."""
  if isinstance(x, dict):
    return {k: clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [clean(v) for v in x]
  if isinstance(x, np.ndarray):
    return clean(x.tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


def summary(run: Run, *, nan_skips: int, seconds: Mapping[str, float],
            checkpointer: Any = None, writer: Optional["MetricsWriter"] = None,
            **job: Any) -> dict:
  """summary.json's keys common to every job, then the job's own (`job`). `seconds` are
  rounded to 0.01; `outputs` holds metrics.jsonl and tb/ of `writer` (the job adds its own)."""
  out = {"status": run.status, "start_step": run.start, "final_step": run.step,
         "num_steps": run.num_steps, **job, "nan_skips": int(nan_skips),
         "seconds": {k: round(float(v), 2) for k, v in seconds.items()}}
  if checkpointer is not None:
    out["checkpoints"] = {"directory": checkpointer.directory, "steps": checkpointer.all_steps()}
  if writer is not None:
    out["outputs"] = {"metrics": writer.path, "tensorboard": writer.tb_dir}
  return out


def write_summary(workdir: str, summary_: Mapping[str, Any]) -> str:
  """WORKDIR/summary.json (JSON-safe, written atomically); returns its path."""
  path = fs.join(workdir, SUMMARY_FILE)
  fs.write_text(path, json.dumps(clean(dict(summary_)), indent=2))
  return path


# ------------------------------------------------------------------ metrics

def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops records with step > last_step (written after the checkpoint a run resumes from);
  returns how many were dropped."""
  if not fs.exists(path):
    return 0
  keep, dropped = [], 0
  for line in fs.read_text(path).splitlines(keepends=True):
    if line.strip() and json.loads(line).get("step", 0) > last_step:
      dropped += 1
    elif line.strip():
      keep.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    fs.write_text(path, "".join(keep))
  return dropped


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]


class MetricsWriter:
  """The one metrics writer of every run loop (mid-training through train/metrics.py, RL,
  RA3's phases, later jobs). One record per `write`:
    * a line of WORKDIR/metrics.jsonl (JSON-safe, NaN -> null); records past `start_step`,
      left by a run that died after its last checkpoint, are dropped first;
    * TensorBoard scalars in WORKDIR/tb/ through tensorboardX.SummaryWriter: every int/float
      value but "step", one scalar series per key, in a new event file per writer. It opens
      with purge_step = start_step + 1, so TensorBoard hides what an earlier run in WORKDIR
      logged past the step this one starts from (a run that died after its last checkpoint),
      as truncate_jsonl does for metrics.jsonl;
    * the progress bar (ProgressBar; total `num_steps`, label `desc`): `progress(record)`
      returns the bar's postfix (a mapping or a string) or None (position only, no line);
    * Weights & Biases, when `wandb` (keyword arguments of wandb.init, e.g. {"project": ...})
      is given and the wandb package is importable: the same scalars, logged at the record's
      step. On a resume pass wandb.init's own `id`/`resume` to continue the same wandb run.
  `text(tag, text, step)` and `histogram(tag, values, step)` add TensorBoard text summaries
  (e.g. sampled rollouts) and histograms (e.g. router load) beside the scalars.
  `write=False` (processes other than 0) keeps the records and writes, draws and logs nothing.

  tensorboardX is imported when the first event file is opened, not with this module: when
  torch is installed tensorboardX imports it (seconds), which jobs without TensorBoard, and
  processes that write nothing, should not pay for."""

  def __init__(self, workdir: str, start_step: int = 0, *, write: bool = True,
               tensorboard: bool = True,
               progress: Optional[Callable[[dict], Union[str, Mapping[str, Any], None]]] = None,
               num_steps: Optional[int] = None, desc: str = "",
               stream: Optional[TextIO] = None, wandb: Optional[Mapping[str, Any]] = None):
    self.path = fs.join(workdir, METRICS_FILE)
    self.tb_dir = fs.join(workdir, TB_DIR)
    self.records: list[dict] = []
    self.progress = progress if write else None
    self._jsonl = self._tb = self._wandb = None
    if write:
      self._open(workdir, start_step, tensorboard, wandb)
    # last: the bar's clock (elapsed, rate, ETA) starts after the files are open, not before
    # tensorboardX's import
    self.bar = ProgressBar(num_steps, start_step, desc=desc, stream=stream,
                           enabled=self.progress is not None)

  def _open(self, workdir: str, start_step: int, tensorboard: bool,
            wandb: Optional[Mapping[str, Any]]) -> None:
    fs.makedirs(workdir)
    truncate_jsonl(self.path, start_step)
    # on object storage the file is uploaded whole, at most every 10 s (and on close): a run
    # killed in between loses at most those records, all past its last checkpoint anyway
    self._jsonl = fs.AppendFile(self.path, flush_secs=10.0)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      # The file is named events.out.tfevents.<unix second>.<host> and opened "wb": a second
      # writer in the same second (a quick resume, tests) would overwrite the first. The
      # start step in the suffix keeps them apart and in order (TensorBoard reads a
      # directory's files in name order, and purges by the order it reads). flush_secs:
      # tensorboardX writes from a background thread; every 5 s keeps a live TensorBoard
      # current (close() flushes the rest).
      self._tb = SummaryWriter(fs.tensorboard_logdir(self.tb_dir), purge_step=start_step + 1, flush_secs=5,
                               filename_suffix=f".s{start_step:010d}")
    if wandb is not None:
      self._wandb = _wandb_run(wandb)

  def write(self, rec: Mapping[str, Any]) -> dict:
    """Writes one record (it must hold "step") everywhere; returns it JSON-cleaned."""
    rec = clean(dict(rec))
    step = rec["step"]
    if self._jsonl is not None:
      self._jsonl.write(json.dumps(rec) + "\n")
      self._jsonl.flush()
    # a bool is an int: flags plot as 0/1; None (was non-finite), strings and lists are left out
    scalars = {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)
    if self._wandb is not None and scalars:
      self._wandb.log(scalars, step=step)
    self.records.append(rec)
    if self.progress is not None:
      self.bar.update(step, self.progress(rec))
    return rec

  def advance(self, step: int) -> None:
    """Moves the progress bar to `step` between records (a job that logs every k steps)."""
    self.bar.advance(step)

  def text(self, tag: str, text: str, step: int) -> None:
    """A TensorBoard text summary (the Text tab; tensorboardX files it as
    "<tag>/text_summary"). Markdown is rendered there: wrap code or rollouts in ``` fences."""
    if self._tb is not None:
      self._tb.add_text(tag, str(text), step)

  def histogram(self, tag: str, values: Any, step: int) -> None:
    """A TensorBoard histogram of `values` (any array-like; non-finite values are left out, an
    empty or all-non-finite one writes nothing: TensorBoard has no empty histogram)."""
    if self._tb is None:
      return
    vals = np.asarray(values, np.float64).ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size:
      self._tb.add_histogram(tag, vals, step)

  def close(self) -> None:
    """Closes the bar, metrics.jsonl, the event file (flushing it) and the wandb run; a second
    call does nothing."""
    self.bar.close()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _wandb_run(init_kwargs: Mapping[str, Any]) -> Any:
  """wandb.init(**init_kwargs), or None with a warning when wandb is not installed (it is an
  optional extra: the run goes on with metrics.jsonl and TensorBoard)."""
  try:
    import wandb  # pylint: disable=import-outside-toplevel
  except ImportError:
    warnings.warn("wandb settings given but the wandb package is not installed: nothing is "
                  "logged to Weights & Biases (pip install wandb)", stacklevel=4)
    return None
  return wandb.init(**dict(init_kwargs))


def wandb_settings(config: Any) -> Optional[dict]:
  """The config's optional `wandb` section (wandb.init keyword arguments) as a dict, or None
  when it has none: MetricsWriter's `wandb` argument."""
  section = config.get("wandb") if hasattr(config, "get") else None
  if not section:
    return None
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


_NO_MATPLOTLIB_SAID: list = []  # said once per process


def plot_metrics(workdir: str, panels: Sequence[tuple[str, Sequence[str]]], file_name: str, *,
                 title: str = "", xlabel: str = "step", ylabel: str = "") -> Optional[str]:
  """WORKDIR/`file_name`: one panel per (panel title, keys) of curves from metrics.jsonl. A key
  ending in "/" stands for every key with that prefix (labelled by the rest); keys starting
  with "eval" are drawn dashed with markers (sparse points); the panel's first key is drawn
  thick. Returns the path, or None when there is nothing to plot or matplotlib is not installed
  (it is the optional extra `plot`: the core install writes metrics.jsonl and TensorBoard
  events, which hold the same curves; said once per process)."""
  path = fs.join(workdir, METRICS_FILE)
  recs = read_jsonl(path) if fs.exists(path) else []
  if not recs:
    return None
  try:
    import matplotlib  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    if not _NO_MATPLOTLIB_SAID:
      _NO_MATPLOTLIB_SAID.append(True)
      print(f"[plot] matplotlib is not installed (pip install -e '.[plot]'): no {file_name}; "
            f"the curves are in {path} and TensorBoard", flush=True)
    return None
  # A Figure of its own, not pyplot: no global backend switch (matplotlib.use("Agg") would turn
  # off a notebook's inline plots after a run) and no figure left in pyplot's registry.
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(5.5 * len(panels), 4), dpi=100)
  axes = fig.subplots(1, len(panels), squeeze=False)
  for ax, (label, keys) in zip(axes[0], panels):
    for i, key in enumerate(keys):
      names = (sorted({k for r in recs for k in r if k.startswith(key)}) if key.endswith("/")
               else [key])
      for name in names:
        pts = [(r["step"], r[name]) for r in recs if r.get(name) is not None]
        if not pts:
          continue
        style = dict(lw=2 if i == 0 else 1, label=name[len(key):] if key.endswith("/") else name)
        if name.startswith("eval"):
          style.update(ls="--", marker="o", ms=4)
        ax.plot(*zip(*pts), **style)
    ax.set_xlabel(xlabel)
    if ylabel:
      ax.set_ylabel(ylabel)
    if label:
      ax.set_title(label)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out = fs.join(workdir, file_name)
  with fs.open_file(out, "wb") as f:
    fig.savefig(f, format=file_name.rsplit(".", 1)[-1])
  return out
