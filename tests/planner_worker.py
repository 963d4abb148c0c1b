"""Multi-device half of tests/test_planner.py (8 fake CPU devices): the bytes each device
really holds of sharded params and AdamW state, next to the planner's numbers."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax

from agentic_jax import models, parallel
from agentic_jax.parallel import memory

CASES = (("longcat_flash_tiny", {"fsdp": 2, "expert": 4}, "shard_init"),
         ("deepseek_v3_tiny", {"data": 2, "fsdp": 2, "tensor": 2}, "zeros"))


def main() -> dict:
  assert jax.device_count() == 8
  out = []
  for preset, sizes, how in CASES:
    cfg = models.presets.get(preset)
    mesh = parallel.make_mesh(sizes)
    var_sh = parallel.variable_shardings(cfg, mesh)
    if how == "shard_init":
      variables = parallel.shard_init(cfg, jax.random.key(0), mesh)
    else:  # same layout, cheaper to compile: the values do not matter for byte counts
      shapes = models.abstract_variables(cfg)
      variables = jax.jit(lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
                          out_shardings=var_sh)()
    tx = optax.adamw(1e-3)
    abstract_opt = jax.eval_shape(tx.init, variables["params"])
    opt_sh = parallel.shardings_like_params(abstract_opt, var_sh, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_sh)(variables["params"])
    plan = memory.state_bytes(cfg, sizes)
    out.append({
        "preset": preset, "mesh": sizes, "plan": plan,
        "actual": {"params": [parallel.addressable_bytes(variables, d) for d in jax.devices()],
                   "optimizer": [parallel.addressable_bytes(opt_state, d) for d in jax.devices()],
                   "trainable": [parallel.addressable_bytes(variables["params"], d)
                                 for d in jax.devices()]}})
  return {"cases": out}


if __name__ == "__main__":
  print("RESULT " + json.dumps(main()), flush=True)
