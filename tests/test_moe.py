"""MoE layer: parity with transformers' LongCat-Flash / DeepSeek-V3 MoE modules, agreement of
the dispatch paths (forward and gradients), capacity dropping, zero experts, sown stats.

Tolerances: HF reference runs in float64 (its router in float32, like ours); the JAX side
runs in float32. Outputs must agree to 1e-5 relative to the output's max magnitude, and the
chosen expert sets exactly. Dispatch paths agree with the dense reference to 1e-5 relative.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# transformers parity needs torch, which only the Python 3.11 leg has (its CPU wheel):
# the newer legs skip this module
torch = pytest.importorskip("torch")

from agentic_jax.models.config import ModelConfig  # noqa: E402
from agentic_jax.models.moe import MoE, route  # noqa: E402

LONGCAT = ModelConfig(
    layer_type="scmoe", hidden_size=64, n_routed_experts=4, zero_expert_num=2,
    num_experts_per_tok=2, moe_intermediate_size=32, scoring_func="softmax",
    norm_topk_prob=False, routed_scaling_factor=6.0, dropless_block_size=8)
DEEPSEEK = ModelConfig(
    layer_type="deepseek", hidden_size=64, n_routed_experts=8, num_experts_per_tok=2,
    n_group=4, topk_group=2, n_shared_experts=1, moe_intermediate_size=32,
    scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5,
    dropless_block_size=8)
PATHS = [("dense", "blocked"), ("capacity", "blocked"), ("dropless", "blocked"),
         ("dropless", "ragged_dot")]
B, T, D = 2, 8, 64


def _with_path(cfg, path, **kw):
  return cfg.replace(moe_dispatch=path[0], dropless_backend=path[1], **kw)


def _tensor(a):
  return torch.from_numpy(np.asarray(a, np.float64))


def _init_vars(cfg, seed=0, bias=None, router_scale=1.0):
  x = jax.random.normal(jax.random.key(seed + 1), (B, T, D), jnp.float32)
  variables = nn.meta.unbox(MoE(cfg).init(jax.random.key(seed), x))
  params = jax.tree_util.tree_map(lambda p: p * 5.0, variables["params"])  # std 0.1
  params["router"]["kernel"] = params["router"]["kernel"] * router_scale
  state = variables["router_state"]
  if bias is not None:
    state = {"router": {"e_score_correction_bias": jnp.asarray(bias, jnp.float32)}}
  return x, params, state


def _apply(cfg, params, state, x, mutable=("intermediates",)):
  return MoE(cfg).apply({"params": params, "router_state": state}, x, mutable=list(mutable))


# ------------------------------------------------------------------ transformers parity


def _hf_parity(cfg, hf_module, params, state, x):
  out = {}
  for path in PATHS:
    y, _ = jax.jit(functools.partial(_apply, _with_path(cfg, path, capacity_factor=8.0)))(
        params, state, x)
    out[path] = np.asarray(y, np.float64)
  with torch.no_grad():
    ref = hf_module(_tensor(x)).numpy()
  scale = np.abs(ref).max()
  for path, y in out.items():
    err = np.abs(y - ref).max() / scale
    assert err < 1e-5, (path, err)
  return ref


def _check_routing(cfg, params, state, x, hf_router):
  x2 = jnp.reshape(x, (-1, D))
  r = route(cfg, x2, params["router"]["kernel"], state["router"]["e_score_correction_bias"])
  with torch.no_grad():
    _, w_hf, i_hf = hf_router(_tensor(x2))
  order = np.argsort(i_hf.numpy(), axis=-1)
  i_hf = np.take_along_axis(i_hf.numpy(), order, -1)
  w_hf = np.take_along_axis(w_hf.numpy(), order, -1)
  order = np.argsort(np.asarray(r.idx), axis=-1)
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(r.idx), order, -1), i_hf)
  np.testing.assert_allclose(np.take_along_axis(np.asarray(r.gates), order, -1), w_hf,
                             rtol=1e-6, atol=1e-7)
  return r


def test_longcat_parity_with_transformers():
  from transformers.models.longcat_flash.configuration_longcat_flash import LongcatFlashConfig
  from transformers.models.longcat_flash.modeling_longcat_flash import LongcatFlashMoE

  hf_cfg = LongcatFlashConfig(
      vocab_size=128, hidden_size=64, num_layers=2, num_attention_heads=4, ffn_hidden_size=128,
      expert_ffn_hidden_size=32, n_routed_experts=4, zero_expert_num=2, moe_topk=2,
      q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, head_dim=8,
      v_head_dim=16, routed_scaling_factor=6.0, max_position_embeddings=256)
  torch.manual_seed(0)
  hf = LongcatFlashMoE(hf_cfg).double()
  n, z, i = 4, 2, 32
  with torch.no_grad():
    hf.experts.gate_up_proj.normal_(0, 0.1)  # allocated [N+Z, 2I, d]; rows >= N are dead
    hf.experts.down_proj.normal_(0, 0.1)
    hf.router.classifier.weight.normal_(0, 0.3)  # logits std ~2.4: far from uniform
    hf.router.e_score_correction_bias.copy_(torch.tensor([0.15, -0.2, 0.05, -0.05, 0.1, -0.12]))
  gate_up = hf.experts.gate_up_proj.detach().numpy()[:n]
  params = {
      "router": {"kernel": jnp.asarray(hf.router.classifier.weight.detach().numpy().T, jnp.float32)},
      "experts": {
          "gate_proj": jnp.asarray(gate_up[:, :i].transpose(0, 2, 1), jnp.float32),
          "up_proj": jnp.asarray(gate_up[:, i:].transpose(0, 2, 1), jnp.float32),
          "down_proj": jnp.asarray(hf.experts.down_proj.detach().numpy().transpose(0, 2, 1),
                                   jnp.float32)}}
  bias = hf.router.e_score_correction_bias.numpy()
  state = {"router": {"e_score_correction_bias": jnp.asarray(bias, jnp.float32)}}
  x = jax.random.normal(jax.random.key(3), (B, T, D), jnp.float32)
  r = _check_routing(LONGCAT, params, state, x, hf.router)
  # The perturbation must matter: the bias changes some selections, some slots pick zero
  # experts, and the gates are unbiased softmax probabilities times 6.
  unbiased = np.sort(np.argsort(-np.asarray(r.scores), axis=-1)[:, :2], -1)
  assert (unbiased != np.sort(np.asarray(r.idx), -1)).any()
  assert 0 < (np.asarray(r.idx) >= n).mean() < 1
  np.testing.assert_allclose(
      r.gates, 6.0 * np.take_along_axis(np.asarray(r.scores), np.asarray(r.idx), -1), rtol=1e-6)
  _hf_parity(LONGCAT, hf, params, state, x)


def test_deepseek_parity_with_transformers():
  from transformers.models.deepseek_v3.configuration_deepseek_v3 import DeepseekV3Config
  from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

  hf_cfg = DeepseekV3Config(
      vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
      n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
      first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
      qk_rope_head_dim=8, v_head_dim=16, routed_scaling_factor=2.5, max_position_embeddings=256,
      num_mtp_layers=0)
  hf_cfg._experts_implementation = "eager"  # the reference per-expert loop
  torch.manual_seed(1)
  hf = DeepseekV3MoE(hf_cfg).double()
  i = 32
  with torch.no_grad():
    hf.experts.gate_up_proj.normal_(0, 0.1)
    hf.experts.down_proj.normal_(0, 0.1)
    hf.gate.weight.normal_(0, 0.3)
    # Mixed signs, and large enough to move selections of the sigmoid scores.
    hf.gate.e_score_correction_bias.copy_(torch.randn(8, dtype=torch.float64) * 0.3 - 0.1)
    for lin in (hf.shared_experts.gate_proj, hf.shared_experts.up_proj, hf.shared_experts.down_proj):
      lin.weight.normal_(0, 0.1)
  gate_up = hf.experts.gate_up_proj.detach().numpy()
  sh = hf.shared_experts
  params = {
      "router": {"kernel": jnp.asarray(hf.gate.weight.detach().numpy().T, jnp.float32)},
      "experts": {
          "gate_proj": jnp.asarray(gate_up[:, :i].transpose(0, 2, 1), jnp.float32),
          "up_proj": jnp.asarray(gate_up[:, i:].transpose(0, 2, 1), jnp.float32),
          "down_proj": jnp.asarray(hf.experts.down_proj.detach().numpy().transpose(0, 2, 1),
                                   jnp.float32)},
      "shared_experts": {name: jnp.asarray(getattr(sh, name).weight.detach().numpy().T, jnp.float32)
                         for name in ("gate_proj", "up_proj", "down_proj")}}
  bias = hf.gate.e_score_correction_bias.numpy()
  assert (bias < 0).any() and (bias > 0).any()
  state = {"router": {"e_score_correction_bias": jnp.asarray(bias, jnp.float32)}}
  x = jax.random.normal(jax.random.key(4), (B, T, D), jnp.float32)
  r = _check_routing(DEEPSEEK, params, state, x, hf.gate)
  # Group limit and bias must both change some selections vs plain top-k.
  sel = np.asarray(r.scores) + bias[None].astype(np.float32)
  plain = np.sort(np.argsort(-sel, axis=-1)[:, :2], -1)
  assert (plain != np.sort(np.asarray(r.idx), -1)).any(), "group limit never mattered"
  unbiased = np.sort(np.argsort(-np.asarray(r.scores), axis=-1)[:, :2], -1)
  assert (unbiased != np.sort(np.asarray(r.idx), -1)).any(), "bias never mattered"
  _hf_parity(DEEPSEEK, hf, params, state, x)


# ------------------------------------------------------------------ dispatch agreement


@pytest.mark.parametrize("cfg,bias", [
    (LONGCAT, [0.0, 0.1, -0.1, 0.0, 0.05, -0.02]),
    (DEEPSEEK, [0.1, -0.2, 0.0, 0.3, -0.1, 0.05, 0.0, -0.3]),
], ids=["longcat", "deepseek"])
def test_dispatch_paths_agree_forward_and_grad(cfg, bias):
  x, params, state = _init_vars(cfg, bias=bias, router_scale=10.0)
  probe = jnp.sin(jnp.arange(B * T * D, dtype=jnp.float32)).reshape(B, T, D)

  def loss(c, p, x):
    y, inter = _apply(c, p, state, x)
    return jnp.sum(y * probe), inter["intermediates"]

  results = {}
  for path in PATHS:
    c = _with_path(cfg, path, capacity_factor=8.0)
    (val, inter), grads = jax.jit(jax.value_and_grad(
        functools.partial(loss, c), argnums=(0, 1), has_aux=True))(params, x)
    assert float(inter["dropped_slots"][0]) == 0.0
    results[path] = (val, grads)
  ref_val, ref_grads = results[PATHS[0]]
  ref_leaves = jax.tree_util.tree_leaves(ref_grads)
  for path, (val, grads) in results.items():
    np.testing.assert_allclose(val, ref_val, rtol=1e-5, err_msg=str(path))
    for g, r in zip(jax.tree_util.tree_leaves(grads), ref_leaves):
      assert float(jnp.abs(g - r).max()) <= 1e-5 * float(jnp.abs(r).max()) + 1e-7, path


# ------------------------------------------------------------------ capacity drops


def _np_swiglu(params, e, v):
  ex = {k: np.asarray(a, np.float64) for k, a in params["experts"].items()}
  a = v @ ex["gate_proj"][e]
  return (a / (1 + np.exp(-a)) * (v @ ex["up_proj"][e])) @ ex["down_proj"][e]


def test_capacity_drops_match_loop_reference():
  # C = min(M, ceil(0.5 * 16 * 2 / 4)) = 4 rows per FFN expert; priority = token order.
  # Block 6 -> capacity chunks of 3 rows: C is not a multiple, so the padded tail is used.
  cfg = LONGCAT.replace(moe_dispatch="capacity", capacity_factor=0.5, dropless_block_size=6)
  x, params, state = _init_vars(cfg, seed=5, bias=[0.2, 0.0, 0.0, -0.1, -0.05, -0.05],
                                router_scale=10.0)
  cap, n = 4, cfg.n_routed_experts

  @jax.jit
  def fwd(p, x):
    y, inter = _apply(cfg, p, state, x)
    return y, inter["intermediates"]

  y, inter = fwd(params, x)
  x2 = np.asarray(x, np.float64).reshape(-1, D)
  r = route(cfg, jnp.reshape(x, (-1, D)), params["router"]["kernel"],
            state["router"]["e_score_correction_bias"])
  idx, gates = np.asarray(r.idx), np.asarray(r.gates, np.float64)
  ref = np.zeros_like(x2)
  fill, dropped = np.zeros(n, int), 0
  keep = np.zeros(idx.shape, np.float32)
  for m in range(x2.shape[0]):  # token order b*T + t, then k
    for k in range(idx.shape[1]):
      e = idx[m, k]
      if e >= n:
        ref[m] += gates[m, k] * x2[m]
      elif fill[e] < cap:
        fill[e] += 1
        keep[m, k] = 1.0
        ref[m] += gates[m, k] * _np_swiglu(params, e, x2[m])
      else:
        dropped += 1
  assert dropped > 0
  assert float(inter["dropped_slots"][0]) == dropped
  np.testing.assert_allclose(np.asarray(y, np.float64).reshape(-1, D), ref, rtol=1e-5, atol=1e-5)

  # Gradients with drops equal the dense path restricted to the kept slots.
  from agentic_jax.models import moe_dispatch

  def dense_masked(p, x):
    x2 = x.reshape(-1, D)
    rr = route(cfg, x2, p["router"]["kernel"], state["router"]["e_score_correction_bias"])
    e = p["experts"]
    yy, _ = moe_dispatch.dense_dispatch(x2, rr.idx, rr.gates * keep, e["gate_proj"],
                                        e["up_proj"], e["down_proj"])
    yy = yy + jnp.sum(jnp.where(rr.idx >= n, rr.gates, 0), -1)[:, None] * x2
    return jnp.sum(jnp.cos(yy))

  g_ref = jax.jit(jax.grad(dense_masked, argnums=(0, 1)))(params, x)
  g_cap = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.cos(fwd(p, x)[0].reshape(-1, D))),
                           argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_cap), jax.tree_util.tree_leaves(g_ref)):
    assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(b).max()) + 1e-7


# ------------------------------------------------------------------ zero experts


def test_zero_expert_tokens_cost_nothing():
  n = LONGCAT.n_routed_experts
  # Bias on zero slots: some tokens pick two zero experts, others mix.
  x, params, state = _init_vars(LONGCAT, seed=7, bias=[0, 0, 0, 0, 0.5, 0.5], router_scale=3.0)
  x2 = jnp.reshape(x, (-1, D))
  r = route(LONGCAT, x2, params["router"]["kernel"], state["router"]["e_score_correction_bias"])
  all_zero = np.nonzero((np.asarray(r.idx) >= n).all(-1))[0]
  assert len(all_zero) > 0 and (np.asarray(r.idx) < n).any()
  tok = int(all_zero[0])
  g = np.asarray(r.gates)[tok].sum()
  # Variables to force every slot of every token onto zero experts.
  forced = {"router": {"e_score_correction_bias": jnp.asarray([0, 0, 0, 0, 10.0, 10.0])}}
  for path in PATHS:
    cfg = _with_path(LONGCAT, path)

    @jax.jit
    def run(p, x):
      def tok_loss(p):
        y, _ = _apply(cfg, p, state, x)
        return jnp.sum(y.reshape(-1, D)[tok] * jnp.arange(D)), y
      grads, y = jax.grad(tok_loss, has_aux=True)(p)
      _, forced_inter = _apply(cfg, p, forced, x)
      return y, grads, forced_inter["intermediates"]

    y, grads, inter = run(params, x)
    np.testing.assert_allclose(y.reshape(-1, D)[tok], g * x2[tok], rtol=1e-6, atol=1e-7)
    for name, leaf in grads["experts"].items():
      assert float(jnp.abs(leaf).max()) == 0.0, (path, name)
    assert float(jnp.abs(grads["router"]["kernel"]).max()) > 0  # gate still trains the router
    assert float(inter["zero_expert_share"][0]) == 1.0
    assert float(inter["ffn_experts_per_token"][0]) == 0.0
    if path[0] != "dense":
      assert float(inter["expert_rows"][0]) == 0.0, path  # no expert matmul ran


# ------------------------------------------------------------------ stats / variables


def test_sown_statistics_and_variables():
  cfg = LONGCAT.replace(moe_dispatch="dropless")
  x, params, state = _init_vars(cfg, seed=9, bias=[0, 0, 0, 0, 0.1, 0.0], router_scale=10.0)
  y, inter = _apply(cfg, params, state, x)
  st = {k: v[0] for k, v in inter["intermediates"].items()}
  r = route(cfg, jnp.reshape(x, (-1, D)), params["router"]["kernel"],
            state["router"]["e_score_correction_bias"])
  idx = np.asarray(r.idx)
  slots = idx.size
  np.testing.assert_allclose(float(st["expert_load"].sum()), 1.0, rtol=1e-6)
  manual = np.bincount(idx.reshape(-1), minlength=6) / slots
  np.testing.assert_allclose(st["expert_load"], manual, rtol=1e-6)
  share = (idx >= 4).sum() / slots
  assert 0 < share < 1
  np.testing.assert_allclose(float(st["zero_expert_share"]), share, rtol=1e-6)
  np.testing.assert_allclose(float(st["ffn_experts_per_token"]), 2 * (1 - share), rtol=1e-6)
  assert float(st["dropped_slots"]) == 0.0
  assert st["seq_load"].shape == (B, 6) and st["seq_router_prob"].shape == (B, 6)
  np.testing.assert_allclose(st["seq_load"].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(st["seq_router_prob"].sum(-1), 1.0, rtol=1e-5)
  lse = np.log(np.exp(np.asarray(r.logits, np.float64)).sum(-1))
  np.testing.assert_allclose(float(st["router_z_loss"]), (lse ** 2).mean(), rtol=1e-5)
  # Not mutable -> sow is a no-op and the output is unchanged.
  y2 = MoE(cfg).apply({"params": params, "router_state": state}, x)
  np.testing.assert_array_equal(y, y2)

  # Variable tree: names, shapes, logical axes, collections.
  boxed = MoE(DEEPSEEK).init(jax.random.key(0), x)
  axes = jax.tree_util.tree_map(lambda b: (b.value.shape, b.names), boxed,
                                is_leaf=lambda b: isinstance(b, nn.LogicallyPartitioned))
  assert axes["params"]["router"]["kernel"] == ((64, 8), ("embed", "router_slots"))
  assert axes["router_state"]["router"]["e_score_correction_bias"] == ((8,), ("router_slots",))
  assert axes["params"]["experts"]["gate_proj"] == ((8, 64, 32), ("expert", "embed", "expert_mlp"))
  assert axes["params"]["experts"]["up_proj"] == ((8, 64, 32), ("expert", "embed", "expert_mlp"))
  assert axes["params"]["experts"]["down_proj"] == ((8, 32, 64), ("expert", "expert_mlp", "embed"))
  assert set(axes["params"]["shared_experts"]) == {"gate_proj", "up_proj", "down_proj"}
  assert boxed["router_state"]["router"]["e_score_correction_bias"].value.dtype == jnp.float32
  assert "shared_experts" not in MoE(LONGCAT).init(jax.random.key(0), x)["params"]


def test_bfloat16_compute_dtype():
  cfg = LONGCAT.replace(dtype="bfloat16", moe_dispatch="dropless")
  x, params, state = _init_vars(cfg, seed=11, router_scale=10.0)
  xb = x.astype(jnp.bfloat16)

  def loss(c, p, x):
    return jnp.sum(_apply(c, p, state, x)[0].astype(jnp.float32) ** 2)

  y, _ = jax.jit(functools.partial(_apply, cfg))(params, state, xb)
  assert y.dtype == jnp.bfloat16
  ref_cfg = LONGCAT.replace(moe_dispatch="dense")
  y32, _ = jax.jit(functools.partial(_apply, ref_cfg))(params, state, xb.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=0.05, atol=0.05)
  g16 = jax.jit(jax.grad(functools.partial(loss, cfg)))(params, xb)
  g32 = jax.jit(jax.grad(functools.partial(loss, ref_cfg)))(params, xb.astype(jnp.float32))
  for a, b in zip(jax.tree_util.tree_leaves(g16["experts"]),
                  jax.tree_util.tree_leaves(g32["experts"])):
    assert a.dtype == jnp.float32  # param_dtype
    assert float(jnp.abs(a - b).max()) <= 0.05 * float(jnp.abs(b).max())
