"""Helpers shared by the whole-model test modules (test_model, test_sampling)."""

import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax import models


def perturbed_variables(cfg, seed=0):
  """Random variables with norms, router and correction bias moved off their defaults."""
  variables = models.init_variables(cfg, jax.random.key(seed))
  rng = np.random.RandomState(seed)

  def bump(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['weight']"):  # RMSNorm weights
      return x + 0.3 * rng.randn(*x.shape).astype(np.float32)
    if "router" in name:
      return x * 20.0 if "kernel" in name else x
    return x

  variables["params"] = jax.tree_util.tree_map_with_path(bump, variables["params"])
  if "router_state" in variables:
    variables["router_state"] = jax.tree.map(
        lambda b: jnp.asarray(0.05 * rng.randn(*b.shape), jnp.float32), variables["router_state"])
  return variables
