"""Balancing functions against hand-computed values, and the sown-statistics helpers."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax.models import balance
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.moe import MoE

LOAD = jnp.asarray([0.4, 0.1, 0.2, 0.2, 0.1])  # N = 4 FFN experts + Z = 1 zero expert


def test_deepseek_bias_update_by_hand():
  bias = jnp.asarray([0.1, -0.2, 0.0, 0.3, 0.5])
  # FFN mean load = 0.9 / 4 = 0.225: expert 0 is over (-rate), 1-3 under (+rate); slot 4
  # is a zero expert and keeps its bias.
  out = balance.deepseek_bias_update(bias, LOAD, n_routed_experts=4, rate=0.01)
  np.testing.assert_allclose(out, [0.09, -0.19, 0.01, 0.31, 0.5], rtol=1e-6)
  # Stacked layers broadcast; equal loads leave the bias unchanged.
  stacked = balance.deepseek_bias_update(jnp.zeros((2, 3)), jnp.full((2, 3), 1 / 3),
                                         n_routed_experts=3, rate=0.5)
  np.testing.assert_array_equal(stacked, 0.0)


def test_longcat_bias_update_by_hand():
  # target share per FFN expert = K_e / (K N) = 1.5 / 8 = 0.1875
  out = balance.longcat_bias_update(jnp.zeros(5), LOAD, n_routed_experts=4, top_k=2,
                                    target_ffn_per_token=1.5, rate=0.1)
  np.testing.assert_allclose(out, [-0.02125, 0.00875, -0.00125, -0.00125, 0.0], atol=1e-7)
  at_target = jnp.asarray([0.1875] * 4 + [0.25])
  out = balance.longcat_bias_update(jnp.ones(5), at_target, n_routed_experts=4, top_k=2,
                                    target_ffn_per_token=1.5, rate=0.1)
  np.testing.assert_allclose(out, 1.0, atol=1e-7)


def test_sequence_balance_loss_by_hand():
  # seq 0: f = 2 * [0.75, 0.25] = [1.5, 0.5], P = [0.6, 0.4]: sum f P = 0.9 + 0.2 = 1.1
  # seq 1: uniform: f = [1, 1], P = [0.5, 0.5]: 1.0. Mean 1.05, times alpha 0.1.
  load = jnp.asarray([[0.75, 0.25], [0.5, 0.5]])
  prob = jnp.asarray([[0.6, 0.4], [0.5, 0.5]])
  loss = balance.sequence_balance_loss(load, prob, n_routed_experts=2, alpha=0.1)
  np.testing.assert_allclose(loss, 0.105, rtol=1e-6)


def test_device_balance_loss_by_hand():
  # N=4 in D=2 groups {0,1}, {2,3}; zero group {4,5}; K=2, K_e=1.
  load = jnp.asarray([[0.3, 0.1, 0.05, 0.05, 0.3, 0.2]])
  prob = jnp.asarray([[0.2, 0.2, 0.1, 0.1, 0.25, 0.15]])
  # group loads 0.4, 0.1 -> f = load * K * D / K_e = [1.6, 0.4]; zero load 0.5 ->
  # f0 = 0.5 * K / (K - K_e) = 1.0. P = [0.4, 0.2], P0 = 0.4.
  # sum = 1.6*0.4 + 0.4*0.2 + 1.0*0.4 = 1.12; alpha 0.01.
  kw = dict(n_routed_experts=4, num_groups=2, top_k=2, target_ffn_per_token=1.0, alpha=0.01)
  np.testing.assert_allclose(balance.device_balance_loss(load, prob, **kw), 0.0112, rtol=1e-6)
  # At the target split (each FFN group K_e/(K D) = 1/4, zero group 1/2) every f = 1 and
  # the loss is alpha * sum(P) = alpha.
  even = jnp.asarray([[0.125] * 4 + [0.25, 0.25]])
  np.testing.assert_allclose(balance.device_balance_loss(even, prob, **kw), 0.01, rtol=1e-6)


def test_router_z_loss_by_hand():
  # logsumexp([0, 0]) = ln 2, logsumexp([ln 3, 0]) = ln 4 -> mean(ln2^2, 4 ln2^2) = 2.5 ln2^2
  logits = jnp.asarray([[0.0, 0.0], [math.log(3.0), 0.0]])
  np.testing.assert_allclose(balance.router_z_loss(logits), 2.5 * math.log(2) ** 2, rtol=1e-6)


def test_collect_stats_by_hand():
  layer = lambda load, drop, share: {  # noqa: E731
      "mlp": {"expert_load": (jnp.asarray(load),), "dropped_slots": (jnp.asarray(drop),),
              "zero_expert_share": (jnp.asarray(share),)}}
  tree = {"intermediates": {"layers_0": layer([0.5, 0.5], 3.0, 0.5),
                            "layers_1": layer([1.0, 0.0], 1.0, 0.0),
                            "other": {"not_moe": (jnp.ones(3),)}}}
  out = balance.collect_moe_stats(tree)
  assert int(out["moe_layers"]) == 2
  assert float(out["dropped_slots"]) == 4.0
  np.testing.assert_allclose(out["zero_expert_share"], 0.25)
  np.testing.assert_allclose(out["expert_load"], [0.75, 0.25])
  np.testing.assert_allclose(out["max_load_ratio"], (1.0 + 2.0) / 2)  # max/mean per layer
  # A scanned stack (leading layer axis) counts one layer per row.
  scanned = {"layers": {"mlp": {"expert_load": (jnp.asarray([[0.5, 0.5], [1.0, 0.0]]),),
                                "dropped_slots": (jnp.asarray([3.0, 1.0]),)}}}
  out = balance.collect_moe_stats(scanned)
  assert int(out["moe_layers"]) == 2 and float(out["dropped_slots"]) == 4.0
  assert balance.collect_moe_stats({"x": {"y": (jnp.ones(2),)}}) == {}


class _TwoMoE(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    return MoE(self.cfg, name="moe_1")(MoE(self.cfg, name="moe_0")(x))


def test_stats_from_model_and_bias_update_roundtrip():
  cfg = ModelConfig(layer_type="scmoe", hidden_size=32, n_routed_experts=4, zero_expert_num=2,
                    num_experts_per_tok=2, moe_intermediate_size=16, scoring_func="softmax",
                    routed_scaling_factor=6.0, moe_dispatch="dropless", dropless_block_size=8)
  model = _TwoMoE(cfg)
  x = jax.random.normal(jax.random.key(0), (2, 8, 32))
  variables = model.init(jax.random.key(1), x)

  @jax.jit
  def step(variables, x):
    def loss(params):
      _, inter = model.apply({**variables, "params": params}, x, mutable=["intermediates"])
      st = inter["intermediates"]
      aux = sum(balance.sequence_balance_loss(
          st[m]["seq_load"][0], st[m]["seq_router_prob"][0], n_routed_experts=4, alpha=0.01)
          for m in ("moe_0", "moe_1"))
      return aux, inter
    return jax.grad(loss, has_aux=True)(variables["params"])

  grads, inter = step(variables, x)
  assert float(jnp.abs(nn.meta.unbox(grads)["moe_0"]["router"]["kernel"]).max()) > 0
  stats = balance.collect_moe_stats(inter)
  assert int(stats["moe_layers"]) == 2
  np.testing.assert_allclose(float(stats["expert_load"].sum()), 1.0, rtol=1e-6)
  np.testing.assert_allclose(stats["ffn_experts_per_token"],
                             2 * (1 - stats["zero_expert_share"]), rtol=1e-6)

  update = functools.partial(balance.longcat_bias_update, n_routed_experts=4, top_k=2,
                             target_ffn_per_token=1.0, rate=0.1)
  new_vars = balance.update_router_biases(variables, inter, update)
  for m in ("moe_0", "moe_1"):
    box = new_vars["router_state"][m]["router"]["e_score_correction_bias"]
    assert isinstance(box, nn.LogicallyPartitioned)  # logical axes survive the update
    load = inter["intermediates"][m]["expert_load"][0]
    # bias was 0; Δb_i = 0.1 * (K_e/(K N) - load_i) = 0.1 * (1/8 - load_i), zero slots 0.
    expected = np.concatenate([0.1 * (1.0 / 8 - np.asarray(load[:4])), [0.0, 0.0]])
    np.testing.assert_allclose(box.value, expected, atol=1e-7)
  assert new_vars["params"] is variables["params"]
