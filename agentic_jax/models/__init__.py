"""Models: config, layers, MLA, MoE (zero-computation experts, ScMoE), presets.

    from agentic_jax import models
    cfg = models.presets.get("longcat_flash_tiny")
    module = models.build(cfg)
    variables = models.init_variables(cfg, jax.random.key(0))
    logits = module.apply(variables, tokens)          # tokens int32 [B, T] -> f32 [B, T, V]
"""

from agentic_jax.models import presets
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.model import (
    CausalLM,
    KVCache,
    abstract_variables,
    build,
    count_params,
    init_cache,
    init_variables,
    logical_axes,
    scan_variables,
    unscan_variables,
)

__all__ = [
    "CausalLM", "KVCache", "ModelConfig", "abstract_variables", "build", "count_params",
    "init_cache", "init_variables", "logical_axes", "presets", "scan_variables", "unscan_variables",
]
