"""The RL update step: `rl_step(state, ref_variables, packed) -> (state, metrics)`, pure and jitted.

    packed, stats = pack_batch(policy_batch(episodes, ...), seq_len=..., sample_by="turn", ...)
    objective = rl_config.check_rl_config(config)   # the typed loss options, validated once
    state, metrics = jax.jit(make_rl_step(model_cfg, config, objective))(state, ref_variables, packed)

The loss is `objective` (objectives/rl_objective.RLObjective: the registered loss and its options
dataclass instance); the factories read its typed options and never re-read config.rl.loss*.
Without it they build it once from the config (objective_from_config).

Input layout. A policy batch (rollout.policy_batch: rows [N, T] aligned with `targets`, mask = 1
on trainable generated tokens) is PACKED on host by `pack_batch`:
  forward rows   inputs, targets, positions, segment_ids [F, T]: the sequences, first-fit packed
                 (segment ids keep them apart, positions restart), so a forward pass costs the
                 real tokens, not rows x seq_len.
  samples        the loss rows of objectives/rl.py, S slots per forward row, each a list of up to
                 L positions of its forward row: index, mask, old_logp [F, S, L]; group_id,
                 traj_id, turn_index, rewards, truncated, sample_mask, response_len,
                 tool_len [F, S].
  sample_by="turn"  one sample per maximal run of trainable tokens (= one policy turn). From
                 plain-mode trajectory rows this is Flow-GRPO's turn sample exactly: a turn's
                 context is a prefix of the transcript, so the causal model gives its tokens the
                 same log-probs in the transcript row as in a row of its own, and ONE forward of
                 the transcript serves all T_i turns (instead of T_i re-encoded prefixes).
  sample_by="row"   one sample per policy-batch row (GRPO on trajectories; AgentFlow turn rows).

One step (inside one jit):
  1. logp_theta(target) = log_softmax(logits / rl.temperature) at each target (the sampler's
     log-probs are at the sampling temperature, so ratios compare like with like, as verl does)
     and the entropy of that distribution, gathered into the samples.
  2. ref_logp from the frozen reference variables (same module, another pytree), once per batch.
  3. old_logp: rl.old_logp="sampler" -> the packed sampler values; "recompute" -> a forward of
     the current params before the first update. Both forwards run in rl.minibatches chunks
     of F / minibatches rows (`map_row_blocks`, interleaved so that every batch shard holds
     rows of every chunk): their f32 [rows, T, vocab] logits never exceed one minibatch's,
     which the update's forward + backward holds anyway (parallel/memory.py plans it so).
     The chunk count is tied to the minibatches, not a config key: fewer chunks raise the
     step's peak, more do not lower it below the update's (make_rl_step(logp_chunks=...)
     overrides it for tests). The metrics compare sampler and recomputed
     log-probs on trainable tokens (old_logp_diff_max / _mean): with "recompute" over all
     samples, with "sampler" over the first minibatch (its forward runs at the pre-update
     params, so the check is free). The loop warns above rl.old_logp_tolerance.
  4. Once per rollout batch: DAPO dynamic-sampling filter (objective.filter_groups on outcome
     rewards), reward shaping (overlong, KL-in-reward with the OLD policy's log-probs;
     objective.shape_rewards), advantages over the kept samples (objective.advantages), loss
     mask after overlong filtering (objective.train_mask), and with agg_scope "rollout" the
     aggregation weights W [F, S, L] of the whole batch (objective.token_weights: Q, G, T_i,
     token and row counts of the rollout batch, padding slots excluded).
  5. rl.ppo_epochs x rl.minibatches = k AdamW updates (train/optim.py). minibatch_split "rows":
     each epoch a permutation of the forward rows (from the step key) split into k equal
     minibatches (whole sequences, so a plain-mode trajectory's turns stay together);
     "groups": the packer laid whole groups out in k blocks of F/k forward rows
     (pack_batch(whole_groups=True)) and each epoch visits the blocks in a permuted order (the
     same partition every epoch, as verl's dp_actor). Each minibatch's loss is k * sum W x over
     its tokens with the carried W (agg_scope "rollout": the k gradients at equal params average
     to the one-minibatch gradient), or the objective's aggregation over the minibatch's own
     samples (agg_scope "minibatch", verl). lr = schedule(state.step) for every update of the
     step (the schedule counts RL steps). A non-finite loss or gradient skips that update
     (counted in `skipped`); a minibatch without trainable tokens (padding rows only) updates
     nothing.
  6. state.step += 1 (TrainState.step counts RL steps). MoE router correction biases are frozen
     during RL (balanced in mid-training; RL batches are too small to steer them).

Metrics over the applied updates (token statistics weighted by each update's trainable tokens):
loss, pg_loss, grad_norm, kl (to the reference: the objective's estimator, k3 when it has none),
entropy, clip_frac, approx_kl, ratio_mean; lr; updates (applied); skipped (non-finite);
first_loss (the first update's loss, at the pre-update params); once per batch:
old_logp_diff_max/_mean, adv_mean, adv_abs_mean, reward_shaped_mean, groups_kept,
groups_dropped, rows_dropped, train_tokens, policy_tokens.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agentic_jax import models
from agentic_jax.data.tokenizer import EOS_ID, SPECIALS
from agentic_jax.models.config import ModelConfig
from agentic_jax.objectives import rl as rl_obj
from agentic_jax.rl import config as rl_config
from agentic_jax.train import optim as optim_lib
from agentic_jax.train.state import TrainState, step_key

Array = jax.Array

OLD_LOGP = ("sampler", "recompute")
SAMPLE_BY = ("turn", "row")
POLICY_KEYS = ("inputs", "targets", "positions", "segment_ids", "mask", "old_logp", "group_id",
               "traj_id", "turn_index", "rewards", "truncated", "sample_mask", "response_len")
TOKEN_KEYS = ("inputs", "targets", "positions", "segment_ids")  # [F, T]
SAMPLE_TOKEN_KEYS = ("index", "mask", "old_logp")  # [F, S, L]
SAMPLE_KEYS = ("group_id", "traj_id", "turn_index", "rewards", "truncated", "sample_mask",
               "response_len", "tool_len")  # [F, S]
# (<|end_turn|>, </s>) of our own tokenizers' fixed layout: pack_batch's default for tests; the
# RL loop passes the tokenizer's own (sampler.turn_end_ids(tokenizer)).
_STOP_IDS = (SPECIALS["<|end_turn|>"][0], EOS_ID)
_MEAN_METRICS = ("loss", "pg_loss", "kl", "entropy", "clip_frac", "approx_kl", "ratio_mean",
                 "grad_norm")
_TOKEN_METRICS = ("kl", "entropy", "clip_frac", "approx_kl", "ratio_mean")


def objective_from_config(config: Any) -> rl_obj.RLObjective:
  """The typed RLObjective of config.rl (rl/config.py `objective`: loss, preset, loss_options
  built once); ConfigError naming config.rl.loss / config.rl.preset / config.rl.loss_options.KEY.
  The step factories take it; pass the one check_rl_config returned rather than rebuilding."""
  return rl_config.objective(config)


def variables_of(params: Any, router_state: Any) -> dict:
  out = {"params": params}
  if router_state:
    out["router_state"] = router_state
  return out


def token_logp(model: Any, variables: Any, rows: Mapping[str, Array], temperature: float = 1.0
               ) -> tuple[Array, Array]:
  """(logp [F, T], entropy [F, T]): log_softmax(logits / temperature) at rows["targets"] and
  the entropy of that distribution, from one forward of `model` on the rows.

  A negative target -(k + 1) stands for the event "any token but k": its logp is
  log(1 - p_k). RA3's E-step (rl/ra3_estep.py) trains the binary decision "continue" (= not
  <|think|>) at an action boundary this way, where the row's real next token is the expert's."""
  logits = model.apply(variables, rows["inputs"], rows["segment_ids"], rows["positions"])
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = logits / temperature
  logp_all = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  raw = rows["targets"].astype(jnp.int32)
  complement = raw < 0
  targets = jnp.where(complement, -raw - 1, raw)[..., None]
  logp = jnp.take_along_axis(logp_all, targets, axis=-1)[..., 0]
  # log1mexp only sees the complement entries (elsewhere a safe -1): a confident ordinary
  # token (logp ~ 0) would otherwise give -inf there and a NaN gradient through the where
  logp = jnp.where(complement, log1mexp(jnp.where(complement, logp, -1.0)), logp)
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy


def log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012: log(-expm1(x)) above
  -log 2, log1p(-exp(x)) below). x is clamped to <= -1e-12 (result >= about -27.6), so the value
  and its gradient stay finite when the excluded token had probability ~1; each branch gets a
  safe input so the unused one never produces a NaN gradient."""
  x = jnp.minimum(x, -1e-12)
  near = x > -math.log(2.0)
  a = jnp.where(near, x, -1.0)
  b = jnp.where(near, -1.0, x)
  return jnp.where(near, jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(b)))


