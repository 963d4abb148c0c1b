"""Shared building blocks: parameters with logical axes, RMSNorm, RoPE/YaRN, SwiGLU, embeddings.

Every parameter is created through `param()`, which attaches logical axis names
(`nn.with_logical_partitioning`), and every activation constraint goes through `constrain()`
(`nn.with_logical_constraint`). The names are mapped to mesh axes by one rules table per
config (agentic_jax.parallel); the model itself never names mesh axes.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax.models.config import ModelConfig

Array = jax.Array


def dtype_of(name: str):
  return jnp.dtype(name)


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str],
          init: Callable, dtype) -> Array:
  """Declares a parameter whose metadata carries one logical axis name per dimension."""
  assert len(shape) == len(axes), (name, shape, axes)
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


# The set that `constrain` adds its logical names to, while `recording_constraint_names()` is
# active in this context (thread / task); None otherwise.
_CONSTRAINT_NAMES: contextvars.ContextVar[Optional[set[str]]] = contextvars.ContextVar(
    "agentic_jax_constraint_names", default=None)


def constrain(x: Any, names: Any) -> Any:
  """`nn.with_logical_constraint(x, names)`: the one way the models constrain an activation's
  sharding by logical names. Also adds the names to the set of an enclosing
  `recording_constraint_names()`, which is how agentic_jax.parallel finds every activation
  name a model uses (to check each has a rule) without patching flax."""
  seen = _CONSTRAINT_NAMES.get()
  if seen is not None:
    for leaf in jax.tree_util.tree_leaves(names, is_leaf=lambda n: isinstance(n, tuple)):
      seen.update(n for n in leaf if isinstance(n, str))
  return nn.with_logical_constraint(x, names)


@contextlib.contextmanager
def recording_constraint_names() -> Iterator[set[str]]:
  """Yields a set that collects the logical names of every `constrain()` call traced or run
  inside the block, in this context only (other threads are not affected)."""
  seen: set[str] = set()
  token = _CONSTRAINT_NAMES.set(seen)
  try:
    yield seen
  finally:
    _CONSTRAINT_NAMES.reset(token)


def normal_init(std: float) -> Callable:
  return nn.initializers.normal(stddev=std)


class RMSNorm(nn.Module):
  """y = w * cast(x / sqrt(mean(x^2) + eps)); the normalisation runs in float32 and is cast
  back to the input dtype before the weight multiply (as transformers does)."""

  eps: float
  axis_name: str = "norm"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    weight = param(self, "weight", (x.shape[-1],), (self.axis_name,), nn.initializers.ones,
                   dtype_of(self.param_dtype))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x)), no biases."""

  cfg: ModelConfig
  width: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    d = x.shape[-1]
    pdt, cdt = dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
    init = normal_init(cfg.initializer_range)
    gate = param(self, "gate_proj", (d, self.width), ("embed", "mlp"), init, pdt)
    up = param(self, "up_proj", (d, self.width), ("embed", "mlp"), init, pdt)
    down = param(self, "down_proj", (self.width, d), ("mlp", "embed"), init, pdt)
    lead = x.shape[:-1]
    # 2-D matmuls: XLA:CPU lowers [B, T, d] @ [d, w] and its backward with extra transposes
    # (fwd+bwd ~27% slower at the benchmark's shapes); the reshapes are free (row-major).
    x2 = x.astype(cdt).reshape(-1, d)
    h = nn.silu(x2 @ gate.astype(cdt)) * (x2 @ up.astype(cdt))
    if len(lead) == 2:
      h = constrain(h.reshape(*lead, self.width),
                    ("activation_batch", "activation_length", "activation_mlp"))
    return (h.reshape(-1, self.width) @ down.astype(cdt)).reshape(*lead, d)


class Embed(nn.Module):
  """Token embedding; `attend` gives tied-embedding logits."""

  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = param(self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                           normal_init(cfg.initializer_range), dtype_of(cfg.param_dtype))

  def __call__(self, tokens: Array) -> Array:
    return jnp.take(self.embedding, tokens, axis=0).astype(dtype_of(self.cfg.dtype))

  def attend(self, x: Array) -> Array:
    return jnp.einsum("btd,vd->btv", x, self.embedding.astype(x.dtype))


# ---------------------------------------------------------------------------- RoPE


