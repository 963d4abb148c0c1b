"""Checkpoint conversion between transformers models and agentic_jax variables.

    from agentic_jax import convert, models
    cfg, variables = convert.from_hf(hf_model)           # LongcatFlash / DeepseekV3 / Youtu
    logits = models.build(cfg).apply(variables, tokens)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in
                              convert.to_hf_state_dict(cfg, variables).items()})
"""

from agentic_jax.convert.hf import from_hf, from_hf_state_dict, to_hf_state_dict
from agentic_jax.convert.hf_config import SUPPORTED_MODEL_TYPES, config_from_hf

__all__ = ["SUPPORTED_MODEL_TYPES", "config_from_hf", "from_hf", "from_hf_state_dict",
           "to_hf_state_dict"]
