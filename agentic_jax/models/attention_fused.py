"""Fused attention core (`attention_impl="fused"`): `jax.nn.dot_product_attention`, which runs
cuDNN's flash-attention kernel on an NVIDIA GPU and XLA's einsum-softmax-einsum elsewhere.

Same contract as the cores of attention.py (queries [B, T, H, Dqk]; keys [B, S, H, Dqk] or one
shared key [B, S, Dqk]; values [B, S, H, Dv] or [B, S, Dv]; query t sees key s iff
k_index[s] <= q_index[t] and q_segment[t] == k_segment[s]; a query that sees no key returns
zeros, as `xla_attention` does). Why a wrapper is needed at all:

* Unequal head dims. The public `jax.nn.dot_product_attention` requires value.shape ==
  key.shape, while MLA has Dqk = dn + dr = 192 and Dv = 128 on the expanded (training) path.
  We zero-pad the smaller of the two (normally V) up to D = max(Dqk, Dv), rounded up to a
  multiple of 8 for cuDNN, and slice the output back to Dv. Zero key/query columns add nothing
  to the scores and zero value columns are sliced off, so the result is exact; the price is
  the padded PV product (128 -> 192: 1.5x that matmul). JAX's private cuDNN entry point takes
  Dqk != Dv natively (cuDNN >= 9.10, Hopper), but it is not public API, so it is not used here.
* Packed samples. The segment rule is not expressible through `is_causal` /
  `*_seq_lengths`, so the [B, 1, T, S] boolean mask is always passed (cuDNN turns it into an
  additive bias and, with a bias, also computes its gradient: a [B, 1, T, S] buffer per call).
  `causal_aligned=True` additionally sets `is_causal`, which lets cuDNN skip the blocks above
  the diagonal; it is only correct when q_index == k_index == arange(T) (self-attention with
  no cache, what models/model.py builds for every training forward), and the mask keeps the
  result exact either way.
* The shared key of the absorbed MLA decode path. cuDNN gets it as MQA (one K/V head, no
  broadcast copy). Its head dim there is kv_lora_rank + dr (576 for the released MLA models):
  over cuDNN's limit. Off cuDNN a shared key always goes to attention.xla_attention, which
  takes it natively: XLA's path would pad the latent values (a copy of the whole cache per
  step).

Fallback rule (`plan`, pure and unit-tested for GPU inputs on CPU):
  "cudnn"  backend is a CUDA GPU, dtype bfloat16/float16, padded D <= 256 on compute
           capability >= 9.0 (Hopper+) or <= 128 before it (cuDNN flash-attention limits as
           checked by jax._src.cudnn.fused_attention_stablehlo); if cuDNN still refuses at trace
           time (old cuDNN), a warning is logged once and the "xla" path runs instead.
  "core"   otherwise, for a shared key (attention.xla_attention: no padding, no copy).
  "xla"    otherwise: `implementation=None` (XLA), e.g. CPU, TPU, or float32 anywhere: cuDNN's
           kernel takes only bf16/fp16, so float32 runs never use it. On TPU this is XLA, not
           the Pallas splash kernel (not wired here).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import jax
import jax.numpy as jnp

from agentic_jax.models import attention as attn_lib

Array = jax.Array

CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_warned: set[str] = set()


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `fused_attention` runs: kind "cudnn" | "xla" | "core", the padded head dim (for
  "cudnn" / "xla") and why, for logs and tests."""
  kind: str
  head_dim: int
  reason: str


def cudnn_head_dim_limit(compute_capability: str) -> int:
  """cuDNN flash attention's largest head dim: 256 on Hopper and later (sm90+), 128 before."""
  major_minor = tuple(int(x) for x in compute_capability.split(".")[:2])
  return 256 if major_minor >= (9, 0) else 128


def cuda_compute_capability() -> Optional[str]:
  """"9.0"-style capability of the default device when it is a CUDA GPU, else None (CPU, TPU,
  ROCm: no cuDNN there)."""
  dev = jax.devices()[0]
  if dev.platform != "gpu":
    return None
  return getattr(dev, "compute_capability", None)


