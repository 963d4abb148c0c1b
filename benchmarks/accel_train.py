"""bf16 training and decoding on one accelerator: a dense MLA model and a MoE model of similar
activated size, with fused attention and grouped-matmul MoE (issue 19, item 4).

    python benchmarks/accel_train.py                      # both models, the full sizes below
    python benchmarks/accel_train.py --models=dense --attention=fused,chunked
    python benchmarks/accel_train.py --quick --out /tmp/accel.json   # tiny shapes, < 60 s on CPU

Models (bf16 compute, f32 params and AdamW state, scanned layers):
  dense  the Youtu-LLM 2B shape (models/presets.youtu_llm: d 2048, 16 heads, MLA q_lora 1536,
         kv_lora 512, qk 128+64, v 128, SwiGLU 6144, vocab 128256, tied embeddings) cut from 32
         to 24 layers: 1.54B params. Remat "dots_no_batch" (parallel/memory.py estimates
         60.5 GiB at 8 x 2048 tokens on one device).
  moe    LongCat-style ScMoE (models/presets.longcat_flash's layer) at the same width and MLA:
         10 layers, SwiGLU 4096, 16 FFN experts of 1536 + 8 zero-computation experts, top-6
         (4 FFN experts per token when balanced), vocab 128256 untied: 2.85B params, 1.45B
         activated. Dropless MoE on `ragged_dot` (moe_dispatch "dropless_ragged"). Remat
         "full" (62.5 GiB estimated at 8 x 2048).
  An out-of-memory step retries with remat "full", then with half the rows (the row says so).

Training: the repo's step (agentic_jax.train.step: next-token loss, balance and z-loss,
AdamW, router bias update), jitted with state donation, on synthetic packed rows
(train.input.SyntheticIterator; one batch reused). Step time: median of --steps timed steps
after --warmup steps.

Model FLOPs (agentic_jax.train.flops): 6 x N_activated x tokens + 3 x causal attention
(2 H (d_qk + d_v) T^2 / 2 per sublayer and row); N_activated = matmul params (LM head
included, embedding gather not) with routed experts at the FFN experts per token that ran.
Rematerialised forward passes and cuDNN's padded value dims (128 -> 192) are NOT counted.
MFU = model FLOP/s / the rated dense bf16 peak of jax.devices()[0].device_kind
(train/peaks.py); on CPU, or a chip missing from peaks.PEAKS, the best-of-run f32 2048^3
matmul instead, labelled so.

Decode: sampling.generate_arrays (prefill + one jitted while loop over the compressed MLA cache,
greedy, no EOS: every row emits --new_tokens) on --decode_batch rows of --prompt_len random
tokens, with the trained weights cast to the compute dtype. decode tok/s = rows x new tokens /
(generate time - prefill time), the prefill timed alone with sampling.prefill; also reported
end to end. On CPU (--quick) decoding runs in float32, the dtype XLA:CPU is fastest in.

Writes --out (JSON): one row per model and attention impl, the denominator and its label, the
attention path taken (attention_fused.plan) and the device. Nothing here is a measured number
until this script has run on the device named in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agentic_jax import models, sampling  # noqa: E402
from agentic_jax.models import attention_fused  # noqa: E402
from agentic_jax.models.config import ModelConfig  # noqa: E402
from agentic_jax.train import config as config_lib  # noqa: E402
from agentic_jax.train import flops as flops_lib  # noqa: E402
from agentic_jax.train import optim as optim_lib  # noqa: E402
from agentic_jax.train import peaks  # noqa: E402
from agentic_jax.train import state as state_lib  # noqa: E402
from agentic_jax.train import step as step_lib  # noqa: E402
from agentic_jax.train.input import SyntheticIterator  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FLOPS_FORMULA = ("6 x N_activated x tokens + 3 x causal attention (agentic_jax/train/flops.py; "
                 "remat recompute and padded attention dims not counted)")

# The MLA of Youtu-LLM 2B (presets.youtu_llm), shared by both full-size models.
_MLA = dict(hidden_size=2048, num_attention_heads=16, q_lora_rank=1536, kv_lora_rank=512,
            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
_TINY_MLA = dict(hidden_size=64, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=16,
                 qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16)


def dense_config(quick: bool) -> ModelConfig:
  """Youtu-LLM's shape with 24 of its 32 layers (full), or a 2-layer toy (quick)."""
  base = models.presets.get("youtu_llm")
  if quick:
    return base.replace(vocab_size=512, num_layers=2, intermediate_size=128,
                        max_position_embeddings=256, remat_policy="full", **_TINY_MLA)
  return base.replace(num_layers=24, remat_policy="dots_no_batch", max_position_embeddings=8192)


