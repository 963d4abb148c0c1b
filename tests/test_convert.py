"""Converter: config mapping, error reporting, LongCat dead expert rows, parameter counts,
and the round trip from_hf -> to_hf_state_dict -> transformers load_state_dict."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# transformers parity needs torch, which only the Python 3.11 leg has (its CPU wheel):
# the newer legs skip this module
torch = pytest.importorskip("torch")
import transformers  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from agentic_jax import convert, models  # noqa: E402
from agentic_jax.models.layers import rope_inv_freq  # noqa: E402
from tests import hf_models as H  # noqa: E402


@functools.lru_cache(maxsize=None)
def hf_model(variant: str):
  return H.build(variant)


# ----------------------------------------------------------------- config mapping


def test_longcat_config_fields_and_aliases():
  hf = H.hf_config("longcat")
  cfg = convert.config_from_hf(hf)
  assert hf.num_hidden_layers == 4  # derived: two attention sublayers per layer
  expected = dict(
      layer_type="scmoe", num_layers=2, vocab_size=128, hidden_size=64, num_attention_heads=4,
      intermediate_size=128, moe_intermediate_size=32, n_routed_experts=4, zero_expert_num=2,
      num_experts_per_tok=2, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
      qk_rope_head_dim=8, v_head_dim=16, routed_scaling_factor=6.0, scoring_func="softmax",
      norm_topk_prob=False, n_group=1, topk_group=1, n_shared_experts=0, mla_scale_q_lora=True,
      mla_scale_kv_lora=True, rope_interleave=True, rope_type="default", rope_theta=1e7,
      rms_norm_eps=1e-5, latent_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False,
      max_position_embeddings=256, moe_dispatch="dropless", scan_layers=False)
  assert {k: getattr(cfg, k) for k in expected} == expected
  assert cfg.num_slots == 6 and cfg.num_attention_layers == hf.num_hidden_layers


def test_deepseek_config_fields_and_yarn():
  hf = H.hf_config("deepseek", rope_parameters=H.YARN, q_lora_rank=None, attention_bias=True,
                   rope_interleave=False, norm_topk_prob=False)
  cfg = convert.config_from_hf(hf)
  expected = dict(
      layer_type="deepseek", num_layers=3, intermediate_size=128, moe_intermediate_size=32,
      n_routed_experts=8, zero_expert_num=0, n_shared_experts=1, num_experts_per_tok=2, n_group=4,
      topk_group=2, first_k_dense_replace=1, norm_topk_prob=False, routed_scaling_factor=2.5,
      scoring_func="sigmoid", q_lora_rank=None, attention_bias=True, rope_interleave=False,
      rope_type="yarn", rope_theta=1e4, rope_factor=4.0, original_max_position_embeddings=64,
      mscale=1.0, mscale_all_dim=1.0, beta_fast=32.0, beta_slow=1.0, rms_norm_eps=1e-6,
      mla_scale_q_lora=False, mla_scale_kv_lora=False)
  assert {k: getattr(cfg, k) for k in expected} == expected
  # Same frequencies, cos/sin factor and softmax scale as transformers computes.
  hf_inv, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](hf)
  inv, factor = rope_inv_freq(cfg)
  np.testing.assert_allclose(inv, hf_inv.numpy(), rtol=1e-6)
  assert factor == pytest.approx(hf_factor)
  attn = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3Attention(hf, 0)
  assert cfg.softmax_scale == pytest.approx(attn.scaling, rel=1e-12)
  assert cfg.softmax_scale * 24 ** 0.5 == pytest.approx(1.2965, abs=1e-4)  # model-spec §6


def test_youtu_config_fields_and_overrides():
  cfg = convert.config_from_hf(H.hf_config("youtu"), attention_impl="chunked", dtype="bfloat16",
                               scan_layers=True)
  assert (cfg.layer_type, cfg.num_layers, cfg.tie_word_embeddings, cfg.rope_theta) == (
      "dense", 2, True, 1.6e6)
  assert (cfg.attention_impl, cfg.dtype, cfg.scan_layers) == ("chunked", "bfloat16", True)
  assert not cfg.is_moe


@pytest.mark.parametrize("family,field,value", [
    ("longcat", "head_dim", 16),
    ("longcat", "qk_head_dim", 32),
    ("longcat", "router_bias", True),
    ("longcat", "q_lora_rank", None),
    ("deepseek", "hidden_act", "gelu"),
    ("youtu", "num_key_value_heads", 2),
    ("deepseek", "rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
    ("deepseek", "rope_parameters", dict(H.YARN, truncate=False)),
    ("deepseek", "rope_parameters", dict(H.YARN, attention_factor=2.0)),
    ("deepseek", "rope_parameters", dict(H.YARN, partial_rotary_factor=0.5)),
])
def test_unsupported_config_raises_naming_the_field(family, field, value):
  hf = H.hf_config(family)
  # Bypass HF's strict field validation: the converter must reject such values whatever
  # produced the config (remote-code configs are not validated).
  object.__setattr__(hf, field, value)
  name = {"rope_parameters": "rope_parameters["}.get(field, field)
  with pytest.raises(ValueError, match=name.replace("[", r"\[")):
    convert.config_from_hf(hf)


def test_unsupported_model_type_raises():
  llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
      num_attention_heads=2))
  with pytest.raises(ValueError, match=r"'llama'.*longcat_flash.*deepseek_v3.*youtu"):
    convert.from_hf(llama)


# ----------------------------------------------------------------- tensors


def _numpy_state_dict(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_missing_extra_and_misshapen_tensors_raise():
  model = hf_model("deepseek")
  sd = _numpy_state_dict(model)
  gone = "model.layers.1.mlp.shared_experts.up_proj.weight"
  with pytest.raises(ValueError, match=r"missing: .*" + gone.replace(".", r"\.")):
    convert.from_hf_state_dict(model.config, {k: v for k, v in sd.items() if k != gone})
  with pytest.raises(ValueError, match=r"unexpected: model\.layers\.0\.mlp\.extra\.weight"):
    convert.from_hf_state_dict(model.config, {**sd, "model.layers.0.mlp.extra.weight": sd[gone]})
  # DeepSeek-V3's MTP layer (layer index num_hidden_layers) is not silently dropped either.
  with pytest.raises(ValueError, match=r"unexpected: model\.layers\.3\.input_layernorm"):
    convert.from_hf_state_dict(model.config, {**sd, "model.layers.3.input_layernorm.weight":
                                              sd["model.norm.weight"]})
  bad = dict(sd, **{"model.layers.0.self_attn.q_a_layernorm.weight": np.ones(31)})
  with pytest.raises(ValueError, match=r"shape mismatch: params/layers_0/self_attn/q_a_layernorm"):
    convert.from_hf_state_dict(model.config, bad)
  # Ours -> HF: an unknown variable is reported too.
  cfg, variables = convert.from_hf(model)
  extra = dict(variables, params=dict(variables["params"], stray=jnp.zeros(3)))
  with pytest.raises(ValueError, match=r"unexpected: params/stray"):
    convert.to_hf_state_dict(cfg, extra)


def test_tied_lm_head_must_equal_embedding():
  model = hf_model("youtu")
  sd = _numpy_state_dict(model)
  cfg, variables = convert.from_hf_state_dict(model.config, sd)
  assert "lm_head" not in variables["params"]
  sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
  with pytest.raises(ValueError, match="tied"):
    convert.from_hf_state_dict(model.config, sd)


def test_longcat_dead_zero_expert_rows_are_sliced():
  model = H.build("longcat")
  n, z, inter = 4, 2, 32
  with torch.no_grad():
    for layer in model.model.layers:
      assert layer.mlp.experts.gate_up_proj.shape == (n + z, 2 * inter, 64)
      layer.mlp.experts.gate_up_proj[n:] = float("nan")  # never read by transformers
  toks = H.tokens(2, 12, seed=3)
  assert np.isfinite(H.hf_logits(model, toks)).all()
  cfg, variables = convert.from_hf(model)
  for i, layer in enumerate(model.model.layers):
    fused = layer.mlp.experts.gate_up_proj.detach().numpy()
    experts = variables["params"][f"layers_{i}"]["mlp"]["experts"]
    assert experts["gate_proj"].shape == (n, 64, inter)
    np.testing.assert_array_equal(experts["gate_proj"], fused[:n, :inter].transpose(0, 2, 1).astype(np.float32))
    np.testing.assert_array_equal(experts["up_proj"], fused[:n, inter:].transpose(0, 2, 1).astype(np.float32))
    np.testing.assert_array_equal(experts["down_proj"],
                                  layer.mlp.experts.down_proj.detach().numpy().transpose(0, 2, 1).astype(np.float32))
    bias = variables["router_state"][f"layers_{i}"]["mlp"]["router"]["e_score_correction_bias"]
    assert bias.shape == (n + z,) and bias.dtype == jnp.float32
  out = convert.to_hf_state_dict(cfg, variables)
  gate_up = out["model.layers.0.mlp.experts.gate_up_proj"]
  assert gate_up.shape == (n + z, 2 * inter, 64)
  assert np.all(gate_up[n:] == 0) and np.isfinite(gate_up).all()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


@pytest.mark.parametrize("variant", list(H.VARIANTS))
def test_count_params_matches_transformers(variant):
  model = hf_model(variant)
  dead = 0  # LongCat: gate_up_proj rows allocated for zero experts (model-spec §3.7)
  for name, p in model.named_parameters():
    if name.endswith("experts.gate_up_proj"):
      down = dict(model.named_parameters())[name.replace("gate_up_proj", "down_proj")]
      dead += (p.shape[0] - down.shape[0]) * p.shape[1] * p.shape[2]
  cfg = convert.config_from_hf(model.config)
  assert (dead > 0) == variant.startswith("longcat")
  assert models.count_params(cfg) == H.hf_param_count(model) - dead


# ----------------------------------------------------------------- round trip


def _round_to_float32(model):
  """Makes every float64 weight exactly representable in float32, so the float32 round
  trip is lossless and the reloaded model must reproduce the logits bit for bit."""
  with torch.no_grad():
    for t in list(model.parameters()) + list(model.buffers()):
      if t.is_floating_point():
        t.copy_(t.float().double())
  return model


@pytest.mark.parametrize("variant,scan", [("longcat", False), ("longcat_bias_k3", True),
                                          ("deepseek", True), ("deepseek_yarn_qproj", False),
                                          ("youtu", False), ("youtu_untied_halfsplit", True)])
def test_round_trip_into_fresh_transformers_model(variant, scan):
  model = _round_to_float32(H.build(variant, seed=5))
  cfg, variables = convert.from_hf(model, scan_layers=scan)
  assert cfg.scan_layers == scan
  state_dict = convert.to_hf_state_dict(cfg, variables)
  assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state_dict.values())
  original = model.state_dict()
  assert set(state_dict) == set(original)
  for name, value in state_dict.items():
    ref = original[name].numpy()
    if name.endswith("experts.gate_up_proj"):  # LongCat dead rows come back as zeros
      ref = np.concatenate([ref[:cfg.n_routed_experts], np.zeros_like(ref[cfg.n_routed_experts:])])
    np.testing.assert_array_equal(value, ref, err_msg=name)
  fresh = H.build(variant, seed=99)  # different random weights, same architecture
  H.load_numpy_state_dict(fresh, state_dict)
  toks = H.tokens(2, 12, seed=7)
  np.testing.assert_array_equal(H.hf_logits(fresh, toks), H.hf_logits(model, toks))


def test_param_dtype_override_keeps_router_state_float32():
  model = hf_model("deepseek")
  cfg, variables = convert.from_hf(model, param_dtype="bfloat16", dtype="bfloat16")
  assert variables["params"]["layers_1"]["mlp"]["experts"]["gate_proj"].dtype == jnp.bfloat16
  assert variables["router_state"]["layers_1"]["mlp"]["router"]["e_score_correction_bias"].dtype == jnp.float32
  state_dict = convert.to_hf_state_dict(cfg, variables)
  assert all(v.dtype == np.float32 for v in state_dict.values())
  H.load_numpy_state_dict(H.build("deepseek", seed=1), state_dict)
