"""Where a train step's time goes: XLA's own profiler trace of the real step, attributed to
model parts through the compiled program's op metadata.

    python benchmarks/profile_step.py                       # tiny and m50, the default variant
    python benchmarks/profile_step.py --models=m50 --steps=3 --variant=dropless/b128/xla

The step is benchmarks/train_step.py's (agentic_jax.train.step, jitted with donation, one
synthetic batch). After warm-up, `--steps` steps run under `jax.profiler.trace`; the trace's
per-thunk events (XLA:CPU runs one thunk per fusion / dot / while loop, on its worker
threads) are turned into exclusive time per event (an event's duration minus the events it
contains on the same thread: a while loop's own time is its loop overhead, the ops of its
body count on their own; the thunk executor's remainder is runtime overhead and idle gaps).
Each event's HLO instruction is looked up in the compiled program's text, and its
`metadata={op_name=...}` path says what it computes (e.g.
`jit(train_step)/transpose(jvp(CausalLM))/layers_0/self_attn_0/bthd,bshd->bhts/dot_general`:
the backward of an attention score einsum). Categories, first match wins:

  optimizer       ops outside the loss's forward/backward (AdamW, clipping, bias update)
  loss            lm_head, log-softmax / cross-entropy, z-loss and balance terms, metrics
                  (the loss function's ops outside the model)
  attention core  scores, mask, softmax, weighted values (MLA's einsums between projections)
  attn proj       q/kv down and up projections, o_proj, the latent norms
  MoE router      router matmul, top-k, scores
  MoE dispatch    sort / gather / scatter / combine and the expert kernel's loops
  experts         the experts' matmuls (inside the dispatch kernel)
  dense FFN       the SwiGLU MLPs (ScMoE's dense FFNs, dense layers)
  norms           RMSNorms of the residual stream
  embed           the token embedding (gather and its scatter-add backward)
  other           anything else inside the model (residual adds, copies, reshapes)

An op's event covers the op on the thread that runs it; a large dot also keeps the other
core busy from inside (YNNPACK's own threads are not traced), and the ops run mostly one
after another, so the ops' total is close to the wall time of the step and a category's share
of that total is its share of the step. "executor" is the executor threads' time outside any op
event (waiting included): printed, not a part of the step. Writes
benchmarks/results/profile_step.json.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step  # noqa: E402  (benchmarks/train_step.py: the same step and configs)
from agentic_jax import allocator  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
_INSTR = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{op_name="([^"]*)"')
# (category, regex over the op_name path); first match wins
RULES = (
    ("loss", r"lm_head|log_softmax|cross_entropy|logsumexp|z_loss|balance|/loss"),
    ("MoE router", r"/router|top_k|/mlp/(?:add|sub|mul|div|exp|argsort|gate)"),
    ("experts", r"/mlp/.*(?:ri,|rd,|,\.\.\.id|,\.\.\.di|/dot_general)"),
    ("MoE dispatch", r"/mlp/"),
    ("attention core", r"/self_attn[^/]*/(?!(?:q_a_proj|q_b_proj|kv_a_proj|kv_b_proj|o_proj|"
                       r"q_a_layernorm|kv_a_layernorm)\b)"),
    ("attn proj", r"/self_attn"),
    ("dense FFN", r"/mlps?_?\d*/"),
    ("norms", r"norm"),
    ("embed", r"embed"),
)


def category(op_name: str) -> str:
  if "CausalLM" not in op_name:  # the loss function's own ops, or the optimizer's
    return "loss" if "jvp(" in op_name or "transpose(" in op_name else "optimizer"
  for name, pattern in RULES:
    if re.search(pattern, op_name):
      return name
  return "other"


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its metadata op_name, over every computation of the program."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def exclusive_times(events: list[dict]) -> list[tuple[dict, float]]:
  """(event, its duration minus the events nested in it on the same thread), per event."""
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[(e["pid"], e["tid"])].append(e)
  out = []
  for evs in by_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[list] = []  # [event, end, child time]
    def close(item):
      out.append((item[0], item[0]["dur"] - item[2]))
    for e in evs:
      while stack and e["ts"] >= stack[-1][1]:
        close(stack.pop())
      if stack:
        stack[-1][2] += e["dur"]
      stack.append([e, e["ts"] + e["dur"], 0.0])
    while stack:
      close(stack.pop())
  return out


def attribute(trace_dir: str, hlo_text: str, steps: int) -> dict:
  """ms per step (summed over threads) by category and by forward/backward, from the trace."""
  path = glob.glob(os.path.join(trace_dir, "plugins/profile/*/*.trace.json.gz"))[0]
  with gzip.open(path) as f:
    trace = json.load(f)
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  # XLA:CPU's worker threads (their names start with tf_XLA); the Python thread only waits
  events = [e for e in trace["traceEvents"] if e.get("ph") == "X"
            and threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA")]
  names = op_names(hlo_text)
  cats: collections.Counter = collections.Counter()
  phase: collections.Counter = collections.Counter()
  top: collections.Counter = collections.Counter()
  unknown = 0.0
  for e, excl in exclusive_times(events):
    op = names.get(e["name"])
    if op is None:
      key = "executor" if e["name"].startswith("ThunkExecutor") else "other"
      unknown += 0.0 if key == "executor" else excl
    else:
      key = category(op)
      phase["backward" if "transpose(" in op else "forward" if "CausalLM" in op
            else "optimizer"] += excl
      top[(key, e["name"], op.split("/", 1)[-1][:110])] += excl
    cats[key] += excl
  per = lambda c: {k: v / steps / 1e3 for k, v in c.most_common()}  # noqa: E731  us -> ms/step
  return {"categories_ms": per(cats), "phases_ms": per(phase),
          "top_ops": [{"category": k[0], "op": k[1], "what": k[2], "ms": v / steps / 1e3}
                      for k, v in top.most_common(15)],
          "unmatched_ms": unknown / steps / 1e3}


def profile(model: str, variant: str, steps: int) -> dict:
  run = train_step.build(model, variant)
  state, batch, step = run["state"], run["batch"], run["step"]
  for _ in range(3):
    state, m = step(state, batch)
    jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
    jax.block_until_ready(m)
  wall = (time.perf_counter() - t0) / steps
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(steps):
        state, m = step(state, batch)
        jax.block_until_ready(m)
    result = attribute(d, step.as_text(), steps)
  result.update(model=model, variant=variant, steps=steps, step_ms=1e3 * wall)
  return result


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="tiny,m50")
  ap.add_argument("--variant", default="dropless/b128/xla", choices=list(train_step.VARIANTS))
  ap.add_argument("--steps", type=int, default=3, help="profiled steps")
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results/profile_step.json"))
  args = ap.parse_args()
  results = [profile(m, args.variant, args.steps) for m in args.models.split(",")]
  for r in results:
    ops = {k: v for k, v in r["categories_ms"].items() if k != "executor"}
    total = sum(ops.values())
    print(f"\n{r['model']} {r['variant']}: step {r['step_ms']:.0f} ms wall; ops {total:.0f} ms "
          f"per step; executor threads outside ops {r['categories_ms'].get('executor', 0):.0f} ms")
    print("| part | ms/step | share of the ops |\n|---|---|---|")
    for k, v in ops.items():
      print(f"| {k} | {v:.1f} | {100 * v / total:.1f}% |")
    print("phases: " + ", ".join(f"{k} {v:.1f} ms" for k, v in r["phases_ms"].items()))
    print("top ops:")
    for o in r["top_ops"][:10]:
      print(f"  {o['ms']:7.2f} ms  {o['category']:<14} {o['op']:<28} {o['what']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"results": results, "jax": jax.__version__, "cpus": os.cpu_count(), "malloc": allocator.state(),
               "loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f,
              indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
