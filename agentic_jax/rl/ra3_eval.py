"""Held-out evaluation of an RA3 or next-token model (issue 13): action NLL on expert programs
and pass@1 on code tasks checked in the sandbox.

    nll = action_nll(model_cfg, variables, programs, tokenizer, max_rationale_len=6)
    p1 = pass_at_1(model_cfg, variables, tasks, tokenizer, temperature=0.0, samples=1, ...)
    results = evaluate_stage(config, model_cfg, tokenizer, workdir, [(name, wd)], ...)  # the job's

evaluate_model runs both with an RA3 config's settings (config.eval, config.ra3); evaluate_stage
is the RA3 job's eval stage (rl/ra3.py): every model of the job, on config.estep.mesh, with a
cache file per model.

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

On a mesh (`mesh=`: the mesh the variables are sharded over; None = one device) and across
processes, every process runs both functions with the same arguments and gets the same result:
action_nll's decoders are SPMD over the mesh (every process passes the full programs;
rl/ra3_annotate.py); pass_at_1 decodes in collective Sampler calls (rl/sampler.py: each process
passes its contiguous share of the prompts, parallel.process_share, and the global batch is
the one a single process decodes, so the completions are the same), the completions are
gathered (parallel.allgather_objects), each process runs its share of them in the sandbox and
the verdicts are gathered: the model-written code runs once, split over the processes, and
every process computes the same pass@1.
"""

from __future__ import annotations

import concurrent.futures
import re
from typing import Any, Callable, Optional, Sequence

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


def _line_of(program: estep_lib.Program, k: int) -> int:
  return program.content[:int(program.chars[k])].count("\n")


