"""Decoding with the compressed MLA cache: prefill, one-token steps, and `generate`.

Prompts of different lengths are left-padded to a common length so every row writes the
same cache slot at each step; padded slots carry segment 0 and are never attended to, and
positions count from each prompt's own first token, so a padded row computes exactly what
it would alone. The whole decode loop is one jitted `lax.while_loop` that stops early when
every row has finished.

A row finishes at `eos_id`, or (stop rule, off by default) at a token of `stop_ids` emitted
after the row has emitted a token of `arm_ids` (with no `arm_ids`, every stop id counts). The
agent's policy turn `<|assistant|>...<|end_turn|><|tool_call|>NAME\nCALL<|end_turn|>` uses
arm = <|tool_call|>, stop = <|end_turn|>: the first <|end_turn|> (closing the thought) does not
stop the row, the one closing the tool call does. The finishing token is included in the output.

`prefill` and `decode_step` are the two halves of that loop, jitted on their own, for callers
that need each token as it is produced (streaming, text-level stop checks): a Python loop over
them computes what `generate_arrays` does (agentic_jax/inference/generate.py).

On a device mesh with an expert axis (params sharded for training, e.g. the RL policy), a
model with moe_dispatch="expert_parallel" decodes with the all-to-all expert exchange at a
capacity that drops nothing, equal to `dropless` on one device (`decode_config`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax.models import KVCache, ModelConfig, build, init_cache, moe_expert_parallel

Array = jax.Array


def sample_logits(logits: Array, key: Array, temperature: float, top_p: float) -> tuple[Array, Array]:
  """Picks one token per row from float32 logits [B, V].

  Returns (tokens [B], logprobs [B]) where logprobs are log-softmax(logits / T) at the chosen
  token (T = 1 for greedy), i.e. the policy's log-probability before nucleus truncation.
  """
  if temperature <= 0.0:
    tokens = jnp.argmax(logits, axis=-1)
    logp = jax.nn.log_softmax(logits, axis=-1)
  else:
    scaled = logits / temperature
    logp = jax.nn.log_softmax(scaled, axis=-1)
    if top_p < 1.0:
      # keep the smallest prefix of the sorted distribution whose mass reaches top_p
      order = jnp.argsort(-scaled, axis=-1)
      sorted_p = jnp.take_along_axis(jnp.exp(logp), order, axis=-1)
      before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
      keep_sorted = before < top_p
      keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
      scaled = jnp.where(keep, scaled, -jnp.inf)
    tokens = jax.random.categorical(key, scaled, axis=-1)
  chosen = jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
  return tokens.astype(jnp.int32), chosen


def decode_mesh(variables: object = None) -> jax.sharding.AbstractMesh:
  """The device mesh a decode traced now runs on: the mesh in force (`jax.set_mesh(mesh)`,
  `jax.sharding.use_abstract_mesh`), else the mesh of the first array of `variables` placed
  with a NamedSharding over more than one device (e.g. the RL state's sharded params, or
  params put on `NamedSharding(mesh, P())`), else the empty mesh (one device). Works on
  concrete arrays and on jit tracers (their abstract value carries the sharding's mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh
  for leaf in jax.tree.leaves(variables):
    try:
      found = jax.typeof(leaf).sharding.mesh
    except (AttributeError, TypeError):
      continue
    if not found.empty and math.prod(found.shape.values()) > 1:
      return found
  return mesh


def _expert_shards(cfg: ModelConfig, mesh: Optional[jax.sharding.AbstractMesh]) -> int:
  """Size of cfg.expert_axis in `mesh` (None: the mesh in force); 1 without one."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  return 1 if mesh.empty else int(dict(mesh.shape).get(cfg.expert_axis, 1))


def decode_config(cfg: ModelConfig,
                  mesh: Optional[jax.sharding.AbstractMesh] = None) -> ModelConfig:
  """The config decoding runs with on `mesh` (default: the abstract mesh in force; the
  decoders here pass `decode_mesh(variables)`).

  `expert_parallel` on a mesh whose `cfg.expert_axis` has size ep > 1 (the rollout decoder
  jitted over the RL policy's expert-sharded params): prefill and per-token steps keep the
  all-to-all exchange (models/moe_expert_parallel.py), so each device runs only its own
  experts and expert weights are never gathered, with `capacity_factor = ep`. The exchange's
  buffer per (source, destination) device pair is C = min(m*K, ceil(capacity_factor*m*K/ep))
  rows, K = top-k, m = ceil(B*S / S_tok) token rows per device for a forward over B rows of
  S tokens (a step: S = 1; prefill: S = P) split over the S_tok devices of the mesh's
  ep_token_axes; so C = m*K: all FFN slots of a device's rows fit in the block of one
  destination even if every one of them goes there, and no slot can be dropped. The result
  is then the dropless one (the same function, up to float reduction order). Cost: ep*m*K
  rows of d per device per MoE layer each way, plus one all-gather of the [B*S, d] output
  rows (decoder activations are replicated; `on_mesh`). Off such a mesh (one device, or no
  expert axis > 1) it switches to `dropless`, as below, exactly as before.

  `capacity`, and `expert_parallel` off an expert mesh: buffers sized for a few tokens per
  step would drop slots, so decoding switches to the exact `dropless` dispatch (on one
  device; under a mesh in force, per token shard).

  The decoders here (`generate_arrays`, `prefill`, `decode_step`) find the mesh either way:
  from `jax.set_mesh(mesh)` when called inside it, else from the variables' NamedShardings
  (params sharded by parallel.variable_shardings or placed NamedSharding(mesh, P())); they
  need neither the context nor replicated inputs. A caller building its own decoder does the
  same (sampling_speculative, rl/ra3_annotate): mesh = decode_mesh(variables), the module
  from decode_config(cfg, mesh) / step_config, applied inside on_mesh(cfg, mesh); from
  `decode_config(cfg)` alone it gets the exchange only under `jax.set_mesh(mesh)`, else
  dropless."""
  if cfg.is_moe and cfg.moe_dispatch == "expert_parallel":
    ep = _expert_shards(cfg, mesh)
    if ep > 1:
      return cfg.replace(capacity_factor=float(ep))
  if cfg.is_moe and cfg.moe_dispatch in ("capacity", "expert_parallel"):
    return cfg.replace(moe_dispatch="dropless")
  return cfg


def step_config(cfg: ModelConfig, tokens_per_step: int,
                mesh: Optional[jax.sharding.AbstractMesh] = None) -> ModelConfig:
  """The config of one decode step over `tokens_per_step` tokens on `mesh` (as in
  `decode_config`): `decode_config`, with the blocked kernel's block (dropless, and the local
  kernel of the expert-parallel exchange) shrunk to the expected rows per expert (a power of
  two, >= 8): a decode step routes only tokens_per_step * top_k slots, and full-size blocks
  would pad each used expert to dropless_block_size rows (16 x 64 new tokens on the tiny
  LongCat: ~1.4x faster at block 8 than at 128). Block size changes no result, only the
  padding."""
  dc = decode_config(cfg, mesh)
  if not (dc.is_moe and dc.dispatch_kernel in ("dropless_blocked", "expert_parallel")):
    return dc
  per_expert = -(-tokens_per_step * dc.num_experts_per_tok // dc.n_routed_experts)
  block = max(8, 1 << max(per_expert - 1, 0).bit_length())
  return dc.replace(dropless_block_size=block) if block < dc.dropless_block_size else dc


@contextlib.contextmanager
def on_mesh(cfg: ModelConfig, mesh: jax.sharding.AbstractMesh, *,
            rows_split: bool = False) -> Iterator[None]:
  """Context in which to apply a decoder built from `decode_config(cfg, mesh)` (mesh from
  `decode_mesh`). When that config runs the expert-parallel exchange: `mesh` made the mesh in
  force if none is (the MoE layers' exchange reads it; jit tracers carry the variables' mesh,
  not a context), and the exchange's output rows gathered to every device
  (moe_expert_parallel.gathered_rows), unless `rows_split`: the decoder runs under logical-axis
  rules that split its rows over the batch axes (generate_arrays' `logical_rules`), and the
  exchange's output rows stay split like its input rows. Otherwise nothing, so every other
  decode traces as before."""
  if not (cfg.is_moe and cfg.moe_dispatch == "expert_parallel" and _expert_shards(cfg, mesh) > 1):
    yield
    return
  with contextlib.ExitStack() as stack:
    if jax.sharding.get_abstract_mesh().empty:
      stack.enter_context(jax.sharding.use_abstract_mesh(mesh))
    if not rows_split:
      stack.enter_context(moe_expert_parallel.gathered_rows())
    yield


def pad_prompts(prompts: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads to [B, P]; returns (tokens, lengths)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("generate: every prompt needs at least one token")
  lengths = np.array([len(p) for p in prompts], np.int32)
  width = int(lengths.max())
  tokens = np.zeros((len(prompts), width), np.int32)
  for i, p in enumerate(prompts):
    tokens[i, width - len(p):] = np.asarray(p, np.int32)
  return tokens, lengths


def check_stop_rule(stop_ids: tuple[int, ...], arm_ids: tuple[int, ...]) -> None:
  """ValueError unless stop_ids / arm_ids are tuples of ints >= 0 with no id in both."""
  for name, ids in (("stop_ids", stop_ids), ("arm_ids", arm_ids)):
    if not isinstance(ids, tuple) or not all(isinstance(i, int) and not isinstance(i, bool)
                                             and i >= 0 for i in ids):
      raise ValueError(f"generate: {name} must be a tuple of non-negative ints, got {ids!r}")
  if arm_ids and not stop_ids:
    raise ValueError("generate: arm_ids without stop_ids would never stop a row")
  if set(stop_ids) & set(arm_ids):
    raise ValueError(f"generate: ids {sorted(set(stop_ids) & set(arm_ids))} are both stop and "
                     "arm ids")


def _isin(tok: Array, ids: tuple[int, ...]) -> Array:
  return jnp.any(tok[:, None] == jnp.asarray(ids, jnp.int32)[None, :], axis=-1)


def _prefill(cfg: ModelConfig, variables: dict, tokens: Array, lengths: Array,
             cache_len: int, rows_split: bool = False) -> tuple[Array, KVCache]:
  """Left-padded prompts [B, P] with true `lengths` [B] into a fresh cache of `cache_len`
  slots: (the logits after each prompt's last token [B, V], the cache)."""
  batch, width = tokens.shape
  mesh = decode_mesh(variables)
  module = build(decode_config(cfg, mesh))  # prefill: batch * width tokens
  pad = width - lengths
  col = jnp.arange(width, dtype=jnp.int32)[None, :]
  segment = (col >= pad[:, None]).astype(jnp.int32)
  positions = jnp.maximum(col - pad[:, None], 0)
  cache = init_cache(cfg, batch, cache_len)
  with on_mesh(cfg, mesh, rows_split=rows_split):
    logits, cache = module.apply(variables, tokens, segment_ids=segment, positions=positions,
                                 cache=cache, last_logits_only=True)
  return logits[:, -1], cache


def _step(cfg: ModelConfig, variables: dict, tok: Array, positions: Array,
          cache: KVCache, rows_split: bool = False) -> tuple[Array, KVCache]:
  """One token per row (`tok` [B] at `positions` [B]) into the next cache slot: (logits [B, V],
  the cache)."""
  mesh = decode_mesh(variables)
  # the same parameters, smaller MoE blocks
  step_module = build(step_config(cfg, tok.shape[0], mesh))
  pos = positions[:, None]
  with on_mesh(cfg, mesh, rows_split=rows_split):
    logits, cache = step_module.apply(variables, tok[:, None], segment_ids=jnp.ones_like(pos),
                                      positions=pos, cache=cache)
  return logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def prefill(cfg: ModelConfig, variables: dict, tokens: Array, lengths: Array, *,
            cache_len: int) -> tuple[Array, KVCache]:
  """Jitted prefill of left-padded prompts [B, P] (true `lengths` [B]) into a cache of
  `cache_len` >= P slots: (next-token logits [B, V], cache). Row i's first new token goes to
  position lengths[i], written by `decode_step`."""
  return _prefill(cfg, variables, tokens, lengths, cache_len)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def decode_step(cfg: ModelConfig, variables: dict, tokens: Array, positions: Array,
                cache: KVCache) -> tuple[Array, KVCache]:
  """Jitted single decode step: tokens [B] at `positions` [B] (a row's own count of tokens
  before it) appended to `cache`, which is donated: (next-token logits [B, V], new cache).
  `generate_arrays` runs exactly this computation once per loop iteration."""
  return _step(cfg, variables, tokens, positions, cache)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_p", "eos_id",
                                             "stop_ids", "arm_ids", "logical_rules"))
def generate_arrays(cfg: ModelConfig, variables: dict, tokens: Array, lengths: Array, key: Array, *,
                    max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                    eos_id: Optional[int] = None, stop_ids: tuple[int, ...] = (),
                    arm_ids: tuple[int, ...] = (),
                    active: Optional[Array] = None,
                    logical_rules: tuple = ()) -> tuple[Array, Array, Array]:
  """Jitted core of `generate` on left-padded prompts [B, P] with true `lengths` [B].

  stop_ids / arm_ids: the stop rule of the module doc (static; () = off). active: optional
  bool [B]; False rows (batch padding) count as finished from the start and emit nothing.
  Returns (new_tokens [B, N], logprobs [B, N], num_new [B]); entries past a row's last token are 0.

  logical_rules: flax logical-axis rule pairs (static, a tuple of (name, mesh axes); e.g.
  `tuple(parallel.flax_rules(rules, sizes))`) to decode under on a mesh: the models'
  activation constraints then split the rows over the batch axes ("activation_batch") as in
  training, so each device decodes B / shards rows instead of all of them (B must divide;
  rl/sampler.py pads to it). The draws are the same either way (threefry is partitionable:
  a row's random bits do not depend on the layout). () = no rules: the activations are laid
  out by GSPMD from the params, which keeps every row on every device.
  """
  check_stop_rule(stop_ids, arm_ids)
  run = functools.partial(_decode_loop, cfg, variables, tokens, lengths, key,
                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          eos_id=eos_id, stop_ids=stop_ids, arm_ids=arm_ids, active=active)
  if not logical_rules:
    return run(rows_split=False)
  with contextlib.ExitStack() as stack:
    stack.enter_context(nn.logical_axis_rules(list(logical_rules)))
    if jax.sharding.get_abstract_mesh().empty:  # flax drops constraints without a mesh
      stack.enter_context(jax.sharding.use_abstract_mesh(decode_mesh(variables)))
    return run(rows_split=True)


def _decode_loop(cfg: ModelConfig, variables: dict, tokens: Array, lengths: Array, key: Array, *,
                 max_new_tokens: int, temperature: float, top_p: float, eos_id: Optional[int],
                 stop_ids: tuple[int, ...], arm_ids: tuple[int, ...], active: Optional[Array],
                 rows_split: bool) -> tuple[Array, Array, Array]:
  """generate_arrays' prefill and sampling loop (traced under its rules, if any)."""
  batch, width = tokens.shape
  last, cache = _prefill(cfg, variables, tokens, lengths, width + max_new_tokens, rows_split)

  out_tok = jnp.zeros((batch, max_new_tokens), jnp.int32)
  out_logp = jnp.zeros((batch, max_new_tokens), jnp.float32)
  done = jnp.zeros((batch,), bool) if active is None else ~active.astype(bool)
  armed = jnp.full((batch,), not arm_ids)
  num_new = jnp.zeros((batch,), jnp.int32)

  def cond(state):
    step, _, _, _, _, done, _, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(state):
    step, cache, last, out_tok, out_logp, done, armed, num_new = state
    tok, logp = sample_logits(last, jax.random.fold_in(key, step), temperature, top_p)
    tok = jnp.where(done, 0, tok)
    logp = jnp.where(done, 0.0, logp)
    out_tok = out_tok.at[:, step].set(tok)
    out_logp = out_logp.at[:, step].set(logp)
    num_new = num_new + (~done).astype(jnp.int32)
    if eos_id is not None:
      done = done | (tok == eos_id)
    if stop_ids:
      done = done | (armed & _isin(tok, stop_ids))
    if arm_ids:
      armed = armed | _isin(tok, arm_ids)
    last, cache = _step(cfg, variables, tok, lengths + step, cache, rows_split)
    return step + 1, cache, last, out_tok, out_logp, done, armed, num_new

  state = (jnp.zeros((), jnp.int32), cache, last, out_tok, out_logp, done, armed, num_new)
  _, _, _, out_tok, out_logp, _, _, num_new = jax.lax.while_loop(cond, body, state)
  return out_tok, out_logp, num_new


def generate(cfg: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             *, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             eos_id: Optional[int] = None, stop_ids: Sequence[int] = (),
             arm_ids: Sequence[int] = (), draft: Optional[str] = None,
             num_draft_tokens: int = 3) -> list[list[int]]:
  """Each prompt's new tokens (up to and including `eos_id` or the stop token when it appears;
  stop rule in the module doc).

  temperature 0 is greedy; otherwise softmax(logits / temperature) restricted to the top-p
  nucleus, with the key for step i = fold_in(PRNGKey(seed), i) (deterministic per seed).

  draft="mtp": speculative decoding, the model's MTP module drafting `num_draft_tokens` per
  verify forward (sampling_speculative.py): greedy gives the same tokens, sampling the same
  distribution (not the same draws for a seed).
  """
  if max_new_tokens <= 0:
    return [[] for _ in prompts]
  tokens, lengths = pad_prompts(prompts)
  if draft is not None:
    if draft != "mtp" or int(num_draft_tokens) < 1:
      raise ValueError(f"generate: draft must be None or 'mtp' with num_draft_tokens >= 1, got "
                       f"draft={draft!r}, num_draft_tokens={num_draft_tokens!r}")
    from agentic_jax import sampling_speculative  # pylint: disable=import-outside-toplevel
    out, _, num_new, _ = sampling_speculative.generate_arrays(
        cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(seed),
        max_new_tokens=int(max_new_tokens), num_draft_tokens=int(num_draft_tokens),
        temperature=float(temperature), top_p=float(top_p),
        eos_id=None if eos_id is None else int(eos_id), stop_ids=tuple(int(i) for i in stop_ids),
        arm_ids=tuple(int(i) for i in arm_ids))
    out, num_new = np.asarray(out), np.asarray(num_new)
    return [out[i, :num_new[i]].tolist() for i in range(len(prompts))]
  out, _, num_new = generate_arrays(
      cfg, variables, jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(seed),
      max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
      eos_id=None if eos_id is None else int(eos_id), stop_ids=tuple(int(i) for i in stop_ids),
      arm_ids=tuple(int(i) for i in arm_ids))
  out, num_new = np.asarray(out), np.asarray(num_new)
  return [out[i, :num_new[i]].tolist() for i in range(len(prompts))]
