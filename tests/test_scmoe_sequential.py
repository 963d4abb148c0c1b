"""ModelConfig.scmoe_moe_input: the ScMoE layer's MoE on the shortcut (LongCat-Flash, default) or
sequential (after the second attention, FFN_1's input), with the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.convert import hf_config
from agentic_jax.models.blocks import ScMoELayer
from agentic_jax.models.layers import RMSNorm, SwiGLU, rope_cos_sin
from agentic_jax.models.mla import MLA, AttentionContext
from agentic_jax.models.moe import MoE
from agentic_jax.parallel import expert

SHORTCUT = models.presets.get("longcat_flash_tiny", moe_dispatch="dense")
SEQUENTIAL = SHORTCUT.replace(scmoe_moe_input="sequential")


def _ctx(cfg, batch, length):
  positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  seg = jnp.ones((batch, length), jnp.int32)
  cos, sin = rope_cos_sin(cfg, positions)
  return AttentionContext(cos, sin, positions, seg, positions, seg)


def _layer_inputs(cfg):
  h = jax.random.normal(jax.random.PRNGKey(1), (2, 8, cfg.hidden_size), jnp.float32)
  return h, _ctx(cfg, 2, 8)


def test_default_is_shortcut_and_param_trees_are_identical():
  assert models.ModelConfig().scmoe_moe_input == "shortcut"
  assert models.presets.get("longcat_flash").scmoe_moe_input == "shortcut"
  a = models.init_variables(SHORTCUT, jax.random.PRNGKey(0))
  b = models.init_variables(SEQUENTIAL, jax.random.PRNGKey(0))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)
  # same names and the same init rng per module path: even the initial values agree
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_sequential_layer_equals_hand_composed_sublayers_and_differs_from_shortcut():
  h, ctx = _layer_inputs(SEQUENTIAL)
  variables = ScMoELayer(SEQUENTIAL).init(jax.random.PRNGKey(0), h, ctx)
  out, _ = ScMoELayer(SEQUENTIAL).apply(variables, h, ctx)
  p, state = variables["params"], variables["router_state"]
  cfg = SEQUENTIAL

  def norm(name, x):
    return RMSNorm(cfg.rms_norm_eps, "embed", cfg.param_dtype).apply({"params": p[name]}, x)

  def mla(name, x):
    return MLA(cfg).apply({"params": p[name]}, x, ctx, None)[0]

  def ffn(name, x):
    return SwiGLU(cfg, cfg.intermediate_size).apply({"params": p[name]}, x)

  h1 = h + mla("self_attn_0", norm("input_layernorm_0", h))
  x1 = norm("post_attention_layernorm_0", h1)
  h2 = h1 + ffn("mlps_0", x1)
  h3 = h2 + mla("self_attn_1", norm("input_layernorm_1", h2))
  x3 = norm("post_attention_layernorm_1", h3)
  moe = MoE(cfg).apply({"params": p["mlp"], "router_state": state["mlp"]}, x3)
  ref = h3 + ffn("mlps_1", x3) + moe
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

  shortcut, _ = ScMoELayer(SHORTCUT).apply(variables, h, ctx)  # the same parameters
  moe_short = MoE(cfg).apply({"params": p["mlp"], "router_state": state["mlp"]}, x1)
  np.testing.assert_allclose(shortcut, h3 + ffn("mlps_1", x3) + moe_short, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(shortcut) - np.asarray(out)).max() > 1e-3


def test_sequential_exchange_depends_on_mla1_and_shortcut_does_not():
  mesh = {"fsdp": 2, "expert": 4}
  short = expert.moe_exchange_dependencies(SHORTCUT.replace(moe_dispatch="expert_parallel"), mesh)
  seq = expert.moe_exchange_dependencies(SEQUENTIAL.replace(moe_dispatch="expert_parallel"), mesh)
  assert "self_attn_1" not in short["inputs"] and "mlps_0" not in short["inputs"]
  assert {"self_attn_1", "mlps_0", "post_attention_layernorm_1"} <= seq["inputs"]
  assert "mlps_1" not in seq["inputs"]  # FFN_1 is the only dense sublayer left to overlap
  assert seq["consumers"] == short["consumers"] == {"", "mlp"}


def test_bad_value_is_a_one_line_config_error():
  with pytest.raises(ValueError) as e:
    SHORTCUT.replace(scmoe_moe_input="parallel")
  assert str(e.value).startswith("ModelConfig.scmoe_moe_input:") and "\n" not in str(e.value)
  with pytest.raises(ValueError, match="ModelConfig.scmoe_moe_input: only"):
    models.presets.get("deepseek_v3_tiny", scmoe_moe_input="sequential")


def test_hf_export_refuses_sequential():
  hf_config.config_to_hf(models.presets.get("longcat_flash_tiny"))  # the default exports
  with pytest.raises(ValueError, match="scmoe_moe_input='sequential' has no transformers"):
    hf_config.config_to_hf(SEQUENTIAL)
