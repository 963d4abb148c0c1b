"""Speculative decoding with the MTP module as the draft model (issue 17 item 2).

`sampling.generate(..., draft="mtp", num_draft_tokens=k)` runs `generate_arrays` below. One
round, with x the newest emitted token (not yet in the main cache, at slot c):

  1. draft: MTP depth 1 proposes d_1..d_k, each from its own previous output (its block output
     stands in for the main model's hidden state, as vLLM chains the released MTP weights);
  2. verify: ONE main-model forward over [x, d_1..d_k] at slots c..c+k through the compressed
     MLA cache gives p_0..p_k (p_j: the target distribution of the token after slot c+j);
  3. accept: greedy: d_j while d_j == argmax p_{j-1}; sampled: d_j with probability
     min(1, p_{j-1}(d_j) / q_j(d_j)), and at the first rejection a token from
     norm(max(0, p_{j-1} - q_j)); if all k pass, a bonus token from p_k. Each emitted token is
     then an exact sample of p given the tokens before it (Leviathan et al. 2023, Chen et al.
     2023), so the output has the distribution of plain decoding (greedy: the same tokens).
  4. the cache index moves to c + n + 1 (slots past it are stale and are overwritten before any
     query can see them: a forward writes its slots before attending, and causality hides the
     later ones); the MTP's cache is brought up to date over the same k+1 slots with the main
     model's hidden states of this forward paired with the tokens now known to follow them.

Rows of a batch share one cache index, so they advance in lockstep: n = the fewest drafts any
unfinished row accepted, and each row emits n + 1 tokens (its own accepted d_{n+1} where it
accepted more). A token is emitted or not depending only on the tokens before it and on the
other rows, never on its own value, so this keeps every row exact.

On a device mesh (params sharded, e.g. by parallel.variable_shardings; no mesh context needed)
the mesh is found as sampling's decoders find it (sampling.decode_mesh) and every forward, the
main model's and the MTP's, is built from sampling.decode_config / step_config on it and applied
inside sampling.on_mesh: with moe_dispatch="expert_parallel" on an expert axis the MoE layers
run the all-to-all exchange, never gathering the experts' weights on every device.

Temperature and top_p apply to p and to q alike (the acceptance rule holds for any q). Logprobs
are log_softmax(p-logits / T) at each emitted token (T = 1 when greedy), as `sampling` returns.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from agentic_jax.models import ModelConfig, build, init_cache
from agentic_jax.models import mtp as mtp_lib

Array = jax.Array


def probs(logits: Array, temperature: float, top_p: float) -> Array:
  """The sampling distribution plain decoding draws from (sampling.sample_logits): softmax of
  logits / T restricted to the top-p nucleus (the smallest sorted prefix reaching top_p)."""
  scaled = logits.astype(jnp.float32) / temperature
  if top_p < 1.0:
    p = jax.nn.softmax(scaled, axis=-1)
    order = jnp.argsort(-scaled, axis=-1)
    sorted_p = jnp.take_along_axis(p, order, axis=-1)
    keep_sorted = (jnp.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
    inverse = jnp.argsort(order, axis=-1)
    keep = jnp.take_along_axis(keep_sorted, inverse, axis=-1)
    scaled = jnp.where(keep, scaled, -jnp.inf)
  return jax.nn.softmax(scaled, axis=-1)


def accept_drafts(p: Array, q: Array, drafts: Array, key: Array) -> tuple[Array, Array]:
  """The acceptance rule on one row set: p [B, k+1, V] target distributions (p[:, j] for the
  token at draft position j, p[:, k] the bonus), q [B, k, V] draft distributions, drafts [B, k].

  Returns (accepted [B, k] bool: draft j passed its test, fallback [B, k+1]: at position j the
  token to emit if draft j is rejected (a sample of norm(max(0, p_j - q_j))), or, at j = k, the
  bonus sample of p_k)."""
  k = drafts.shape[1]
  k_u, k_r = jax.random.split(key)
  pd = jnp.take_along_axis(p[:, :k], drafts[..., None], axis=-1)[..., 0]
  qd = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
  u = jax.random.uniform(k_u, pd.shape)
  accepted = u * qd < pd  # u < p/q; q(d) > 0 for a token drawn from q
  residual = jnp.maximum(p[:, :k] - q, 0.0)
  mass = jnp.sum(residual, axis=-1, keepdims=True)
  residual = jnp.where(mass > 0, residual / jnp.where(mass > 0, mass, 1.0), p[:, :k])
  dists = jnp.concatenate([residual, p[:, k:]], axis=1)
  fallback = jax.random.categorical(k_r, jnp.log(dists), axis=-1).astype(jnp.int32)
  return accepted, fallback


def _isin(tok: Array, ids: tuple[int, ...]) -> Array:
  return jnp.any(tok[:, None] == jnp.asarray(ids, jnp.int32)[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "num_draft_tokens",
                                             "temperature", "top_p", "eos_id", "stop_ids",
                                             "arm_ids"))
def generate_arrays(cfg: ModelConfig, variables: dict, tokens: Array, lengths: Array, key: Array, *,
                    max_new_tokens: int, num_draft_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, eos_id: Optional[int] = None,
                    stop_ids: tuple[int, ...] = (), arm_ids: tuple[int, ...] = ()
                    ) -> tuple[Array, Array, Array, dict]:
  """Speculative `sampling.generate_arrays` (same arguments and outputs) plus stats
  {"rounds", "drafted", "accepted"}: verify forwards, and per-row sums over unfinished rows of
  drafts proposed and drafts that passed the acceptance test."""
  from agentic_jax import sampling  # pylint: disable=import-outside-toplevel  (sampling imports us)
  if cfg.num_mtp_layers < 1:
    raise ValueError("generate: draft='mtp' needs a model with an MTP module "
                     "(ModelConfig.num_mtp_layers >= 1)")
  sampling.check_stop_rule(stop_ids, arm_ids)
  k = num_draft_tokens
  greedy = temperature <= 0.0
  batch, width = tokens.shape
  slots = width + max_new_tokens + k + 1
  rows = jnp.arange(batch)

  def dist(logits):
    return probs(logits, 1.0 if greedy else temperature, top_p)

  def pick(logits, key_):
    if greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key_, jnp.log(dist(logits)), axis=-1).astype(jnp.int32)

  def logprob(logits, tok):
    lp = jax.nn.log_softmax(logits.astype(jnp.float32) / (1.0 if greedy else temperature), -1)
    return jnp.take_along_axis(lp, tok[..., None], axis=-1)[..., 0]

  # ---- prefill: main model over the prompts, then MTP depth 1 over (h_i, t_{i+1}) pairs
  pad = width - lengths
  col = jnp.arange(width, dtype=jnp.int32)[None, :]
  segment = (col >= pad[:, None]).astype(jnp.int32)
  positions = jnp.maximum(col - pad[:, None], 0)
  cache = init_cache(cfg, batch, slots)
  # the variables' mesh, as sampling's decoders find it: on an expert mesh the MoE layers (the
  # main model's and a MoE MTP block's) run the expert-parallel exchange, applied inside
  # on_mesh, instead of the dropless dispatch that gathers every expert on every device
  mesh = sampling.decode_mesh(variables)
  prefill_cfg = sampling.decode_config(cfg, mesh)
  with sampling.on_mesh(cfg, mesh):
    logits, cache, hidden = build(prefill_cfg).apply(
        variables, tokens, segment_ids=segment, positions=positions, cache=cache,
        return_hidden=True)
  first = pick(logits[:, -1], jax.random.fold_in(key, 0))
  first_logp = logprob(logits[:, -1], first)
  mcache = mtp_lib.init_mtp_cache(cfg, batch, slots)
  pairs = jnp.concatenate([tokens[:, 1:], first[:, None]], axis=1).astype(jnp.int32)
  with sampling.on_mesh(cfg, mesh):
    m_h, m_logits, mcache = mtp_lib.draft_prefill(prefill_cfg, variables, hidden, pairs,
                                                  positions, segment, mcache)

  out_tok = jnp.zeros((batch, max_new_tokens + 1), jnp.int32)  # last column: a discard slot
  out_logp = jnp.zeros((batch, max_new_tokens + 1), jnp.float32)
  done = jnp.zeros((batch,), bool)
  armed = jnp.full((batch,), not arm_ids)
  num_new = jnp.zeros((batch,), jnp.int32)

  def emit(j_valid, tok, logp, out_tok, out_logp, done, armed, num_new):
    valid = j_valid & ~done
    at = jnp.where(valid, num_new, max_new_tokens)
    out_tok = out_tok.at[rows, at].set(jnp.where(valid, tok, 0))
    out_logp = out_logp.at[rows, at].set(jnp.where(valid, logp, 0.0))
    num_new = num_new + valid.astype(jnp.int32)
    stop = num_new >= max_new_tokens
    if eos_id is not None:
      stop = stop | (tok == eos_id)
    if stop_ids:
      stop = stop | (armed & _isin(tok, stop_ids))
    done = done | (valid & stop)
    if arm_ids:
      armed = armed | (valid & _isin(tok, arm_ids))
    return out_tok, out_logp, done, armed, num_new

  out_tok, out_logp, done, armed, num_new = emit(
      jnp.ones((batch,), bool), first, first_logp, out_tok, out_logp, done, armed, num_new)
  zero = jnp.zeros((), jnp.int32)
  stats = {"rounds": zero, "drafted": zero, "accepted": zero}
  step_cfg = sampling.step_config(cfg, batch, mesh)
  verify_cfg = sampling.step_config(cfg, batch * (k + 1), mesh)
  verify_module = build(verify_cfg)

  def cond(state):
    return ~jnp.all(state["done"])

  def body(s):
    idx = s["idx"]  # slot of s["last"], the newest emitted token
    rkey = jax.random.fold_in(key, s["stats"]["rounds"] + 1)
    k_draft, k_acc = jax.random.split(rkey)
    base = lengths + (idx - width)  # RoPE position of slot idx, per row
    # ---- 1. draft
    drafts, q_dists = [], []
    q_logits, m_h, mc = s["q_logits"], s["m_h"], s["mcache"]
    for j in range(k):
      d = pick(q_logits, jax.random.fold_in(k_draft, j))
      drafts.append(d)
      if not greedy:
        q_dists.append(dist(q_logits))
      if j < k - 1:  # MTP at slot idx + j with (its own last output, d_{j+1})
        with sampling.on_mesh(cfg, mesh):
          h_new, l_new, mc = mtp_lib.draft_step(step_cfg, variables, m_h[:, None], d[:, None],
                                                (base + j)[:, None], idx + j, mc)
        m_h, q_logits = h_new[:, 0], l_new[:, 0]
    drafts = jnp.stack(drafts, 1)  # [B, k]
    # ---- 2. verify: one forward over [last, d_1..d_k]
    vtok = jnp.concatenate([s["last"][:, None], drafts], axis=1)
    vpos = base[:, None] + jnp.arange(k + 1, dtype=jnp.int32)[None, :]
    with sampling.on_mesh(cfg, mesh):
      p_logits, cache, hidden = verify_module.apply(
          variables, vtok, segment_ids=jnp.ones_like(vtok), positions=vpos, cache=s["cache"],
          return_hidden=True)
    # ---- 3. accept
    if greedy:
      target = jnp.argmax(p_logits, axis=-1).astype(jnp.int32)  # [B, k+1]
      accepted = drafts == target[:, :k]
      fallback = target
    else:
      accepted, fallback = accept_drafts(dist(p_logits), jnp.stack(q_dists, 1), drafts, k_acc)
    n_acc = jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=1), axis=1)  # [B]
    n = jnp.min(jnp.where(s["done"], k, n_acc))
    emitted = jnp.where(jnp.arange(k + 1)[None, :] < n_acc[:, None],
                        jnp.concatenate([drafts, drafts[:, -1:]], 1), fallback)  # [B, k+1]
    out = (s["out_tok"], s["out_logp"], s["done"], s["armed"], s["num_new"])
    live = ~s["done"]
    for j in range(k + 1):
      out = emit(j <= n, emitted[:, j], logprob(p_logits[:, j], emitted[:, j]), *out)
    last = jnp.take_along_axis(emitted, jnp.broadcast_to(n, (batch, 1)), axis=1)[:, 0]
    # ---- 4. caches: main index to idx + n + 1; MTP over (h_{idx+j}, emitted token j)
    cache = cache.replace(index=idx + n + 1)
    with sampling.on_mesh(cfg, mesh):
      h_all, l_all, mc = mtp_lib.draft_step(verify_cfg, variables, hidden, emitted, vpos, idx,
                                            mc)
    stats = {"rounds": s["stats"]["rounds"] + 1,
             "drafted": s["stats"]["drafted"] + k * jnp.sum(live),
             "accepted": s["stats"]["accepted"] + jnp.sum(jnp.where(live, n_acc, 0))}
    return dict(idx=idx + n + 1, cache=cache, mcache=mc, last=last,
                m_h=jax.lax.dynamic_index_in_dim(h_all, n, 1, keepdims=False),
                q_logits=jax.lax.dynamic_index_in_dim(l_all, n, 1, keepdims=False),
                out_tok=out[0], out_logp=out[1], done=out[2], armed=out[3], num_new=out[4],
                stats=stats)

  state = dict(idx=jnp.asarray(width, jnp.int32), cache=cache, mcache=mcache, last=first,
               m_h=m_h[:, -1], q_logits=m_logits[:, -1], out_tok=out_tok, out_logp=out_logp,
               done=done, armed=armed, num_new=num_new, stats=stats)
  state = jax.lax.while_loop(cond, body, state)
  return (state["out_tok"][:, :max_new_tokens], state["out_logp"][:, :max_new_tokens],
          state["num_new"], state["stats"])
