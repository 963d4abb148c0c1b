"""IQuest-Coder (GQA, layer_type "llama"; model-spec §5, §6): parity with transformers'
`iquestcoder` (IQuestCoderConfig -> LlamaForCausalLM, float64, perturbed norms): logits, greedy
generation, conversion both ways in memory and through checkpoint directories (the Loop's gate
tensors included); the planner's decode-cache bytes, FLOPs, configs. The Loop's forward and
decoding: tests/test_iquest_loop.py.
"""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import transformers  # noqa: E402

from agentic_jax import convert, models, sampling  # noqa: E402
from agentic_jax.convert import hf_config  # noqa: E402
from tests.iquest_fixtures import (RTOL, hf_logits, hf_model, loop_variables, rel_err,  # noqa: E402
                                   tokens)


# ------------------------------------------------------------------ transformers parity


def test_hf_model_is_llama_with_gqa():
  model = hf_model()
  assert type(model).__name__ == "LlamaForCausalLM"
  assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)


@pytest.mark.parametrize("overrides", [{}, dict(attention_bias=True, head_dim=8, num_key_value_heads=1,
                                                rope_parameters={"rope_type": "default",
                                                                 "rope_theta": 5e5})])
def test_logits_match_transformers(overrides):
  model = hf_model(**overrides)
  cfg, variables = convert.from_hf(model)
  assert cfg.layer_type == "llama" and cfg.kv_heads == model.config.num_key_value_heads
  toks = tokens(2, 12, seed=1)
  ref = hf_logits(model, toks)
  ours = models.build(cfg).apply(variables, jnp.asarray(toks))
  assert rel_err(ours, ref) <= RTOL


def test_convert_round_trip_and_config():
  model = hf_model(attention_bias=True)
  cfg, variables = convert.from_hf(model)
  state = convert.to_hf_state_dict(cfg, variables)
  ref = {k: v.numpy() for k, v in model.state_dict().items()}
  assert set(state) == set(ref)
  for k in ref:
    np.testing.assert_allclose(state[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
  config = transformers.IQuestCoderConfig(**hf_config.config_to_hf(cfg))
  assert hf_config.config_from_hf(config) == cfg.replace(moe_dispatch="dropless")
  rebuilt = transformers.AutoModelForCausalLM.from_config(config).double().eval()
  rebuilt.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()})
  toks = tokens(1, 7, seed=3)
  np.testing.assert_allclose(hf_logits(rebuilt, toks), hf_logits(model, toks), rtol=1e-5, atol=1e-6)


def test_greedy_generate_matches_transformers():
  model = hf_model()
  cfg, variables = convert.from_hf(model)
  prompts = [tokens(1, 5, seed=4)[0].tolist(), tokens(1, 9, seed=5)[0].tolist()]
  ours = sampling.generate(cfg, variables, prompts, max_new_tokens=8)
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                           min_new_tokens=8, pad_token_id=0)
    assert got == out[0, len(prompt):].tolist()


def test_loop_conversion_round_trip_keeps_gates():
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=3)
  state = convert.to_hf_state_dict(cfg, variables)
  assert state["model.gate_projections.1.weight"].shape == (4, 16)
  config = types.SimpleNamespace(**hf_config.config_to_hf(cfg))
  assert config.model_type == "iquestloopcoder" and config.loop_window_size == 4
  cfg2, variables2 = convert.from_hf_state_dict(config, state)
  assert cfg2 == cfg.replace(moe_dispatch="dropless")
  jax.tree.map(np.testing.assert_array_equal, variables2, variables)


# ------------------------------------------------------------------ planner


def test_decode_cache_bytes_by_hand():
  from agentic_jax.parallel import memory
  cfg = models.presets.get("iquest_loop_tiny")  # L 2, KV 2, D 16, W 4, loop_num 2, float32
  b, s = 3, 20
  loop1 = 2 * 2 * b * s * 2 * 16  # k and v of every layer, every slot
  rings = 2 * 1 * 2 * b * 4 * 2 * 16  # one later loop: only W = 4 slots
  ints = b * s + 4 + 1  # segment ids, ring slot index, write index
  assert memory.decode_cache_bytes(cfg, b, s) == 4 * (loop1 + rings + ints)
  plain = models.presets.get("iquest_coder_tiny")
  assert memory.decode_cache_bytes(plain, b, s) == 4 * (loop1 + b * s + 1)  # no ring at all
  # the released Loop at 128k context: the rings add W / S of the loop-1 cache
  full = models.presets.get("iquest_loop_40b")
  big = memory.decode_cache_bytes(full, 1, 131072)
  loop1_full = 2 * 80 * 131072 * 8 * 128 * 2  # bf16
  assert big == loop1_full + loop1_full * 64 // 131072 + 4 * (131072 + 64 + 1)
  plan = memory.plan_memory(cfg, {"data": 1}, batch_per_device=b, seq_len=16, cache_len=s)
  assert plan.bytes_of("decode cache") == memory.decode_cache_bytes(cfg, b, s)
  # a second loop costs activations: the loop model's estimate exceeds the plain one's
  act = lambda c: memory.activation_bytes(c, {"data": 1}, batch_per_device=1, seq_len=16)["saved"]  # noqa: E731
  assert act(cfg) > 2 * act(plain) - 4 * 64 * 16 * 2