def plan(*, dtype: jnp.dtype | str, qk_dim: int, v_dim: int, shared_key: bool,
         compute_capability: Optional[str]) -> Plan:
  """The fallback rule of the module doc, from static facts only (so it is testable off-GPU)."""
  d = max(qk_dim, v_dim)
  d8 = -(-d // 8) * 8
  dtype = jnp.dtype(dtype)
  if compute_capability is None:
    why = "not a CUDA GPU"
  elif dtype not in CUDNN_DTYPES:
    why = f"cuDNN flash attention takes bf16/fp16, not {dtype}"
  elif d8 > cudnn_head_dim_limit(compute_capability):
    why = (f"head dim {d8} over cuDNN's {cudnn_head_dim_limit(compute_capability)} on "
           f"sm{compute_capability}")
  else:
    return Plan("cudnn", d8, f"cuDNN, head dim {qk_dim}/{v_dim} padded to {d8}")
  if shared_key:
    return Plan("core", d, why + "; shared key: xla core (no padded cache copy)")
  return Plan("xla", d, why + "; XLA (implementation=None)")


def _pad_last(x: Array, size: int) -> Array:
  extra = size - x.shape[-1]
  if not extra:
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _warn_once(msg: str) -> None:
  if msg not in _warned:
    _warned.add(msg)
    logging.warning("fused attention: %s", msg)


def fused_attention(q: Array, k: Array, v: Array, q_index: Array, k_index: Array,
                    q_segment: Array, k_segment: Array, *, scale: float,
                    causal_aligned: bool = False, force: Optional[str] = None) -> Array:
  """Attention by `jax.nn.dot_product_attention` (module doc); output [B, T, H, Dv] in q.dtype.

  causal_aligned: the caller promises q_index == k_index == arange(T) (and so T == S); adds
  `is_causal` so cuDNN can skip masked blocks. force: "cudnn" | "xla" | "core" to override
  `plan` (tests run the padded / MQA "xla" path on CPU; "cudnn" needs a CUDA GPU)."""
  shared = k.ndim == 3
  dqk, dv = q.shape[-1], v.shape[-1]
  p = plan(dtype=q.dtype, qk_dim=dqk, v_dim=dv, shared_key=shared,
           compute_capability=cuda_compute_capability())
  if force is not None:
    p = Plan(force, -(-max(dqk, dv) // 8) * 8 if force == "cudnn" else max(dqk, dv), "forced")
  if p.kind not in ("cudnn", "xla", "core"):
    raise ValueError(f"fused_attention: force must be 'cudnn', 'xla' or 'core', got {force!r}")
  if causal_aligned and q.shape[1] != k.shape[1]:
    raise ValueError(f"causal_aligned needs T == S, got T={q.shape[1]}, S={k.shape[1]}")
  if p.kind == "core":
    return attn_lib.xla_attention(q, k, v, q_index, k_index, q_segment, k_segment, scale)

  mask = attn_lib.segment_causal_mask(q_index, k_index, q_segment, k_segment)
  qp = _pad_last(q, p.head_dim)
  kp = _pad_last(k.astype(q.dtype), p.head_dim)
  vp = _pad_last(v.astype(q.dtype), p.head_dim)
  if shared:  # MQA: one K/V head serves every query head (no [B, S, H, D] copy)
    kp, vp = kp[:, :, None, :], vp[:, :, None, :]
  kwargs = dict(mask=mask[:, None], scale=scale, is_causal=causal_aligned)
  out = None
  if p.kind == "cudnn":
    try:
      out = jax.nn.dot_product_attention(qp, kp, vp, implementation="cudnn", **kwargs)
    except (NotImplementedError, RuntimeError) as e:  # cuDNN too old / missing for this shape
      _warn_once(f"cuDNN refused {qp.shape} {qp.dtype} ({e}); using XLA")
  if out is None:
    out = jax.nn.dot_product_attention(qp, kp, vp, implementation=None, **kwargs)
  out = out[..., :dv]
  # A query that sees no key: softmax over an all-masked row is uniform; the cores return 0.
  visible = jnp.any(mask, axis=-1)[:, :, None, None]
  return jnp.where(visible, out, jnp.zeros((), out.dtype)).astype(q.dtype)
