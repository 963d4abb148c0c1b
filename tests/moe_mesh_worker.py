"""Multi-device half of tests/test_moe_mesh.py (8 fake CPU devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/moe_mesh_worker.py

For every mesh of MESHES and every dispatch path that runs under a mesh, the loss, the
gradients of every parameter and the dropped-slot count of a 1-layer LongCat-style model
(zero experts, ScMoE) are measured sharded and on ONE device (same host params, same
tokens), and the compiled sharded program is searched for collectives inside while-loop
bodies. Prints one JSON line; the test process makes the assertions.
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from agentic_jax import models, parallel

MESHES = ({"fsdp": 2, "tensor": 2, "expert": 2}, {"expert": 8}, {"data": 2, "expert": 4},
          {"tensor": 2, "expert": 4}, {"fsdp": 4, "tensor": 2})
# capacity at factor 0.5 drops slots (the test checks it does), so equality also covers
# WHICH slots are dropped; expert_parallel at factor 8 >= ep never drops.
CASES = {"dense": dict(moe_dispatch="dense"),
         "capacity": dict(moe_dispatch="capacity", capacity_factor=0.5),
         "dropless": dict(moe_dispatch="dropless", dropless_backend="blocked"),
         "ragged_dot": dict(moe_dispatch="dropless", dropless_backend="ragged_dot"),
         "expert_parallel": dict(moe_dispatch="expert_parallel", capacity_factor=8.0)}
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def loss_fn(module, params, rest, tokens):
  logits, state = module.apply({"params": params, **rest}, tokens, mutable=["intermediates"])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.mean(jnp.take_along_axis(logp, jnp.roll(tokens, -1, 1)[..., None], -1))
  dropped = sum(x for p, x in jax.tree_util.tree_leaves_with_path(state["intermediates"])
                if "dropped_slots" in jax.tree_util.keystr(p))
  return nll, dropped


def loop_collectives(hlo: str) -> int:
  """Collectives inside the bodies (and conditions) of while loops of a compiled program."""
  regions = set()
  for m in re.finditer(r"while\([^)]*\)[^\n]*?condition=%?([\w.\-]+)[^\n]*?body=%?([\w.\-]+)", hlo):
    regions.update(m.groups())
  count, current = 0, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head:
      current = head.group(1)
    elif current in regions:
      count += sum(f" {c}(" in line or f" {c}-start(" in line for c in COLLECTIVES)
  return count


def main() -> dict:
  assert jax.device_count() == 8, jax.devices()
  base = models.presets.get("longcat_flash_tiny", num_layers=1, n_routed_experts=8,
                            dropless_block_size=8)
  tokens = np.random.RandomState(2).randint(0, base.vocab_size, (8, 24)).astype(np.int32)
  host = jax.device_get(models.init_variables(base, jax.random.key(4)))
  params, rest = host["params"], {k: v for k, v in host.items() if k != "params"}
  out = {"cases": []}
  for name, overrides in CASES.items():
    cfg = base.replace(**overrides)
    module = models.build(cfg)
    fn = jax.value_and_grad(lambda p, r, t: loss_fn(module, p, r, t), has_aux=True)
    (ref_loss, ref_drop), ref_grads = jax.jit(fn)(params, rest, tokens)
    for sizes in MESHES:
      mesh = parallel.make_mesh(sizes)
      var_sh = parallel.variable_shardings(cfg, mesh)
      rest_sh = {k: v for k, v in var_sh.items() if k != "params"}
      rep = NamedSharding(mesh, P())
      jitted = parallel.jit_sharded(
          fn, mesh, in_shardings=(var_sh["params"], rest_sh, parallel.batch_sharding(mesh)),
          out_shardings=((rep, rep), var_sh["params"]))
      placed = parallel.shard_variables(host, cfg, mesh)
      (loss, drop), grads = jitted(placed["params"], {k: placed[k] for k in rest},
                                   tokens)
      with jax.set_mesh(mesh):
        hlo = jitted.jitted.lower(placed["params"], {k: placed[k] for k in rest},
                                  tokens).compile().as_text()
      grad_rel = max(rel(a, b) for a, b in zip(jax.tree.leaves(grads),
                                                jax.tree.leaves(ref_grads)))
      out["cases"].append({"dispatch": name, "mesh": sizes, "loss_rel": rel(loss, ref_loss),
                           "grad_rel": grad_rel, "dropped": float(drop),
                           "ref_dropped": float(ref_drop), "loop_collectives": loop_collectives(hlo)})
  return out


if __name__ == "__main__":
  print(json.dumps(main()))
