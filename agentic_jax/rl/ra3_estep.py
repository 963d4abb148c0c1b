"""RA3's E-step (issue 13; ../shared/docs/objectives-spec.md §3, ra3.md §3): the policy learns,
by RL, where to write a rationale and what to write, rewarded by the log-likelihood the
rationale buys for the expert's next actions minus the cost c of a new latent.

    programs = [Program(...)]                          # expert trajectories, tokenized
    state, chosen, metrics = estep_step(...)           # one RL update on a batch of programs

One E-step update on a batch of P programs:
  1. boundaries: at most `boundaries` decision points per program, drawn without replacement
     from its action starts (`sample_boundaries`; 0 = every action start), the same for the G
     annotations of the program, so each boundary has G proposals.
  2. G annotations per program from the current policy (rl/ra3_annotate.annotate, sampled at
     `temperature`): at each boundary continue, or a new rationale between <|think|> and
     <|end_think|> of at most `max_rationale_len` tokens.
  3. the frozen scorer (the E-phase's starting model, spec §3) scores every annotation in one
     forward: per boundary log π(a_k | s_k, z_k) over the expert tokens up to the next boundary.
  4. rewards (objectives/ra3.estep_reward): r_k = log π(a_k | s_k, z_k) − c·1[z_k new]; the
     annotation's return R = Σ_k r_k. Choice (ra3.md §3, "JAX mapping"): trajectory credit,
     one sample per annotation, group = the program's G annotations, so the G proposals at a
     boundary share the group baseline of their annotations' returns. The advantage and the
     clipped policy-gradient loss are the RL registry's (config: estep.rl.loss, e.g. "grpo"
     with loss_options.std_norm False = A = R − mean, no std: the rewards are nats whose scale
     means something, objectives/ra3.py's docstring), through rl/step.py's update. The trained
     tokens are the decisions and the sampled rationale tokens; the expert's tokens are the
     environment (never trained here).
  5. the annotation with the largest return per program (objectives/ra3.choose_latents; ties
     -> the first) is that program's rationale annotation for the M-step.

Metrics (means over the batch): return, think_rate (new latents per boundary), rationale_len
(tokens per new latent), the bound's terms per program (objectives/ra3.bound_terms with
p_keep, prior_vocab_size: log_likelihood, kl, elbo, num_new) for the sampled and the chosen
annotations, gain = chosen minus mean return, and the RL update's metrics (loss, kl, ...).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from agentic_jax.models import ModelConfig
from agentic_jax.objectives import ra3 as ra3_obj
from agentic_jax.rl import ra3_annotate as ann_lib
from agentic_jax.rl import step as step_lib


@dataclasses.dataclass(frozen=True)
class Program:
  """One expert trajectory, tokenized: `prompt` (everything before the first action, ending
  with <|assistant|>), `expert` (the action tokens and the closing <|end_turn|></s>), and
  `starts` (positions in `expert` where an action begins: the decision points) with `chars`
  (where each starts in the assistant text `content`)."""
  id: str
  prompt_text: str
  content: str
  prompt: np.ndarray
  expert: np.ndarray
  starts: np.ndarray
  chars: np.ndarray


@dataclasses.dataclass(frozen=True)
class Settings:
  """The E-step's knobs (config.ra3; validated by rl/ra3.py)."""
  c: float = 0.05
  p_keep: float = 0.9
  proposals: int = 4
  max_rationale_len: int = 8
  boundaries: int = 4
  temperature: float = 1.0
  prior_vocab_size: Optional[int] = None


