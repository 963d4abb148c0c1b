"""RA3's latent proposals on our cached decoder: teacher-forced expert actions with rationales
sampled at action boundaries, their scoring, and the E-step's policy rows (issue 13).

    ann = annotate(model_cfg, variables, prompts, experts, boundaries, key, think_id=..., ...)
    logp = score(model_cfg, scorer_variables, ann)       # scorer log-probs of every token
    terms = boundary_terms(ann, logp, c=0.05)           # per boundary: log π(a | s, z), new, log q

One decode loop per batch of sequences (`annotate_arrays`, one jitted lax.while_loop on the
compressed MLA cache, like sampling.generate_arrays). Each row holds a prompt (everything before
the first action, e.g. <s><|user|>TASK<|end_turn|><|assistant|>) and the expert's action tokens
(the actions' text and the closing tokens). The loop emits, step by step:

  at a boundary (a position j of the expert tokens marked in `boundaries`, not yet decided):
      the decision z_j ~ q: Bernoulli(p(<|think|> | context)) at `temperature` (greedy: think
      iff <|think|> is the argmax token). "new" emits <|think|> and switches to rationale mode;
      "continue" emits the expert token j directly (kind KIND_CONTINUE; its log q is
      log(1 − p(<|think|>))).
  in rationale mode: a sampled token (special tokens other than <|end_think|> are excluded,
      so a rationale is plain text and renders back to the same markers); <|end_think|> ends
      it; after `max_rationale_len` tokens an <|end_think|> is forced (not sampled: not trained).
  otherwise: the next expert token, teacher-forced (kind KIND_EXPERT).

So the expert's actions are never changed, only interleaved with rationales; with no boundary
(or c = inf, where the job skips sampling) the output is the expert sequence itself. "Continue"
keeps the previous rationale in the context (it is still there, earlier in the row); the first
boundary's "continue" means no rationale at all. The recorded log-probs are the policy's
unmasked log-softmax at `temperature` (what rl/step.py's token_logp recomputes); the exclusion
of special tokens changes the sampling distribution slightly, which the importance ratio of the
RL loss sees as off-policy mass on tokens that were never allowed.

`score` runs one forward of the scorer (the frozen model of the E-phase, spec §3: "scored by a
frozen copy of the last M-step model") over the annotated rows; `boundary_terms` cuts the
expert tokens into the segments between consecutive boundaries and returns, per boundary k,
log π(a_k | s_k, z_k) = the scorer's log-probs of the expert tokens from boundary k up to the
next boundary (the last segment runs to the end, closing tokens included; tokens before the
first boundary belong to no decision), whether z_k is new, and log q(z_k) (decision + rationale
tokens). objectives/ra3.py turns them into rewards and the bound's terms.

On a mesh (`mesh=`: the mesh the variables are sharded over, e.g. the E-phase's config.estep.mesh;
None = one device) the decoders take global arrays: annotate's inputs replicated over the mesh
(parallel.replicated_array, like rl/sampler.py's decoder), the scoring forward's rows split
over the mesh's batch axes (parallel.global_from_host; the batch is padded to a multiple of the
batch shards), and the outputs read back with parallel.fetch. Across processes every process
passes the same full host inputs (SPMD: the device work is partitioned over the mesh, the host
work is repeated) and gets the same outputs; one process with N devices and several processes
with N devices in all compile the same program. The decode loop finds the variables' mesh itself
(sampling.decode_mesh) and builds its modules from sampling.decode_config / step_config on it,
applied inside sampling.on_mesh, as sampling's decoders do: on an expert mesh with
moe_dispatch="expert_parallel" the MoE layers run the all-to-all exchange (each device its own
experts) rather than gathering every expert's weights on every device.

Random numbers are per row: row i of `annotate`'s list draws its decisions and rationale tokens
at loop step t from fold_in(fold_in(key, i), t) alone, so a row's annotation depends neither
on the other rows nor on how they are split into decoder calls (`max_rows`, the E-step's
config.estep.decode_batch: every device decodes every row it is given, so the decode cache
of a call grows with its rows).

`policy_rows` lays the annotations out as rl/rollout.policy_batch does (inputs/targets/...,
mask = 1 on the decision and sampled rationale tokens), so the update is rl/step.py's, with the
registry's loss. A "continue" decision's target is the negative id -(think + 1): token_logp
reads it as log(1 − p(<|think|>)), the probability of that decision.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax import parallel
from agentic_jax.models import ModelConfig, build, init_cache
from agentic_jax.rl.step import log1mexp
from agentic_jax.sampling import decode_config, decode_mesh, on_mesh, step_config

Array = jax.Array

KIND_PAD, KIND_EXPERT, KIND_CONTINUE, KIND_NEW, KIND_RATIONALE, KIND_END, KIND_END_FORCED = (
    -1, 0, 1, 2, 3, 4, 5)
TRAINED_KINDS = (KIND_CONTINUE, KIND_NEW, KIND_RATIONALE, KIND_END)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "max_rationale_len",
                                             "temperature", "think_id", "end_think_id",
                                             "banned_ids"))
def annotate_arrays(cfg: ModelConfig, variables: dict, prompt: Array, lengths: Array,
                    expert: Array, expert_len: Array, boundary: Array, key: Array,
                    first_row: Array, *, max_new: int, max_rationale_len: int,
                    temperature: float, think_id: int, end_think_id: int,
                    banned_ids: tuple[int, ...]) -> tuple[Array, Array, Array, Array, Array]:
  """Jitted core of `annotate` (module docstring). prompt [B, P] left-padded with true
  `lengths`; expert [B, E] right-padded with `expert_len`; boundary bool [B, E]. Rows with
  expert_len 0 are inactive. Row b draws its random numbers from fold_in(key, first_row + b)
  alone (int32 scalar `first_row`: the row's index in the caller's whole list), so a row's
  annotation does not depend on which rows share its call. Returns tokens, logp, kind, src
  (expert index or -1) [B, max_new] and num [B] (tokens emitted)."""
  batch, width = prompt.shape
  row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
      key, first_row + jnp.arange(batch, dtype=jnp.int32))
  # the variables' mesh (decode_mesh: the mesh in force, else their NamedShardings), so that on
  # an expert mesh the MoE layers run the expert-parallel exchange as sampling's decoders do,
  # not the dropless dispatch that would gather every expert's weights on every device
  mesh = decode_mesh(variables)
  module = build(decode_config(cfg, mesh))
  step_module = build(step_config(cfg, batch, mesh))
  pad = width - lengths
  col = jnp.arange(width, dtype=jnp.int32)[None, :]
  segment = (col >= pad[:, None]).astype(jnp.int32)
  positions = jnp.maximum(col - pad[:, None], 0)
  cache = init_cache(cfg, batch, width + max_new)
  with on_mesh(cfg, mesh):
    logits, cache = module.apply(variables, prompt, segment_ids=segment, positions=positions,
                                 cache=cache)
  rows = jnp.arange(batch)
  ban = jnp.zeros((cfg.vocab_size,), bool)
  if banned_ids:
    ban = ban.at[jnp.asarray(banned_ids, jnp.int32)].set(True)
  e_width = expert.shape[1]

  def body(state):
    (step, cache, last, out_tok, out_logp, out_kind, out_src, j, mode, rlen, decided,
     done, num) = state
    # per row and step: fold_in(row key, step) split in two (decision, rationale token)
    k = jax.vmap(jax.random.split)(jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys,
                                                                                  step))
    k_dec, k_tok = k[:, 0], k[:, 1]
    logits = last.astype(jnp.float32)
    scaled = logits / temperature if temperature > 0 else logits
    logp_all = jax.nn.log_softmax(scaled, axis=-1)
    lp_think = logp_all[:, think_id]
    jj = jnp.minimum(j, e_width - 1)
    at_b = (mode == 0) & boundary[rows, jj] & (decided != j) & (j < expert_len)
    if temperature > 0:
      think = jax.vmap(lambda kk: jax.random.uniform(kk, ()))(k_dec) < jnp.exp(lp_think)
      masked = jnp.where(ban[None, :], -jnp.inf, scaled)
      tok_r = jax.vmap(jax.random.categorical)(k_tok, masked).astype(jnp.int32)
    else:
      think = jnp.argmax(logits, axis=-1) == think_id
      tok_r = jnp.argmax(jnp.where(ban[None, :], -jnp.inf, logits), axis=-1).astype(jnp.int32)
    new = at_b & think
    forced = (mode == 1) & (rlen >= max_rationale_len)
    exp_tok = expert[rows, jj]
    tok = jnp.where(mode == 1, jnp.where(forced, end_think_id, tok_r),
                    jnp.where(new, think_id, exp_tok))
    kind = jnp.where(
        mode == 1,
        jnp.where(forced, KIND_END_FORCED, jnp.where(tok_r == end_think_id, KIND_END,
                                                     KIND_RATIONALE)),
        jnp.where(new, KIND_NEW, jnp.where(at_b, KIND_CONTINUE, KIND_EXPERT)))
    lp_tok = jnp.take_along_axis(logp_all, tok_r[:, None], axis=-1)[:, 0]
    logp = jnp.where(mode == 1, jnp.where(forced, 0.0, lp_tok),
                     jnp.where(new, lp_think, jnp.where(at_b, log1mexp(lp_think), 0.0)))
    src = jnp.where((mode == 0) & ~new, j, -1)
    active = ~done
    tok = jnp.where(active, tok, 0)
    out_tok = out_tok.at[:, step].set(tok)
    out_logp = out_logp.at[:, step].set(jnp.where(active, logp, 0.0))
    out_kind = out_kind.at[:, step].set(jnp.where(active, kind, KIND_PAD))
    out_src = out_src.at[:, step].set(jnp.where(active, src, -1))
    num = num + active.astype(jnp.int32)
    # state transitions (only for active rows)
    fed_expert = active & (mode == 0) & ~new
    decided = jnp.where(active & at_b, j, decided)
    j = j + fed_expert.astype(jnp.int32)
    ends = (mode == 1) & (forced | (tok_r == end_think_id))
    rlen = jnp.where(active & new, 0, jnp.where(active & (mode == 1), rlen + 1, rlen))
    mode = jnp.where(active & new, 1, jnp.where(active & ends, 0, mode))
    done = done | ((mode == 0) & (j >= expert_len))
    pos = (lengths + step)[:, None]
    with on_mesh(cfg, mesh):
      logits, cache = step_module.apply(variables, tok[:, None], segment_ids=jnp.ones_like(pos),
                                        positions=pos, cache=cache)
    return (step + 1, cache, logits[:, -1], out_tok, out_logp, out_kind, out_src, j, mode, rlen,
            decided, done, num)

  def cond(state):
    return (state[0] < max_new) & ~jnp.all(state[11])

  zeros_i = jnp.zeros((batch,), jnp.int32)
  state = (jnp.zeros((), jnp.int32), cache, logits[:, -1],
           jnp.zeros((batch, max_new), jnp.int32), jnp.zeros((batch, max_new), jnp.float32),
           jnp.full((batch, max_new), KIND_PAD, jnp.int32),
           jnp.full((batch, max_new), -1, jnp.int32),
           zeros_i, zeros_i, zeros_i, jnp.full((batch,), -1, jnp.int32), expert_len <= 0,
           zeros_i)
  out = jax.lax.while_loop(cond, body, state)
  return out[3], out[4], out[5], out[6], out[12]


@dataclasses.dataclass
class Annotation:
  """One annotated row: the prompt, then the emitted tokens with their kinds."""
  prompt: np.ndarray    # int32 [P]
  tokens: np.ndarray    # int32 [n]: expert tokens interleaved with rationales
  logp: np.ndarray      # float32 [n]: log q of decisions and sampled rationale tokens, else 0
  kind: np.ndarray      # int32 [n]: KIND_*
  src: np.ndarray       # int32 [n]: index of the expert token, -1 for rationale tokens
  boundaries: np.ndarray  # int32 [K]: the expert positions that were decision points

  @property
  def sequence(self) -> np.ndarray:
    return np.concatenate([self.prompt, self.tokens]).astype(np.int32)

  def rationales(self) -> list[tuple[int, list[int]]]:
    """(expert position it precedes, rationale token ids without markers) of each new latent."""
    out, k = [], 0
    while k < len(self.kind):
      if self.kind[k] == KIND_NEW:
        m = k + 1
        while m < len(self.kind) and self.kind[m] == KIND_RATIONALE:
          m += 1
        nxt = self.src[m + 1] if m + 1 < len(self.src) else -1
        out.append((int(nxt), [int(t) for t in self.tokens[k + 1:m]]))
        k = m
      k += 1
    return out


def _bucket(n: int, b: int) -> int:
  return -(-max(n, 1) // b) * b


def _replicated(x: np.ndarray, mesh: Optional[jax.sharding.Mesh]) -> Array:
  """A host array on one device (mesh None) or replicated over `mesh` (a global array)."""
  return jnp.asarray(x) if mesh is None else parallel.replicated_array(x, mesh)


def _replicated_key(key: Array, mesh: Optional[jax.sharding.Mesh]) -> Array:
  """A PRNG key (typed, or a raw uint32 PRNGKey) replicated over `mesh` (None: as it is)."""
  if mesh is None:
    return key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(
        parallel.replicated_array(np.asarray(jax.random.key_data(key)), mesh),
        impl=jax.random.key_impl(key))
  return parallel.replicated_array(np.asarray(key), mesh)


def _host(x: Array) -> np.ndarray:
  """A decoder output on every process (parallel.fetch: a collective when it spans them)."""
  return np.asarray(parallel.fetch(x))


def annotate(cfg: ModelConfig, variables: dict, prompts: Sequence[np.ndarray],
             experts: Sequence[np.ndarray], boundaries: Sequence[np.ndarray], key: Array, *,
             think_id: int, end_think_id: int, banned_ids: Sequence[int] = (),
             max_rationale_len: int = 8, temperature: float = 1.0, batch_bucket: int = 8,
             width_bucket: int = 32, max_rows: Optional[int] = None,
             mesh: Optional[jax.sharding.Mesh] = None) -> list[Annotation]:
  """Annotations of the rows (module docstring); deterministic in `key` and each row's index:
  row i draws from fold_in(key, i) alone, so the other rows and `max_rows` do not change it.
  `max_rows`: rows per decoder call (None: all in one), for batches whose decode cache would
  not fit at once; every call has the same shapes (widths from all the rows, the batch
  bucketed to `batch_bucket`; the last call padded with inactive rows), so one compilation
  serves them all and a row computes the same in any call. Widths are bucketed to
  `width_bucket` so a few compilations serve a whole run. `mesh`: the variables' mesh
  (module docstring)."""
  n = len(prompts)
  if not (n == len(experts) == len(boundaries)):
    raise ValueError(f"annotate: {n} prompts, {len(experts)} experts, {len(boundaries)} "
                     "boundary lists")
  if n == 0:
    return []
  if max_rationale_len < 1:
    raise ValueError(f"annotate: max_rationale_len must be >= 1, got {max_rationale_len}")
  if max_rows is not None and max_rows < 1:
    raise ValueError(f"annotate: max_rows must be >= 1 or None, got {max_rows}")
  for i, (e, bd) in enumerate(zip(experts, boundaries)):  # before any decoding
    bd = np.asarray(bd, np.int64)
    if bd.size and (bd.min() < 0 or bd.max() >= len(e)):
      raise ValueError(f"annotate: row {i}: boundaries must index its {len(e)} expert tokens")
  chunk = n if max_rows is None else min(int(max_rows), n)
  b = _bucket(chunk, batch_bucket)
  p_w = _bucket(max(len(p) for p in prompts), width_bucket)
  e_w = _bucket(max(len(e) for e in experts), width_bucket)
  k_max = max((len(x) for x in boundaries), default=0)
  max_new = e_w + _bucket(k_max, 4) * (max_rationale_len + 2)
  put = lambda x: _replicated(x, mesh)  # noqa: E731
  rkey = _replicated_key(key, mesh)
  tok, logp, kind, src, num = [], [], [], [], []
  for start in range(0, n, chunk):
    prompt = np.zeros((b, p_w), np.int32)
    lengths = np.ones((b,), np.int32)
    expert = np.zeros((b, e_w), np.int32)
    expert_len = np.zeros((b,), np.int32)
    boundary = np.zeros((b, e_w), bool)
    for r, i in enumerate(range(start, min(start + chunk, n))):
      p, e = prompts[i], experts[i]
      prompt[r, p_w - len(p):] = p
      lengths[r] = len(p)
      expert[r, :len(e)] = e
      expert_len[r] = len(e)
      boundary[r, np.asarray(boundaries[i], np.int64)] = True
    outs = [_host(x) for x in annotate_arrays(
        cfg, variables, put(prompt), put(lengths), put(expert), put(expert_len), put(boundary),
        rkey, put(np.int32(start)), max_new=int(max_new),
        max_rationale_len=int(max_rationale_len), temperature=float(temperature),
        think_id=int(think_id), end_think_id=int(end_think_id),
        banned_ids=tuple(sorted(int(x) for x in banned_ids)))]
    for acc, x in zip((tok, logp, kind, src, num), outs):
      acc.append(x[:min(chunk, n - start)])
  tok, logp, kind, src, num = (np.concatenate(x) for x in (tok, logp, kind, src, num))
  out = []
  for i in range(n):
    m = int(num[i])
    if m and int(src[i, :m].max()) != len(experts[i]) - 1:
      raise RuntimeError(f"annotate: row {i} stopped before its last expert token (max_new "
                         f"{max_new} too small)")
    out.append(Annotation(np.asarray(prompts[i], np.int32), tok[i, :m].astype(np.int32),
                          logp[i, :m].astype(np.float32), kind[i, :m].astype(np.int32),
                          src[i, :m].astype(np.int32),
                          np.sort(np.asarray(boundaries[i], np.int32))))
  return out


@functools.partial(jax.jit, static_argnames=("cfg",))
def _forward_logp(cfg: ModelConfig, variables: dict, inputs: Array, targets: Array,
                  segment_ids: Array, positions: Array) -> Array:
  logits = build(cfg).apply(variables, inputs, segment_ids, positions).astype(jnp.float32)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]


def token_logps(cfg: ModelConfig, variables: dict, sequences: Sequence[np.ndarray], *,
                batch_bucket: int = 8, width_bucket: int = 32,
                max_rows: Optional[int] = None,
                mesh: Optional[jax.sharding.Mesh] = None) -> list[np.ndarray]:
  """log p(seq[t] | seq[:t]) for t >= 1 of each sequence (teacher forcing, temperature 1), in
  chunks of at most `max_rows` rows (default: all at once). `mesh`: the variables' mesh; the
  rows are split over its batch axes (module docstring)."""
  out: list[np.ndarray] = []
  chunk = max_rows or max(len(sequences), 1)
  if mesh is not None:  # padded rows split evenly over the batch shards
    shards = parallel.batch_shards(mesh)
    batch_bucket = batch_bucket * shards // np.gcd(batch_bucket, shards)
  for s in range(0, len(sequences), chunk):
    part = sequences[s:s + chunk]
    b = _bucket(len(part), batch_bucket)
    w = _bucket(max(len(x) for x in part) - 1, width_bucket)
    arr = {k: np.zeros((b, w), np.int32) for k in ("inputs", "targets", "segment_ids",
                                                  "positions")}
    for i, x in enumerate(part):
      m = len(x) - 1
      arr["inputs"][i, :m], arr["targets"][i, :m] = x[:-1], x[1:]
      arr["segment_ids"][i, :m] = 1
      arr["positions"][i, :m] = np.arange(m)
    if mesh is None:
      put = jnp.asarray
    else:
      rows = parallel.batch_sharding(mesh, ndim=2, batch_size=b)
      put = lambda x, rows=rows: parallel.global_from_host(x, rows)  # noqa: E731
    lp = _host(_forward_logp(cfg, variables, **{k: put(v) for k, v in arr.items()}))
    out += [lp[i, :len(x) - 1].astype(np.float32) for i, x in enumerate(part)]
  return out


def score(cfg: ModelConfig, variables: dict, annotations: Sequence[Annotation],
          **kw) -> list[np.ndarray]:
  """The scorer's log-prob of each emitted token of each annotation ([n], aligned with
  Annotation.tokens), from one teacher-forced forward per chunk."""
  lps = token_logps(cfg, variables, [a.sequence for a in annotations], **kw)
  return [lp[len(a.prompt) - 1:] for a, lp in zip(annotations, lps)]


def boundary_terms(annotations: Sequence[Annotation], scores: Sequence[np.ndarray]
                   ) -> dict[str, np.ndarray]:
  """Per row and boundary ([N, K], K = the most boundaries of a row; `mask` marks real ones):
  action_logp = log π(a_k | s_k, z_k) (scorer log-probs of the expert tokens of segment k),
  action_tokens, is_new, q_logp (log q of the decision and its sampled rationale tokens),
  rationale_len (tokens between the markers); and `prefix_logp` [N]: the expert tokens before
  the first boundary (no decision affects them)."""
  n = len(annotations)
  k_max = max((len(a.boundaries) for a in annotations), default=0)
  out = {k: np.zeros((n, max(k_max, 1)), np.float32) for k in ("action_logp", "q_logp")}
  for k in ("action_tokens", "rationale_len"):
    out[k] = np.zeros((n, max(k_max, 1)), np.int32)
  out["is_new"] = np.zeros((n, max(k_max, 1)), bool)
  out["mask"] = np.zeros((n, max(k_max, 1)), bool)
  out["prefix_logp"] = np.zeros((n,), np.float32)
  for i, (a, sc) in enumerate(zip(annotations, scores)):
    bd = a.boundaries
    out["mask"][i, :len(bd)] = True
    # the segment of each emitted token: boundaries at or before its expert position (for a
    # rationale token: the boundary it is the decision of, i.e. of the next expert token)
    nxt_src = np.where(a.src >= 0, a.src, -1)
    for t in range(len(nxt_src) - 2, -1, -1):
      if nxt_src[t] < 0:
        nxt_src[t] = nxt_src[t + 1]
    seg = np.searchsorted(bd, nxt_src, side="right") - 1
    expert_tok = a.src >= 0
    pre = expert_tok & (seg < 0)
    out["prefix_logp"][i] = float(sc[pre].sum())
    for kk in range(len(bd)):
      in_k = seg == kk
      e = in_k & expert_tok
      out["action_logp"][i, kk] = float(sc[e].sum())
      out["action_tokens"][i, kk] = int(e.sum())
      trained = in_k & np.isin(a.kind, TRAINED_KINDS)
      out["q_logp"][i, kk] = float(a.logp[trained].sum())
      out["is_new"][i, kk] = bool(np.any(in_k & (a.kind == KIND_NEW)))
      out["rationale_len"][i, kk] = int(np.sum(in_k & (a.kind == KIND_RATIONALE)))
  return out


def policy_rows(annotations: Sequence[Annotation], rewards: np.ndarray, group_id: np.ndarray,
                *, think_id: int, seq_len: int) -> dict[str, np.ndarray]:
  """The annotations as policy-batch rows (rl/rollout.policy_batch's layout; one row per
  annotation, its reward and group): mask = 1 on decisions and sampled rationale tokens, whose
  old_logp is the sampler's; a "continue" decision's target is -(think_id + 1)."""
  n = len(annotations)
  out = {k: np.zeros((n, seq_len), np.int32) for k in ("inputs", "targets", "positions",
                                                      "segment_ids")}
  out["mask"] = np.zeros((n, seq_len), np.float32)
  out["old_logp"] = np.zeros((n, seq_len), np.float32)
  out["group_id"] = np.asarray(group_id, np.int32).copy()
  out["traj_id"] = np.arange(n, dtype=np.int32)
  out["turn_index"] = np.zeros((n,), np.int32)
  out["rewards"] = np.asarray(rewards, np.float32).copy()
  out["truncated"] = np.zeros((n,), bool)
  out["sample_mask"] = np.ones((n,), bool)
  out["response_len"] = np.zeros((n,), np.int32)
  for i, a in enumerate(annotations):
    seq = a.sequence
    m = len(seq) - 1
    if m > seq_len:
      raise ValueError(f"policy_rows: annotation {i} needs {m} positions > seq_len={seq_len}")
    out["inputs"][i, :m], out["targets"][i, :m] = seq[:-1], seq[1:]
    out["positions"][i, :m] = np.arange(m)
    out["segment_ids"][i, :m] = 1
    p0 = len(a.prompt) - 1  # emitted token t is the target of input position p0 + t
    trained = np.flatnonzero(np.isin(a.kind, TRAINED_KINDS))
    out["mask"][i, p0 + trained] = 1.0
    out["old_logp"][i, p0 + trained] = a.logp[trained]
    cont = np.flatnonzero(a.kind == KIND_CONTINUE)
    out["targets"][i, p0 + cont] = -(think_id + 1)
    out["response_len"][i] = len(trained)
  return out