def oracle_sequence(program: estep_lib.Program, blocks: Sequence[Sequence[Any]], tokenizer: Any
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The program with the true operation phrase as a rationale before each block's first
  line: (tokens, bool mask of the expert's content tokens)."""
  think, end = tokenizer.special_id("<|think|>"), tokenizer.special_id("<|end_think|>")
  phrase_at = {int(line): str(phrase) for line, phrase in blocks}
  n = len(tokenizer.encode(program.content))
  cuts = list(program.starts) + [len(program.expert)]
  toks, is_action = [program.prompt], [np.zeros(len(program.prompt), bool)]
  toks.append(program.expert[:cuts[0]])
  is_action.append(np.arange(cuts[0]) < n)
  for k in range(len(program.starts)):
    phrase = phrase_at.get(_line_of(program, k))
    if phrase is not None:
      r = np.asarray([think] + tokenizer.encode(phrase) + [end], np.int32)
      toks.append(r)
      is_action.append(np.zeros(len(r), bool))
    seg = np.arange(cuts[k], cuts[k + 1])
    toks.append(program.expert[seg])
    is_action.append(seg < n)
  return np.concatenate(toks).astype(np.int32), np.concatenate(is_action)


def action_nll(model_cfg: ModelConfig, variables: dict, programs: Sequence[estep_lib.Program],
               tokenizer: Any, *, max_rationale_len: int, batch_bucket: int = 8,
               truth: Optional[Sequence[Optional[Sequence[Sequence[Any]]]]] = None,
               mesh: Any = None) -> dict:
  """{"action_nll", "action_nll_plain", "think_rate", "rationale_len", "action_tokens",
  "programs_too_long"}, and with `truth` (per program [line, phrase] of each operation block,
  or None) the diagnostics: "action_nll_oracle" (the true phrase as the rationale before every
  block, whatever the model would write), "rationale_accuracy" (the model's own rationales
  that name the true phrase of a block starting at that line), "rationales_at_block_starts"
  (own rationales placed at a block start), "block_starts_with_rationale" (block starts where
  the model wrote one)."""
  import jax  # pylint: disable=import-outside-toplevel
  think, end, banned = estep_lib.special_ids(tokenizer)
  # within the model's positions: the first action starts get a decision point as long as a
  # full-length rationale still fits; a program that does not fit at all is left out (counted)
  limit = model_cfg.max_position_embeddings
  fits = [estep_lib.room(p, limit, max_rationale_len) for p in programs]
  too_long = sum(f < 0 for f in fits)
  kept = [i for i, f in enumerate(fits) if f >= 0]
  programs = [programs[i] for i in kept]
  truth = [truth[i] for i in kept] if truth is not None else None
  fits = [fits[i] for i in kept]
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
                            batch_bucket=batch_bucket, mesh=mesh)
    scores = ann_lib.score(model_cfg, variables, anns, batch_bucket=batch_bucket, mesh=mesh)
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
      if truth is not None:
        out.update(_rationale_checks(programs, anns, truth, tokenizer))
  if truth is not None and all(t is not None for t in truth):
    seqs = [oracle_sequence(p, t, tokenizer) for p, t in zip(programs, truth)]
    lps = ann_lib.token_logps(model_cfg, variables, [x for x, _ in seqs],
                              batch_bucket=batch_bucket, mesh=mesh)
    total = sum(float(-lp[m[1:]].sum()) for lp, (_, m) in zip(lps, seqs))
    out["action_nll_oracle"] = total / max(sum(int(m.sum()) for _, m in seqs), 1)
  return out


def _rationale_checks(programs, anns, truth, tokenizer) -> dict:
  own = correct = at_block = blocks = covered = 0
  for p, a, t in zip(programs, anns, truth):
    if t is None:
      continue
    phrase_at = {int(line): str(phrase) for line, phrase in t}
    blocks += len(phrase_at)
    index = {int(pos): k for k, pos in enumerate(p.starts)}
    for pos, ids in a.rationales():
      own += 1
      line = _line_of(p, index[pos]) if pos in index else -1
      if line in phrase_at:
        at_block += 1
        covered += 1
        correct += tokenizer.decode(ids) == phrase_at[line]
  return {"rationale_accuracy": correct / own if own else None,
          "rationales_at_block_starts": at_block / own if own else None,
          "block_starts_with_rationale": covered / blocks if blocks else None}


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
              batch_bucket: int = 16, mesh: Any = None) -> dict:
  """{"pass_at_1", "tasks", "skipped_too_long", "completions", "examples"} (module docstring);
  `examples`: the first 3 completions' code and outcome, for the summary. `mesh` and several
  processes: module docstring (a collective: every process calls it with the same arguments)."""
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
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
                    prompt_bucket=32, batch_bucket=batch_bucket, mesh=mesh)
  # this process's share of the prompts (all of them on one process); the Sampler gathers the
  # shares into the one global batch (a collective across processes)
  first, last = parallel.process_share(len(ctx))
  codes, owners = [], []
  for k in range(n):
    gens = sampler.generate(variables, ctx[first:last], seed=seed + k)
    mine = [completion_code(tokenizer.decode([int(x) for x in g.tokens])) for g in gens]
    for part in parallel.allgather_objects(mine):  # every process's, in process order
      codes += part
    owners += list(range(len(ctx)))

  def check(j: int) -> bool:
    return code_env.run_candidate(fit[owners[j]], codes[j], hidden=True, timeout_s=timeout_s,
                                  allow_unisolated=allow_unisolated).passed

  lo, hi = parallel.process_share(len(codes))  # this process runs its share of the code
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    mine = list(pool.map(check, range(lo, hi)))
  passed = [ok for part in parallel.allgather_objects(mine) for ok in part]
  per_task = np.zeros(len(fit))
  for j, ok in enumerate(passed):
    per_task[owners[j]] += ok / n
  return {"pass_at_1": float(per_task.mean()), "tasks": len(fit),
          "skipped_too_long": len(tasks) - len(fit), "completions": len(codes),
          "examples": [{"task": fit[owners[j]].id, "code": codes[j], "passed": passed[j]}
                       for j in range(min(3, len(codes)))]}


# ------------------------------------------------------------------ the RA3 job's eval stage

def _agreed(value: Any) -> Any:
  """Process 0's `value` on every process (a collective; one process: `value`), for decisions
  read from files, so that every process takes the same branch."""
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  return value if jax.process_count() == 1 else parallel.allgather_objects(value)[0]


def _mesh(config: Any, model_cfg: ModelConfig) -> tuple[Any, Optional[dict]]:
  """(config.estep.mesh as a Mesh, the variables' shardings on it), or (None, None) when it
  has one device (the unsharded path)."""
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  mesh = parallel.make_mesh(config.estep.mesh, prefix="config.estep.mesh")
  if mesh.devices.size == 1:
    return None, None
  return mesh, parallel.variable_shardings(model_cfg, mesh)


