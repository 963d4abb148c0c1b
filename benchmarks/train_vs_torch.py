"""One training step, ours vs PyTorch/transformers, side by side in one process (CPU).

    python benchmarks/train_vs_torch.py                      # tiny + m50, 5 rounds, all peers
    python benchmarks/train_vs_torch.py --models=tiny,m50,m200
    python benchmarks/train_vs_torch.py --quick [--no_compile]   # tiny, 2 rounds (smoke test)

Engines (the same model, the same weights, the same batch, the same AdamW):
  agentic_jax     the project's train step, built as mid-training's loop builds it
                  (train.step.make_train_step + jit_train_step over config.mesh's 1-device mesh,
                  state donated, AOT-compiled; the tiny preset's dispatch: dropless/blocked
                  MoE, block 128, materialised "xla" attention)
  torch eager     transformers' LongcatFlashForCausalLM (its default kernels) holding our
                  initial weights (agentic_jax.convert.to_hf_state_dict; the transformers config
                  is checked by converting it back, benchmarks/rollout.py:hf_model)
  torch compiled  torch.compile (inductor) of the same forward + loss, on its own copy of the
                  weights; the backward is compiled with it (AOTAutograd), AdamW stays eager.
                  Its warm-up (compilation, recompiles for new expert-group shapes) is reported.
                  transformers' LongCat expert loop graph-breaks on `.item()` (dynamo's warning
                  is silenced): that is the model as shipped, compiled with the defaults.
                  Inductor gets a fresh cache directory (--inductor_cache to reuse one), so the
                  warm-up is the cold compile a first run pays: with a warm cache it fell from
                  44 s to 5 s at tiny.
  torch bf16      the eager model under torch.autocast("cpu", bfloat16) (f32 master weights;
                  oneDNN's bf16 kernels, e.g. AMX on CPUs that have it, which XLA:CPU does not
                  use): an extra row, no goal. It runs after the f32 timing of every model
                  (a second pass: warm-up, then --rounds steps back to back): once it had run,
                  our XLA steps later in the same process took up to ~2x as long (m50 on the
                  2-core AMD EPYC: 1.4-1.7 s -> 2.4-5.4 s, even after a bf16 tiny run; a lone
                  bf16 Linear does not do it, the f32 torch peers do not either; cause not
                  found), so interleaving it would charge that to us.
One step = forward, next-token cross-entropy (weighted mean), backward, global-norm clip,
AdamW. Hyper-parameters: configs/midtrain.py's optim section (lr 3e-3 held constant, betas
0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only - the same leaves on both sides, read
off our decay mask through the weight conversion - clip 1.0); the MoE balance loss, z-loss and
router-bias update are off so both engines do exactly the same math. float32 everywhere but
the bf16 row; torch.set_num_threads(os.cpu_count()).

Checked before timing: the step-0 losses of every float32 engine equal ours within --loss_rtol
(relative; the script stops otherwise), and the step-1 losses are printed (they agree too when
the optimizers match; tests/test_train_vs_torch.py asserts both).
Timing: after --warmup steps per engine, --rounds rounds; a round times the f32 2048^3
`jnp.dot` (median of 3: the same-round matmul), then one step of each engine, the engines'
order rotating from round to round, so load from other processes hits all alike, with a
--gap_s pause before each step: XLA's and OpenMP's worker threads keep spinning for a while
after a step, and without the pause the engine that follows JAX ran ~20% slower (tiny, torch
eager: 125 ms alone, 155 ms straight after our step, 132 ms after a 50 ms pause). Medians.
--solo_steps N adds N back-to-back steps per engine after the rounds (solo_median_ms, a
separate column): on the shared machine m50's step of ours took 1.5 s in its own warm-up but
3.9-5.4 s inside the rounds (torch eager 2.1-2.4 s in both), which the quiet run should confirm
or rule out as load from other processes.
Batch: one fixed batch of single-segment rows (arithmetic token sequences), reused every step.

Models (benchmarks/train_step.py's configs):
  tiny  configs/midtrain.py:tiny's model, 1.3M params, batch 8 x 256
  m50   50.2M LongCat-style (d 512, 4 ScMoE layers, 16 + 8 zero experts, top-4), batch 4 x 512
  m200  196.6M LongCat-style (vocab 16384, d 768, 6 ScMoE layers, 12 heads, q_lora 384,
        kv_lora 128, qk 48+16, v 48, SwiGLU 1536, 32 experts (256) + 16 zero, top-4;
        ~80M activated), batch 4 x 512. ~17 GB used with all four engines (measured).
Tokens/s = batch x seq_len / median step time. Model FLOPs per step: agentic_jax.train.flops
(activated experts at our step's executed FFN share); MFU is given twice, each labelled:
against agentic_jax.train.peaks' denominator (the rated peak on a known accelerator; on CPU the
best-of-run f32 matmul) and against the same-round matmul. No MFU for the bf16 row (the f32
ceilings are not its peak).
JSON (benchmarks/results/train_vs_torch.json): speedup_tiny / speedup_small (m50) /
speedup_m200 = torch eager step time / ours; *_compiled against torch.compile; *_bf16 against
the bf16 row; every per-round time and loss, versions, the machine and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, ".."))
for _p in (ROOT, HERE):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import rollout as rollout_bench  # noqa: E402  (hf_model: our config and weights in transformers)
import train_step as ts  # noqa: E402  (the configs: one definition for both benchmarks)
from agentic_jax import allocator, convert, models, parallel  # noqa: E402
from agentic_jax.train import flops as flops_lib  # noqa: E402
from agentic_jax.train import optim as optim_lib  # noqa: E402
from agentic_jax.train import peaks  # noqa: E402
from agentic_jax.train import state as state_lib  # noqa: E402
from agentic_jax.train import step as step_lib  # noqa: E402

PEERS = ("eager", "compiled", "bf16")
SPEEDUP_KEY = {"tiny": "tiny", "m50": "small", "m200": "m200"}
OURS = "agentic_jax"


def bench_config(name: str) -> tuple[models.ModelConfig, Any]:
  """train_step.py's model and batch for `name` (the tiny preset's dispatch), with the terms
  transformers' model has no counterpart of switched off and a constant learning rate."""
  model_cfg, config = ts.model_and_config(name, {})
  config.unlock()
  config.objective.balance_loss = "none"
  config.objective.z_loss = 0.0
  config.moe.bias_update = "none"
  config.optim.schedule, config.optim.warmup_steps, config.optim.decay_fraction = "wsd", 0, 0.0
  config.lock()
  return model_cfg, config