def rope_inv_freq(cfg: ModelConfig) -> tuple[np.ndarray, float]:
  """Inverse frequencies [dr/2] (float32) and the cos/sin scale (YaRN attention_factor)."""
  dim = cfg.qk_rope_head_dim
  base = cfg.rope_theta
  exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  pos_freqs = np.power(np.float32(base), exponents, dtype=np.float32)
  if cfg.rope_type == "default":
    return (np.float32(1.0) / pos_freqs).astype(np.float32), 1.0
  # YaRN: blend interpolated and extrapolated frequencies over a linear ramp of dims.
  factor = cfg.rope_factor

  def mscale_of(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  if cfg.mscale and cfg.mscale_all_dim:
    attention_factor = mscale_of(factor, cfg.mscale) / mscale_of(factor, cfg.mscale_all_dim)
  else:
    attention_factor = mscale_of(factor)

  def correction_dim(num_rotations):
    return (dim * math.log(cfg.original_max_position_embeddings / (num_rotations * 2 * math.pi))
            / (2 * math.log(base)))

  low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
  high = min(math.ceil(correction_dim(cfg.beta_slow)), dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation_weight = (1 - ramp).astype(np.float32)
  inv_extra = np.float32(1.0) / pos_freqs
  inv_inter = np.float32(1.0) / (np.float32(factor) * pos_freqs)
  inv_freq = inv_inter * (1 - extrapolation_weight) + inv_extra * extrapolation_weight
  return inv_freq.astype(np.float32), float(attention_factor)


def rope_cos_sin(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
  """cos, sin of shape [B, T, dr/2] (float32) for int positions [B, T]."""
  inv_freq, attention_factor = rope_inv_freq(cfg)
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_rope(x: Array, cos: Array, sin: Array, interleave: bool) -> Array:
  """Rotates the last dim of x [B, T, (H,) dr] by angles cos/sin [B, T, dr/2].

  interleaved: pairs (x[2i], x[2i+1]); the result is returned de-interleaved
  ([rotated evens | rotated odds]), the layout transformers returns, so cached rotated
  keys compare directly. Since q and k get the same permutation, q.k is unchanged.
  half-split: pairs (x[i], x[i + dr/2]).
  """
  if x.ndim == cos.ndim + 1:  # head axis present
    cos, sin = cos[..., None, :], sin[..., None, :]
  dtype = x.dtype
  x = x.astype(jnp.float32)
  if interleave:
    x1, x2 = x[..., 0::2], x[..., 1::2]
  else:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(dtype)


def default_positions(tokens: Array, segment_ids: Optional[Array]) -> Array:
  """0..T-1 per row, restarting at every segment boundary when segment_ids is given."""
  batch, length = tokens.shape
  idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  if segment_ids is None:
    return idx
  starts = jnp.concatenate(
      [jnp.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - start_idx


class Dense(nn.Module):
  """y = x @ kernel (+ bias) with kernel [in, *out] and one logical axis name per dim.

  Multi-dim outputs (e.g. [rq, heads, head_dim]) keep heads as their own axis so the
  tensor axis can split them without reshapes.
  """

  features: tuple[int, ...]
  axes: tuple[str, ...]  # (in_axis, *out_axes)
  cfg: ModelConfig
  use_bias: bool = False
  in_axes: int = 1  # how many trailing input dims are contracted

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    in_shape = x.shape[x.ndim - self.in_axes:]
    kernel = param(self, "kernel", (*in_shape, *self.features), self.axes,
                   normal_init(cfg.initializer_range), dtype_of(cfg.param_dtype))
    cdt = dtype_of(cfg.dtype)
    lead = x.shape[:x.ndim - self.in_axes]
    # Leading dims flattened to one (see SwiGLU: fewer transposes in XLA:CPU's backward).
    x2 = x.astype(cdt).reshape(-1, *in_shape) if len(lead) > 1 else x.astype(cdt)
    y = jax.lax.dot_general(
        x2, kernel.astype(cdt),
        ((tuple(range(x2.ndim - self.in_axes, x2.ndim)), tuple(range(self.in_axes))), ((), ())))
    if len(lead) > 1:
      y = y.reshape(*lead, *self.features)
    if self.use_bias:
      bias = param(self, "bias", self.features, self.axes[self.in_axes:], nn.initializers.zeros,
                   dtype_of(cfg.param_dtype))
      y = y + bias.astype(cdt)
    return y