def map_row_blocks(fn: Callable[[Any], Any], rows: Any, blocks: int) -> Any:
  """fn over `blocks` blocks of the rows (a pytree of [F, ...] arrays) one after another
  (jax.lax.map), so fn's temporaries live for F / blocks rows at a time; fn maps a pytree of
  [F / blocks, ...] rows to a pytree of [F / blocks, ...] results, the same function of each
  row whatever the block. The results come back in row order, equal to fn(rows).

  The blocks are INTERLEAVED: row r goes to block r % blocks. On a mesh the rows are split
  into contiguous shards over the batch axes (parallel/sharding.batch_spec); F / blocks is a
  multiple of the shard count (config.rl.row_bucket is a multiple of batch shards x
  minibatches), so every shard holds F / (shards x blocks) rows of every block and computes
  its own rows of each block in place, where contiguous blocks would land on few shards. F not
  a multiple of `blocks` (never from check_packed'ed batches): one block."""
  f = jax.tree.leaves(rows)[0].shape[0]
  if blocks <= 1 or f % blocks:
    return fn(rows)

  def split(x):  # [F, ...] -> [blocks, F / blocks, ...]: block b = rows b, b + blocks, ...
    return jnp.swapaxes(x.reshape((f // blocks, blocks) + x.shape[1:]), 0, 1)

  def merge(y):
    return jnp.swapaxes(y, 0, 1).reshape((f,) + y.shape[2:])

  return jax.tree.map(merge, jax.lax.map(fn, jax.tree.map(split, rows)))


def gather_samples(x: Array, index: Array) -> Array:
  """x [F, T] at index [F, S, L] -> [F, S, L]."""
  f, s, l = index.shape
  return jnp.take_along_axis(x, index.reshape(f, s * l), axis=1).reshape(f, s, l)


# ------------------------------------------------------------------ packing (host, numpy)

def _runs(pos: np.ndarray) -> list[np.ndarray]:
  """Maximal runs of consecutive positions."""
  if pos.size == 0:
    return []
  cuts = np.flatnonzero(np.diff(pos) != 1) + 1
  return np.split(pos, cuts)


def _first_fit(items: list[int], lengths: list[int], seq_len: int) -> tuple[int, dict]:
  """First-fit decreasing (stable, so deterministic) of sequences `items` with `lengths` into
  rows of seq_len: (rows used, {item: (row, offset, segment id)})."""
  fill: list[int] = []
  count: list[int] = []
  where = {}
  for i in sorted(items, key=lambda i: -lengths[i]):
    for j, used in enumerate(fill):
      if used + lengths[i] <= seq_len:
        break
    else:
      j = len(fill)
      fill.append(0)
      count.append(0)
    count[j] += 1
    where[i] = (j, fill[j], count[j])
    fill[j] += lengths[i]
  return len(fill), where


def _group_blocks(groups: list[int], lengths: list[int], blocks: int) -> list[list[int]]:
  """Sequences (their group ids, lengths) -> `blocks` lists of sequence indices holding whole
  groups, balanced by tokens (largest group first onto the lightest block; ties by order)."""
  members: dict[int, list[int]] = {}
  for i, g in enumerate(groups):
    members.setdefault(g, []).append(i)
  load = [0] * blocks
  out: list[list[int]] = [[] for _ in range(blocks)]
  for g in sorted(members, key=lambda g: -sum(lengths[i] for i in members[g])):
    k = min(range(blocks), key=lambda k: (load[k], k))
    out[k].extend(members[g])
    load[k] += sum(lengths[i] for i in members[g])
  return out


def pack_batch(batch: Mapping[str, Any], *, seq_len: int, sample_by: str, sample_len: int,
               row_bucket: int = 1, sample_bucket: int = 1, minibatches: int = 1,
               whole_groups: bool = False,
               stop_ids: Sequence[int] = _STOP_IDS) -> tuple[dict, dict]:
  """Packs a policy batch (module docstring) -> (packed arrays, stats). Rows with
  sample_mask False (padding, or dropped by policy_batch) are left out; a sequence longer than
  seq_len or a sample longer than sample_len raises ValueError naming the row. F is rounded up
  to a multiple of row_bucket and S of sample_bucket (padding samples: sample_mask False).
  whole_groups with minibatches = k > 1: the sequences of each group (group_id) go to one of k
  blocks of F/k forward rows (block b = rows [b F/k, (b+1) F/k)), groups balanced by tokens,
  so a minibatch of blocks holds whole groups (minibatch_split "groups").
  stop_ids: the tokens a finished turn ends with (sample_by "turn": a truncated row's turns that
  end with one were not cut), the tokenizer's (sampler.turn_end_ids).
  stats: sequences, forward_rows, samples, sample_slots, tokens (real), token_slots (F x T)."""
  stop_ids = frozenset(int(i) for i in stop_ids)
  if sample_by not in SAMPLE_BY:
    raise ValueError(f"pack_batch: sample_by must be one of {SAMPLE_BY}, got {sample_by!r}")
  if minibatches < 1 or (whole_groups and row_bucket % minibatches):
    raise ValueError(f"pack_batch: minibatches={minibatches} must be >= 1 and divide "
                     f"row_bucket={row_bucket} for whole groups")
  missing = [k for k in POLICY_KEYS if k not in batch]
  if missing:
    raise ValueError(f"policy batch: missing field(s) {missing}; expected {list(POLICY_KEYS)}")
  b = {k: np.asarray(batch[k]) for k in POLICY_KEYS}
  if b["inputs"].ndim != 2:
    raise ValueError(f"policy batch: field 'inputs': expected [N, T], got {b['inputs'].shape}")
  n, width = b["inputs"].shape
  for k in POLICY_KEYS:
    want = (n, width) if k in TOKEN_KEYS + ("mask", "old_logp") else (n,)
    if b[k].shape != want:
      raise ValueError(f"policy batch: field {k!r}: expected shape {list(want)}, "
                       f"got {list(b[k].shape)}")
  seqs, samples = [], []  # seqs: (row, length); samples: (seq index, dict)
  for r in np.flatnonzero(b["sample_mask"]):
    length = int((b["segment_ids"][r] > 0).sum())
    if length > seq_len:
      raise ValueError(f"policy batch row {r}: {length} positions > config.rl.seq_len={seq_len}")
    if length and not np.all(b["segment_ids"][r, :length] > 0):
      raise ValueError(f"policy batch row {r}: real tokens must come first (right padding)")
    pos = np.flatnonzero(b["mask"][r] > 0)
    if pos.size and pos[-1] >= length:
      raise ValueError(f"policy batch row {r}: field 'mask' is 1 on padding position {pos[-1]}")
    groups = _runs(pos) if sample_by == "turn" else [pos]
    for k, p in enumerate(groups):
      if len(p) > sample_len:
        raise ValueError(f"policy batch row {r}: a sample of {len(p)} trainable tokens > "
                         f"sample_len={sample_len} (config.rl.max_new_tokens per turn)")
      nxt = groups[k + 1][0] if k + 1 < len(groups) else None
      samples.append((len(seqs), {
          "pos": p, "group_id": b["group_id"][r], "traj_id": b["traj_id"][r],
          "turn_index": k if sample_by == "turn" else b["turn_index"][r],
          "rewards": b["rewards"][r], "response_len": len(p),
          # a turn is truncated when the row says one was and this one ends without a stop token
          "truncated": bool(b["truncated"][r]) and (sample_by == "row" or (
              len(p) > 0 and int(b["targets"][r, p[-1]]) not in stop_ids)),
          # observation tokens after this sample up to the next one (within its trajectory)
          "tool_len": (int(nxt - p[-1] - 1) if nxt is not None else 0) if sample_by == "turn"
                      else (int(p[-1] - p[0] + 1 - len(p)) if len(p) else 0)}))
    seqs.append((r, length))
  lengths = [length for _, length in seqs]
  if whole_groups and minibatches > 1:
    blocks = _group_blocks([int(b["group_id"][r]) for r, _ in seqs], lengths, minibatches)
  else:
    blocks = [list(range(len(seqs)))]
  packed_blocks = [_first_fit(items, lengths, seq_len) for items in blocks]
  if len(blocks) > 1:  # equal blocks, together a multiple of row_bucket
    unit = row_bucket // minibatches
    per_block = -(-max(max(used for used, _ in packed_blocks), 1) // unit) * unit
    f = per_block * len(blocks)
  else:
    per_block = 0
    f = -(-max(packed_blocks[0][0], 1) // row_bucket) * row_bucket
  where = [None] * len(seqs)
  for k, (_, placed) in enumerate(packed_blocks):
    for i, (j, off, seg) in placed.items():
      where[i] = (k * per_block + j, off, seg)
  per_row = np.zeros(f, np.int64)
  for s, _ in samples:
    per_row[where[s][0]] += 1
  s_max = -(-max(int(per_row.max()), 1) // sample_bucket) * sample_bucket
  out = {k: np.zeros((f, seq_len), np.int32) for k in TOKEN_KEYS}
  out["index"] = np.zeros((f, s_max, sample_len), np.int32)
  out["mask"] = np.zeros((f, s_max, sample_len), np.float32)
  out["old_logp"] = np.zeros((f, s_max, sample_len), np.float32)
  for k in SAMPLE_KEYS:
    dtype = {"rewards": np.float32, "truncated": bool, "sample_mask": bool}.get(k, np.int32)
    out[k] = np.full((f, s_max), -1 if k in ("group_id", "traj_id") else 0, dtype)
  for i, (r, length) in enumerate(seqs):
    j, off, seg = where[i]
    sl = slice(off, off + length)
    for k in ("inputs", "targets", "positions"):
      out[k][j, sl] = b[k][r, :length]
    out["segment_ids"][j, sl] = seg
  slot = np.zeros(f, np.int64)
  for s, d in samples:
    j, off, _ = where[s]
    k, m = slot[j], len(d["pos"])
    slot[j] += 1
    r = seqs[s][0]
    out["index"][j, k, :m] = off + d["pos"]
    out["mask"][j, k, :m] = 1.0
    out["old_logp"][j, k, :m] = b["old_logp"][r, d["pos"]]
    for key in SAMPLE_KEYS:
      out[key][j, k] = True if key == "sample_mask" else d[key]
  tokens = int(sum(lengths))
  return out, {"sequences": len(seqs), "forward_rows": f, "samples": len(samples),
               "sample_slots": f * s_max, "tokens": tokens, "token_slots": f * seq_len}


def check_packed(packed: Mapping[str, Any], *, minibatches: int,
                 whole_groups: bool = False) -> dict[str, int]:
  """Host-side check of a packed batch; ValueError naming the field. Returns the counts of
  objectives.rl.validate_rollout_batch over the samples (rows, trajectories, groups, tokens).
  whole_groups: every group must lie in one block of F / minibatches forward rows."""
  keys = TOKEN_KEYS + SAMPLE_TOKEN_KEYS + SAMPLE_KEYS
  missing = [k for k in keys if k not in packed]
  if missing:
    raise ValueError(f"packed batch: missing field(s) {missing}")
  a = {k: np.asarray(packed[k]) for k in keys}
  f, t = a["inputs"].shape
  _, s, l = a["index"].shape
  for k in keys:
    want = (f, t) if k in TOKEN_KEYS else (f, s, l) if k in SAMPLE_TOKEN_KEYS else (f, s)
    if a[k].shape != want:
      raise ValueError(f"packed batch: field {k!r}: expected shape {list(want)}, "
                       f"got {list(a[k].shape)}")
  if minibatches < 1 or f % minibatches:
    raise ValueError(f"packed batch: {f} forward rows are not divisible by config.rl.minibatches="
                     f"{minibatches} (config.rl.row_bucket must be a multiple of it)")
  if a["index"].min() < 0 or a["index"].max() >= t:
    raise ValueError(f"packed batch: field 'index' must be in [0, {t})")
  if whole_groups:
    block = np.repeat(np.arange(f) // (f // minibatches), s).reshape(f, s)
    seen: dict[int, int] = {}
    for g, k in zip(a["group_id"][a["sample_mask"]], block[a["sample_mask"]]):
      if seen.setdefault(int(g), int(k)) != int(k):
        raise ValueError(f"packed batch: group {int(g)} spans minibatch blocks {seen[int(g)]} and "
                         f"{int(k)}; pack it with pack_batch(minibatches={minibatches}, "
                         "whole_groups=True) for minibatch_split='groups'")
  flat = {k: a[k].reshape(f * s, l) if k in SAMPLE_TOKEN_KEYS else a[k].reshape(f * s)
          for k in SAMPLE_TOKEN_KEYS + SAMPLE_KEYS}
  return rl_obj.validate_rollout_batch({**flat, "logp": flat["old_logp"]})


# ------------------------------------------------------------------ the step

def _settings(config: Any, objective: Optional[rl_obj.RLObjective]):
  rl = config.rl
  obj = objective if objective is not None else objective_from_config(config)
  if rl.old_logp not in OLD_LOGP:
    raise ValueError(f"config.rl.old_logp must be one of {OLD_LOGP}, got {rl.old_logp!r}")
  epochs, n_mb = int(rl.ppo_epochs), int(rl.minibatches)
  if epochs < 1:
    raise ValueError(f"config.rl.ppo_epochs must be >= 1, got {epochs}")
  if n_mb < 1:
    raise ValueError(f"config.rl.minibatches must be >= 1, got {n_mb}")
  temperature = float(rl.temperature) if rl.temperature > 0 else 1.0
  return obj, epochs, n_mb, temperature


def _flat(x: Array) -> Array:
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def make_loss_fn(model_cfg: ModelConfig, config: Any,
                 objective: Optional[rl_obj.RLObjective] = None) -> Callable:
  """loss_fn(params, router_state, mb) -> (loss, (objective metrics, logp [f, S, L])) of one
  minibatch: TOKEN_KEYS [f, T], index [f, S, L], and the prepared per-sample fields old_logp,
  ref_logp, mask [f, S, L], adv, keep, group_id, traj_id [f, S], and with agg_scope "rollout"
  weights [f, S, L] (the rollout batch's aggregation weights; the loss is rl.minibatches times
  their weighted sum). What the step differentiates."""
  obj, _, n_mb, temperature = _settings(config, objective)
  model = models.build(model_cfg)
  entropy_grad = obj.options.entropy_coef != 0
  carried = obj.options.agg_scope == "rollout"

  def loss_fn(params, router_state, mb):
    logp_t, ent_t = token_logp(model, variables_of(params, router_state), mb, temperature)
    logp = gather_samples(logp_t, mb["index"])
    entropy = gather_samples(ent_t, mb["index"])
    if not entropy_grad:  # a metric only: no gradient through it
      entropy = jax.lax.stop_gradient(entropy)
    # k * (this minibatch's share of the rollout batch's loss): unbiased over the random split
    weights = float(n_mb) * _flat(mb["weights"]) if carried else None
    loss, m = obj.loss(_flat(logp), _flat(mb["old_logp"]), _flat(mb["adv"]), _flat(mb["mask"]),
                       ref_logp=_flat(mb["ref_logp"]), entropy=_flat(entropy),
                       sample_mask=_flat(mb["keep"]), group_id=_flat(mb["group_id"]),
                       traj_id=_flat(mb["traj_id"]), token_weights=weights)
    return loss, (m, jax.lax.stop_gradient(logp))

  return loss_fn


def make_rl_step(model_cfg: ModelConfig, config: Any,
                 objective: Optional[rl_obj.RLObjective] = None, *,
                 optimizer: Optional[optax.GradientTransformation] = None,
                 logp_chunks: Optional[int] = None) -> Callable:
  """rl_step(state, ref_variables, packed) -> (state, metrics); see the module docstring.
  `optimizer`: the lr-free transformation of each update's gradients (default config.optim's
  AdamW chain; state.opt_state must be its state). `logp_chunks`: how many row blocks the
  reference (and "recompute") forwards run in (map_row_blocks); default config.rl.minibatches,
  1 = one forward over all rows (same values, the larger peak)."""
  obj, epochs, n_mb, temperature = _settings(config, objective)
  chunks = n_mb if logp_chunks is None else int(logp_chunks)
  if chunks < 1:
    raise ValueError(f"make_rl_step: logp_chunks must be >= 1, got {logp_chunks}")
  recompute = config.rl.old_logp == "recompute"
  model = models.build(model_cfg)
  tx = optimizer if optimizer is not None else optim_lib.make_optimizer(config.optim)
  o = obj.options
  carried = o.agg_scope == "rollout"
  by_group = o.minibatch_split == "groups"
  schedule = optim_lib.schedule_from_config(config)
  grad_fn = jax.value_and_grad(make_loss_fn(model_cfg, config, obj), has_aux=True)
  tool_lengths = o.overlong == "shape" and o.overlong_counts_tool_tokens

  def sample_logp(variables: Any, rows: Mapping[str, Array]) -> Array:
    """log-probs [F, S, L] of `variables` at the samples, without gradient, in `chunks`
    blocks of rows (the logits of F / chunks rows at a time)."""
    def block(r):
      return gather_samples(token_logp(model, variables, r, temperature)[0], r["index"])
    return jax.lax.stop_gradient(map_row_blocks(block, rows, chunks))

  def rl_step(state: TrainState, ref_variables: Any, packed: Mapping[str, Array]):
    p = {k: jnp.asarray(v) for k, v in packed.items()}
    f, s, _ = p["index"].shape
    fwd_rows = {k: p[k] for k in TOKEN_KEYS}
    mask = p["mask"].astype(jnp.float32)
    valid = p["sample_mask"].astype(bool)
    on = (mask > 0) & valid[..., None]
    logp_rows = {**fwd_rows, "index": p["index"]}
    ref_logp = sample_logp(ref_variables, logp_rows)
    sampler_logp = p["old_logp"].astype(jnp.float32)
    if recompute:
      old_logp = sample_logp(variables_of(state.params, state.router_state), logp_rows)
      diff = jnp.where(on, jnp.abs(old_logp - sampler_logp), 0.0)
      diff_max, diff_mean = jnp.max(diff), jnp.sum(diff) / jnp.maximum(jnp.sum(on), 1)
    else:
      old_logp = sampler_logp

    # -- once per rollout batch, over all samples: filter, shape, advantages, train mask
    fl = {k: _flat(p[k]) for k in SAMPLE_KEYS}
    rewards = fl["rewards"].astype(jnp.float32)
    keep, fstats = obj.filter_groups(rewards, fl["group_id"], sample_mask=fl["sample_mask"])
    shaped, _ = obj.shape_rewards(
        rewards, lengths=fl["response_len"], tool_lengths=fl["tool_len"] if tool_lengths else None,
        logp=_flat(old_logp), ref_logp=_flat(ref_logp), mask=_flat(mask),
        group_id=fl["group_id"], traj_id=fl["traj_id"], sample_mask=keep)
    adv = obj.advantages(shaped, fl["group_id"], traj_id=fl["traj_id"], sample_mask=keep)
    train_mask = obj.train_mask(_flat(mask), fl["truncated"]).reshape(mask.shape)
    keep_f = keep.astype(jnp.float32)
    per_row = {**fwd_rows, "index": p["index"], "old_logp": old_logp, "ref_logp": ref_logp,
               "mask": train_mask, "adv": adv.reshape(f, s), "keep": keep.reshape(f, s),
               "group_id": p["group_id"], "traj_id": p["traj_id"], "sampler_logp": sampler_logp}
    if carried:  # the rollout batch's weights, counted once, sliced with the minibatches
      per_row["weights"] = jax.lax.stop_gradient(obj.token_weights(
          _flat(train_mask), sample_mask=keep, group_id=fl["group_id"],
          traj_id=fl["traj_id"]).reshape(mask.shape))

    # -- ppo_epochs x minibatches updates over the forward rows
    key = step_key(state)
    if by_group:  # the packer's k blocks of whole groups, in a permuted order each epoch
      rows_per = f // n_mb
      order = jnp.concatenate([
          jax.random.permutation(jax.random.fold_in(key, e), n_mb)[:, None] * rows_per
          + jnp.arange(rows_per)[None, :] for e in range(epochs)])
    else:
      order = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), f)
                         for e in range(epochs)]).reshape(epochs * n_mb, f // n_mb)
    lr = schedule(state.step)

    def update(carry, idx):
      params, opt_state, skips = carry
      mb = {k: jnp.take(v, idx, axis=0) for k, v in per_row.items()}
      (loss, (m, logp)), grads = grad_fn(params, state.router_state, mb)
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      has = m["num_tokens"] > 0  # a minibatch of padding rows only: no update at all
      ok = finite & has

      def apply(_):
        updates, new_opt = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, optim_lib.apply_lr(updates, lr)), new_opt

      params, opt_state = jax.lax.cond(ok, apply, lambda _: (params, opt_state), None)
      d_on = (mb["mask"] > 0) & mb["keep"][..., None]
      d = jnp.where(d_on, jnp.abs(logp - mb["sampler_logp"]), 0.0)
      zero = jnp.zeros((), jnp.float32)  # a loss without clipping/ratios reports 0 for them
      out = {"loss": loss, "pg_loss": m["pg_loss"], "kl": m.get("kl_ref", zero),
             "entropy": m.get("entropy", zero), "clip_frac": m.get("clipfrac", zero),
             "approx_kl": m.get("approx_kl", zero), "ratio_mean": m.get("ratio_mean", zero),
             "grad_norm": grad_norm, "ok": ok,
             "n_tok": m["num_tokens"], "diff_max": jnp.max(d), "diff_sum": jnp.sum(d),
             "diff_n": jnp.sum(d_on)}
      return (params, opt_state, skips + (~finite & has).astype(jnp.int32)), out

    (params, opt_state, skips), ms = jax.lax.scan(
        update, (state.params, state.opt_state, jnp.zeros((), jnp.int32)), order)

    # per-update values: token statistics weighted by the update's tokens, the rest averaged
    # over the applied updates
    w = jnp.where(ms["ok"], ms["n_tok"], 0.0)
    n_good = jnp.maximum(jnp.sum(ms["ok"].astype(jnp.float32)), 1.0)
    metrics = {k: (jnp.sum(w * ms[k]) / jnp.maximum(jnp.sum(w), 1.0) if k in _TOKEN_METRICS
                   else jnp.sum(jnp.where(ms["ok"], ms[k], 0.0)) / n_good) for k in _MEAN_METRICS}
    if not recompute:  # the first minibatch of the first epoch ran at the pre-update params
      diff_max, diff_mean = ms["diff_max"][0], ms["diff_sum"][0] / jnp.maximum(ms["diff_n"][0], 1)
    n_keep = jnp.maximum(jnp.sum(keep_f), 1.0)
    metrics.update(
        lr=lr, skipped=skips, first_loss=ms["loss"][0], old_logp_diff_max=diff_max,
        old_logp_diff_mean=diff_mean, adv_mean=jnp.sum(adv * keep_f) / n_keep,
        adv_abs_mean=jnp.sum(jnp.abs(adv) * keep_f) / n_keep,
        reward_shaped_mean=jnp.sum(shaped * keep_f) / n_keep,
        groups_kept=fstats["groups_kept"], groups_dropped=fstats["groups_dropped"],
        rows_dropped=fstats["rows_dropped"],
        train_tokens=jnp.sum(_flat(train_mask) * keep_f[:, None]).astype(jnp.int32),
        policy_tokens=jnp.sum(on).astype(jnp.int32),
        updates=jnp.sum(ms["ok"]).astype(jnp.int32))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              nan_skips=state.nan_skips + skips)
    return new_state, metrics

  return rl_step


def jit_rl_step(step_fn: Callable, *, donate: bool = True) -> Callable:
  """Single-device jit; the state is donated (updated in place)."""
  return jax.jit(step_fn, donate_argnums=(0,) if donate else ())