def make_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Rows of one segment each: t_i = (a + i*b) mod (V-1) + 1, every position a target (the
  layout transformers' forward assumes: no packing, positions 0..T-1)."""
  rng = np.random.default_rng(seed)
  a = rng.integers(1, vocab, size=(batch, 1))
  inc = rng.integers(1, vocab, size=(batch, 1))
  toks = ((a + inc * np.arange(seq_len + 1)) % (vocab - 1) + 1).astype(np.int32)
  shape = (batch, seq_len)
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "weights": np.ones(shape, np.float32),
          "segment_ids": np.ones(shape, np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
          "target_kind": np.zeros(shape, np.int32), "source_id": np.zeros(shape, np.int32)}


class Ours:
  """The project's step, jitted the way train/loop.py does for config.mesh."""

  name = OURS

  def __init__(self, model_cfg: models.ModelConfig, config: Any, batch: dict[str, np.ndarray]):
    rules = parallel.get_rules(config.get("sharding_rules", "default"))
    mesh = parallel.make_mesh(config.mesh)
    batch_sh = parallel.batch_sharding(mesh, rules, batch_size=int(config.data.batch_size))
    tx = optim_lib.make_optimizer(config.optim)
    state_sh = state_lib.state_shardings(state_lib.abstract_state(model_cfg, tx, config.seed),
                                         model_cfg, mesh, rules)
    self.state = state_lib.init_sharded_state(model_cfg, tx, config.seed, state_sh)
    # copied now: the step donates the state's buffers
    self.initial_variables = jax.device_get({"params": self.state.params,
                                             "router_state": self.state.router_state})
    self.batch = jax.device_put(batch, batch_sh)
    fn = step_lib.make_train_step(model_cfg, config, num_kinds=1, num_sources=1)
    t0 = time.perf_counter()
    self.fn = step_lib.jit_train_step(fn, mesh=mesh, state_shardings=state_sh,
                                      batch_sharding=batch_sh, rules=rules
                                      ).lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.metrics: dict = {}

  def step(self) -> float:
    self.state, m = self.fn(self.state, self.batch)
    self.metrics = jax.device_get(m)  # waits for the step
    return float(self.metrics["loss"])


def decay_names(model_cfg: models.ModelConfig, variables: dict) -> set[str]:
  """transformers parameter names that our AdamW decays: our decay mask as 1.0 / 0.0 arrays of
  the parameters' shapes, sent through the weight conversion (so renames, transposes and fused
  tensors follow the real mapping). A tensor decays if any element does (LongCat's fused
  gate_up_proj carries zero rows for the zero experts, which have no weights of ours)."""
  mask = optim_lib.decay_mask(variables["params"])
  ones = jax.tree.map(lambda m, p: np.full(np.shape(p), float(m), np.float32), mask,
                      variables["params"])
  zeros = jax.tree.map(lambda x: np.zeros(np.shape(x), np.float32), variables["router_state"])
  hf = convert.to_hf_state_dict(model_cfg, {"params": ones, "router_state": zeros})
  return {k for k, v in hf.items() if np.any(v)}


class TorchEngine:
  """transformers' model + AdamW with our hyper-parameters; `kind` in PEERS."""

  def __init__(self, kind: str, model_cfg: models.ModelConfig, config: Any, variables: dict,
               batch: dict[str, np.ndarray], decay: set[str], adamw_impl: str = "fused"):
    import torch  # pylint: disable=import-outside-toplevel
    import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
    self.torch, self.kind, self.name = torch, kind, f"torch {kind}"
    self.model = rollout_bench.hf_model(model_cfg, variables).train()
    o = config.optim
    named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
    missing = decay - {n for n, _ in named}
    if missing:
      raise RuntimeError(f"decayed tensors that are not transformers parameters: {sorted(missing)}")
    self.params = [p for _, p in named]
    groups = [{"params": [p for n, p in named if n in decay],
               "weight_decay": float(o.weight_decay)},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
    self.opt = torch.optim.AdamW(groups, lr=float(o.lr), betas=(float(o.b1), float(o.b2)),
                                 eps=float(o.eps), **impl[adamw_impl])
    self.clip = float(o.clip_norm)
    self.inputs = torch.from_numpy(batch["inputs"].astype(np.int64))
    self.targets = torch.from_numpy(batch["targets"].astype(np.int64)).flatten()
    self.weights = torch.from_numpy(batch["weights"]).flatten()
    model = self.model

    def loss_fn(inputs, targets, weights):
      logits = model(input_ids=inputs, use_cache=False).logits
      ce = F.cross_entropy(logits.float().flatten(0, 1), targets, reduction="none")
      return (ce * weights).sum() / weights.sum()

    self.loss_fn = torch.compile(loss_fn) if kind == "compiled" else loss_fn

  def step(self) -> float:
    torch = self.torch
    self.opt.zero_grad(set_to_none=True)
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if self.kind == "bf16"
           else contextlib.nullcontext())
    with ctx:
      loss = self.loss_fn(self.inputs, self.targets, self.weights)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.params, self.clip)
    self.opt.step()
    return float(loss.detach())