def test_flops_count_every_loop():
  from agentic_jax.train import flops
  plain, looped = models.presets.get("iquest_coder_tiny"), models.presets.get("iquest_loop_tiny")
  d, f, h, kv, hd, layers, vocab = 64, 128, 4, 2, 16, 2, 128
  per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f  # q, k, v, o, SwiGLU
  fp, fl = flops.flop_model(plain), flops.flop_model(looped)
  assert fp.dense_matmul_params == layers * per_layer + d * vocab  # + untied lm_head
  assert fl.dense_matmul_params == 2 * layers * per_layer + d * vocab
  assert fp.attention_per_token_per_len == layers * h * 2 * hd
  assert fl.attention_per_token_per_len == 2 * fp.attention_per_token_per_len


def test_midtrain_variants_build_the_gqa_models():
  from agentic_jax.train import config as config_lib
  from tests.train_fixtures import MIDTRAIN
  for variant, loops in (("iquest_coder_tiny", 1), ("iquest_loop_tiny", 2)):
    config = config_lib.load_config(f"{MIDTRAIN}:{variant}")
    cfg = config_lib.model_config(config.model)
    assert (cfg.layer_type, cfg.loop_num, cfg.kv_heads) == ("llama", loops, 2)
    assert config.objective.balance_loss == "none"


# ------------------------------------------------------------------ checkpoint directories


def test_hf_directory_round_trip(tmp_path):
  """save_pretrained -> our checkpoint -> logits; and back to a directory transformers loads."""
  model = hf_model(seed=6).float()
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  model.save_pretrained(hf_dir)
  convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None)
  cfg, variables = convert.load_checkpoint(ckpt)
  toks = tokens(2, 10, seed=12)
  ref = hf_logits(model, toks)
  np.testing.assert_allclose(models.build(cfg).apply(variables, jnp.asarray(toks)), ref,
                             rtol=2e-5, atol=2e-5)
  convert.checkpoint_to_hf(ckpt, out, say=lambda _: None)
  back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  for name, t in model.state_dict().items():
    torch.testing.assert_close(back.state_dict()[name], t, rtol=0, atol=0, msg=name)


def test_loop_directory_round_trip(tmp_path):
  """A Loop checkpoint directory (config.json of model_type iquestloopcoder + safetensors with
  the gate tensors, as the hub remote code stores it) in and out."""
  from safetensors.numpy import load_file, save_file
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=7)
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  os.makedirs(hf_dir)
  state = {k: np.ascontiguousarray(v, np.float32)
           for k, v in convert.to_hf_state_dict(cfg, variables).items()}
  save_file(state, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(hf_config.config_to_hf(cfg), f)
  convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None)
  cfg2, variables2 = convert.load_checkpoint(ckpt)
  assert (cfg2.loop_num, cfg2.loop_window_size) == (2, 4)
  toks = jnp.asarray(tokens(1, 9, seed=13))
  np.testing.assert_allclose(models.build(cfg2).apply(variables2, toks),
                             models.build(cfg).apply(variables, toks), rtol=1e-5, atol=1e-5)
  convert.checkpoint_to_hf(ckpt, out, say=lambda _: None)
  written = {}
  for name in os.listdir(out):
    if name.endswith(".safetensors"):
      written.update(load_file(os.path.join(out, name)))
  assert set(written) == set(state)
  for k in state:
    np.testing.assert_array_equal(written[k], state[k], err_msg=k)


def test_config_errors_name_the_field():
  base = models.presets.get("iquest_coder_tiny")
  for field, value, match in (("num_key_value_heads", 3, "num_key_value_heads"),
                              ("loop_num", 0, "loop_num"), ("scan_layers", True, "scan_layers"),
                              ("attention_impl", "chunked", "attention_impl"),
                              ("loop_window_size", 0, "loop_window_size")):
    with pytest.raises(ValueError, match=f"ModelConfig.{match}"):
      base.replace(**{field: value})
  with pytest.raises(ValueError, match="ModelConfig.loop_num"):
    models.presets.get("youtu_llm_tiny", loop_num=2)


def test_kv_heads_split_over_tensor_or_replicate():
  from jax.sharding import PartitionSpec as P

  from agentic_jax.parallel import sharding
  cfg = models.presets.get("iquest_loop_tiny")  # 4 query heads, 2 K/V heads
  for tensor, kv_axis in ((2, "tensor"), (4, None)):  # 2 K/V heads cannot split 4 ways
    specs = sharding.variable_specs(cfg, {"data": 1, "fsdp": 2, "tensor": tensor, "expert": 1})
    layer = specs["params"]["layers_1"]
    assert layer["self_attn"]["q_proj"]["kernel"] == P("fsdp", "tensor", None)
    assert layer["self_attn"]["k_proj"]["kernel"] == P("fsdp", kv_axis, None)
    assert layer["loop_gate"]["weight"] == P("tensor", None)
