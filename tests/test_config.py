"""Config validation and parameter counts of the full presets (shapes only)."""

import jax
import pytest

from agentic_jax import models
from agentic_jax.models import ModelConfig


@pytest.mark.parametrize("name, expected", [
    ("longcat_flash", 560_664_958_976),  # without HF's dead zero-expert rows and MTP
    ("deepseek_v3", 671_026_404_352),  # without MTP
    ("youtu_llm", 1_961_560_064),  # tied embeddings
])
def test_full_preset_param_counts(name, expected):
  assert models.count_params(models.presets.get(name)) == expected


def test_correction_bias_is_state_not_param():
  cfg = models.presets.get("longcat_flash_tiny")
  shapes = models.abstract_variables(cfg)
  assert set(shapes) == {"params", "router_state"}
  biases = jax.tree.leaves(shapes["router_state"])
  assert [b.shape for b in biases] == [(cfg.num_slots,)] * cfg.num_layers


def test_presets_known_and_unknown():
  for name in models.presets.PRESETS:
    assert isinstance(models.presets.get(name), ModelConfig)
  with pytest.raises(KeyError, match="unknown model preset 'gpt5'"):
    models.presets.get("gpt5")
  assert models.presets.get("deepseek_v3_tiny", num_layers=4).num_layers == 4


MOE = dict(layer_type="deepseek", n_routed_experts=8, num_experts_per_tok=2, scoring_func="sigmoid")


@pytest.mark.parametrize("kwargs, field", [
    (dict(MOE, num_experts_per_tok=9), "num_experts_per_tok"),  # top-k > experts
    (dict(MOE, n_group=4, topk_group=1, num_experts_per_tok=3), "num_experts_per_tok"),  # > 1 group of 2
    (dict(MOE, n_group=3), "n_group"),  # 8 experts not divisible into 3 groups
    (dict(MOE, n_group=8), "n_group"),  # groups of 1 cannot be scored by their top-2
    (dict(MOE, topk_group=5, n_group=4), "topk_group"),
    (dict(MOE, n_routed_experts=0), "n_routed_experts"),
    (dict(MOE, moe_dispatch="sparse"), "moe_dispatch"),
    (dict(MOE, dropless_backend="megablox"), "dropless_backend"),
    (dict(MOE, scoring_func="relu"), "scoring_func"),
    (dict(layer_type="scmoe", n_routed_experts=4, zero_expert_num=2, num_experts_per_tok=2,
          n_shared_experts=1), "n_shared_experts"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),  # rope head dim must be even
    (dict(q_lora_rank=None, mla_scale_q_lora=True), "mla_scale_q_lora"),
    (dict(rope_type="yarn", rope_factor=1.0), "rope_factor"),
    (dict(rope_type="ntk"), "rope_type"),
    (dict(layer_type="moe"), "layer_type"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(dtype="float8"), "dtype"),
    (dict(remat_policy="some"), "remat_policy"),
])
def test_invalid_configs_name_the_field(kwargs, field):
  with pytest.raises(ValueError, match=rf"ModelConfig\.{field}:"):
    ModelConfig(**kwargs)


def test_zero_experts_count_toward_group_and_topk_limits():
  # 4 FFN + 2 zero experts: top-k may use all 6 slots
  cfg = ModelConfig(layer_type="scmoe", n_routed_experts=4, zero_expert_num=2, num_experts_per_tok=6,
                    scoring_func="softmax")
  assert cfg.num_slots == 6 and cfg.num_attention_layers == 2 * cfg.num_layers
  with pytest.raises(ValueError, match="num_experts_per_tok"):
    cfg.replace(num_experts_per_tok=7)