def build_engines(name: str, peers: tuple[str, ...], adamw_impl: str = "fused",
                  threads: Optional[int] = None) -> tuple[list, dict]:
  """[ours, *torch peers] holding the same initial weights, and the model's facts."""
  model_cfg, config = bench_config(name)
  b, t = int(config.data.batch_size), int(config.data.seq_len)
  batch = make_batch(b, t, model_cfg.vocab_size)
  ours = Ours(model_cfg, config, batch)
  engines: list = [ours]
  if peers:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(threads or os.cpu_count())
    torch._logging.set_logs(dynamo=logging.ERROR)  # pylint: disable=protected-access
    decay = decay_names(model_cfg, ours.initial_variables)
    for kind in peers:
      engines.append(TorchEngine(kind, model_cfg, config, ours.initial_variables, batch, decay,
                                 adamw_impl))
  info = {"params": models.count_params(model_cfg), "batch": b, "seq_len": t,
          "flop_model": flops_lib.flop_model(model_cfg), "compile_s": ours.compile_s,
          "lr": float(config.optim.lr)}
  return engines, info


def rel(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-12)


def run_model(name: str, args: argparse.Namespace, ceiling: peaks.MatmulCeiling,
              peers: tuple[str, ...], time_ours: bool = True) -> dict:
  """Builds ours and `peers` for model `name` and times them (module doc). time_ours=False:
  ours only warms up (the losses the peers are checked against), the peers are timed."""
  engines, info = build_engines(name, peers, args.adamw, args.threads)
  print(f"[{name}] {info['params'] / 1e6:.1f}M params, batch {info['batch']}x{info['seq_len']}; "
        f"ours compiled in {info['compile_s']:.1f}s", flush=True)
  rec: dict[str, dict] = {e.name: {"warmup_s": [], "losses": [], "times_s": []} for e in engines}
  # torch bf16 runs after the f32 engines, on its own (main runs it after every model's f32
  # timing: module doc)
  late = [e for e in engines if getattr(e, "kind", "") == "bf16"]
  all_engines, engines = engines, [e for e in engines if e not in late]

  def warm_up(e):
    for _ in range(args.warmup):
      time.sleep(args.gap_s)
      t0 = time.perf_counter()
      rec[e.name]["losses"].append(e.step())
      rec[e.name]["warmup_s"].append(time.perf_counter() - t0)
    print(f"  {e.name}: warm-up {sum(rec[e.name]['warmup_s']):.1f}s "
          f"({', '.join(f'{s:.2f}' for s in rec[e.name]['warmup_s'])}); losses step 0 "
          f"{rec[e.name]['losses'][0]:.6f}, step 1 {rec[e.name]['losses'][1]:.6f}", flush=True)

  for e in engines:  # warm-up: the first steps, also the loss check
    warm_up(e)
  ref = rec[OURS]["losses"]
  for e in engines[1:]:
    r0 = rel(rec[e.name]["losses"][0], ref[0])
    rec[e.name]["step0_rel_diff"] = r0
    rec[e.name]["step1_rel_diff"] = rel(rec[e.name]["losses"][1], ref[1])
    if e.kind != "bf16" and r0 > args.loss_rtol:
      raise SystemExit(f"{name}: step-0 loss of {e.name} {rec[e.name]['losses'][0]:.7f} != ours "
                       f"{ref[0]:.7f} (rel {r0:.2e} > {args.loss_rtol}): not the same model")
  ours = engines[0]
  fm = info["flop_model"]
  tokens = info["batch"] * info["seq_len"]
  ceilings, flops = [], []
  for r in range(args.rounds if time_ours else 0):
    ceilings.append(ceiling.measure(3))
    order = engines[r % len(engines):] + engines[:r % len(engines)]
    for e in order:
      time.sleep(args.gap_s)
      t0 = time.perf_counter()
      rec[e.name]["losses"].append(e.step())
      rec[e.name]["times_s"].append(time.perf_counter() - t0)
    ffn = flops_lib.executed_ffn_experts_per_token(ours.metrics, tokens)
    flops.append(fm.step_flops(batch=info["batch"], seq_len=info["seq_len"],
                               ffn_experts_per_token=ffn))
    print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
        f"{e.name} {1e3 * rec[e.name]['times_s'][-1]:.0f} ms" for e in engines)
        + f"; matmul {ceilings[-1] / 1e9:.0f} GFLOP/s", flush=True)
  if not time_ours:  # the step's FLOPs at the routing of ours' warm-up steps
    ffn = flops_lib.executed_ffn_experts_per_token(ours.metrics, tokens)
    flops.append(fm.step_flops(batch=info["batch"], seq_len=info["seq_len"],
                               ffn_experts_per_token=ffn))
  for e in engines:  # optional cross-check: each engine's steps back to back, no interleaving
    time.sleep(args.gap_s)
    for _ in range(args.solo_steps if time_ours else 0):
      t0 = time.perf_counter()
      rec[e.name]["losses"].append(e.step())
      rec[e.name].setdefault("solo_times_s", []).append(time.perf_counter() - t0)
  for e in late:  # after every f32 step: its warm-up, then as many timed steps as rounds
    warm_up(e)
    rec[e.name]["step0_rel_diff"] = rel(rec[e.name]["losses"][0], ref[0])
    rec[e.name]["step1_rel_diff"] = rel(rec[e.name]["losses"][1], ref[1])
    for _ in range(args.rounds):
      time.sleep(args.gap_s)
      t0 = time.perf_counter()
      rec[e.name]["losses"].append(e.step())
      rec[e.name]["times_s"].append(time.perf_counter() - t0)
    print(f"  {e.name} (after the f32 engines, {args.rounds} steps): " + ", ".join(
        f"{1e3 * t:.0f}" for t in rec[e.name]["times_s"]) + " ms", flush=True)
  engines = [e for e in all_engines if rec[e.name]["times_s"]]
  for e in engines:
    d = rec[e.name]
    if "solo_times_s" in d:
      d["solo_median_ms"] = 1e3 * statistics.median(d["solo_times_s"])
    d["median_ms"] = 1e3 * statistics.median(d["times_s"])
    d["tokens_per_s"] = tokens / statistics.median(d["times_s"])
    d["gflops"] = statistics.mean(flops) / statistics.median(d["times_s"]) / 1e9
    if getattr(e, "kind", "") != "bf16" and ceilings:
      d["mfu_same_round"] = statistics.median(f / s / c for f, s, c in
                                              zip(flops, d["times_s"], ceilings))
  del engines, ours
  gc.collect()
  return {"params": info["params"], "batch": f"{info['batch']}x{info['seq_len']}",
          "gflop_per_step": statistics.mean(flops) / 1e9, "ours_compile_s": info["compile_s"],
          "lr": info["lr"], "matmul_gflops_per_round": [c / 1e9 for c in ceilings],
          "engines": rec}


