"""Multi-device half of tests/test_rollout_rows_split.py (8 fake CPU devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/rollout_rows_split_worker.py

For each case of CASES (a tiny preset, a dispatch, a mesh): the RL Sampler on the sharded
params with split_rows (the default) and without, against the same Sampler on ONE device
with host params; and the per-device rows of the compressed cache carried by the compiled
decode loop (the first array of the while loop's state that holds the cache: [layers, rows,
...]). Prints one JSON line; the test process makes the assertions.
"""

from __future__ import annotations

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentic_jax import models, parallel, sampling  # noqa: E402
from agentic_jax.rl.sampler import Sampler, StopRule  # noqa: E402
from tests.model_fixtures import perturbed_variables  # noqa: E402

# (preset, moe_dispatch or None, mesh sizes)
CASES = (("longcat_flash_tiny", "dropless", {"fsdp": 4, "tensor": 2}),
         ("longcat_flash_tiny", "expert_parallel", {"fsdp": 2, "expert": 4}),
         ("deepseek_v3_tiny", "capacity", {"data": 2, "fsdp": 2, "tensor": 2}),
         ("youtu_llm_tiny", None, {"fsdp": 8}),
         ("iquest_loop_tiny", None, {"data": 2, "fsdp": 4}))
# 11 contexts: padded to the batch bucket 12, then to 16 rows (a multiple of the shards)
LENGTHS = (7, 2, 4, 1, 5, 3, 9, 6, 2, 8, 4)
NEW = 6


def loop_cache_rows(hlo: str) -> int:
  """Rows of the compressed cache in the decode loop's state, per device: the first
  4-D-or-more f32 array of the state of the while loop named jit(generate_arrays)/while
  ([layers, rows, slots, ...])."""
  for line in hlo.splitlines():
    if re.search(r'op_name="jit\(generate_arrays\)/while"', line) and " while(" in line:
      state = line.split(" while(")[0]
      m = re.search(r"f32\[(\d+),(\d+),(\d+),\d+[,\d]*\]", state)
      if m:
        return int(m.group(2))
  raise AssertionError("no decode loop with a cache in the compiled program")


def run() -> dict:
  rng = np.random.default_rng(0)
  contexts = [np.concatenate([[1], rng.integers(3, 120, size=n - 1)]).astype(np.int32)
              for n in LENGTHS]
  out = {}
  for preset, dispatch, sizes in CASES:
    cfg = models.presets.get(preset)
    if dispatch is not None:
      cfg = cfg.replace(moe_dispatch=dispatch)
    host = jax.device_get(perturbed_variables(cfg, seed=5))
    mesh = parallel.make_mesh(sizes)
    variables = parallel.shard_variables(host, cfg, mesh)
    kw = dict(max_new_tokens=NEW, temperature=1.0, top_p=0.95, stop=StopRule(eos_id=None),
              prompt_bucket=8, batch_bucket=6)
    ref = Sampler(cfg, **kw).generate(host, contexts, seed=3)
    case = {"shards": parallel.batch_shards(mesh)}
    for split in (True, False):
      s = Sampler(cfg, mesh=mesh, split_rows=split, **kw)
      gens = s.generate(variables, contexts, seed=3)
      (batch, width), = s.shapes_used
      tokens = jnp.zeros((batch, width), jnp.int32)
      lens = jnp.ones((batch,), jnp.int32)
      hlo = sampling.generate_arrays.lower(
          s.model_cfg, variables, tokens, lens, jax.random.key(3), max_new_tokens=NEW,
          temperature=1.0, top_p=0.95, stop_ids=tuple(s.stop.stop_ids),
          arm_ids=tuple(s.stop.arm_ids), active=jnp.ones((batch,), bool),
          logical_rules=s.logical_rules).compile().as_text()
      case["split" if split else "unsplit"] = {
          "batch": batch,
          "tokens_equal": all(np.array_equal(g.tokens, r.tokens) for g, r in zip(gens, ref)),
          "logp_max_diff": max(float(np.max(np.abs(g.logprobs - r.logprobs)))
                               for g, r in zip(gens, ref)),
          "cache_rows": loop_cache_rows(hlo)}
    case["distinct_tokens"] = len({int(t) for g in ref for t in g.tokens})
    out[f"{preset}/{dispatch}/" + "x".join(f"{k}{v}" for k, v in sizes.items())] = case
  return out


if __name__ == "__main__":
  assert jax.device_count() == 8
  print("RESULT " + json.dumps(run()), flush=True)
