"""The pure train step: schedules, AdamW, gradient accumulation, NaN skip, router bias
updates outside the optimizer, determinism, mixed precision, FLOP count."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agentic_jax import models
from agentic_jax.models.config import ModelConfig
from agentic_jax.train import config as config_lib
from agentic_jax.train import flops as flops_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from agentic_jax.train import step as step_lib
from agentic_jax.train.input import SyntheticIterator
from tests.train_fixtures import small_config


@pytest.fixture(scope="module")
def base():
  """Config, model and the initial state, shared: initialising and compiling dominate the
  cost of these tests. The variants below only change what the state does not depend on."""
  config = small_config(**{"moe.bias_rate": 0.5, "moe.target_ffn_per_token": 1.5})
  model_cfg = config_lib.model_config(config.model)
  tx = optim_lib.make_optimizer(config.optim)
  state = jax.jit(lambda: state_lib.init_state(model_cfg, tx, config.seed))()
  return config, model_cfg, state


def _batches(config, model_cfg):
  return SyntheticIterator(batch_size=config.data.batch_size, seq_len=config.data.seq_len,
                           vocab_size=model_cfg.vocab_size, seed=3)


@pytest.fixture(scope="module")
def env(base):
  """One compiled step shared by the tests that use it."""
  config, model_cfg, state = base
  step = jax.jit(step_lib.make_train_step(model_cfg, config, num_kinds=1, num_sources=1))
  return model_cfg, state, _batches(config, model_cfg), step


def test_wsd_schedule_by_hand():
  s = optim_lib.make_schedule("wsd", lr=1.0, num_steps=10, warmup_steps=2, decay_fraction=0.3,
                              min_lr_ratio=0.1)
  # warmup (s+1)/2; stable 1 for steps 2..6; decay over the last 3 steps to 0.1:
  # 1 - 0.9 * k/3 for k = 1, 2, 3.
  expected = [0.5, 1.0, 1, 1, 1, 1, 1, 0.7, 0.4, 0.1]
  np.testing.assert_allclose([float(s(i)) for i in range(10)], expected, rtol=1e-6)


def test_cosine_schedule_by_hand():
  s = optim_lib.make_schedule("cosine", lr=2.0, num_steps=10, warmup_steps=2, min_lr_ratio=0.1)
  # after warmup p = (s - 1) / 8; lr = 0.2 + 1.8 * (1 + cos(pi p)) / 2
  for step, p in ((2, 1 / 8), (5, 4 / 8), (9, 1.0)):
    np.testing.assert_allclose(float(s(step)), 0.2 + 0.9 * (1 + math.cos(math.pi * p)), rtol=1e-6)
  np.testing.assert_allclose([float(s(0)), float(s(1))], [1.0, 2.0], rtol=1e-6)
  with pytest.raises(ValueError, match="optim.schedule must be"):
    optim_lib.make_schedule("linear", lr=1.0, num_steps=10, warmup_steps=0)
  with pytest.raises(ValueError, match="warmup_steps"):
    optim_lib.make_schedule("wsd", lr=1.0, num_steps=10, warmup_steps=11)


def test_optimizer_equals_optax_adamw():
  """Our chain + apply_lr is optax.adamw (with the same mask and clipping) at a fixed lr."""
  params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 7},
            "norm": {"weight": jnp.ones((3,))}}
  grads = jax.tree.map(lambda p: jnp.sin(p * 3.0 + 1.0) * 5.0, params)  # norm > clip
  hp = dict(lr=0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
  ours = optim_lib.make_optimizer(hp)
  ref = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                                mask=optim_lib.decay_mask))
  s1, s2 = ours.init(params), ref.init(params)
  p1 = p2 = params
  for _ in range(3):
    u1, s1 = ours.update(grads, s1, p1)
    p1 = optax.apply_updates(p1, optim_lib.apply_lr(u1, jnp.float32(0.01)))
    u2, s2 = ref.update(grads, s2, p2)
    p2 = optax.apply_updates(p2, u2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p1, p2)
  # The norm weight got no decay: with identical gradients its update differs from the kernel's.
  assert optim_lib.decay_mask(params) == {"dense": {"kernel": True}, "norm": {"weight": False}}


def test_gradient_accumulation_equals_big_batch(base):
  big, model_cfg, state = base
  acc = small_config(**{"optim.grad_accum": 2, "moe.bias_rate": 0.5, "moe.target_ffn_per_token": 1.5})
  batch = jax.tree.map(jnp.asarray, next(_batches(big, model_cfg)))
  key = jax.random.key(0)
  g1 = step_lib.make_gradient_fn(model_cfg, big, num_kinds=1, num_sources=1)
  g2 = step_lib.make_gradient_fn(model_cfg, acc, num_kinds=1, num_sources=1)
  loss1, grads1, _ = jax.jit(g1)(state.params, state.router_state, batch, key)
  loss2, grads2, (aux2, _, _) = jax.jit(g2)(state.params, state.router_state, batch, key)
  assert aux2["ce_sum"].shape == (2,)  # really two micro-batches
  np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
  flat1, flat2 = jax.tree.leaves(grads1), jax.tree.leaves(grads2)
  scale = max(float(jnp.max(jnp.abs(g))) for g in flat1)
  for a, b in zip(flat1, flat2):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)
  # (The full step with accumulation runs in tests/test_loop.py's resume test.)


def test_nan_loss_skips_update_and_counts(env):
  _, state, it, step = env
  bad = dict(next(it))
  bad["weights"] = bad["weights"].copy()
  bad["weights"][1, 3] = np.nan
  new, m = step(state, bad)
  assert int(m["skipped"]) == 1 and int(new.nan_skips) == 1 and int(new.step) == 1
  assert not np.isfinite(float(m["loss"]))
  for name in ("params", "opt_state", "router_state", "rng"):
    jax.tree.map(np.testing.assert_array_equal, getattr(new, name), getattr(state, name))
  # A good batch afterwards updates normally; the skip count stays.
  new2, m2 = step(new, next(it))
  assert int(m2["skipped"]) == 0 and int(new2.nan_skips) == 1 and int(new2.step) == 2
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new2.params, new.params))
  assert all(changed)


def test_router_bias_follows_longcat_rule_outside_optimizer(env):
  model_cfg, state, it, step = env  # moe.bias_rate 0.5, target_ffn_per_token 1.5
  batch = next(it)
  # The expert load this batch produces, from a plain forward with the initial variables.
  forward = jax.jit(lambda v, b: models.build(model_cfg).apply(
      v, b["inputs"], b["segment_ids"], b["positions"], mutable=["intermediates"]))
  _, mut = forward({"params": state.params, "router_state": state.router_state}, batch)
  load = np.asarray(mut["intermediates"]["layers_0"]["mlp"]["expert_load"][0])
  bias0 = np.asarray(state.router_state["layers_0"]["mlp"]["router"]["e_score_correction_bias"])
  new, m = step(state, batch)
  bias1 = np.asarray(new.router_state["layers_0"]["mlp"]["router"]["e_score_correction_bias"])
  # LongCat: b_i += rate * (K_e / (K N) - load_i) for the N = 4 FFN experts; zero slots fixed.
  expected = bias0.copy()
  expected[:4] += 0.5 * (1.5 / (2 * 4) - load[:4])
  np.testing.assert_allclose(bias1, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(m["moe/expert_load"], load, rtol=1e-6)
  assert not np.allclose(bias1[:4], bias0[:4])
  # The optimizer never sees the bias: it is not a parameter and has no Adam moments.
  assert "e_score_correction_bias" not in str(jax.tree_util.tree_structure(new.opt_state))


def test_step_is_deterministic_and_keys_fold_in_step(env):
  _, state, it, step = env
  batch = next(it)
  a, ma = step(state, batch)
  b, mb = step(state, batch)
  jax.tree.map(np.testing.assert_array_equal, (a, ma), (b, mb))
  np.testing.assert_array_equal(state_lib.step_key(a), jax.random.fold_in(state.rng, 1))


def test_bfloat16_compute_keeps_float32_params_and_grads(base):
  _, _, state = base  # float32 params; only the compute dtype changes
  config = small_config(**{"model.dtype": "bfloat16"})
  model_cfg = config_lib.model_config(config.model)
  grads_fn = jax.jit(step_lib.make_gradient_fn(model_cfg, config, num_kinds=1, num_sources=1))
  loss, grads, _ = grads_fn(state.params, state.router_state, next(_batches(config, model_cfg)),
                            jax.random.key(0))
  # Gradients come back in the params' float32 (what AdamW then applies to float32 masters).
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert np.isfinite(float(loss)) and abs(float(loss) - math.log(128)) < 0.5
  # The matmuls really run in bfloat16 (the lowered program has bf16 dot_generals).
  batch = next(_batches(config, model_cfg))
  text = grads_fn.lower(state.params, state.router_state, batch, jax.random.key(0)).as_text()
  assert any("dot_general" in line and "bf16" in line for line in text.splitlines())


def test_flops_match_cpu_calibration_doc():
  # docs/cpu-calibration.md: 324.7 GFLOP per step for this model at 0.682 FFN share of K = 4
  # slots and batch 4 x 512 (hand count: 20,824,064 dense matmul params, 393,216 per expert
  # per layer, attention 8 sublayers x 8 heads x (48 + 32) x T per token).
  cfg = ModelConfig(layer_type="scmoe", vocab_size=8192, hidden_size=512, num_layers=4,
                    num_attention_heads=8, intermediate_size=1024, q_lora_rank=256,
                    kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                    n_routed_experts=16, zero_expert_num=8, num_experts_per_tok=4,
                    moe_intermediate_size=256, scoring_func="softmax")
  fm = flops_lib.flop_model(cfg)
  assert fm.dense_matmul_params == 20_824_064
  assert fm.expert_params == 16 * 4 * 393_216
  np.testing.assert_allclose(fm.step_flops(batch=4, seq_len=512, ffn_experts_per_token=4 * 0.682),
                             324.7e9, rtol=2e-4)
  # Zero-expert slots cost nothing; a dense model has no expert term.
  assert fm.step_flops(batch=1, seq_len=8, ffn_experts_per_token=0.0) < \
      fm.step_flops(batch=1, seq_len=8, ffn_experts_per_token=1.0)
  dense = flops_lib.flop_model(ModelConfig(layer_type="dense", tie_word_embeddings=True))
  assert dense.expert_params == 0 and dense.n_routed_experts == 0
