"""Tiny IQuest-Coder models for tests/test_iquest.py and tests/test_iquest_loop.py: transformers'
`iquestcoder` built from a config object (model-spec §6; never from_pretrained, nothing is
downloaded), and random variables of our Loop models with every parameter mattering."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from agentic_jax import models  # noqa: E402

RTOL = 1e-4
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def hf_model(seed: int = 0, **overrides) -> torch.nn.Module:
  """Tiny float64 IQuestCoder with random RMSNorm weights (init leaves them at 1) and biases."""
  config = transformers.IQuestCoderConfig(**{**TINY, **overrides}, attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).double().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, t in model.named_parameters():
      if t.ndim == 1:
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        t.copy_(1.0 + 0.3 * noise if "norm" in name else 0.02 * noise)
  return model


def tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 128, size=(batch, length))


def rel_err(ours, ref) -> float:
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def hf_logits(model, toks) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(toks, np.int64))).logits.numpy()


def loop_variables(cfg, seed: int = 0, gate_scale: float = 0.5) -> dict:
  """Random variables with random (not zero) gates and norm weights, so all of them matter."""
  variables = models.init_variables(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if "loop_gate" in name:
      return jnp.asarray(gate_scale * rng.standard_normal(x.shape), x.dtype)
    if "norm" in name:
      return jnp.asarray(1 + 0.3 * rng.standard_normal(x.shape), x.dtype)
    return x * 10.0  # init std 0.02 leaves attention near uniform; 0.2 makes it peaked
  return jax.tree_util.tree_map_with_path(perturb, variables)
