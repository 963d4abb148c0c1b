"""Rollout throughput of our cached decoder vs transformers `generate`, and the share of an RL
step spent in rollout vs training (CPU).

    python benchmarks/rollout.py            # 16 prompts x 64 new tokens, 5 repeats
    python benchmarks/rollout.py --quick    # 2 repeats, smaller RL step
    python benchmarks/rollout.py --env_only # only the environment steps (updates that JSON key)

Model: configs/midtrain.py:tiny's model (LongCat-Flash ScMoE, vocab 1024, d 128, 2 layers,
8 FFN + 4 zero experts, top-2, dropless/blocked), random init (seed 0), float32. The same weights
go into transformers' LongcatFlashForCausalLM through agentic_jax.convert.to_hf_state_dict (its
config built here from ours and checked by converting it back with config_from_hf; the logits of
both are compared before timing).

Decode: a batch of 16 random prompts of 64 tokens, 64 new tokens per row, no EOS (every row runs
all 64 steps), compile / warm-up excluded, median of the repeats; the two engines take turns in
each round, so load from other processes hits both alike.
  ours greedy      sampling.generate_arrays (jitted prefill + lax.while_loop over the compressed
                   MLA cache)
  ours sampled     rl.sampler.Sampler (temperature 1, bucketed shapes, host-side unpacking
                   included; no stop rule here, so every row runs n steps): what a rollout calls
  hf greedy        model.generate(do_sample=False, use_cache=True)
  hf sampled       model.generate(do_sample=True, temperature=1, top_k=0)
Tokens/s = 16 * 64 / seconds. Greedy agreement = share of rows whose 64 greedy tokens are equal.

RL step share: a plain multi-turn rollout (rl.rollout.rollout, calculator level "basic",
configs/flow_grpo.py:tiny's Q x G, max_new_tokens, max_turns, max_context_tokens; sentencepiece
tokenizer trained on the built-in corpus) followed by the RL update (agentic_jax.rl.step
.make_rl_step on the RL loop's packed batch, rl.loop.make_batch: reference forward, PPO epochs x
minibatches); both timed after a warm-up of the same shapes, taking turns, median of
--rl_reps (3). --torch_device=cuda runs transformers on the GPU (JAX takes its default device).
A random-init policy never stops early, so every turn runs to max_new_tokens and every episode
to max_turns or the token budget: the rollout share is the upper end of what a trained policy sees.

Environment steps: the time `rl.env_pool.step_all` takes to step a batch of --env_actions (16)
"pycode" environments (agentic_jax.envs.code.CodeEnv, every one on the built-in task `add`, whose
docstring has one example, so the body runs once per action) with one sandboxed `run()` action
each (bubblewrap + the system python, the RL sandbox's defaults), whose body either sleeps
--env_seconds (0.2) or computes for about as long (a Python loop, its length calibrated in the
sandbox first). Rows: env_workers = 1 (one action after the other, as rollouts ran before the
pool) and the pool at --env_workers (8, config.rl.env_workers's default) and at one worker per
action; environments reset before each batch, one warm-up batch, median of --env_reps (5), the
worker counts taking turns. Every action's observation is checked ("1 of 1 examples pass").
The sleeping actions wait (the GIL is free, no core is busy): their batch costs about
ceil(actions / workers) actions. The computing ones need a core each: on this 2-core machine
their pool can be at most ~2x faster than one after the other.
Writes benchmarks/results/rollout.json (--env_only: only its "env_step" key, the rest kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

from agentic_jax import convert, models, sampling  # noqa: E402
from agentic_jax.convert.hf_config import config_from_hf  # noqa: E402
from agentic_jax.rl import rollout as R  # noqa: E402
from agentic_jax.train import config as config_lib  # noqa: E402

TOKENIZER_CACHE = "/tmp/agentic_jax_bench_tokenizer.model"


def load() -> str:
  one, five, _ = os.getloadavg()
  return f"{one:.1f}/{five:.1f}"


def hf_model(cfg: models.ModelConfig, variables: dict):
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  hf_cfg = transformers.LongcatFlashConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
      num_attention_heads=cfg.num_attention_heads, ffn_hidden_size=cfg.intermediate_size,
      expert_ffn_hidden_size=cfg.moe_intermediate_size, n_routed_experts=cfg.n_routed_experts,
      zero_expert_num=cfg.zero_expert_num, moe_topk=cfg.num_experts_per_tok,
      q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank,
      qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
      head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
      routed_scaling_factor=cfg.routed_scaling_factor, rms_norm_eps=cfg.rms_norm_eps,
      max_position_embeddings=cfg.max_position_embeddings,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
      tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=cfg.attention_bias)
  back = config_from_hf(hf_cfg, moe_dispatch=cfg.moe_dispatch, dropless_backend=cfg.dropless_backend,
                        dropless_block_size=cfg.dropless_block_size, attention_impl=cfg.attention_impl,
                        initializer_range=cfg.initializer_range, latent_norm_eps=cfg.latent_norm_eps,
                        original_max_position_embeddings=cfg.original_max_position_embeddings,
                        mscale=cfg.mscale)
  if back != cfg:
    diff = {f: (getattr(back, f), getattr(cfg, f)) for f in cfg.__dataclass_fields__
            if getattr(back, f) != getattr(cfg, f)}
    raise RuntimeError(f"the transformers config does not describe our model: {diff}")
  model = transformers.LongcatFlashForCausalLM(hf_cfg).eval()
  state = convert.to_hf_state_dict(cfg, variables)
  model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)
  return model


def tokenizer(seed: int = 0):
  from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  if os.path.exists(TOKENIZER_CACHE):
    return tok_lib.load_tokenizer(TOKENIZER_CACHE)
  tok = tok_lib.SentencePieceTokenizer.train(builtin.corpus_texts(seed), 1024, seed=seed)
  tok.save(TOKENIZER_CACHE)
  return tok


def decode_bench(cfg, variables, args) -> tuple[list[dict], dict]:
  import torch  # pylint: disable=import-outside-toplevel
  b, p, n = args.batch, args.prompt_len, args.new_tokens
  prompts = np.random.default_rng(0).integers(16, cfg.vocab_size, size=(b, p)).astype(np.int32)
  lengths = np.full((b,), p, np.int32)
  dev = torch.device(args.torch_device)
  hf = hf_model(cfg, variables).to(dev)
  ours_logits = np.asarray(models.build(cfg).apply(variables, jnp.asarray(prompts)))
  with torch.no_grad():
    hf_logits = hf(torch.from_numpy(prompts.astype(np.int64)).to(dev)).logits.float().cpu().numpy()
  logit_diff = float(np.abs(ours_logits - hf_logits).max())

  def ours_greedy():
    out = sampling.generate_arrays(cfg, variables, jnp.asarray(prompts), jnp.asarray(lengths),
                                   jax.random.key(0), max_new_tokens=n, temperature=0.0)
    return np.asarray(jax.block_until_ready(out[0]))

  # no stop rule: every row samples all n tokens, the same work as transformers' run
  sampler = R.Sampler(cfg, max_new_tokens=n, temperature=1.0, prompt_bucket=64, batch_bucket=b,
                      stop=R.StopRule(eos_id=None, stop_ids=(), arm_ids=()))
  contexts = list(prompts)

  def ours_sampled():
    gens = sampler.generate(variables, contexts, seed=1)
    assert sum(len(g.tokens) for g in gens) == b * n
    return gens

  ids = torch.from_numpy(prompts.astype(np.int64)).to(dev)
  mask = torch.ones_like(ids)
  common = dict(attention_mask=mask, max_new_tokens=n, min_new_tokens=n, use_cache=True,
                pad_token_id=0, eos_token_id=None)

  def hf_greedy():
    with torch.no_grad():
      return hf.generate(ids, do_sample=False, **common)[:, p:].cpu().numpy()

  def hf_sampled():
    with torch.no_grad():
      out = hf.generate(ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, **common)
      return out.cpu()  # waits for the device

  engines = {"ours greedy": ours_greedy, "ours sampled (Sampler)": ours_sampled,
             "hf greedy": hf_greedy, "hf sampled": hf_sampled}
  first = {}
  for name, fn in engines.items():  # compile / warm-up
    t0 = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - t0
  times = {name: [] for name in engines}
  for _ in range(args.reps):
    for name, fn in engines.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  agree = float(np.mean(np.all(ours_greedy() == hf_greedy(), axis=1)))
  rows = []
  for name in engines:
    med = statistics.median(times[name])
    rows.append({"engine": name, "first_call_s": round(first[name], 3), "median_s": round(med, 4),
                 "min_s": round(min(times[name]), 4), "tokens_per_s": round(b * n / med, 1)})
  base = {"greedy": next(r for r in rows if r["engine"] == "hf greedy")["tokens_per_s"],
          "sampled": next(r for r in rows if r["engine"] == "hf sampled")["tokens_per_s"]}
  for r in rows:
    kind = "greedy" if "greedy" in r["engine"] else "sampled"
    r["vs_hf"] = round(r["tokens_per_s"] / base[kind], 2)
  info = {"logit_max_abs_diff": logit_diff, "greedy_rows_equal": agree,
          "torch_threads": torch.get_num_threads(), "torch_device": str(dev),
          "jax_device": str(jax.devices()[0])}
  return rows, info


def _rl_config(quick: bool):
  config = config_lib.load_config(os.path.join(ROOT, "configs/flow_grpo.py") + ":tiny")
  if quick:
    config.unlock()
    config.rl.tasks_per_step, config.rl.group_size = 4, 4
  return config


def rl_share(cfg, variables, args) -> dict:
  from agentic_jax.data.builtin import calculator  # pylint: disable=import-outside-toplevel
  config = _rl_config(args.quick)
  rl = config.rl
  tok = tokenizer()
  q, g = int(rl.tasks_per_step), int(rl.group_size)
  sampler = R.Sampler(cfg, max_new_tokens=int(rl.max_new_tokens), temperature=float(rl.temperature),
                      prompt_bucket=64, batch_bucket=q * g)
  tasks = calculator.make_tasks(0, q, level="basic")
  kw = dict(group_size=g, max_turns=int(rl.max_turns), max_context_tokens=int(rl.max_context_tokens))

  def run_rollout():
    return R.rollout(sampler, variables, calculator.CalculatorEnv, tasks, tok, seed=0, **kw)

  t0 = time.perf_counter()
  episodes = run_rollout()
  warm_rollout = time.perf_counter() - t0
  from agentic_jax.rl import loop as rl_loop  # pylint: disable=import-outside-toplevel
  packed, stats = rl_loop.make_batch(config, episodes)  # the RL loop's own packing
  gen_tokens = sum(len(t.response) for e in episodes for t in e.turns)
  out = {"tasks": q, "group_size": g, "episodes": len(episodes),
         "turns": sum(len(e.turns) for e in episodes), "generated_tokens": gen_tokens,
         "rows": int(packed["inputs"].shape[0]), "seq_len": int(rl.seq_len), "batch_stats": stats,
         "rollout_first_call_s": round(warm_rollout, 2),
         "decoder_shapes": sorted(sampler.shapes_used),
         "stop_reasons": {r: sum(e.stop_reason == r for e in episodes)
                          for r in sorted({e.stop_reason for e in episodes})}}
  from agentic_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  tx = optim_lib.make_optimizer(config.optim)
  state = state_lib.init_state(cfg, tx, 0)
  fn = step_lib.jit_rl_step(step_lib.make_rl_step(cfg, config), donate=False)  # state reused
  train_kind = (f"rl_step ({rl.loss}/{rl.preset}, {rl.batch_mode} samples, "
                f"{rl.ppo_epochs} epoch x {rl.minibatches} minibatches, reference forward)")
  call = lambda: fn(state, variables, packed)  # noqa: E731
  jax.block_until_ready(call())
  times = {"rollout": [], "train": []}
  for _ in range(args.rl_reps):  # alternate, so load hits both alike
    t0 = time.perf_counter()
    run_rollout()
    times["rollout"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times["train"].append(time.perf_counter() - t0)
  t_rollout, t_train = statistics.median(times["rollout"]), statistics.median(times["train"])
  out.update(train_kind=train_kind, rollout_s=round(t_rollout, 3), train_s=round(t_train, 3),
             rollout_tokens_per_s=round(gen_tokens / t_rollout, 1), rl_reps=args.rl_reps,
             rollout_share=round(t_rollout / (t_rollout + t_train), 3))
  return out


def _loop_iterations(seconds: float) -> int:
  """Iterations of the `x += i` loop that take about `seconds` in the sandbox's interpreter (the
  fastest of 3 timings: other processes' load only ever slows one down)."""
  from agentic_jax import sandbox  # pylint: disable=import-outside-toplevel
  n = 2_000_000
  best = float("inf")
  for _ in range(3):
    # inside a function, as in the actions (locals: about twice as fast as module globals)
    res = sandbox.run_python(f"import time\ndef f():\n    x = 0\n    for i in range({n}):\n"
                             f"        x += i\nt = time.perf_counter()\nf()\n"
                             f"print(time.perf_counter() - t)", timeout_s=30.0)
    if not res.ok:
      raise RuntimeError(f"calibration run failed: {res.killed_reason} {res.stderr[-500:]}")
    best = min(best, float(res.stdout))
  return max(1, int(n * seconds / best))


