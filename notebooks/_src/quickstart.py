# %% [markdown]
# # agentic_jax quickstart
#
# Build a tiny LongCat-Flash (MLA + ScMoE with zero-computation experts), run it, decode with the
# compressed MLA cache, and inspect router statistics. Runs on a CPU in seconds (the same in the
# reduced mode, `NOTEBOOK_QUICK=1`, that CI runs).

# %%
import os
QUICK = os.environ.get("NOTEBOOK_QUICK") == "1"  # reduced mode (CI); this notebook is short either way
MAX_NEW_TOKENS = 10
print("QUICK =", QUICK)

# %%
import jax, jax.numpy as jnp
from agentic_jax import models, sampling

cfg = models.presets.get('longcat_flash_tiny')
variables = models.init_variables(cfg, jax.random.key(0))
print(cfg.layer_type, models.count_params(cfg), 'params; state collections:', list(variables))

# %%
tokens = jnp.array([[1, 2, 3, 4, 5, 6]], jnp.int32)
logits, inter = models.build(cfg).apply(variables, tokens, mutable=['intermediates'])
print(logits.shape)
print(jax.tree.map(lambda x: x.shape, inter))

# %%
print(sampling.generate(cfg, variables, [[1, 2, 3], [9, 8, 7, 6]], max_new_tokens=MAX_NEW_TOKENS))
print(sampling.generate(cfg, variables, [[1, 2, 3]], MAX_NEW_TOKENS, temperature=0.8, top_p=0.9, seed=0))

# %% [markdown]
# Switch the MoE dispatch or attention implementation by config; the outputs agree when nothing is dropped.

# %%
for dispatch in ['dense', 'capacity', 'dropless']:
    c = cfg.replace(moe_dispatch=dispatch)
    out = models.build(c).apply(variables, tokens)
    print(dispatch, float(jnp.abs(out - logits).max()))

# %% [markdown]
# Full-size presets can be inspected from shapes alone:

# %%
for name in ['longcat_flash', 'deepseek_v3', 'youtu_llm']:
    print(f'{name:14s} {models.count_params(models.presets.get(name)):,}')
