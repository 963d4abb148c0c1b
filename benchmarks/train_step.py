"""Training-step throughput on CPU: tokens/s and MFU against a matmul ceiling measured in
the same run.

    python benchmarks/train_step.py            # tiny + 50M configs, all variants
    python benchmarks/train_step.py --quick    # fewer repeats
    python benchmarks/train_step.py --models=m50 --variants=capacity/xla

The step is the real one (agentic_jax.train.step: next-token loss with balance and z-loss,
AdamW, router bias update), jitted with state donation, on synthetic packed batches
(agentic_jax.train.input.SyntheticIterator; one batch reused, so input work is excluded).

Ceiling: a jitted float32 jnp.dot of two 2048x2048 matrices (2 * 2048^3 FLOP), median of 3,
measured at the start of every timing round, so a round's MFU divides by the ceiling of the
same moment (the machine is shared; load moves both alike). Reported MFU is the median over
rounds (min-max in brackets).
Model FLOPs (agentic_jax.train.flops): 3 x (2 x activated matmul params x tokens + causal
attention), experts at the FFN-expert share of router slots measured in the timed steps.
MFU = model FLOPs / step time / ceiling. Experts count at the executed FFN share (router
choices minus dropped slots).

Models:
  tiny  configs/midtrain.py:tiny's model, batch 8 x 256 (the main job)
  m50   the LongCat-style model of docs/cpu-calibration.md: vocab 8192, d 512, 4 ScMoE
        layers, 8 heads, q_lora 256, kv_lora 128, qk 32+16, v 32, SwiGLU 1024, 16 FFN experts
        (256) + 8 zero experts, softmax router, top-4, x6; batch 4 x 512; float32.
Variants: MoE dispatch (capacity factor 2.0 / dropless "blocked") x dropless_block_size
(128 / 512; capacity processes chunks of half a block of every expert) x attention ("xla"
materialised scores / "chunked" online softmax over 256-key blocks).
Timing: every variant is compiled first, then the variants take turns, one step each per
round, so load from other processes hits all alike; the median per variant is reported.
Writes benchmarks/results/train_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agentic_jax import models  # noqa: E402
from agentic_jax.train import config as config_lib  # noqa: E402
from agentic_jax.train import flops as flops_lib  # noqa: E402
from agentic_jax.train import optim as optim_lib  # noqa: E402
from agentic_jax.train import state as state_lib  # noqa: E402
from agentic_jax.train import step as step_lib  # noqa: E402
from agentic_jax.train.input import SyntheticIterator  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
def _variants() -> dict[str, dict]:
  out = {}
  for dispatch in ("capacity", "dropless"):
    for block in (128, 512):
      for attn in ("xla", "chunked"):
        v = dict(moe_dispatch=dispatch, dropless_backend="blocked", dropless_block_size=block,
                 capacity_factor=2.0, attention_impl=attn, attention_chunk_size=256)
        out[f"{dispatch}/b{block}/{attn}"] = v
  return out


VARIANTS = _variants()
M50 = dict(layer_type="scmoe", vocab_size=8192, hidden_size=512, num_layers=4,
           num_attention_heads=8, intermediate_size=1024, q_lora_rank=256, kv_lora_rank=128,
           qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, mla_scale_q_lora=True,
           mla_scale_kv_lora=True, rope_theta=1e7, rms_norm_eps=1e-5, max_position_embeddings=512,
           n_routed_experts=16, zero_expert_num=8, num_experts_per_tok=4, moe_intermediate_size=256,
           scoring_func="softmax", routed_scaling_factor=6.0, norm_topk_prob=False)


class Ceiling:
  """f32 2048^3 jnp.dot; `measure(k)` = GFLOP/s of the median of k runs."""

  def __init__(self):
    n = self.n = 2048
    self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    self.f = jax.jit(jnp.dot)
    for _ in range(2):
      self.f(self.a, self.b).block_until_ready()

  def measure(self, k: int = 3) -> float:
    ts = []
    for _ in range(k):
      t0 = time.perf_counter()
      self.f(self.a, self.b).block_until_ready()
      ts.append(time.perf_counter() - t0)
    return 2 * self.n ** 3 / statistics.median(ts) / 1e9


def model_and_config(name: str, variant: dict):
  config = config_lib.load_config(os.path.join(ROOT, "configs/midtrain.py") + ":tiny")
  config.unlock()
  config.data.synthetic = True
  if name == "m50":
    for k, v in M50.items():
      config.model[k] = v
    config.data.batch_size, config.data.seq_len = 4, 512
    config.moe.target_ffn_per_token = 2.73
  for k, v in variant.items():
    config.model[k] = v
  # The bias update runs (it is part of the step) but slowly, so routing - and with it the
  # work per step - stays put over the timed steps.
  config.moe.bias_rate = 1e-3
  config.lock()
  return config_lib.model_config(config.model), config


def build(name: str, variant_name: str):
  model_cfg, config = model_and_config(name, VARIANTS[variant_name])
  tx = optim_lib.make_optimizer(config.optim)
  fn = step_lib.make_train_step(model_cfg, config, num_kinds=1, num_sources=1)
  state = jax.jit(lambda: state_lib.init_state(model_cfg, tx, config.seed))()
  it = SyntheticIterator(batch_size=config.data.batch_size, seq_len=config.data.seq_len,
                         vocab_size=model_cfg.vocab_size, seed=0)
  batch = jax.device_put(next(it))
  t0 = time.perf_counter()
  compiled = step_lib.jit_train_step(fn).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  return {"model_cfg": model_cfg, "config": config, "step": compiled, "state": state,
          "batch": batch, "compile_s": compile_s, "times": [], "ffn": []}



def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="3 timed rounds instead of 6")
  ap.add_argument("--models", default="tiny,m50")
  ap.add_argument("--variants", default=",".join(VARIANTS))
  ap.add_argument("--reps", type=int, default=0, help="timed rounds")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/train_step.json"))
  args = ap.parse_args()
  reps = args.reps or (3 if args.quick else 6)
  ceiling = Ceiling()
  rows = []
  for name in args.models.split(","):
    runs = {}
    for v in args.variants.split(","):
      runs[v] = build(name, v)
      print(f"  {name} {v}: compiled in {runs[v]['compile_s']:.1f}s", flush=True)
    for r in runs.values():  # warm-up: two steps each
      for _ in range(2):
        r["state"], m = r["step"](r["state"], r["batch"])
        jax.block_until_ready(m)
    ceilings = []
    for _ in range(reps):  # a round: the ceiling, then one step of every variant
      ceil = ceiling.measure(3)
      ceilings.append(ceil)
      for r in runs.values():
        t0 = time.perf_counter()
        r["state"], m = r["step"](r["state"], r["batch"])
        m = jax.device_get(m)
        sec = time.perf_counter() - t0
        cfg, config = r["model_cfg"], r["config"]
        b, t = config.data.batch_size, config.data.seq_len
        ffn = flops_lib.executed_ffn_experts_per_token(m, b * t)
        fl = flops_lib.flop_model(cfg).step_flops(batch=b, seq_len=t, ffn_experts_per_token=ffn)
        r["times"].append(sec)
        r["ffn"].append(ffn)
        r.setdefault("flops", []).append(fl)
        r.setdefault("mfu", []).append(fl / sec / (ceil * 1e9))
        r["dropped"] = float(m.get("moe/dropped_slots", 0.0))
    for v, r in runs.items():
      cfg, config = r["model_cfg"], r["config"]
      b, t = config.data.batch_size, config.data.seq_len
      sec = statistics.median(r["times"])
      fl = float(np.mean(r["flops"]))
      rows.append({"model": name, "variant": v, "params": models.count_params(cfg),
                   "batch": f"{b}x{t}", "step_ms": 1e3 * sec, "tokens_per_s": b * t / sec,
                   "gflop_per_step": fl / 1e9, "gflops": fl / sec / 1e9,
                   "ffn_experts_per_token": float(np.mean(r["ffn"])),
                   "dropped_slots": r["dropped"], "mfu": statistics.median(r["mfu"]),
                   "mfu_min": min(r["mfu"]), "mfu_max": max(r["mfu"]),
                   "ceiling_gflops": statistics.median(ceilings), "compile_s": r["compile_s"],
                   "times_ms": [1e3 * x for x in r["times"]]})
      del r["state"]
  print("\n| model | variant | params | batch | step ms | tok/s | GFLOP/step | GFLOP/s "
        "| FFN exp/tok | dropped | ceiling GFLOP/s | MFU vs ceiling (min-max) |")
  print("|" + "---|" * 12)
  for r in rows:
    print(f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['batch']} | "
          f"{r['step_ms']:.0f} | {r['tokens_per_s']:,.0f} | {r['gflop_per_step']:.1f} | "
          f"{r['gflops']:.0f} | {r['ffn_experts_per_token']:.2f} | {r['dropped_slots']:.0f} | "
          f"{r['ceiling_gflops']:.0f} | {100 * r['mfu']:.1f}% ({100 * r['mfu_min']:.0f}-"
          f"{100 * r['mfu_max']:.0f}) |")
  best = {}
  for r in rows:
    if r["model"] not in best or r["mfu"] > best[r["model"]]["mfu"]:
      best[r["model"]] = r
  for m, r in best.items():
    print(f"best {m}: {r['variant']} {100 * r['mfu']:.1f}% of the ceiling, "
          f"{r['tokens_per_s']:,.0f} tok/s")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, "reps": reps, "host": platform.node(), "cpus": os.cpu_count(),
               "loadavg": os.getloadavg(), "jax": jax.__version__,
               "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