def moe_config(quick: bool) -> ModelConfig:
  """LongCat-style ScMoE with zero-computation experts, dropless ragged_dot dispatch."""
  base = models.presets.get("longcat_flash")
  shared = dict(moe_dispatch="dropless_ragged", scoring_func="softmax", remat_policy="full",
                n_routed_experts=16, zero_expert_num=8, num_experts_per_tok=6)
  if quick:
    return base.replace(vocab_size=512, num_layers=2, intermediate_size=128,
                        moe_intermediate_size=32, max_position_embeddings=256,
                        **_TINY_MLA, **shared)
  return base.replace(vocab_size=128256, num_layers=10, intermediate_size=4096,
                      moe_intermediate_size=1536, max_position_embeddings=8192, **_MLA, **shared)


MODELS = {"dense": dense_config, "moe": moe_config}


def _balanced_ffn_per_token(cfg: ModelConfig) -> float:
  """FFN experts per token with balanced routing: top-k times the FFN share of router slots."""
  return cfg.num_experts_per_tok * cfg.n_routed_experts / cfg.num_slots if cfg.is_moe else 0.0


def train_config(cfg: ModelConfig, batch: int, seq_len: int):
  """configs/midtrain.py:tiny's training sections with `cfg` as the model and synthetic rows."""
  config = config_lib.load_config(os.path.join(ROOT, "configs/midtrain.py") + ":tiny")
  config.unlock()
  config.data.synthetic = True
  config.data.batch_size, config.data.seq_len = batch, seq_len
  for f in dataclasses.fields(ModelConfig):
    config.model[f.name] = getattr(cfg, f.name)
  if cfg.is_moe:
    config.moe.target_ffn_per_token = _balanced_ffn_per_token(cfg)
  config.moe.bias_rate = 1e-3  # routing (and so the work per step) stays put while timed
  config.lock()
  return config


def _oom(e: Exception) -> bool:
  msg = str(e)
  return "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower()


def time_train(cfg: ModelConfig, batch: int, seq_len: int, warmup: int, steps: int) -> dict:
  """Compile and time the train step; returns timings, FLOPs and the final state's weights."""
  config = train_config(cfg, batch, seq_len)
  tx = optim_lib.make_optimizer(config.optim)
  fn = step_lib.make_train_step(cfg, config, num_kinds=1, num_sources=1)
  state = jax.jit(lambda: state_lib.init_state(cfg, tx, config.seed))()
  it = SyntheticIterator(batch_size=batch, seq_len=seq_len, vocab_size=cfg.vocab_size, seed=0)
  data = jax.device_put(next(it))
  t0 = time.perf_counter()
  step = step_lib.jit_train_step(fn).lower(state, data).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, m = step(state, data)
    jax.block_until_ready(m)
  times, ffn, losses = [], [], []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, data)
    m = jax.device_get(m)
    times.append(time.perf_counter() - t0)
    ffn.append(flops_lib.executed_ffn_experts_per_token(m, batch * seq_len))
    losses.append(float(m["loss"]))
  fm = flops_lib.flop_model(cfg)
  k = float(np.mean(ffn))
  step_flops = fm.step_flops(batch=batch, seq_len=seq_len, ffn_experts_per_token=k)
  return {"compile_s": compile_s, "times": times, "ffn_experts_per_token": k,
          "activated_params": fm.activated_params(k), "step_flops": step_flops,
          "loss_last": losses[-1], "params": state.params, "router_state": state.router_state}


def train_with_fallbacks(cfg: ModelConfig, batch: int, seq_len: int, warmup: int,
                         steps: int) -> tuple[dict, ModelConfig, int, list[str]]:
  """time_train; on out-of-memory retry with remat "full", then halve the rows (noted)."""
  notes: list[str] = []
  while True:
    try:
      return time_train(cfg, batch, seq_len, warmup, steps), cfg, batch, notes
    except Exception as e:  # pylint: disable=broad-except
      if not _oom(e):
        raise
      gc.collect()
      if cfg.remat_policy != "full":
        notes.append(f"out of memory at remat {cfg.remat_policy!r}, {batch} rows: remat 'full'")
        cfg = cfg.replace(remat_policy="full")
      elif batch > 1:
        notes.append(f"out of memory at {batch} rows: {batch // 2} rows")
        batch //= 2
      else:
        raise


