"""Logit and greedy-generation parity of converted tiny models against transformers.

The transformers models run in float64 (eager kernels), ours in float32; the bound is
max|ours - HF| <= 1e-4 * max|HF|. Every variant has randomised norm weights, scaled-up
routers and random correction biases (tests/hf_models.py), so all weight paths matter.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

# transformers parity needs torch, which only the Python 3.11 leg has (its CPU wheel):
# the newer legs skip this module
torch = pytest.importorskip("torch")

from agentic_jax import convert, models, sampling  # noqa: E402
from tests import hf_models as H  # noqa: E402

RTOL = 1e-4
BATCH, LENGTH = 2, 12

# Execution variants that must not change the logits (checked on the model-spec §6 configs).
EXECUTION = {
    "scanned": dict(scan_layers=True),
    "chunked_attention": dict(attention_impl="chunked", attention_chunk_size=4),
    "dense_dispatch": dict(moe_dispatch="dense"),
    "capacity_dispatch": dict(moe_dispatch="capacity", capacity_factor=100.0),
    "dropless_blocked": dict(moe_dispatch="dropless", dropless_backend="blocked",
                             dropless_block_size=4),
}
MOE_ONLY = {"dense_dispatch", "capacity_dispatch", "dropless_blocked"}


@functools.lru_cache(maxsize=None)
def reference(variant: str):
  """(hf_model, tokens [B, T], HF logits) per variant, built once per session."""
  model = H.build(variant)
  toks = H.tokens(BATCH, LENGTH, seed=1)
  return model, toks, H.hf_logits(model, toks)


def forward(cfg):
  """Jitted apply returning (float32 logits, sown intermediates)."""
  module = models.build(cfg)
  return jax.jit(lambda v, t: module.apply(v, t, mutable=["intermediates"]))


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def sown(state, name: str) -> list[float]:
  """Per-layer values of one sown statistic (scanned layers stack them on axis 0)."""
  leaves = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  return [float(x) for k, v in leaves if name in jax.tree_util.keystr(k)
          for x in np.asarray(v).ravel()]


@pytest.mark.parametrize("variant", list(H.VARIANTS))
def test_logits_match_transformers(variant):
  model, toks, ref = reference(variant)
  cfg, variables = convert.from_hf(model)
  assert not cfg.scan_layers and "layers_0" in variables["params"]
  fwd = forward(cfg)
  out, state = fwd(variables, np.asarray(toks, np.int32))
  out = np.asarray(out)
  err = rel_err(out, ref)
  print(f"\n[parity] {variant}: max|ours-HF|/max|HF| = {err:.3e} (max|HF| = {np.abs(ref).max():.3f})")
  assert out.shape == ref.shape
  assert err <= RTOL
  if cfg.is_moe:
    # The perturbations matter: without the correction bias other experts are picked and
    # the logits move far outside the tolerance.
    no_bias = dict(variables, router_state=jax.tree.map(np.zeros_like, variables["router_state"]))
    assert rel_err(np.asarray(fwd(no_bias, np.asarray(toks, np.int32))[0]), ref) > 100 * RTOL
  if cfg.zero_expert_num:
    # LongCat routes some, but not all, slots to the identity experts.
    shares = sown(state, "zero_expert_share")
    assert len(shares) == cfg.num_layers and 0.0 < np.mean(shares) < 1.0, shares


# MoE dispatch variants only where there is an MoE (no skips in this file).
EXECUTION_CASES = [(v, e) for v in ("longcat", "deepseek", "youtu") for e in EXECUTION
                   if not (v == "youtu" and e in MOE_ONLY)]


@pytest.mark.parametrize("variant,execution", EXECUTION_CASES)
def test_execution_variants_match_transformers(variant, execution):
  model, toks, ref = reference(variant)
  overrides = EXECUTION[execution]
  cfg, variables = convert.from_hf(model, **overrides)
  for key, value in overrides.items():
    assert getattr(cfg, key) == value
  if execution == "scanned":
    assert not any(k.startswith("layers_") for k in variables["params"])
    assert any(g in variables["params"] for g in ("layers", "dense_layers", "moe_layers"))
  out, state = forward(cfg)(variables, np.asarray(toks, np.int32))
  if cfg.is_moe:
    assert sum(sown(state, "dropped_slots")) == 0  # capacity_factor 100 drops nothing
  err = rel_err(np.asarray(out), ref)
  print(f"\n[parity] {variant}/{execution}: {err:.3e}")
  assert err <= RTOL


# Seeds picked so the greedy continuations are not one repeated token.
@pytest.mark.parametrize("variant,seed", [("longcat", 3), ("deepseek_yarn_qproj", 5), ("youtu", 3)])
def test_greedy_generation_matches_transformers(variant, seed):
  """sampling.generate (left-padded batch, compressed-cache decode) == HF generate per prompt."""
  model = H.build(variant, seed=seed)
  if not model.config.tie_word_embeddings:
    # Wider logit margins, so float32-vs-float64 rounding cannot flip an argmax.
    with torch.no_grad():
      model.lm_head.weight.mul_(20.0)
  model.generation_config.eos_token_id = None  # always generate max_new_tokens
  cfg, variables = convert.from_hf(model)
  prompts = [H.tokens(1, n, seed=10 + n)[0].tolist() for n in (3, 7, 11)]
  new = 8
  expected, margins = [], []
  for p in prompts:  # batch 1 each: no HF padding involved
    with torch.no_grad():
      out = model.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, pad_token_id=0,
                           output_scores=True, return_dict_in_generate=True)
    expected.append(out.sequences[0, len(p):].tolist())
    for step in out.scores:  # top-1 minus top-2 logit at every greedy step
      top2 = torch.topk(step[0].double(), 2).values
      margins.append(float(top2[0] - top2[1]))
  # Guard against a fragile reference: every argmax is far above float32 rounding.
  assert min(margins) > 1e-4, min(margins)
  got = sampling.generate(cfg, variables, prompts, new, temperature=0.0, eos_id=None)
  print(f"\n[generate] {variant}: {got} (min top-1 margin {min(margins):.2e})")
  assert got == expected
  assert len({t for row in expected for t in row}) > 2  # not a trivially constant output
