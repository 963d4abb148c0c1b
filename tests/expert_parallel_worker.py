"""Multi-device half of tests/test_expert_parallel.py (8 fake CPU devices, fsdp 2 x expert 4).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/expert_parallel_worker.py PRESET
    ... tests/expert_parallel_worker.py drops     # capacity drops against a numpy model

Prints one JSON line of measurements; the test process makes the assertions.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from agentic_jax import models, parallel
from agentic_jax.models import moe_dispatch, moe_expert_parallel
from agentic_jax.parallel.rules import path_str

MESH = {"fsdp": 2, "expert": 4}


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def model_case(preset: str) -> dict:
  """Sharded forward + gradients with expert_parallel vs the dense reference dispatch."""
  mesh = parallel.make_mesh(MESH)
  base = models.presets.get(preset, capacity_factor=4.0)  # >= ep: no slot can be dropped
  tokens = np.random.RandomState(1).randint(0, base.vocab_size, (8, 16)).astype(np.int32)
  variables = parallel.shard_init(base, jax.random.key(0), mesh)
  params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  out = {}
  for disp in ("dense", "expert_parallel"):
    cfg = base.replace(moe_dispatch=disp)
    module = models.build(cfg)

    def loss_fn(p, r, t):
      logits, state = module.apply({"params": p, **r}, t, mutable=["intermediates"])
      logp = jax.nn.log_softmax(logits)
      nll = -jnp.mean(jnp.take_along_axis(logp, jnp.roll(t, -1, 1)[..., None], -1))
      dropped = sum(jax.tree.leaves(jax.tree_util.tree_map_with_path(
          lambda path, x: x if "dropped_slots" in jax.tree_util.keystr(path) else 0.0,
          state["intermediates"])))
      return nll, (logits, dropped)

    sh = parallel.variable_shardings(cfg, mesh)
    fn = parallel.jit_sharded(
        jax.value_and_grad(loss_fn, has_aux=True), mesh,
        in_shardings=(sh["params"], {k: sh[k] for k in rest}, parallel.batch_sharding(mesh)),
        out_shardings=((NamedSharding(mesh, P()), (NamedSharding(mesh, parallel.logits_spec(mesh)),
                                                   NamedSharding(mesh, P()))), sh["params"]))
    (loss, (logits, dropped)), grads = fn(params, rest, tokens)
    with jax.set_mesh(mesh):
      hlo = fn.jitted.lower(params, rest, tokens).compile().as_text()
    # All-to-alls of the MoE exchange (the SPMD partitioner may add others for resharding).
    moe_a2a = sum(1 for l in hlo.splitlines() if " all-to-all(" in l and "mlp/shard_map" in l)
    out[disp] = dict(loss=loss, logits=logits, grads=grads, dropped=float(dropped),
                     all_to_all=moe_a2a)
  d, e = out["dense"], out["expert_parallel"]
  grad_rel = {path_str(p): rel(g, r) for (p, g), r in
              zip(jax.tree_util.tree_flatten_with_path(e["grads"])[0], jax.tree.leaves(d["grads"]))}
  worst = max(grad_rel, key=grad_rel.get)
  return {"loss_rel": rel(e["loss"], d["loss"]), "logits_rel": rel(e["logits"], d["logits"]),
          "grad_rel_max": grad_rel[worst], "grad_rel_worst": worst,
          "dropped": e["dropped"], "all_to_all_ep": e["all_to_all"],
          "all_to_all_dense": d["all_to_all"]}


def drops_case() -> dict:
  """Direct call with a small capacity; the reference is dense_dispatch with the slots that
  the capacity rule drops (worked out in numpy) masked out."""
  mesh = parallel.make_mesh(MESH)
  cfg = models.presets.get("deepseek_v3_tiny", moe_dispatch="expert_parallel", capacity_factor=1.0,
                           dropless_block_size=4)
  rng = np.random.RandomState(0)
  m, k, d, inter, n, z = 64, 2, 16, 8, 8, 2  # 8 tokens per device, 2 experts per expert rank
  x = rng.randn(m, d).astype(np.float32)
  # Skewed routing so some (source, destination) blocks overflow: most slots go to experts 0-1.
  idx = np.stack([rng.choice(n + z, m, p=[.3, .3] + [.05] * 6 + [.05, .05]) for _ in range(k)], 1)
  idx[:, 1] = np.where(idx[:, 1] == idx[:, 0], (idx[:, 0] + 1) % (n + z), idx[:, 1])
  idx = idx.astype(np.int32)
  gates = rng.rand(m, k).astype(np.float32)
  wg, wu = rng.randn(n, d, inter).astype(np.float32) * .3, rng.randn(n, d, inter).astype(np.float32) * .3
  wd = rng.randn(n, inter, d).astype(np.float32) * .3

  ep, per_dev = 4, 8
  cap = moe_expert_parallel.send_capacity(per_dev, k, ep, cfg.capacity_factor)
  keep = np.zeros((m, k), bool)
  for s in range(m // per_dev):  # source device s holds rows [8s, 8s+8), in slot order
    used = np.zeros(ep, int)
    for t in range(s * per_dev, (s + 1) * per_dev):
      for j in range(k):
        if idx[t, j] < n:
          dest = idx[t, j] // (n // ep)
          keep[t, j] = used[dest] < cap
          used[dest] += 1
  want, _ = moe_dispatch.dense_dispatch(x, idx, gates * keep, wg, wu, wd)
  want_dropped = int(np.sum((idx < n) & ~keep))

  rows, experts = (NamedSharding(mesh, P(("fsdp", "expert"), None)),
                   NamedSharding(mesh, P("expert", None, None)))
  fn = jax.jit(lambda *a: moe_expert_parallel.expert_parallel_dispatch(cfg, *a),
               in_shardings=(rows, rows, rows, experts, experts, experts))
  with jax.set_mesh(mesh):
    y, stats = fn(x, idx, gates, wg, wu, wd)
  return {"cap": cap, "rel": rel(y, want), "dropped": int(stats["dropped_slots"]),
          "want_dropped": want_dropped, "ffn_slots": int(np.sum(idx < n))}


if __name__ == "__main__":
  assert jax.device_count() == 8
  what = sys.argv[1]
  result = drops_case() if what == "drops" else model_case(what)
  print("RESULT " + json.dumps(result), flush=True)
