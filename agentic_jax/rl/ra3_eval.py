"""Held-out evaluation of an RA3 or next-token model (issue 13): action NLL on expert programs
and pass@1 on code tasks checked in the sandbox.

    nll = action_nll(model_cfg, variables, programs, tokenizer, max_rationale_len=6)
    p1 = pass_at_1(model_cfg, variables, tasks, tokenizer, temperature=0.0, samples=1, ...)

action_nll: the model reads a held-out expert program and, at every action start, decides for
itself (greedy, without seeing the action) whether to write a rationale and which (greedy) —
what it would do at test time (rl/ra3_annotate.annotate at temperature 0); the expert's action
tokens are then scored by the same model: NLL = −Σ log π(action tokens | everything before,
its own rationales included) / number of action tokens (the assistant text's tokens; the
closing <|end_turn|></s> excluded). `action_nll_plain` scores the expert program with no
rationale at all (teacher forcing the expert text alone), the NTP view of the same tokens. A
model that never writes a rationale gets the same number for both.

pass_at_1: the task's prompt as the user turn, the completion sampled after <|assistant|> until
<|end_turn|> (or </s>, or max_new_tokens); rationale blocks and marker names are removed from
the decoded text and the rest is the function body, run against the task's hidden tests in the
sandbox (envs.code.run_candidate; a pass needs the per-run token, so exiting early does not
pass). Greedy (temperature 0, one completion) or sampled (`samples` completions per task at
`temperature`, pass@1 = their mean pass rate). Prompts that do not fit the model's context
with max_new_tokens are skipped and counted (HumanEval's long prompts on the tiny model).
"""

from __future__ import annotations

import concurrent.futures
import re
from typing import Any, Sequence

import numpy as np

from agentic_jax.models import ModelConfig
from agentic_jax.rl import ra3_annotate as ann_lib
from agentic_jax.rl import ra3_estep as estep_lib
from agentic_jax.rl.sampler import Sampler, StopRule

_BLOCK = re.compile(r"<\|think\|>.*?<\|end_think\|>", re.S)
_MARKER = re.compile(r"<\|[a-z_]+\|>|</s>|<s>|<pad>")


def completion_code(text: str) -> str:
  """The function body a completion holds: rationale blocks and special-token names removed."""
  return _MARKER.sub("", _BLOCK.sub("", text))


def action_nll(model_cfg: ModelConfig, variables: dict, programs: Sequence[estep_lib.Program],
               tokenizer: Any, *, max_rationale_len: int, batch_bucket: int = 8) -> dict:
  """{"action_nll", "action_nll_plain", "think_rate", "rationale_len", "action_tokens",
  "programs_too_long"}."""
  import jax  # pylint: disable=import-outside-toplevel
  think, end, banned = estep_lib.special_ids(tokenizer)
  # within the model's positions: the first action starts get a decision point as long as a
  # full-length rationale still fits; a program that does not fit at all is left out (counted)
  limit = model_cfg.max_position_embeddings
  fits = [estep_lib.room(p, limit, max_rationale_len) for p in programs]
  too_long = sum(f < 0 for f in fits)
  programs = [p for p, f in zip(programs, fits) if f >= 0]
  fits = [f for f in fits if f >= 0]
  if not programs:
    return {"action_nll": None, "action_nll_plain": None, "think_rate": None,
            "rationale_len": None, "action_tokens": 0, "programs_too_long": too_long}
  n_content = [len(tokenizer.encode(p.content)) for p in programs]
  out = {"programs_too_long": too_long}
  for name, bds in (("action_nll", [p.starts[:f] for p, f in zip(programs, fits)]),
                    ("action_nll_plain", [np.zeros((0,), np.int32) for _ in programs])):
    anns = ann_lib.annotate(model_cfg, variables, [p.prompt for p in programs],
                            [p.expert for p in programs], bds, jax.random.key(0),
                            think_id=think, end_think_id=end, banned_ids=banned,
                            max_rationale_len=max_rationale_len, temperature=0.0,
                            batch_bucket=batch_bucket)
    scores = ann_lib.score(model_cfg, variables, anns, batch_bucket=batch_bucket)
    total, count = 0.0, 0
    for a, sc, n in zip(anns, scores, n_content):
      action = (a.src >= 0) & (a.src < n)
      total += float(-sc[action].sum())
      count += int(action.sum())
    out[name] = total / max(count, 1)
    if name == "action_nll":
      out["action_tokens"] = count
      n_b = sum(min(len(p.starts), f) for p, f in zip(programs, fits))
      n_new = sum(int((a.kind == ann_lib.KIND_NEW).sum()) for a in anns)
      n_rat = sum(int((a.kind == ann_lib.KIND_RATIONALE).sum()) for a in anns)
      out["think_rate"] = n_new / max(n_b, 1)
      out["rationale_len"] = n_rat / max(n_new, 1)
  return out


def prompt_ids(tokenizer: Any, prompt: str) -> np.ndarray:
  """<s><|user|>PROMPT<|end_turn|><|assistant|>: the context the completion follows (the data's
  rendering, data/render.py)."""
  from agentic_jax.data.render import render_turn  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.schema import Turn  # pylint: disable=import-outside-toplevel
  ids = [tokenizer.bos_id] + render_turn(Turn("user", prompt), tokenizer)
  return np.asarray(ids + [tokenizer.special_id("<|assistant|>")], np.int32)


def pass_at_1(model_cfg: ModelConfig, variables: dict, tasks: Sequence[Any], tokenizer: Any, *,
              temperature: float, samples: int, max_new_tokens: int, seed: int,
              timeout_s: float = 5.0, allow_unisolated: bool = False, workers: int = 2,
              batch_bucket: int = 16) -> dict:
  """{"pass_at_1", "tasks", "skipped_too_long", "completions", "examples"} (module docstring);
  `examples`: the first 3 completions' code and outcome, for the summary."""
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  end_turn = tokenizer.special_id("<|end_turn|>")
  ctx, fit = [], []
  for t in tasks:
    ids = prompt_ids(tokenizer, t.prompt)
    if len(ids) + max_new_tokens <= model_cfg.max_position_embeddings:
      ctx.append(ids)
      fit.append(t)
  if not fit:
    return {"pass_at_1": None, "tasks": 0, "skipped_too_long": len(tasks), "completions": 0,
            "examples": []}
  n = 1 if temperature == 0 else samples
  sampler = Sampler(model_cfg, max_new_tokens=max_new_tokens, temperature=temperature,
                    stop=StopRule(eos_id=tokenizer.eos_id, stop_ids=(end_turn,), arm_ids=()),
                    prompt_bucket=32, batch_bucket=batch_bucket)
  codes, owners = [], []
  for k in range(n):
    gens = sampler.generate(variables, ctx, seed=seed + k)
    for i, g in enumerate(gens):
      codes.append(completion_code(tokenizer.decode([int(x) for x in g.tokens])))
      owners.append(i)

  def check(j: int) -> bool:
    return code_env.run_candidate(fit[owners[j]], codes[j], hidden=True, timeout_s=timeout_s,
                                  allow_unisolated=allow_unisolated).passed

  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    passed = list(pool.map(check, range(len(codes))))
  per_task = np.zeros(len(fit))
  for j, ok in enumerate(passed):
    per_task[owners[j]] += ok / n
  return {"pass_at_1": float(per_task.mean()), "tasks": len(fit),
          "skipped_too_long": len(tasks) - len(fit), "completions": len(codes),
          "examples": [{"task": fit[owners[j]].id, "code": codes[j], "passed": passed[j]}
                       for j in range(min(3, len(codes)))]}