def machine() -> dict:
  cpu = ""
  with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
    cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
  return {"cpu": cpu or platform.processor(), "nproc": os.cpu_count(), "host": platform.node(),
          "device_kind": jax.devices()[0].device_kind, "malloc": allocator.state()}


def versions() -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "torch": torch.__version__,
          "transformers": transformers.__version__, "python": platform.python_version()}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny only, 2 rounds (a smoke test)")
  ap.add_argument("--models", default="",
                  help="comma-separated of tiny,m50,m200 (default tiny,m50)")
  ap.add_argument("--rounds", type=int, default=0, help="timed rounds (default 5; --quick 2)")
  ap.add_argument("--warmup", type=int, default=3, help="untimed steps per engine (>= 2)")
  ap.add_argument("--peers", default=",".join(PEERS), help=f"torch rows, of {','.join(PEERS)}")
  ap.add_argument("--no_compile", action="store_true", help="leave out torch.compile")
  ap.add_argument("--adamw", default="fused", choices=("fused", "foreach", "loop"),
                  help="torch AdamW implementation")
  ap.add_argument("--threads", type=int, default=0, help="torch threads (default os.cpu_count())")
  ap.add_argument("--gap_s", type=float, default=0.1,
                  help="pause before each timed step (lets the previous engine's threads idle)")
  ap.add_argument("--solo_steps", type=int, default=0,
                  help="after the rounds, this many back-to-back steps per engine (a check of "
                       "interleaving effects; reported apart as solo_median_ms)")
  ap.add_argument("--inductor_cache", default="",
                  help="TORCHINDUCTOR_CACHE_DIR to use (default: a fresh one, removed at the end)")
  ap.add_argument("--loss_rtol", type=float, default=1e-4, help="step-0 loss agreement")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/train_vs_torch.json"))
  args = ap.parse_args()
  if args.warmup < 2:
    ap.error("--warmup must be >= 2 (steps 0 and 1 are the loss check)")
  if jax.default_backend() != "cpu":  # torch runs on the CPU here: compare like with like
    ap.error(f"CPU only (JAX's default backend is {jax.default_backend()}): set JAX_PLATFORMS=cpu")
  names = args.models.split(",") if args.models else (["tiny"] if args.quick else ["tiny", "m50"])
  args.rounds = args.rounds or (2 if args.quick else 5)
  load_start = os.getloadavg()
  print(f"malloc: {allocator.state()} (agentic_jax/allocator.py; AGENTIC_JAX_MALLOC=system: glibc's "
        "defaults), for both engines: one process")
  fresh = "" if args.inductor_cache else tempfile.mkdtemp(prefix="inductor_")
  os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.inductor_cache or fresh  # read when torch compiles
  ceiling = peaks.MatmulCeiling()
  peers = tuple(p for p in args.peers.split(",") if p and not (args.no_compile and p == "compiled"))
  try:
    results = {n: run_model(n, args, ceiling, tuple(p for p in peers if p != "bf16"))
               for n in names}
    # torch bf16 after every f32 model's timing (module doc: it slows the XLA steps after it)
    for n in names if "bf16" in peers else ():
      late = run_model(n, args, ceiling, ("bf16",), time_ours=False)
      results[n]["engines"]["torch bf16"] = late["engines"]["torch bf16"]
  finally:
    if fresh:
      shutil.rmtree(fresh, ignore_errors=True)
  kind = jax.devices()[0].device_kind
  denom, label = peaks.denominator(kind, "f32", ceiling)
  out: dict[str, Any] = {}
  print(f"\n| model | engine | step ms | tok/s | ours vs it | GFLOP/s | MFU vs {label} "
        f"({denom / 1e9:.0f} GFLOP/s) | MFU vs same-round matmul | step-0 loss | step-1 loss "
        f"| solo step ms |")
  print("|" + "---|" * 11)
  for n, res in results.items():
    ours_ms = res["engines"][OURS]["median_ms"]
    for eng, d in res["engines"].items():
      if "mfu_same_round" in d:
        d["mfu_vs_peak"] = d["gflops"] * 1e9 / denom
      ratio = d["median_ms"] / ours_ms
      if eng != OURS:
        suffix = {"torch eager": "", "torch compiled": "_compiled", "torch bf16": "_bf16"}[eng]
        out[f"speedup_{SPEEDUP_KEY[n]}{suffix}"] = ratio
      solo = f"{d['solo_median_ms']:,.0f}" if "solo_median_ms" in d else "-"
      mfu = (f"{100 * d['mfu_vs_peak']:.1f}% | {100 * d['mfu_same_round']:.1f}%"
             if "mfu_same_round" in d else "- | -")
      print(f"| {n} | {eng} | {d['median_ms']:,.0f} | {d['tokens_per_s']:,.0f} | {ratio:.2f}x | "
            f"{d['gflops']:.0f} | {mfu} | {d['losses'][0]:.6f} | {d['losses'][1]:.6f} | "
            f"{solo} |")
  for n, res in results.items():
    comp = res["engines"].get("torch compiled")
    if comp:
      print(f"{n}: torch.compile warm-up {sum(comp['warmup_s']):.1f}s over {args.warmup} steps "
            f"(first {comp['warmup_s'][0]:.1f}s); ours compiled in {res['ours_compile_s']:.1f}s")
  print("  ".join(f"{k} {v:.2f}x" for k, v in out.items()))
  out.update(models=results, rounds=args.rounds, warmup=args.warmup, adamw=args.adamw,
             gap_s=args.gap_s, inductor_cache=args.inductor_cache or "fresh",
             mfu_denominator={"flops": denom, "label": label},
             matmul_best_gflops=ceiling.best / 1e9, versions=versions(), machine=machine(),
             torch_threads=args.threads or os.cpu_count(), loadavg_start=load_start,
             loadavg_end=os.getloadavg(), time=time.strftime("%Y-%m-%d %H:%M:%S"))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
