"""MoE dispatch paths on CPU: forward+backward time vs the zero-expert share of router slots.

A mid-sized LongCat-style MoE layer (softmax router over 16 FFN experts + 8 zero experts,
top-4, float32). The zero-expert share is set through the router correction bias (one
value on all zero slots, found by bisection; -1e3 gives 0%). Every path is timed as a
jitted grad w.r.t. params and input (median of several runs after warm-up, with
block_until_ready); the bias is an input, so each path compiles once for all shares.

    python benchmarks/moe_dispatch.py [--quick]

Columns: achieved share; activated expert GFLOP (fwd+bwd = 3 x 2 x 3 d I per FFN slot);
computed expert GFLOP from the sown `expert_rows` (rows the path pushed through expert
matmuls; for ragged_dot the rows an ideal grouped kernel runs - XLA:CPU does N times
that); ms; ratio to the same path's 0% time. Writes benchmarks/results/moe_dispatch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from agentic_jax.models.config import ModelConfig
from agentic_jax.models.moe import MoE, route

PATHS = [("dense", "blocked"), ("capacity", "blocked"), ("dropless", "blocked"),
         ("dropless", "ragged_dot")]
TARGET_SHARES = (0.0, 0.25, 0.5)


def path_name(path: tuple[str, str]) -> str:
  return path[0] if path[0] != "dropless" else f"dropless/{path[1]}"


def calibrate_bias(cfg: ModelConfig, params, x2d, target: float) -> tuple[float, float]:
  """Bias value on every zero slot that gives `target` share of slots to zero experts."""
  n = cfg.n_routed_experts

  @jax.jit
  def share(b):
    bias = jnp.zeros((cfg.num_slots,), jnp.float32).at[n:].set(b)
    r = route(cfg, x2d, params["router"]["kernel"], bias)
    return jnp.mean((r.idx >= n).astype(jnp.float32))

  if target <= 0.0:
    return -1e3, float(share(-1e3))
  lo, hi = -1.0, 1.0  # share(lo) ~ 0, share(hi) ~ 1 for a softmax router's scores
  for _ in range(40):
    mid = 0.5 * (lo + hi)
    if float(share(mid)) < target:
      lo = mid
    else:
      hi = mid
  return hi, float(share(hi))


def time_interleaved(fn, arg_sets: list[tuple], reps: int) -> list[float]:
  """Median ms per argument set; one warm-up each, then the sets take turns in every
  round so that load from other processes hits all of them alike."""
  for args in arg_sets:
    jax.block_until_ready(fn(*args))
  times: list[list[float]] = [[] for _ in arg_sets]
  for _ in range(reps):
    for i, args in enumerate(arg_sets):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[i].append(time.perf_counter() - t0)
  return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="smaller batch, fewer repeats")
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                "moe_dispatch.json"))
  args = ap.parse_args()
  batch, seq = (2, 256) if args.quick else (4, 512)
  reps = 3 if args.quick else 7
  reps_ragged = 1 if args.quick else 3  # ragged_dot is a masked dense dot on CPU: slow
  base = ModelConfig(
      layer_type="scmoe", hidden_size=512, n_routed_experts=16, zero_expert_num=8,
      num_experts_per_tok=4, moe_intermediate_size=256, scoring_func="softmax",
      routed_scaling_factor=6.0, capacity_factor=2.0, dropless_block_size=128)
  d, inter, k = base.hidden_size, base.moe_intermediate_size, base.num_experts_per_tok
  m = batch * seq
  x = jax.random.normal(jax.random.key(1), (batch, seq, d), jnp.float32)
  params = nn.meta.unbox(jax.jit(MoE(base).init)(jax.random.key(0), x))["params"]
  probe = jax.random.normal(jax.random.key(2), x.shape, jnp.float32)

  biases = {}
  for target in TARGET_SHARES:
    biases[target] = calibrate_bias(base, params, x.reshape(m, d), target)
  print(f"MoE layer: tokens {batch}x{seq}, d {d}, {base.n_routed_experts} FFN experts "
        f"(I={inter}) + {base.zero_expert_num} zero experts, top-{k}, softmax, float32, "
        f"capacity_factor {base.capacity_factor}, block {base.dropless_block_size}")
  print("zero-slot bias per target share: "
        + ", ".join(f"{t:.0%}: {b:+.5f} -> {s:.3f}" for t, (b, s) in biases.items()))

  flop_per_row = 3 * 2 * 3 * d * inter  # fwd+bwd, three expert matmuls
  rows = []
  for path in PATHS:
    cfg = base.replace(moe_dispatch=path[0], dropless_backend=path[1])
    model = MoE(cfg)

    def loss(p, x, state, model=model):
      y = model.apply({"params": p, "router_state": state}, x)
      return jnp.sum(y * probe)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    stats_fn = jax.jit(lambda p, x, state, model=model: model.apply(
        {"params": p, "router_state": state}, x, mutable=["intermediates"])[1]["intermediates"])
    states, stats = [], []
    for target in TARGET_SHARES:
      bias_val, _ = biases[target]
      bias = jnp.zeros((cfg.num_slots,), jnp.float32).at[cfg.n_routed_experts:].set(bias_val)
      states.append({"router": {"e_score_correction_bias": bias}})
      sown = stats_fn(params, x, states[-1])
      stats.append({key: float(sown[key][0]) for key in (
          "zero_expert_share", "expert_rows", "dropped_slots", "ffn_experts_per_token")})
    n_rep = reps_ragged if path == ("dropless", "ragged_dot") else reps
    times = time_interleaved(step, [(params, x, s) for s in states], n_rep)
    for target, st, ms in zip(TARGET_SHARES, stats, times):
      ffn_slots = m * k * (1.0 - st["zero_expert_share"])
      row = {"path": path_name(path), "target_share": target,
             "zero_share": st["zero_expert_share"], "ffn_per_token": st["ffn_experts_per_token"],
             "dropped_slots": st["dropped_slots"], "expert_rows": st["expert_rows"],
             "activated_expert_gflop": ffn_slots * flop_per_row / 1e9,
             "computed_expert_gflop": st["expert_rows"] * flop_per_row / 1e9,
             "ms": ms, "ratio_vs_0pct": ms / times[0]}
      rows.append(row)
      print(f"  {row['path']:<20} share {row['zero_share']:.3f}  {ms:8.1f} ms", flush=True)

  header = (f"{'path':<20} {'zero share':>10} {'FFN/tok':>7} {'dropped':>7} "
            f"{'act GFLOP':>9} {'comp GFLOP':>10} {'ms':>8} {'vs 0%':>6}")
  print("\n" + header + "\n" + "-" * len(header))
  for r in rows:
    print(f"{r['path']:<20} {r['zero_share']:>10.3f} {r['ffn_per_token']:>7.2f} "
          f"{r['dropped_slots']:>7.0f} {r['activated_expert_gflop']:>9.1f} "
          f"{r['computed_expert_gflop']:>10.1f} {r['ms']:>8.1f} {r['ratio_vs_0pct']:>6.2f}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  meta = {"tokens": [batch, seq], "hidden_size": d, "n_routed_experts": base.n_routed_experts,
          "zero_expert_num": base.zero_expert_num, "moe_intermediate_size": inter,
          "top_k": k, "capacity_factor": base.capacity_factor,
          "block_size": base.dropless_block_size, "dtype": "float32", "reps": reps,
          "quick": args.quick, "jax": jax.__version__, "machine": platform.processor(),
          "cpu_count": os.cpu_count(), "zero_bias": {str(t): b for t, (b, _) in biases.items()}}
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