def time_decode(cfg: ModelConfig, params: Any, router_state: Any, *, batch: int,
                prompt_len: int, new_tokens: int, reps: int) -> dict:
  """Median prefill and generate times over `reps` runs after one compile run."""
  dtype = cfg.dtype
  if jax.default_backend() == "cpu" and dtype != "float32":
    dtype = "float32"  # XLA:CPU: float32 is its fast path (module doc)
  cfg = cfg.replace(dtype=dtype, remat_policy="none")
  wdt = jnp.dtype(dtype)
  variables = {"params": jax.tree.map(lambda x: x.astype(wdt), params)}
  if router_state:
    variables["router_state"] = router_state
  rng = np.random.RandomState(0)
  tokens = jnp.asarray(rng.randint(0, cfg.vocab_size, (batch, prompt_len)), jnp.int32)
  lengths = jnp.full((batch,), prompt_len, jnp.int32)
  key = jax.random.key(0)
  cache_len = prompt_len + new_tokens

  def run_prefill():
    return jax.block_until_ready(sampling.prefill(cfg, variables, tokens, lengths,
                                                  cache_len=cache_len))

  def run_generate():
    return jax.block_until_ready(sampling.generate_arrays(cfg, variables, tokens, lengths, key,
                                                          max_new_tokens=new_tokens))

  out = {}
  for name, fn in (("prefill", run_prefill), ("generate", run_generate)):
    t0 = time.perf_counter()
    res = fn()
    out[f"{name}_compile_s"] = time.perf_counter() - t0
    ts = []
    for _ in range(reps):
      t0 = time.perf_counter()
      res = fn()
      ts.append(time.perf_counter() - t0)
    out[f"{name}_ms"] = 1e3 * statistics.median(ts)
    if name == "generate":
      out["new_tokens_emitted"] = int(np.asarray(res[2]).sum())
  gen_s, pre_s = out["generate_ms"] / 1e3, out["prefill_ms"] / 1e3
  emitted = batch * new_tokens
  out.update(batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, cache_len=cache_len,
             dtype=dtype, weights_dtype=str(wdt), attention_path=attention_path(cfg, decode=True),
             decode_tokens_per_s=emitted / (gen_s - pre_s) if gen_s > pre_s else None,
             end_to_end_tokens_per_s=emitted / gen_s,
             cache_bytes_per_token=(cfg.num_attention_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
                                    * wdt.itemsize))
  return out


def attention_path(cfg: ModelConfig, *, decode: bool) -> Optional[dict]:
  """The kernel attention_impl "fused" takes for this model on this device, and why
  (attention_fused.plan): the expanded training path, or the absorbed decode path (one shared
  key of kv_lora_rank + dr, values of kv_lora_rank). None for the other impls."""
  if cfg.attention_impl != "fused":
    return None
  dims = (dict(qk_dim=cfg.kv_lora_rank + cfg.qk_rope_head_dim, v_dim=cfg.kv_lora_rank) if decode
          else dict(qk_dim=cfg.qk_head_dim, v_dim=cfg.v_head_dim))
  return dataclasses.asdict(attention_fused.plan(
      dtype=jnp.dtype(cfg.dtype), shared_key=decode,
      compute_capability=attention_fused.cuda_compute_capability(), **dims))


def _count(n: float) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def mfu_denominator(device_kind: str, ceiling: Optional[peaks.MatmulCeiling]) -> dict:
  """The rated bf16 peak where the kind is known, else the best-of-run f32 matmul."""
  flops, label = peaks.denominator(device_kind, "bf16", ceiling)
  return {"flops": flops, "label": label, "rated": peaks.lookup(device_kind) is not None}