def env_bench(args) -> dict:
  """Environment-step time of a batch of sandboxed code actions, one after the other against
  `env_pool.step_all` (module doc)."""
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import env_pool  # pylint: disable=import-outside-toplevel
  make_env, _ = envs.make_env_factory("pycode")  # checks the sandbox first
  task = next(t for t in code_env.builtin_tasks() if t.entry_point == "add")
  n, secs = args.env_actions, args.env_seconds
  iters = _loop_iterations(secs)
  bodies = {"sleep": f"import time\n    time.sleep({secs})\n    return a + b",
            "compute": f"x = 0\n    for i in range({iters}):\n        x += i\n    return a + b"}
  pool = [make_env() for _ in range(n)]
  workers = sorted({1, args.env_workers, n})

  def batch(kind: str, w: int) -> float:
    for e in pool:
      e.reset(task)
    t0 = time.perf_counter()
    out = env_pool.step_all(pool, [f"run()\n    {bodies[kind]}"] * n, workers=w)
    dt = time.perf_counter() - t0
    bad = [r.observation for r in out if not r.observation.endswith("1 of 1 examples pass")]
    if bad:
      raise RuntimeError(f"{len(bad)} of {n} {kind} actions did not run as expected: {bad[0]!r}")
    return dt

  for kind in bodies:  # warm-up (the sandbox's one-time probes)
    batch(kind, args.env_workers)
  times = {(k, w): [] for k in bodies for w in workers}
  for _ in range(args.env_reps):
    for kind in bodies:
      for w in workers:
        times[(kind, w)].append(batch(kind, w))
  rows = []
  for kind in bodies:
    seq = statistics.median(times[(kind, 1)])
    for w in workers:
      med = statistics.median(times[(kind, w)])
      rows.append({"action": kind, "env_workers": w, "median_s": round(med, 3),
                   "min_s": round(min(times[(kind, w)]), 3),
                   "per_action_s": round(med / n, 3), "speedup": round(seq / med, 2)})
  return {"actions": n, "action_seconds": secs, "compute_loop_iterations": iters,
          "reps": args.env_reps, "task": task.id, "rows": rows}


