"""The loss registry and the next-token objective against hand-computed values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import objectives
from agentic_jax.models.config import ModelConfig
from agentic_jax.objectives import next_token

LN2 = math.log(2.0)
# Every row of logits is [0, ln 2, 0]: softmax = [1/4, 1/2, 1/4], so CE = ln 2 for target 1
# and ln 4 for targets 0 and 2.
LOGITS = jnp.log(jnp.asarray([[[1.0, 2.0, 1.0]] * 4]))
MOE_CFG = ModelConfig(layer_type="scmoe", n_routed_experts=2, zero_expert_num=1,
                      num_experts_per_tok=2, scoring_func="softmax")
DENSE_CFG = ModelConfig(layer_type="dense")


def _batch(**extra):
  b = {"targets": jnp.asarray([[1, 0, 2, 1]]), "weights": jnp.asarray([[1.0, 2.0, 0.0, 0.5]])}
  b.update(extra)
  return b


def test_registry():
  assert objectives.get_loss("next_token") is next_token.next_token_loss
  assert "next_token" in objectives.registered()
  with pytest.raises(KeyError, match="unknown loss 'nope'.*next_token"):
    objectives.get_loss("nope")

  @objectives.register_loss("test_only_loss")
  def mine(*args, **kwargs):
    return 0.0, {}
  assert objectives.get_loss("test_only_loss") is mine
  with pytest.raises(ValueError, match="already registered"):
    objectives.register_loss("test_only_loss")(lambda: None)


def test_weighted_cross_entropy_by_hand():
  batch = _batch()
  loss, aux = next_token.next_token_loss(LOGITS, {}, batch, model_cfg=DENSE_CFG,
                                         options={}, normalizer=jnp.float32(3.5))
  # sum w*CE = 1*ln2 + 2*ln4 + 0*ln4 + 0.5*ln2 = 5.5 ln2, over the given normaliser 3.5.
  np.testing.assert_allclose(aux["ce_sum"], 5.5 * LN2, rtol=1e-6)
  np.testing.assert_allclose(aux["weight_sum"], 3.5, rtol=1e-6)
  np.testing.assert_allclose(loss, 5.5 * LN2 / 3.5, rtol=1e-6)
  # argmax is class 1 everywhere: correct at positions 0 and 3 (weights 1 + 0.5).
  np.testing.assert_allclose(aux["correct_sum"], 1.5, rtol=1e-6)
  assert float(aux["balance_loss"]) == 0.0 and float(aux["router_z_loss"]) == 0.0


def test_argmax_hits_take_the_first_maximum_like_argmax():
  # rows: a clear max at 2; a tie between 1 and 3 (argmax: 1); all equal (argmax: 0)
  logits = jnp.asarray([[[0.0, 1.0, 5.0, 2.0], [0.0, 3.0, 1.0, 3.0], [2.0, 2.0, 2.0, 2.0]]])
  for targets, want in (([2, 1, 0], [1, 1, 1]), ([3, 3, 1], [0, 0, 0]), ([0, 2, 3], [0, 0, 0])):
    got = next_token.argmax_hits(logits, jnp.asarray([targets]))
    np.testing.assert_array_equal(np.asarray(got), [want])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(
        (jnp.argmax(logits, -1) == jnp.asarray([targets])).astype(jnp.float32)))


def test_cross_entropy_and_its_gradient_equal_the_gather_form():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(2, 5, 7), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 7, (2, 5)))
  w = jnp.asarray(rng.rand(2, 5), jnp.float32)
  gather = lambda x: jnp.sum(w * -jnp.take_along_axis(jax.nn.log_softmax(x), targets[..., None],
                                                      axis=-1)[..., 0])
  ours = lambda x: jnp.sum(w * next_token.token_cross_entropy(x, targets))
  np.testing.assert_allclose(ours(logits), gather(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(gather)(logits), rtol=1e-5, atol=1e-7)


def test_per_kind_and_per_source_sums():
  batch = _batch(target_kind=jnp.asarray([[0, 1, 1, 7]]), source_id=jnp.asarray([[0, 1, -1, 5]]))
  _, aux = next_token.next_token_loss(LOGITS, {}, batch, model_cfg=DENSE_CFG,
                                      options={"num_kinds": 3, "num_sources": 2},
                                      normalizer=jnp.float32(3.5))
  # kinds: 0 <- pos 0 (w 1, ln2); 1 <- pos 1 (w 2, ln4) and pos 2 (w 0); kind 7 is outside
  # [0, 3) and carries weight 0.5, which must be reported, not lost.
  np.testing.assert_allclose(aux["kind_ce_sum"], [LN2, 4 * LN2, 0.0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(aux["kind_weight"], [1.0, 2.0, 0.0])
  np.testing.assert_allclose(aux["kind_unassigned_weight"], 0.5)
  # sources: 0 <- pos 0, 1 <- pos 1; pos 2 is padding (-1, weight 0); pos 3 id 5 is outside.
  np.testing.assert_allclose(aux["source_ce_sum"], [LN2, 4 * LN2], rtol=1e-6)
  np.testing.assert_allclose(aux["source_weight"], [1.0, 2.0])
  np.testing.assert_allclose(aux["source_unassigned_weight"], 0.5)


def test_gradient_wrt_logits_is_weighted_softmax_minus_onehot():
  batch = _batch()
  grad = jax.grad(lambda lg: next_token.next_token_loss(
      lg, {}, batch, model_cfg=DENSE_CFG, options={}, normalizer=jnp.float32(3.5))[0])(LOGITS)
  p = np.array([0.25, 0.5, 0.25])
  expected = np.stack([w / 3.5 * (p - np.eye(3)[t]) for t, w in zip([1, 0, 2, 1], [1, 2, 0, 0.5])])
  np.testing.assert_allclose(grad[0], expected, rtol=1e-6, atol=1e-8)


def _sown(seq_load, seq_prob, z):
  """A tree shaped like MoE's sown intermediates (values are 1-tuples, as `sow` makes)."""
  return {"seq_load": (jnp.asarray(seq_load),), "seq_router_prob": (jnp.asarray(seq_prob),),
          "router_z_loss": (jnp.asarray(z),), "expert_load": (jnp.zeros(3),)}


