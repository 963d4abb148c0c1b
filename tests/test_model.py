"""Whole-model invariants: cached decode == full forward, packing == separate runs,
scan == unrolled, remat == plain, bf16 runs; for every tiny preset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.models.model import init_cache
from tests.model_fixtures import perturbed_variables as _perturbed

PRESETS = ["longcat_flash_tiny", "deepseek_v3_tiny", "youtu_llm_tiny"]


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 128, shape), jnp.int32)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("scan", [False, True])
def test_cached_decode_equals_full_forward(name, scan):
  cfg = models.presets.get(name, moe_dispatch="dropless", scan_layers=scan)
  variables = _perturbed(cfg)
  if scan:
    variables = models.scan_variables(cfg, _perturbed(cfg.replace(scan_layers=False)))
  module = models.build(cfg)
  tokens = _tokens((2, 9))
  full = jax.jit(module.apply)(variables, tokens)
  cache = init_cache(cfg, 2, 12)
  step = jax.jit(lambda v, t, c: module.apply(v, t, cache=c))
  logits, cache = step(variables, tokens[:, :4], cache)  # prefill 4
  outs = [logits]
  for t in range(4, 9):  # then one token at a time
    logits, cache = step(variables, tokens[:, t:t + 1], cache)
    outs.append(logits)
  decoded = jnp.concatenate(outs, axis=1)
  scale = float(jnp.abs(full).max())
  np.testing.assert_allclose(np.asarray(decoded), np.asarray(full), atol=2e-5 * scale, rtol=0)
  assert int(cache.index) == 9
  # the cache holds exactly rkv + dr values per token per attention sublayer
  assert cache.latent.shape == (cfg.num_attention_layers, 2, 12, cfg.kv_lora_rank)
  assert cache.k_rope.shape == (cfg.num_attention_layers, 2, 12, cfg.qk_rope_head_dim)
  np.testing.assert_array_equal(np.asarray(cache.segment), [[1] * 9 + [0] * 3] * 2)


@pytest.mark.parametrize("name", PRESETS)
def test_packed_rows_equal_separate_sequences(name):
  cfg = models.presets.get(name, moe_dispatch="dropless")
  variables = _perturbed(cfg, seed=1)
  module = models.build(cfg)
  a, b = _tokens((1, 5), seed=2), _tokens((1, 6), seed=3)
  packed = jnp.concatenate([a, b], axis=1)
  seg = jnp.asarray([[1] * 5 + [2] * 6])
  apply = jax.jit(module.apply)
  out = apply(variables, packed, segment_ids=seg)  # positions restart per segment
  ref_a, ref_b = apply(variables, a), apply(variables, b)
  np.testing.assert_allclose(np.asarray(out[:, :5]), np.asarray(ref_a), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out[:, 5:]), np.asarray(ref_b), atol=1e-5, rtol=1e-5)
  # explicit positions override the default: a uniform shift leaves logits unchanged (RoPE
  # is relative), a gap between positions changes them
  shifted = apply(variables, a, positions=jnp.arange(5)[None] + 3)
  np.testing.assert_allclose(np.asarray(shifted), np.asarray(ref_a), atol=1e-5, rtol=1e-5)
  gapped = apply(variables, a, positions=jnp.asarray([[0, 1, 2, 6, 9]]))
  assert float(jnp.abs(gapped[:, 3:] - ref_a[:, 3:]).max()) > 1e-4


@pytest.mark.parametrize("name", ["longcat_flash_tiny", "deepseek_v3_tiny"])
def test_scan_and_remat_equal_unrolled(name):
  cfg = models.presets.get(name, moe_dispatch="dropless")
  variables = _perturbed(cfg, seed=2)
  tokens = _tokens((2, 7), seed=4)

  def loss(cfg, v):
    return jnp.mean(jax.nn.log_softmax(models.build(cfg).apply(v, tokens))[..., 0])

  grad_fn = lambda c, v: jax.jit(jax.value_and_grad(lambda p: loss(c, {**v, "params": p})))(v["params"])
  ref_loss, ref_grad = grad_fn(cfg, variables)
  for overrides in (dict(scan_layers=True), dict(scan_layers=True, remat_policy="full"),
                    dict(remat_policy="dots")):
    c = cfg.replace(**overrides)
    v = models.scan_variables(c, variables) if c.scan_layers else variables
    val, grad = grad_fn(c, v)
    if c.scan_layers:
      grad = models.unscan_variables(c, {"params": grad})["params"]
    np.testing.assert_allclose(float(val), float(ref_loss), rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4,
                                                        atol=1e-7), grad, ref_grad)


def test_scan_layout_round_trip_and_logical_axes():
  cfg = models.presets.get("deepseek_v3_tiny")
  variables = models.init_variables(cfg, jax.random.key(0))
  scanned = models.scan_variables(cfg, variables)
  assert set(scanned["params"]) >= {"dense_layers", "moe_layers"}
  assert scanned["params"]["moe_layers"]["mlp"]["experts"]["gate_proj"].shape == (2, 8, 64, 32)
  back = models.unscan_variables(cfg, scanned)
  jax.tree.map(np.testing.assert_array_equal, back, variables)
  # every parameter carries one logical axis name per dimension, incl. the scan axis
  for c in (cfg, cfg.replace(scan_layers=True)):
    axes = models.logical_axes(c)["params"]
    shapes = models.abstract_variables(c)["params"]
    specs = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(specs) == len(jax.tree.leaves(shapes))
    for names, leaf in zip(specs, jax.tree.leaves(shapes)):
      assert len(names) == leaf.ndim and all(isinstance(n, str) for n in names), (names, leaf.shape)
    if c.scan_layers:
      assert tuple(axes["moe_layers"]["mlp"]["experts"]["gate_proj"]) == ("layers", "expert", "embed", "expert_mlp")


def test_bfloat16_compute_tracks_float32():
  cfg = models.presets.get("longcat_flash_tiny", moe_dispatch="dense")
  variables = _perturbed(cfg, seed=3)
  tokens = _tokens((2, 8), seed=5)
  ref = jax.jit(models.build(cfg).apply)(variables, tokens)
  out = jax.jit(models.build(cfg.replace(dtype="bfloat16")).apply)(variables, tokens)
  assert out.dtype == jnp.float32
  err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
  assert 0 < err < 5e-2, err