def evaluate_model(config: Any, model_cfg: ModelConfig, variables: dict, tokenizer: Any,
                   heldout: list, tasks: list, humaneval: list,
                   truth: Optional[list] = None, mesh: Any = None) -> dict:
  """The held-out metrics of one model (action_nll, pass_at_1 above) with the RA3 config's
  settings; `mesh`: the one the variables are sharded over (None: one device). Across
  processes a collective with the same result on every process (module docstring)."""
  v = config.eval
  out = action_nll(model_cfg, variables, heldout, tokenizer,
                   max_rationale_len=int(config.ra3.max_rationale_len), truth=truth, mesh=mesh)
  kw = dict(max_new_tokens=int(v.max_new_tokens), timeout_s=float(v.timeout_s),
            allow_unisolated=bool(v.allow_unisolated), seed=int(config.seed), mesh=mesh)
  if tasks:
    g = pass_at_1(model_cfg, variables, tasks, tokenizer, temperature=0.0, samples=1, **kw)
    smp = pass_at_1(model_cfg, variables, tasks, tokenizer, temperature=float(v.temperature),
                    samples=int(v.samples), **kw)
    out.update(pass_at_1=g["pass_at_1"], pass_at_1_sampled=smp["pass_at_1"],
               pass_tasks=g["tasks"], examples=g["examples"])
  if humaneval:
    h = pass_at_1(model_cfg, variables, humaneval, tokenizer, temperature=0.0, samples=1, **kw)
    out.update(humaneval_pass_at_1=h["pass_at_1"], humaneval_tasks=h["tasks"],
               humaneval_skipped_too_long=h["skipped_too_long"])
  return out


def fmt(x: Optional[float], spec: str = ".4f") -> str:
  """A metric for the job's log lines: "n/a" when there is none."""
  return "n/a" if x is None else format(x, spec)


def evaluate_stage(config: Any, model_cfg: ModelConfig, tokenizer: Any, workdir: str,
                   models: Sequence[tuple[str, str]], heldout: list, tasks: list,
                   humaneval: list, truth: Optional[list], *,
                   load: Callable[[str, Optional[dict]], dict],
                   say: Callable[[str], None]) -> dict[str, dict]:
  """The RA3 job's eval stage (rl/ra3.py): {name: evaluate_model's results} for each
  (name, WORKDIR of its checkpoints) of `models`, on config.estep.mesh; `load(WORKDIR,
  shardings)` restores a checkpoint's variables in that layout (None: one device), `say`
  prints on process 0. Each result is cached in WORKDIR/eval_NAME.json (written by process 0)
  and a cached one is read, not recomputed; which are cached is process 0's view, broadcast,
  so that every process evaluates the same models (the evaluation is a collective)."""
  import json  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from agentic_jax import fs  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import runner  # pylint: disable=import-outside-toplevel
  results: dict[str, dict] = {}
  cached = _agreed([fs.exists(fs.join(workdir, f"eval_{name}.json")) for name, _ in models])
  mesh, shardings = _mesh(config, model_cfg)
  for (name, wd), hit in zip(models, cached):
    cache = fs.join(workdir, f"eval_{name}.json")
    if hit:
      results[name] = json.loads(fs.read_text(cache))
      continue
    variables = load(wd, shardings)
    res = runner.clean(evaluate_model(config, model_cfg, variables, tokenizer, heldout, tasks,
                                      humaneval, truth, mesh=mesh))
    del variables
    if jax.process_index() == 0:  # every process evaluates; one writes
      fs.write_text(cache, json.dumps(res))
    results[name] = res
    say(f"[ra3] eval {name}: action NLL {fmt(res['action_nll'])} (without rationales "
        f"{fmt(res['action_nll_plain'])}), think rate {fmt(res['think_rate'], '.3f')}, pass@1 "
        f"{res.get('pass_at_1')} (sampled {res.get('pass_at_1_sampled')}), HumanEval pass@1 "
        f"{res.get('humaneval_pass_at_1')} on {res.get('humaneval_tasks')} problems")
  return results