def print_env(env: dict) -> None:
  print(f"\nEnvironment steps: a batch of {env['actions']} sandboxed pycode run() actions that "
        f"each sleep or compute ~{env['action_seconds']:g} s, median of {env['reps']}")
  print("| action | env_workers | batch s | per action s | vs one after the other |")
  print("|---|---|---|---|---|")
  for r in env["rows"]:
    print(f"| {r['action']} | {r['env_workers']} | {r['median_s']:.2f} | {r['per_action_s']:.3f} | "
          f"{r['speedup']:.2f}x |")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--reps", type=int, default=None)
  ap.add_argument("--rl_reps", type=int, default=None)
  ap.add_argument("--skip_rl", action="store_true")
  ap.add_argument("--skip_env", action="store_true", help="no environment-step benchmark")
  ap.add_argument("--env_only", action="store_true",
                  help="only the environment steps; updates the JSON's env_step key")
  ap.add_argument("--env_actions", type=int, default=16)
  ap.add_argument("--env_seconds", type=float, default=0.2)
  ap.add_argument("--env_workers", type=int, default=8)
  ap.add_argument("--env_reps", type=int, default=None)
  ap.add_argument("--torch_device", default="cpu", help="transformers' device (cpu | cuda)")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/rollout.json"))
  args = ap.parse_args()
  args.reps = args.reps or (2 if args.quick else 5)
  args.rl_reps = args.rl_reps or (1 if args.quick else 3)
  args.env_reps = args.env_reps or (2 if args.quick else 5)
  load_start = load()
  if args.env_only:
    env = env_bench(args)
    print_env(env)
    env.update(load_start=load_start, load_end=load(), date=time.strftime("%Y-%m-%d %H:%M"),
               cpus=os.cpu_count(), host=platform.node())
    old = {}
    if os.path.exists(args.out):
      with open(args.out) as f:
        old = json.load(f)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({**old, "env_step": env}, f, indent=1)
    print(f"\nload (1/5 min) at end {env['load_end']}\nwrote {args.out} (env_step)")
    return
  config = config_lib.load_config(os.path.join(ROOT, "configs/midtrain.py") + ":tiny")
  cfg = config_lib.model_config(config.model)
  variables = models.init_variables(cfg, jax.random.key(0))
  rows, info = decode_bench(cfg, variables, args)
  print(f"\nDecode: {args.batch} prompts x {args.prompt_len} tokens -> {args.new_tokens} new tokens, "
        f"configs/midtrain.py:tiny model ({models.count_params(cfg):,} params), median of "
        f"{args.reps}; load (1/5 min) at start {load_start}, {os.cpu_count()} CPUs")
  print(f"same weights: max |logits ours - transformers| = {info['logit_max_abs_diff']:.2e}; "
        f"greedy rows identical: {info['greedy_rows_equal']:.0%}; torch threads "
        f"{info['torch_threads']}")
  print("| engine | first call s | median s | tokens/s | vs transformers |")
  print("|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['engine']} | {r['first_call_s']:.2f} | {r['median_s']:.3f} | "
          f"{r['tokens_per_s']:,.0f} | {r['vs_hf']:.2f}x |")
  share = None
  if not args.skip_rl:
    share = rl_share(cfg, variables, args)
    print(f"\nRL step (configs/flow_grpo.py:tiny{' --quick' if args.quick else ''}, median of "
          f"{args.rl_reps}): "
          f"{share['episodes']} episodes, {share['turns']} turns, {share['generated_tokens']} "
          f"generated tokens, {share['rows']} rows x {share['seq_len']}; stop reasons "
          f"{share['stop_reasons']}")
    print("| part | seconds | share |")
    print("|---|---|---|")
    print(f"| rollout ({share['rollout_tokens_per_s']:,.0f} tok/s) | {share['rollout_s']:.2f} | "
          f"{share['rollout_share']:.0%} |")
    print(f"| {share['train_kind']} | {share['train_s']:.2f} | {1 - share['rollout_share']:.0%} |")
  env = None
  if not args.skip_env:
    from agentic_jax import sandbox  # pylint: disable=import-outside-toplevel
    try:
      env = env_bench(args)
      print_env(env)
    except sandbox.SandboxUnavailable as e:  # e.g. a GPU image without bubblewrap
      env = {"skipped": str(e)}
      print(f"\nEnvironment steps skipped: {e}")
  load_end = load()
  print(f"\nload (1/5 min) at end {load_end}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"decode": rows, "decode_info": info, "rl_step": share, "env_step": env,
               "batch": args.batch,
               "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps,
               "load_start": load_start, "load_end": load_end, "host": platform.node(),
               "cpus": os.cpu_count(), "jax": jax.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M")}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
