"""Tiny transformers reference models (model-spec §6) for the conversion and parity tests.

Built from config objects only (never from_pretrained, HF_HUB_OFFLINE=1), seeded, in
float64, with the parameters that random init leaves trivial perturbed: RMSNorm weights
(incl. the MLA latent norms) and attention biases get random values, router weights are
scaled up so routing is far from uniform, and e_score_correction_bias gets random values of
both signs, so bias-vs-weight handling in the router is exercised.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

MLA_TINY = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, q_lora_rank=32,
                kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                max_position_embeddings=256)

LONGCAT = dict(MLA_TINY, num_layers=2, ffn_hidden_size=128, expert_ffn_hidden_size=32,
               n_routed_experts=4, zero_expert_num=2, moe_topk=2, head_dim=8,
               routed_scaling_factor=6.0)
DEEPSEEK = dict(MLA_TINY, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3,
                num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2,
                n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
                num_mtp_layers=0)
YOUTU = dict(MLA_TINY, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=4,
             bos_token_id=0, eos_token_id=1,
             rope_parameters={"rope_type": "default", "rope_theta": 1.6e6})
YARN = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 64,
        "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}

FAMILIES = {
    "longcat": (transformers.LongcatFlashConfig, transformers.LongcatFlashForCausalLM, LONGCAT),
    "deepseek": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM, DEEPSEEK),
    "youtu": (transformers.YoutuConfig, transformers.YoutuForCausalLM, YOUTU),
}

# Named variants used by the tests: (family, config overrides).
VARIANTS = {
    "longcat": ("longcat", {}),
    "longcat_bias_k3": ("longcat", dict(attention_bias=True, n_routed_experts=6, zero_expert_num=3,
                                        moe_topk=3, num_layers=3, routed_scaling_factor=3.0)),
    "deepseek": ("deepseek", {}),
    "deepseek_yarn_qproj": ("deepseek", dict(rope_parameters=YARN, q_lora_rank=None,
                                             attention_bias=True)),
    "deepseek_halfsplit_k2": ("deepseek", dict(rope_interleave=False, first_k_dense_replace=2,
                                               num_hidden_layers=4, n_shared_experts=2,
                                               norm_topk_prob=False, num_experts_per_tok=3)),
    "youtu": ("youtu", {}),
    "youtu_untied_halfsplit": ("youtu", dict(tie_word_embeddings=False, rope_interleave=False,
                                             attention_bias=True)),
}


def hf_config(family: str, **overrides):
  config_cls, _, base = FAMILIES[family]
  # Eager kernels: the default grouped_mm experts path has no float64 kernel on CPU.
  return config_cls(**{**base, **overrides}, attn_implementation="eager",
                    experts_implementation="eager")


def perturb(model: torch.nn.Module, seed: int, router_scale: float = 15.0,
            bias_scale: float = 0.1) -> torch.nn.Module:
  """Randomises what init leaves trivial (norm weights, biases, router scale, correction bias)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
      if "rotary_emb" in name:
        continue
      rand = lambda: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)  # noqa: E731
      if "norm" in name and t.ndim == 1:
        t.copy_(1.0 + 0.3 * rand())
      elif name.endswith("e_score_correction_bias"):
        t.copy_(bias_scale * rand())
      elif name.endswith(("router.classifier.weight", "mlp.gate.weight")):
        t.mul_(router_scale)
      elif name.endswith(".bias"):
        t.copy_(0.02 * rand())  # the size of the weights: larger biases swamp the residual
  return model


def build(variant: str, seed: int = 0, **overrides) -> torch.nn.Module:
  """A float64, eval-mode, perturbed tiny model of `variant` (a key of VARIANTS)."""
  family, variant_overrides = VARIANTS[variant]
  _, model_cls, _ = FAMILIES[family]
  torch.manual_seed(seed)
  model = model_cls(hf_config(family, **{**variant_overrides, **overrides}))
  model = model.double().eval()
  # Sigmoid scores live in (0, 1); softmax probabilities are ~1/(N+Z): scale the bias to each.
  bias_scale = 0.3 if family == "deepseek" else 0.1
  return perturb(model, seed + 1000, bias_scale=bias_scale)


def tokens(batch: int, length: int, vocab: int = 128, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int64)


def hf_logits(model: torch.nn.Module, toks: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(toks, np.int64))).logits.double().numpy()


def load_numpy_state_dict(model: torch.nn.Module, state_dict: dict) -> None:
  """Strict load of a numpy state dict (dtype cast to the model's)."""
  model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()},
                        strict=True)


def hf_param_count(model: torch.nn.Module) -> int:
  """Trainable parameters, tied tensors counted once (buffers excluded)."""
  return sum(p.numel() for p in model.parameters())
