"""RMSNorm, RoPE (both layouts) and YaRN against transformers' own functions and hand math."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# transformers parity needs torch, which only the Python 3.11 leg has (its CPU wheel):
# the newer legs skip this module
torch = pytest.importorskip("torch")
from transformers import DeepseekV3Config  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_ds  # noqa: E402

from agentic_jax.models import ModelConfig  # noqa: E402
from agentic_jax.models.layers import (RMSNorm, apply_rope, default_positions, rope_cos_sin,  # noqa: E402
                                       rope_inv_freq)

YARN = dict(rope_type="yarn", rope_theta=1e4, factor=4.0, original_max_position_embeddings=64,
            mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1)


def _yarn_cfg(**kw):
  return ModelConfig(qk_rope_head_dim=8, rope_theta=1e4, rope_type="yarn", rope_factor=4.0,
                     original_max_position_embeddings=64, mscale=1.0, mscale_all_dim=1.0, **kw)


def test_rmsnorm_matches_formula_and_casts_before_weight():
  x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
  w = np.linspace(0.5, 1.5, 8).astype(np.float32)
  y = RMSNorm(1e-5).apply({"params": {"weight": w}}, x)
  expected = w * x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6, atol=1e-6)
  # bf16 input: normalised in f32, cast to bf16, then multiplied by the (bf16) weight
  xb = jnp.asarray(x, jnp.bfloat16)
  yb = RMSNorm(1e-5).apply({"params": {"weight": w}}, xb)
  assert yb.dtype == jnp.bfloat16
  x32 = jnp.asarray(xb, jnp.float32)  # the f32 view of the bf16 input
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + 1e-5)
  ref = jnp.asarray(w, jnp.bfloat16) * normed.astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(yb, np.float32), np.asarray(ref, np.float32))


def test_default_inv_freq_matches_transformers():
  hf_cfg = DeepseekV3Config(qk_rope_head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 1e4})
  inv, factor = ROPE_INIT_FUNCTIONS["default"](hf_cfg, None) if "default" in ROPE_INIT_FUNCTIONS else \
      hf_ds.DeepseekV3RotaryEmbedding.compute_default_rope_parameters(hf_cfg)
  ours, ours_factor = rope_inv_freq(ModelConfig(qk_rope_head_dim=8, rope_theta=1e4))
  np.testing.assert_allclose(ours, inv.numpy(), rtol=1e-6)
  assert ours_factor == factor == 1.0


def test_yarn_inv_freq_attention_factor_and_softmax_scale():
  hf_cfg = DeepseekV3Config(qk_rope_head_dim=8, max_position_embeddings=256, rope_parameters=dict(YARN))
  inv, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_cfg, None)
  cfg = _yarn_cfg()
  ours, ours_factor = rope_inv_freq(cfg)
  np.testing.assert_allclose(ours, inv.numpy(), rtol=1e-6)
  assert ours_factor == pytest.approx(attention_factor)
  assert ours_factor == pytest.approx(1.0)  # mscale == mscale_all_dim
  # softmax scale: (dn + dr)^-0.5 * (0.1 ln 4 + 1)^2 = 24^-0.5 * 1.2965 (model-spec §6)
  assert cfg.softmax_scale == pytest.approx(24 ** -0.5 * (0.1 * math.log(4.0) + 1) ** 2)
  assert cfg.softmax_scale * 24 ** 0.5 == pytest.approx(1.2965, abs=1e-4)
  # mscale_all_dim == 0: cos/sin scaled by 0.1 ln f + 1, softmax scale untouched
  cfg0 = _yarn_cfg().replace(mscale_all_dim=0.0)
  assert rope_inv_freq(cfg0)[1] == pytest.approx(0.1 * math.log(4.0) + 1)
  assert cfg0.softmax_scale == pytest.approx(24 ** -0.5)


@pytest.mark.parametrize("interleave", [True, False])
def test_apply_rope_matches_transformers(interleave):
  rng = np.random.RandomState(1)
  B, T, H, dr = 2, 5, 3, 8
  q = rng.randn(B, T, H, dr).astype(np.float32)
  k = rng.randn(B, T, dr).astype(np.float32)
  pos = np.tile(np.arange(T), (B, 1))
  cfg = ModelConfig(qk_rope_head_dim=dr, rope_theta=1e4)
  cos, sin = rope_cos_sin(cfg, jnp.asarray(pos))
  ours_q = np.asarray(apply_rope(jnp.asarray(q), cos, sin, interleave))
  ours_k = np.asarray(apply_rope(jnp.asarray(k), cos, sin, interleave))
  # transformers layout: [B, H, T, dr], cos/sin duplicated to full dr
  hf_cos = torch.tensor(np.concatenate([np.asarray(cos)] * 2, -1))
  hf_sin = torch.tensor(np.concatenate([np.asarray(sin)] * 2, -1))
  fn = hf_ds.apply_rotary_pos_emb_interleave if interleave else hf_ds.apply_rotary_pos_emb
  tq, tk = fn(torch.tensor(q).transpose(1, 2), torch.tensor(k)[:, None], hf_cos, hf_sin)
  np.testing.assert_allclose(ours_q, tq.transpose(1, 2).numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours_k, tk[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_rope_preserves_relative_scores():
  """q.k after RoPE depends only on the position difference."""
  rng = np.random.RandomState(2)
  cfg = ModelConfig(qk_rope_head_dim=8, rope_theta=100.0)
  q, k = (jnp.asarray(rng.randn(1, 1, 8), jnp.float32) for _ in range(2))

  def score(pq, pk):
    cq, sq = rope_cos_sin(cfg, jnp.array([[pq]]))
    ck, sk = rope_cos_sin(cfg, jnp.array([[pk]]))
    return float(jnp.sum(apply_rope(q, cq, sq, True) * apply_rope(k, ck, sk, True)))

  assert score(7, 3) == pytest.approx(score(14, 10), rel=1e-5)
  assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


def test_default_positions_restart_per_segment():
  seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0]])
  pos = default_positions(jnp.zeros_like(seg), seg)
  np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 2, 0, 1, 0, 0, 1]])
  np.testing.assert_array_equal(np.asarray(default_positions(jnp.zeros((2, 3), jnp.int32), None)),
                                [[0, 1, 2], [0, 1, 2]])
