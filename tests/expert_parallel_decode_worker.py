"""Multi-device half of tests/test_expert_parallel_decode.py (8 fake CPU devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/expert_parallel_decode_worker.py PRESET

Decodes a tiny MoE preset with moe_dispatch="expert_parallel" on expert-sharded params, on
each mesh of MESHES, greedy and sampled, called the ways the decoders are called (sharded
params with host inputs outside a mesh context; inputs placed replicated with
NamedSharding(mesh, P()); inside jax.set_mesh), and the same prompts with `dropless` on ONE
device. Records tokens, logprobs and the all-to-alls of the compiled program's MoE exchange
(prefill: outside the decode loop; per-token steps: inside its body). Prints one JSON line;
the test process makes the assertions.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentic_jax import models, parallel, sampling  # noqa: E402
from agentic_jax.rl.sampler import Sampler, StopRule  # noqa: E402
from tests.model_fixtures import perturbed_variables  # noqa: E402

# (mesh sizes, number of devices it takes, how the decoder is called, temperature)
#   "sharded":    the params as sharded for training, host prompts, no mesh context
#   "replicated": the params sharded, prompts / lengths / key placed NamedSharding(mesh, P())
#   "set_mesh":   the params sharded, the call inside jax.set_mesh(mesh)
MESHES = (({"expert": 2}, 2, "sharded", 0.0),
          ({"expert": 4}, 4, "set_mesh", 1.0),
          ({"fsdp": 2, "expert": 4}, 8, "replicated", 0.0),
          ({"fsdp": 2, "expert": 4}, 8, "sharded", 1.0),
          ({"data": 2, "expert": 4}, 8, "replicated", 1.0))
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60], [9], [17, 18, 19, 20, 21], [64, 1, 2]]
NEW = 8
TOP_P = 0.95
SEED = 3


def name(sizes: dict) -> str:
  return "x".join(f"{k}{v}" for k, v in sizes.items())


def exchange_all_to_alls(hlo: str) -> dict:
  """All-to-alls of the MoE exchange (shard_map inside an `mlp`) in a compiled program:
  in the decode loop's body (per-token steps) and outside it (prefill)."""
  lines = [l for l in hlo.splitlines() if "all-to-all" in l and "mlp/shard_map" in l
           and "=" in l and not l.lstrip().startswith("ROOT %tuple")]
  step = sum(1 for l in lines if "while/body" in l)
  return {"prefill": len(lines) - step, "step": step}


def run(preset: str) -> dict:
  base = models.presets.get(preset)
  host = jax.device_get(perturbed_variables(base, seed=5))
  tokens, lengths = sampling.pad_prompts(PROMPTS)
  kw = dict(max_new_tokens=NEW, top_p=TOP_P)
  dropless = base.replace(moe_dispatch="dropless")
  ep_cfg = base.replace(moe_dispatch="expert_parallel")

  ref = {}
  for temp in sorted({t for *_, t in MESHES}):
    out, logp, num = sampling.generate_arrays(dropless, host, jnp.asarray(tokens),
                                              jnp.asarray(lengths), jax.random.key(SEED),
                                              temperature=temp, **kw)
    ref[temp] = (np.asarray(out), np.asarray(logp), np.asarray(num))
  sampler_kw = dict(max_new_tokens=NEW, temperature=1.0, top_p=TOP_P, stop=StopRule(eos_id=None),
                    prompt_bucket=8, batch_bucket=8)
  contexts = [np.asarray(p, np.int32) for p in PROMPTS]
  ref_gens = Sampler(dropless, **sampler_kw).generate(host, contexts, seed=SEED)

  cases = {}
  for sizes, n_dev, how, temp in MESHES:
    mesh = parallel.make_mesh(sizes, devices=jax.devices()[:n_dev])
    variables = parallel.shard_variables(host, ep_cfg, mesh)
    args = (jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(SEED))
    if how == "replicated":
      rep = NamedSharding(mesh, P())
      args = (jax.device_put(tokens, rep), jax.device_put(lengths, rep),
              jax.random.wrap_key_data(jax.device_put(jax.random.key_data(args[2]), rep)))
    ctx = jax.set_mesh(mesh) if how == "set_mesh" else contextlib.nullcontext()
    with ctx:
      compiled = sampling.generate_arrays.lower(ep_cfg, variables, *args, temperature=temp,
                                                **kw).compile()
      out, logp, num = compiled(variables, *args)
      gens = Sampler(ep_cfg, **sampler_kw).generate(variables, contexts, seed=SEED)
    want_out, want_logp, want_num = ref[temp]
    cases[f"{name(sizes)}/{how}/T{temp:g}"] = {
        "tokens_equal": bool(np.array_equal(np.asarray(out), want_out)
                             and np.array_equal(np.asarray(num), want_num)),
        "logp_max_diff": float(np.max(np.abs(np.asarray(logp) - want_logp))),
        "all_to_all": exchange_all_to_alls(compiled.as_text()),
        "sampler_tokens_equal": all(np.array_equal(g.tokens, r.tokens)
                                    for g, r in zip(gens, ref_gens)),
        "sampler_logp_max_diff": max(float(np.max(np.abs(g.logprobs - r.logprobs)))
                                     for g, r in zip(gens, ref_gens)),
    }
  return {"cases": cases, "greedy_tokens": ref[0.0][0].tolist(),
          "sampled_tokens": ref[1.0][0].tolist()}


if __name__ == "__main__":
  assert jax.device_count() == 8
  print("RESULT " + json.dumps(run(sys.argv[1])), flush=True)