def main(argv: Optional[list[str]] = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny models and shapes (CPU, < 60 s)")
  ap.add_argument("--models", default="dense,moe")
  ap.add_argument("--attention", default="fused", help="attention_impl values, comma-separated")
  ap.add_argument("--batch", type=int, default=0, help="rows per step (default 8; quick 2)")
  ap.add_argument("--seq_len", type=int, default=0, help="tokens per row (default 2048; quick 64)")
  ap.add_argument("--warmup", type=int, default=0, help="untimed steps (default 2; quick 1)")
  ap.add_argument("--steps", type=int, default=0, help="timed steps (default 5; quick 2)")
  ap.add_argument("--decode_batch", type=int, default=0, help="decode rows (default 32; quick 2)")
  ap.add_argument("--prompt_len", type=int, default=0, help="prompt tokens (default 512; quick 8)")
  ap.add_argument("--new_tokens", type=int, default=0, help="decoded tokens (default 256; quick 4)")
  ap.add_argument("--decode_reps", type=int, default=0, help="timed decode runs (default 3; quick 1)")
  ap.add_argument("--no_decode", action="store_true")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/accel_train.json"))
  args = ap.parse_args(argv)
  q = args.quick
  batch, seq_len = args.batch or (2 if q else 8), args.seq_len or (64 if q else 2048)
  warmup, steps = args.warmup or (1 if q else 2), args.steps or (2 if q else 5)
  dec = dict(batch=args.decode_batch or (2 if q else 32), prompt_len=args.prompt_len or (8 if q else 512),
             new_tokens=args.new_tokens or (4 if q else 256), reps=args.decode_reps or (1 if q else 3))

  kind = jax.devices()[0].device_kind
  ceiling = None if peaks.lookup(kind) is not None else peaks.MatmulCeiling()
  print(f"device: {kind} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
  rows = []
  for name in args.models.split(","):
    for impl in args.attention.split(","):
      cfg = MODELS[name](q).replace(attention_impl=impl)
      if ceiling is not None:
        ceiling.measure(3)  # CPU: the denominator is the best matmul of the whole run
      tr, cfg_run, rows_run, notes = train_with_fallbacks(cfg, batch, seq_len, warmup, steps)
      sec = statistics.median(tr["times"])
      tokens = rows_run * seq_len
      row = {"model": name, "attention_impl": impl, "dtype": cfg_run.dtype,
             "moe_dispatch": cfg_run.dispatch_kernel if cfg_run.is_moe else None,
             "remat_policy": cfg_run.remat_policy, "params_total": models.count_params(cfg_run),
             "params_activated": tr["activated_params"],
             "ffn_experts_per_token": tr["ffn_experts_per_token"],
             "batch": rows_run, "seq_len": seq_len, "tokens_per_step": tokens,
             "step_ms": 1e3 * sec, "step_ms_all": [1e3 * t for t in tr["times"]],
             "tokens_per_s": tokens / sec, "model_flops_per_step": tr["step_flops"],
             "model_tflops": tr["step_flops"] / sec / 1e12, "compile_s": tr["compile_s"],
             "loss_last": tr["loss_last"], "notes": notes,
             "attention_path": attention_path(cfg_run, decode=False)}
      print(f"  {name}/{impl}: {row['step_ms']:.1f} ms/step, {row['tokens_per_s']:,.0f} tok/s "
            f"(compiled in {tr['compile_s']:.1f}s){' ' + '; '.join(notes) if notes else ''}",
            flush=True)
      if not args.no_decode:
        row["decode"] = time_decode(cfg_run, tr["params"], tr["router_state"], **dec)
        print(f"  {name}/{impl} decode: {row['decode']['decode_tokens_per_s'] or float('nan'):,.0f} "
              f"tok/s", flush=True)
      del tr
      gc.collect()
      rows.append(row)
  denom = mfu_denominator(kind, ceiling)
  for row in rows:
    row["mfu"] = row["model_tflops"] * 1e12 / denom["flops"]

  print(f"\nModel FLOPs: {FLOPS_FORMULA}. MFU vs {denom['label']} "
        f"({denom['flops'] / 1e12:,.1f} TFLOP/s).")
  print("| model | attention | params total / activated | tokens/step | step ms | tok/s "
        "| model TFLOP/s | MFU | decode tok/s (rows x new, prompt) |")
  print("|" + "---|" * 9)
  for r in rows:
    d = r.get("decode")
    dec_s = ("-" if d is None else
             f"{d['decode_tokens_per_s'] or float('nan'):,.0f} ({d['batch']} x {d['new_tokens']}, "
             f"{d['prompt_len']}; {d['dtype']})")
    print(f"| {r['model']} | {r['attention_impl']} | {_count(r['params_total'])} / "
          f"{_count(r['params_activated'])} | {r['batch']} x {r['seq_len']} | "
          f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['model_tflops']:.2f} | "
          f"{100 * r['mfu']:.1f}% | {dec_s} |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, "device_kind": kind, "backend": jax.default_backend(),
               "mfu_denominator": denom, "flops_formula": FLOPS_FORMULA, "quick": q,
               "matmul_best_flops": None if ceiling is None else ceiling.best,
               "jax": jax.__version__, "host": platform.node(),
               "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
