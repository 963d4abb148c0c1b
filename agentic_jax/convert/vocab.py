"""Growing a model's vocabulary for tokens a tokenizer added (e.g. `HFTokenizer.added_tokens`).

    tok = data.tokenizer.load_from_dir(ckpt_dir)     # may append our markers to the vocabulary
    cfg, variables = grow_vocab(cfg, variables, tok.vocab_size, multiple_of=128)
    data.tokenizer.check_vocab_fits(tok, cfg)

The embedding `params/embed_tokens/embedding` [V, d] is top level whether the layers are scanned or
not, and so is the untied output head `params/lm_head/kernel` [d, V] (`models/model.py`), so one
function serves both layouts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from agentic_jax.models.config import ModelConfig


def padded_vocab_size(vocab_size: int, multiple_of: int = 1) -> int:
  """`vocab_size` rounded up to a multiple of `multiple_of` (shardable / MXU-friendly widths)."""
  if multiple_of < 1:
    raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
  return -(-int(vocab_size) // multiple_of) * multiple_of


def _grow(x: jax.Array, axis: int, extra: int, key: jax.Array, noise_scale: float) -> jax.Array:
  """`x` with `extra` new slices along `axis`, each the mean of the existing ones (+ noise)."""
  x32 = jnp.asarray(x, jnp.float32)
  mean = jnp.mean(x32, axis=axis, keepdims=True)
  shape = list(x.shape)
  shape[axis] = extra
  new = jnp.broadcast_to(mean, shape)
  if noise_scale:
    # scaled by the rows' own spread, so the noise means the same at any init scale
    std = jnp.std(x32, axis=axis, keepdims=True)
    new = new + noise_scale * std * jax.random.normal(key, shape, jnp.float32)
  return jnp.concatenate([x32, new], axis=axis).astype(x.dtype)


def grow_vocab(cfg: ModelConfig, variables: dict, new_vocab_size: int, *, seed: int = 0,
               multiple_of: int = 1, noise_scale: float = 0.0) -> tuple[ModelConfig, dict]:
  """(cfg, variables) with room for `new_vocab_size` ids (rounded up to `multiple_of`).

  New rows of the embedding and new columns of the untied `lm_head` kernel (and its bias, if
  any) are the MEAN of the existing ones. Mean initialisation (Hewitt 2021, "Initializing new
  word embeddings for pretrained language models") keeps every new token's initial logit at the
  average of the old ones' instead of letting a random vector dominate the softmax: the
  pretrained model's distribution is barely disturbed (KL to it bounded by a small constant)
  until fine-tuning teaches the new tokens. `noise_scale` > 0 adds Gaussian noise of that many
  standard deviations of the existing rows (drawn from `seed`), so tied new rows are not
  identical; 0 (the default) gives the exact mean.

  A model whose embedding already holds the size (e.g. a checkpoint padded past its tokenizer) is
  returned unchanged; the old rows are never modified. Works on scanned and unscanned variables.
  """
  if not isinstance(cfg, ModelConfig):
    raise TypeError(f"grow_vocab: cfg must be a ModelConfig, got {type(cfg).__name__}")
  target = padded_vocab_size(new_vocab_size, multiple_of)
  params = variables.get("params") if isinstance(variables, dict) else None
  embed = (params or {}).get("embed_tokens", {}).get("embedding")
  if embed is None:
    raise ValueError("grow_vocab: variables have no params/embed_tokens/embedding")
  if embed.shape[0] != cfg.vocab_size:
    raise ValueError(f"grow_vocab: embedding has {embed.shape[0]} rows but cfg.vocab_size is "
                     f"{cfg.vocab_size}")
  if target <= cfg.vocab_size:
    return cfg, variables
  extra = target - cfg.vocab_size
  k_embed, k_head, k_bias = jax.random.split(jax.random.key(seed), 3)
  new_params = dict(params)
  new_params["embed_tokens"] = {**params["embed_tokens"],
                                "embedding": _grow(embed, 0, extra, k_embed, noise_scale)}
  if not cfg.tie_word_embeddings:
    head = params.get("lm_head")
    if head is None or "kernel" not in head:
      raise ValueError("grow_vocab: untied model (tie_word_embeddings False) without "
                       "params/lm_head/kernel")
    if head["kernel"].shape[-1] != cfg.vocab_size:
      raise ValueError(f"grow_vocab: lm_head/kernel has {head['kernel'].shape[-1]} columns but "
                       f"cfg.vocab_size is {cfg.vocab_size}")
    new_head = {**head, "kernel": _grow(head["kernel"], 1, extra, k_head, noise_scale)}
    if "bias" in head:
      new_head["bias"] = _grow(head["bias"], 0, extra, k_bias, noise_scale)
    new_params["lm_head"] = new_head
  out: dict[str, Any] = {**variables, "params": new_params}
  return cfg.replace(vocab_size=target), out