def test_moe_terms_by_hand():
  # N = 2 FFN experts + 1 zero slot. Sequence loss per layer = alpha * mean_b sum_{i<N}
  # (N load_i) P_i. Layer A: f = [1.0, 0.5], P = [0.6, 0.2] -> 0.7; layer B: f = [0.4, 1.2],
  # P = [0.5, 0.5] -> 0.8. alpha = 0.1: 0.07 + 0.08 = 0.15. z-losses 2.0 + 3.0 = 5.0.
  inter = {"intermediates": {
      "layers_0": {"mlp": _sown([[0.5, 0.25, 0.25]], [[0.6, 0.2, 0.2]], 2.0)},
      "layers_1": {"mlp": _sown([[0.2, 0.6, 0.2]], [[0.5, 0.5, 0.0]], 3.0)}}}
  opts = {"balance_loss": "sequence", "balance_alpha": 0.1, "z_loss": 0.01}
  bal, z = next_token.moe_losses(inter, MOE_CFG, {**next_token.DEFAULT_OPTIONS, **opts})
  np.testing.assert_allclose(bal, 0.15, rtol=1e-6)
  np.testing.assert_allclose(z, 5.0, rtol=1e-6)
  # The same two layers stacked on a leading axis (scanned layers) give the same sums.
  stacked = {"layers": {"mlp": _sown([[[0.5, 0.25, 0.25]], [[0.2, 0.6, 0.2]]],
                                     [[[0.6, 0.2, 0.2]], [[0.5, 0.5, 0.0]]], [2.0, 3.0])}}
  bal2, z2 = next_token.moe_losses(stacked, MOE_CFG, {**next_token.DEFAULT_OPTIONS, **opts})
  np.testing.assert_allclose([bal2, z2], [0.15, 5.0], rtol=1e-6)
  # Total: CE term + batch_fraction * (balance + z_loss * z).
  loss, aux = next_token.next_token_loss(LOGITS, inter, _batch(), model_cfg=MOE_CFG,
                                         options=opts, normalizer=jnp.float32(3.5),
                                         batch_fraction=0.5)
  np.testing.assert_allclose(loss, 5.5 * LN2 / 3.5 + 0.5 * (0.15 + 0.01 * 5.0), rtol=1e-6)
  np.testing.assert_allclose([aux["balance_loss"], aux["router_z_loss"]], [0.075, 2.5], rtol=1e-6)
  # "none" keeps the z-loss but drops the balance term.
  bal3, _ = next_token.moe_losses(inter, MOE_CFG, {**next_token.DEFAULT_OPTIONS,
                                                   "balance_loss": "none"})
  assert float(bal3) == 0.0


def test_device_balance_loss_at_target_is_alpha_per_layer():
  # 2 FFN experts in 1 group + 1 zero slot, K = 2, K_e = 1: the target split puts half the
  # slots on FFN experts (f_group = 0.5 * 2 * 1 / 1 = 1) and half on the zero expert
  # (f_0 = 0.5 * 2 / (2 - 1) = 1); with probabilities summing to 1, L = alpha * 1.
  inter = {"layers_0": {"mlp": _sown([[0.25, 0.25, 0.5]], [[0.3, 0.3, 0.4]], 0.0)}}
  opts = {**next_token.DEFAULT_OPTIONS, "balance_loss": "device", "balance_alpha": 0.2,
          "balance_groups": 1, "target_ffn_per_token": 1.0}
  bal, _ = next_token.moe_losses(inter, MOE_CFG, opts)
  np.testing.assert_allclose(bal, 0.2, rtol=1e-6)


def test_bad_options_raise():
  with pytest.raises(ValueError, match="unknown options.*balance_alfa"):
    next_token.next_token_loss(LOGITS, {}, _batch(), model_cfg=DENSE_CFG,
                               options={"balance_alfa": 1.0}, normalizer=jnp.float32(1.0))
  inter = {"m": _sown([[0.5, 0.25, 0.25]], [[0.6, 0.2, 0.2]], 0.0)}
  with pytest.raises(ValueError, match="balance_loss must be"):
    next_token.next_token_loss(LOGITS, inter, _batch(), model_cfg=MOE_CFG,
                               options={"balance_loss": "global"}, normalizer=jnp.float32(1.0))
