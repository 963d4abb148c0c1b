"""Training-step throughput: tokens/s and MFU, against the device's rated peak (on CPU the
best-of-run matmul) and against a matmul measured in the same round, each labelled.

    python benchmarks/train_step.py            # tiny + 50M configs, all variants
    python benchmarks/train_step.py --quick    # fewer repeats
    python benchmarks/train_step.py --models=m50 --variants=capacity/xla
    python benchmarks/train_step.py --models=m200 --variants=dropless/b128/xla

The step is the real one (agentic_jax.train.step: next-token loss with balance and z-loss,
AdamW, router bias update), jitted with state donation, on synthetic packed batches
(agentic_jax.train.input.SyntheticIterator; one batch reused, so input work is excluded).

Denominators (agentic_jax.train.peaks): "MFU vs rated peak" divides by the rated dense peak of
jax.devices()[0].device_kind for float32 at XLA's default precision (TF32 on NVIDIA, bf16 on
TPU); on CPU, which has no rated figure, by the best-of-run ceiling below, and says so.
"MFU vs same-round matmul" divides by the ceiling of the same round: a jitted float32 jnp.dot
of two 2048x2048 matrices (2 * 2048^3 FLOP), median of 3, measured at the start of every
timing round (the machine is shared; load moves both alike). Reported MFU is the median over
rounds (min-max in brackets).
Model FLOPs (agentic_jax.train.flops): 3 x (2 x activated matmul params x tokens + causal
attention), experts at the FFN-expert share of router slots measured in the timed steps.
MFU = model FLOPs / step time / denominator. Experts count at the executed FFN share (router
choices minus dropped slots).

Models:
  tiny  configs/midtrain.py:tiny's model, batch 8 x 256 (the main job)
  m50   the LongCat-style model of docs/cpu-calibration.md: vocab 8192, d 512, 4 ScMoE
        layers, 8 heads, q_lora 256, kv_lora 128, qk 32+16, v 32, SwiGLU 1024, 16 FFN experts
        (256) + 8 zero experts, softmax router, top-4, x6; batch 4 x 512; float32.
  m200  196.6M LongCat-style (vocab 16384, d 768, 6 ScMoE layers, 12 heads, q_lora 384,
        kv_lora 128, qk 48+16, v 48, SwiGLU 1536, 32 experts (256) + 16 zero, top-4); 4 x 512.
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
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agentic_jax import allocator, models  # noqa: E402
from agentic_jax.train import config as config_lib  # noqa: E402
from agentic_jax.train import flops as flops_lib  # noqa: E402
from agentic_jax.train import optim as optim_lib  # noqa: E402
from agentic_jax.train import peaks  # noqa: E402
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
# ~200M LongCat-style (196.6M params, ~80M activated at 2.7 FFN experts per token): m50 scaled
# up in width, depth, vocabulary and expert count, head dims kept in LongCat's proportions.
M200 = dict(M50, vocab_size=16384, hidden_size=768, num_layers=6, num_attention_heads=12,
            intermediate_size=1536, q_lora_rank=384, kv_lora_rank=128, qk_nope_head_dim=48,
            qk_rope_head_dim=16, v_head_dim=48, n_routed_experts=32, zero_expert_num=16,
            moe_intermediate_size=256)
BIG = {"m50": M50, "m200": M200}




def model_and_config(name: str, variant: dict):
  config = config_lib.load_config(os.path.join(ROOT, "configs/midtrain.py") + ":tiny")
  config.unlock()
  config.data.synthetic = True
  if name in BIG:
    for k, v in BIG[name].items():
      config.model[k] = v
    config.data.batch_size, config.data.seq_len = 4, 512
    config.moe.target_ffn_per_token = 2.73
  elif name != "tiny":
    raise ValueError(f"model must be tiny, m50 or m200, got {name!r}")
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
  ceiling = peaks.MatmulCeiling()
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
      ceil = ceiling.measure(3) / 1e9  # GFLOP/s
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
                   "dropped_slots": r["dropped"],
                   "mfu_same_round": statistics.median(r["mfu"]),
                   "mfu_same_round_min": min(r["mfu"]), "mfu_same_round_max": max(r["mfu"]),
                   "ceiling_gflops": statistics.median(ceilings), "compile_s": r["compile_s"],
                   "times_ms": [1e3 * x for x in r["times"]]})
      del r["state"]
  # known only now on CPU: the best matmul of the whole run
  kind = jax.devices()[0].device_kind
  denom, label = peaks.denominator(kind, "f32", ceiling)
  for r in rows:
    r["mfu_vs_peak"] = r["gflops"] * 1e9 / denom
  print(f"\n| model | variant | params | batch | step ms | tok/s | GFLOP/step | GFLOP/s "
        f"| FFN exp/tok | dropped | MFU vs {label} ({denom / 1e9:,.0f} GFLOP/s) "
        f"| same-round matmul GFLOP/s | MFU vs same-round matmul (min-max) |")
  print("|" + "---|" * 13)
  for r in rows:
    print(f"| {r['model']} | {r['variant']} | {r['params'] / 1e6:.1f}M | {r['batch']} | "
          f"{r['step_ms']:.0f} | {r['tokens_per_s']:,.0f} | {r['gflop_per_step']:.1f} | "
          f"{r['gflops']:.0f} | {r['ffn_experts_per_token']:.2f} | {r['dropped_slots']:.0f} | "
          f"{100 * r['mfu_vs_peak']:.1f}% | {r['ceiling_gflops']:.0f} | "
          f"{100 * r['mfu_same_round']:.1f}% ({100 * r['mfu_same_round_min']:.0f}-"
          f"{100 * r['mfu_same_round_max']:.0f}) |")
  best = {}
  for r in rows:
    if r["model"] not in best or r["tokens_per_s"] > best[r["model"]]["tokens_per_s"]:
      best[r["model"]] = r
  for m, r in best.items():
    print(f"best {m}: {r['variant']} {r['tokens_per_s']:,.0f} tok/s, "
          f"MFU {100 * r['mfu_vs_peak']:.1f}% "
          f"vs {label}, {100 * r['mfu_same_round']:.1f}% vs same-round matmul")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, "reps": reps, "host": platform.node(), "cpus": os.cpu_count(), "malloc": allocator.state(),
               "device_kind": kind, "mfu_denominator": {"flops": denom, "label": label},
               "matmul_best_gflops": ceiling.best / 1e9,
               "loadavg": os.getloadavg(), "jax": jax.__version__,
               "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