def sample_boundaries(starts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """At most k of the action starts (sorted), uniformly without replacement; k = 0: all."""
  starts = np.asarray(starts, np.int32)
  if k <= 0 or len(starts) <= k:
    return starts.copy()
  return np.sort(rng.choice(starts, size=k, replace=False)).astype(np.int32)


def room(program: Program, limit: int, max_rationale_len: int) -> int:
  """How many rationales of at most max_rationale_len tokens (+ 2 markers) fit in a row of
  `limit` tokens with the program: -1 when the program alone does not fit."""
  free = limit - len(program.prompt) - len(program.expert)
  return -1 if free < 0 else free // (max_rationale_len + 2)


def batch_seed(seed: int, phase: int, step: int) -> int:
  """The seed of E-step `step` of E-phase `phase`: a function of these only."""
  return (int(seed) * 1_000_003 + int(phase) * 7919 + int(step) * 104_729) % (2**31 - 1)


def special_ids(tokenizer: Any) -> tuple[int, int, tuple[int, ...]]:
  """(<|think|>, <|end_think|>, the ids a rationale may not contain: every special id of the
  tokenizer (`special_ids`: a checkpoint's own specials too) but <|end_think|>)."""
  think, end = tokenizer.special_id("<|think|>"), tokenizer.special_id("<|end_think|>")
  banned = tuple(sorted(int(i) for i in tokenizer.special_ids if i != end))
  return think, end, banned


def rewards(terms: dict, c: float) -> np.ndarray:
  """r_k = log π(a_k | s_k, z_k) − c·1[new] per boundary [N, K] (0 where masked)."""
  r = np.asarray(ra3_obj.estep_reward(terms["action_logp"], terms["is_new"], c))
  return np.where(terms["mask"], r, 0.0)


def _bound(terms: dict, s: Settings, rows: Optional[np.ndarray] = None) -> dict[str, float]:
  t = terms if rows is None else {k: v[rows] for k, v in terms.items()}
  b = ra3_obj.bound_terms(t["action_logp"], t["is_new"], t["q_logp"], t["mask"], c=s.c,
                          p_keep=s.p_keep, rationale_len=t["rationale_len"],
                          prior_vocab_size=s.prior_vocab_size)
  out = {k: float(np.mean(np.asarray(v))) for k, v in b.items()
         if k in ("log_likelihood", "kl", "elbo", "num_new")}
  n_b = max(int(t["mask"].sum()), 1)
  out["think_rate"] = float(t["is_new"][t["mask"]].sum() / n_b)
  n_new = max(int(t["is_new"].sum()), 1)
  out["rationale_len"] = float(t["rationale_len"][t["is_new"]].sum() / n_new)
  return out


def estep_step(model_cfg: ModelConfig, state: Any, scorer_variables: dict,
               programs: Sequence[Program], settings: Settings, *, tokenizer: Any, seed: int,
               rl_step: Callable, seq_len: int, pack: Callable[[dict], dict],
               batch_bucket: int = 8, decode_batch: Optional[int] = None,
               mesh: Optional[jax.sharding.Mesh] = None
               ) -> tuple[Any, list[ann_lib.Annotation], dict]:
  """One E-step update (module docstring) -> (new state, the chosen annotation per program,
  metrics; None for a program too long for a row of seq_len + 1 tokens, which is counted in
  programs_too_long and left as the expert wrote it). `rl_step(state, ref_variables, packed)` is rl/step.py's jitted step (its reference =
  the scorer, used for the KL term and metrics only); `pack(policy_rows) -> packed` is
  rl/step.pack_batch with the E-step's shapes. `decode_batch`: annotation rows per decoder
  call (None: all P x G in one; config.estep.decode_batch), which changes no result: a row's
  random numbers are its own (rl/ra3_annotate.annotate). `mesh`: the mesh the state and scorer are
  sharded over (None: one device); the decoders then take global arrays (rl/ra3_annotate.py)
  and `rl_step` is expected to place the packed batch on it. Across processes every process
  calls this with the same programs and seed and gets the same annotations and metrics."""
  s = settings
  think, end, banned = special_ids(tokenizer)
  g = s.proposals
  rng = np.random.default_rng(seed)
  # a row holds seq_len + 1 tokens: a program gets only as many decision points as rationales
  # of full length fit beside it (counted), one that does not fit at all stays as it is
  fits = [room(p, seq_len + 1, s.max_rationale_len) for p in programs]
  too_long = [i for i, f in enumerate(fits) if f < 0]
  capped = sum(1 for p, f in zip(programs, fits) if 0 <= f < min(
      len(p.starts), s.boundaries if s.boundaries > 0 else len(p.starts)))
  keep = [i for i, f in enumerate(fits) if f >= 0]
  bds = {i: sample_boundaries(programs[i].starts, s.boundaries, rng)[:fits[i]] for i in keep}
  if not keep:
    raise ValueError(f"E-step: none of the {len(programs)} programs fits a row of "
                     f"config.estep.rl.seq_len={seq_len}")
  full = programs
  programs = [full[i] for i in keep]
  bds = [bds[i] for i in keep]
  rows_p = [i for i in range(len(programs)) for _ in range(g)]
  policy_vars = step_lib.variables_of(state.params, state.router_state)
  anns = ann_lib.annotate(
      model_cfg, policy_vars, [programs[i].prompt for i in rows_p],
      [programs[i].expert for i in rows_p], [bds[i] for i in rows_p], jax.random.key(seed),
      think_id=think, end_think_id=end, banned_ids=banned,
      max_rationale_len=s.max_rationale_len, temperature=s.temperature,
      batch_bucket=batch_bucket, max_rows=decode_batch, mesh=mesh)
  scores = ann_lib.score(model_cfg, scorer_variables, anns, batch_bucket=batch_bucket, mesh=mesh)
  terms = ann_lib.boundary_terms(anns, scores)
  ret = rewards(terms, s.c).sum(axis=1)  # [N]
  by_prog = ret.reshape(len(programs), g)
  best = np.asarray(ra3_obj.choose_latents(by_prog))
  chosen_rows = np.arange(len(programs)) * g + best
  chosen_kept = {k: anns[r] for k, r in zip(keep, chosen_rows)}
  chosen = [chosen_kept.get(i) for i in range(len(full))]  # None: left as the expert wrote it

  batch = ann_lib.policy_rows(anns, ret, np.asarray(rows_p, np.int32), think_id=think,
                              seq_len=seq_len)
  new_state, m = rl_step(state, scorer_variables, pack(batch))
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  finite = np.isfinite(ret)
  metrics = {
      "return": float(ret[finite].mean()) if finite.any() else math.nan,
      "return_chosen": float(by_prog.max(axis=1).mean()),
      "gain": float((by_prog.max(axis=1) - by_prog.mean(axis=1)).mean()),
      **{f"sampled/{k}": v for k, v in _bound(terms, s).items()},
      **{f"chosen/{k}": v for k, v in _bound(terms, s, chosen_rows).items()},
      **{f"rl/{k}": v for k, v in m.items()},
      "skipped": int(m.get("skipped", 0)),
      "programs_too_long": len(too_long),
      "programs_capped": capped,
  }
  return new_state, chosen, metrics


def annotated_content(program: Program, annotation: Optional[ann_lib.Annotation],
                      tokenizer: Any) -> tuple[str, int]:
  """The assistant text with the annotation's rationales inserted as <|think|>TEXT<|end_think|>
  at the start of the actions they precede (data/render.py renders them back with the marker
  tokens); returns (content, rationales dropped because their text holds a marker string)."""
  if annotation is None:
    return program.content, 0
  where = {int(t): int(c) for t, c in zip(program.starts, program.chars)}
  pieces, last, dropped = [], 0, 0
  for pos, ids in annotation.rationales():
    text = tokenizer.decode(ids)
    if "<|think|>" in text or "<|end_think|>" in text or pos not in where:
      dropped += 1
      continue
    c = where[pos]
    pieces += [program.content[last:c], "<|think|>", text, "<|end_think|>"]
    last = c
  pieces.append(program.content[last:])
  return "".join(pieces), dropped
