"""Checkpoint conversion between transformers models and agentic_jax variables.

    from agentic_jax import convert, models
    cfg, variables = convert.from_hf(hf_model)           # LongcatFlash / DeepseekV3 / Youtu
    logits = models.build(cfg).apply(variables, tokens)
    hf_model.load_state_dict({k: torch.from_numpy(v) for k, v in
                              convert.to_hf_state_dict(cfg, variables).items()})

Files, streamed tensor by tensor (launch/convert.py):
    convert.hf_to_checkpoint(HF_DIR, CKPT_DIR)           # safetensors -> orbax
    cfg, variables = convert.load_checkpoint(CKPT_DIR)   # also a run's WORKDIR
    convert.checkpoint_to_hf(CKPT_DIR, HF_DIR)           # orbax -> safetensors + config.json
"""

from agentic_jax.convert.checkpoint import ConversionError, hf_to_checkpoint, load_checkpoint
from agentic_jax.convert.export import checkpoint_to_hf
from agentic_jax.convert.hf import from_hf, from_hf_state_dict, to_hf_state_dict
from agentic_jax.convert.hf_config import SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf

__all__ = ["ConversionError", "SUPPORTED_MODEL_TYPES", "checkpoint_to_hf", "config_from_hf",
           "config_to_hf", "from_hf", "from_hf_state_dict", "hf_to_checkpoint",
           "load_checkpoint", "to_hf_state_dict"]
