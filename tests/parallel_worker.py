"""Multi-device half of tests/test_parallel.py, run in a subprocess with 8 fake CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_worker.py PRESET

Prints one JSON line of measurements; the test process makes the assertions. The reference
is the same function jitted on ONE device with the same (host) variables and tokens.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from agentic_jax import models, parallel
from agentic_jax.parallel import golden
from agentic_jax.parallel.rules import path_str

MESHES = ({"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 2, "expert": 4})


def loss_fn(module, params, rest, tokens):
  """Mean next-token negative log-likelihood; the logits come back as aux."""
  logits = module.apply({"params": params, **rest}, tokens)
  logp = jax.nn.log_softmax(logits)
  targets = jnp.roll(tokens, -1, axis=1)
  return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1)), logits


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def shard_report(tree) -> dict:
  """Per array: spec and the shard shape on device 0 (what each device really holds)."""
  out = {}
  dev0 = jax.devices()[0]
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shard = next(s for s in x.addressable_shards if s.device == dev0)
    out[path_str(path)] = {"shape": list(x.shape), "shard": list(shard.data.shape),
                           "spec": [e if e is None or isinstance(e, str) else list(e)
                                    for e in x.sharding.spec]}
  return out


def main(preset: str) -> dict:
  assert jax.device_count() == 8, jax.devices()
  cfg = models.presets.get(preset)
  module = models.build(cfg)
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, cfg.vocab_size, (8, 16)).astype(np.int32)
  result: dict = {"preset": preset, "meshes": []}

  # Sharded init on the second mesh; its values (gathered to host) are the reference params.
  init_mesh = parallel.make_mesh(MESHES[1])
  sharded_vars = parallel.shard_init(cfg, jax.random.key(0), init_mesh)
  result["init_shards"] = shard_report(sharded_vars)
  host_vars = jax.device_get(sharded_vars)
  host_params = host_vars["params"]
  rest = {k: v for k, v in host_vars.items() if k != "params"}

  value_and_grad = jax.value_and_grad(lambda p, r, t: loss_fn(module, p, r, t), has_aux=True)
  dev0 = jax.devices()[0]
  ref_in = jax.device_put((host_params, rest, tokens), dev0)
  (ref_loss, ref_logits), ref_grads = jax.jit(value_and_grad)(*ref_in)

  logits = parallel.sharded_forward(cfg, init_mesh)(sharded_vars, tokens)
  result["forward_rel"] = rel(logits, ref_logits)
  result["forward_spec"] = golden.spec_str(logits.sharding.spec)

  for sizes in MESHES:
    mesh = parallel.make_mesh(sizes)
    var_sh = parallel.variable_shardings(cfg, mesh)
    placed = parallel.shard_variables(host_vars, cfg, mesh)
    rest_sh = {k: var_sh[k] for k in rest}
    fn = parallel.jit_sharded(
        value_and_grad, mesh,
        in_shardings=(var_sh["params"], rest_sh, parallel.batch_sharding(mesh)),
        out_shardings=((NamedSharding(mesh, P()), NamedSharding(mesh, parallel.logits_spec(mesh))),
                       var_sh["params"]))
    (loss, lg), grads = fn(placed["params"], {k: placed[k] for k in rest}, tokens)
    grad_rel = {path_str(p): rel(g, r) for (p, g), r in
                zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads))}
    grad_specs_match = all(g.sharding.spec == s.spec for g, s in
                           zip(jax.tree.leaves(grads), jax.tree.leaves(var_sh["params"])))
    result["meshes"].append({
        "mesh": sizes, "loss_rel": rel(loss, ref_loss), "logits_rel": rel(lg, ref_logits),
        "grad_rel_max": max(grad_rel.values()),
        "grad_rel_worst": max(grad_rel, key=grad_rel.get),
        "grad_specs_match": grad_specs_match, "num_grads": len(grad_rel),
        "shards": shard_report(placed["params"])})

  if preset == "longcat_flash_tiny":
    # shard_init equals an unsharded jitted init bit for bit (partitionable threefry);
    # checked on the dense preset, whose init compiles fastest.
    dense = models.presets.get("youtu_llm_tiny")
    a = parallel.shard_init(dense, jax.random.key(3), parallel.make_mesh(MESHES[1]))
    b = jax.jit(lambda r: models.init_variables(dense, r))(jax.random.key(3))
    result["init_exact"] = all(np.array_equal(np.asarray(x), np.asarray(y))
                               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return result


if __name__ == "__main__":
  if "--xla_force_host_platform_device_count=8" not in os.environ.get("XLA_FLAGS", ""):
    sys.exit("run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
  print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)
