"""Multi-device half of tests/test_decoders_on_expert_mesh.py (8 fake CPU devices).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/decoders_on_expert_mesh_worker.py

The decoders that build their own modules instead of calling sampling's prefill / step
(rl/ra3_annotate.annotate_arrays, sampling_speculative.generate_arrays), on a tiny LongCat
(moe_dispatch="expert_parallel", an MTP module) whose params are sharded over fsdp 2 x expert 4
by parallel.variable_shardings, called outside any mesh context as the RA3 E-step calls them;
and the same inputs with `dropless` on ONE device. Records tokens, log-probs and the
all-to-alls of the MoE exchange in each compiled program. Prints one JSON line; the test
process makes the assertions.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentic_jax import models, parallel, sampling, sampling_speculative  # noqa: E402
from agentic_jax.rl import ra3_annotate as ann_lib  # noqa: E402
from tests.expert_parallel_decode_worker import exchange_all_to_alls  # noqa: E402
from tests.model_fixtures import perturbed_variables  # noqa: E402

PRESET = "longcat_flash_tiny"
SIZES = {"fsdp": 2, "expert": 4}
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 2, 50, 60], [9], [17, 18, 19, 20, 21], [64, 1]]
NEW = 8
SEED = 3


def annotate_rows(rng: np.random.RandomState, n: int = 6):
  prompts = [rng.randint(3, 128, size=rng.randint(2, 6)).astype(np.int32) for _ in range(n)]
  experts = [rng.randint(3, 128, size=rng.randint(6, 12)).astype(np.int32) for _ in range(n)]
  bds = [np.arange(len(e), dtype=np.int32) for e in experts]  # a decision before every token
  return prompts, experts, bds


def frequent_tokens(cfg, host, rows) -> tuple[int, int]:
  """The two tokens most often the model's argmax over the rows' positions: <|think|> and
  <|end_think|> for the test, so that decisions sampled at a low temperature (the random
  model is nearly flat) write rationales often."""
  seqs = [np.concatenate([p, e]) for p, e in zip(*rows[:2])]
  width = max(len(s) for s in seqs)
  toks = np.zeros((len(seqs), width), np.int32)
  seg = np.zeros_like(toks)
  for i, s in enumerate(seqs):
    toks[i, :len(s)], seg[i, :len(s)] = s, 1
  pos = np.broadcast_to(np.arange(width, dtype=np.int32), toks.shape)
  logits = models.build(cfg).apply(host, jnp.asarray(toks), jnp.asarray(seg), jnp.asarray(pos))
  counts = np.bincount(np.asarray(jnp.argmax(logits, -1))[seg > 0], minlength=cfg.vocab_size)
  top = np.argsort(-counts, kind="stable")
  return int(top[0]), int(top[1])


def run_annotate(dropless, ep_cfg, host, variables, mesh) -> dict:
  rows = annotate_rows(np.random.RandomState(0))
  think, end = frequent_tokens(dropless, host, rows)
  kw = dict(think_id=think, end_think_id=end, banned_ids=(0, 1, 2), max_rationale_len=3,
            temperature=0.05)
  ref = ann_lib.annotate(dropless, host, *rows, jax.random.key(SEED), **kw)
  calls = []
  traced = ann_lib.annotate_arrays

  def spy(*args, **kwargs):  # the arguments annotate passes, to compile the same program
    calls.append((args, kwargs))
    return traced(*args, **kwargs)

  ann_lib.annotate_arrays = spy
  try:
    got = ann_lib.annotate(ep_cfg, variables, *rows, jax.random.key(SEED), mesh=mesh, **kw)
  finally:
    ann_lib.annotate_arrays = traced
  args, kwargs = calls[0]
  hlo = traced.lower(*args, **kwargs).compile().as_text()
  return {
      "tokens_equal": all(np.array_equal(a.tokens, b.tokens) and np.array_equal(a.kind, b.kind)
                          and np.array_equal(a.src, b.src) for a, b in zip(got, ref)),
      "logp_max_diff": max(float(np.max(np.abs(a.logp - b.logp))) for a, b in zip(got, ref)),
      "new_rationales": int(sum((a.kind == ann_lib.KIND_NEW).sum() for a in ref)),
      "all_to_all": exchange_all_to_alls(hlo)}


def run_speculative(dropless, ep_cfg, host, variables) -> dict:
  tokens, lengths = sampling.pad_prompts(PROMPTS)
  args = (jnp.asarray(tokens), jnp.asarray(lengths), jax.random.key(SEED))
  kw = dict(max_new_tokens=NEW, num_draft_tokens=2)
  ref_out, ref_logp, ref_num, _ = sampling_speculative.generate_arrays(dropless, host, *args,
                                                                       **kw)
  plain = sampling.generate(dropless, host, PROMPTS, NEW)
  compiled = sampling_speculative.generate_arrays.lower(ep_cfg, variables, *args, **kw).compile()
  out, logp, num, _ = compiled(variables, *args)
  return {
      "tokens_equal": bool(np.array_equal(np.asarray(out), np.asarray(ref_out))
                           and np.array_equal(np.asarray(num), np.asarray(ref_num))),
      "logp_max_diff": float(np.max(np.abs(np.asarray(logp) - np.asarray(ref_logp)))),
      # the one-device reference is plain greedy decoding, token for token
      "reference_is_plain_greedy": [np.asarray(ref_out)[i, :int(ref_num[i])].tolist()
                                    for i in range(len(PROMPTS))] == plain,
      "distinct_tokens": [len(set(r)) for r in plain],
      "all_to_all": exchange_all_to_alls(compiled.as_text())}


def main() -> dict:
  base = models.presets.get(PRESET, num_mtp_layers=1)
  host = jax.device_get(perturbed_variables(base, seed=5))
  dropless = base.replace(moe_dispatch="dropless")
  ep_cfg = base.replace(moe_dispatch="expert_parallel")
  mesh = parallel.make_mesh(SIZES)
  variables = parallel.shard_variables(host, ep_cfg, mesh)
  return {"annotate": run_annotate(dropless, ep_cfg, host, variables, mesh),
          "speculative": run_speculative(dropless, ep_cfg, host, variables)}


if __name__ == "__main__":
  assert jax.device_count() == 8
  print("RESULT " + json.dumps(main()), flush=True)
