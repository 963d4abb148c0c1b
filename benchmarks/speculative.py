"""Speculative decoding with the MTP draft vs plain decoding: acceptance rate and tokens/s (CPU).

    python benchmarks/speculative.py            # train 300 steps, 5 timing repeats
    python benchmarks/speculative.py --quick    # 100 steps, 2 repeats

Model: deepseek_v3_tiny with num_mtp_layers=1 (vocab 128, d 64, 3 layers, MLA, 8 experts top-2,
one MoE MTP layer), float32. An untrained MTP drafts noise and is almost never accepted, so the
script first trains model + MTP together (next-token loss + 0.3 x the MTP loss, Adam 3e-3) on
arithmetic progressions mod 128 (t_i = s + a*i, a random stride in {1, 2, 3, 5, 7}, s random):
the main model must read the stride from its context, the MTP the token after next. Measured
for the random init and for the trained model, on held-out progressions (8-token prompts, batch
8, 64 new tokens, no EOS): plain `sampling.generate_arrays` vs
`sampling_speculative.generate_arrays` with k = 1, 2, 3 drafts, greedy and sampled (T = 1).
Compile excluded, median of the repeats, the engines taking turns. Acceptance = drafts passing
the acceptance test / drafts proposed (per row; rows advance in lockstep, so what is used is at
most this). Greedy agreement: share of rows whose 64 tokens equal plain greedy decoding's.
Writes benchmarks/results/speculative.json.
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
import optax

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

from agentic_jax import models, sampling, sampling_speculative  # noqa: E402
from agentic_jax.objectives.next_token import next_token_loss  # noqa: E402

STRIDES = np.array([1, 2, 3, 5, 7])


def progressions(rng: np.random.Generator, batch: int, length: int, vocab: int) -> np.ndarray:
  start = rng.integers(0, vocab, (batch, 1))
  stride = rng.choice(STRIDES, (batch, 1))
  return (start + stride * np.arange(length)[None, :]) % vocab


def train(cfg, variables, steps: int, seed: int = 0) -> tuple[dict, list[float]]:
  model = models.build(cfg)
  tx = optax.adam(3e-3)
  opt = tx.init(variables["params"])
  opts = {"balance_loss": "none", "z_loss": 0.0, "mtp_loss_weight": 0.3}

  def loss_fn(params, batch):
    logits, mut = model.apply({**variables, "params": params}, batch["inputs"],
                              mutable=["intermediates"])
    w = batch["weights"]
    loss, aux = next_token_loss(logits, mut["intermediates"], batch, model_cfg=cfg, options=opts,
                                normalizer=jnp.sum(w))
    return loss, aux

  @jax.jit
  def step(params, opt, batch):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss, aux

  rng = np.random.default_rng(seed)
  params, history = variables["params"], []
  for i in range(steps):
    seq = progressions(rng, 16, 49, cfg.vocab_size)
    batch = {"inputs": jnp.asarray(seq[:, :-1]), "targets": jnp.asarray(seq[:, 1:]),
             "weights": jnp.ones((16, 48), jnp.float32)}
    params, opt, loss, aux = step(params, opt, batch)
    if i % 50 == 0 or i == steps - 1:
      mtp = float(aux["mtp_ce_sum"][0] / aux["mtp_weight"][0])
      history.append({"step": i, "loss": float(aux["ce_sum"] / aux["weight_sum"]), "mtp_loss": mtp})
      print(f"  train step {i:4d}  next-token CE {history[-1]['loss']:.3f}  MTP CE {mtp:.3f}",
            flush=True)
  return {**variables, "params": params}, history


def measure(cfg, variables, prompts, lengths, new: int, reps: int, drafts=(1, 2, 3)) -> list[dict]:
  key = jax.random.key(0)
  rows = []
  for temperature in (0.0, 1.0):
    def plain():
      return sampling.generate_arrays(cfg, variables, prompts, lengths, key, max_new_tokens=new,
                                      temperature=temperature)

    def spec(k):
      return lambda: sampling_speculative.generate_arrays(
          cfg, variables, prompts, lengths, key, max_new_tokens=new, num_draft_tokens=k,
          temperature=temperature)

    engines = {"plain": plain, **{f"mtp k={k}": spec(k) for k in drafts}}
    outs = {name: jax.block_until_ready(fn()) for name, fn in engines.items()}  # compile
    times = {name: [] for name in engines}
    for _ in range(reps):
      for name, fn in engines.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times[name].append(time.perf_counter() - t0)
    ref = np.asarray(outs["plain"][0])
    for name in engines:
      sec = statistics.median(times[name])
      row = {"decoding": "greedy" if temperature == 0 else "sampled T=1", "engine": name,
             "seconds": sec, "tokens_per_s": prompts.shape[0] * new / sec}
      if name != "plain":
        stats = outs[name][3]
        row["acceptance"] = int(stats["accepted"]) / max(int(stats["drafted"]), 1)
        row["verify_forwards"] = int(stats["rounds"])
        if temperature == 0:
          row["greedy_agreement"] = float(np.mean(np.all(np.asarray(outs[name][0]) == ref, 1)))
      rows.append(row)
  return rows


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "speculative.json"))
  args = ap.parse_args()
  steps, reps = (100, 2) if args.quick else (300, 5)
  cfg = models.presets.get("deepseek_v3_tiny", num_mtp_layers=1, moe_dispatch="dropless")
  variables = models.init_variables(cfg, jax.random.key(0))
  rng = np.random.default_rng(123)  # held-out prompts (another stream than training's)
  prompts = jnp.asarray(progressions(rng, 8, 8, cfg.vocab_size), jnp.int32)
  lengths = jnp.full((8,), 8, jnp.int32)
  new = 64
  results = {"model": "deepseek_v3_tiny + 1 MTP layer", "batch": 8, "prompt_tokens": 8,
             "new_tokens": new, "repeats": reps, "platform": platform.platform(),
             "device": str(jax.devices()[0]), "jax": jax.__version__}
  print("random init:", flush=True)
  results["random_init"] = measure(cfg, variables, prompts, lengths, new, reps)
  print(f"training {steps} steps:", flush=True)
  t0 = time.perf_counter()
  trained, history = train(cfg, variables, steps)
  results["train"] = {"steps": steps, "seconds": time.perf_counter() - t0, "history": history}
  results["trained"] = measure(cfg, trained, prompts, lengths, new, reps)
  for label in ("random_init", "trained"):
    print(f"\n{label}:\n| decoding | engine | tokens/s | acceptance | verify forwards | "
          "greedy agreement |\n|---|---|---|---|---|---|")
    for r in results[label]:
      acc = f"{r['acceptance']:.3f}" if "acceptance" in r else ""
      agree = f"{r['greedy_agreement']:.2f}" if "greedy_agreement" in r else ""
      print(f"| {r['decoding']} | {r['engine']} | {r['tokens_per_s']:.0f} | {acc} | "
            f"{r.get('verify_forwards', new)} | {agree} |")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
