"""The fused core (attention_impl="fused", models/attention_fused.py) against the `xla` core.

On CPU it runs `jax.nn.dot_product_attention(implementation=None)` with the same padding, mask
and MQA layout the cuDNN path uses, so these tests check everything but the kernel itself;
`plan` (the GPU fallback rule) is tested with GPU facts passed in.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models, sampling
from agentic_jax.models import attention as attn_lib
from agentic_jax.models import attention_fused as fused
from agentic_jax.models.config import ModelConfig
from agentic_jax.models.model import init_cache
from tests.model_fixtures import perturbed_variables

TOL = {"float32": dict(rtol=1e-5, atol=1e-5), "bfloat16": dict(rtol=0, atol=3e-2)}


def _inputs(shared_key: bool, dtype="float32", seed=0, B=2, T=11, S=None, H=3, D=12, Dv=8):
  rng = np.random.RandomState(seed)
  S = S or T
  q = jnp.asarray(rng.randn(B, T, H, D), dtype)
  k = jnp.asarray(rng.randn(*((B, S, D) if shared_key else (B, S, H, D))), dtype)
  v = jnp.asarray(rng.randn(*((B, S, Dv) if shared_key else (B, S, H, Dv))), dtype)
  return q, k, v


def _packed(T=11):
  idx = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (2, T))
  seg = jnp.asarray([[1] * 4 + [2] * 5 + [0] * (T - 9), [1] * T], jnp.int32)
  return idx, seg


def _close(a, b, dtype):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("aligned", [False, True])
def test_packed_segments_equal_xla(dtype, aligned):
  q, k, v = _inputs(False, dtype)
  idx, seg = _packed()
  ref = attn_lib.xla_attention(q, k, v, idx, idx, seg, seg, 0.3)
  out = fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.3, causal_aligned=aligned)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  _close(out, ref, dtype)


def test_dispatch_and_pure_causal():
  """attention(impl="fused") is the fused core; one segment = plain causal attention."""
  q, k, v = _inputs(False, seed=1)
  idx = jnp.broadcast_to(jnp.arange(11, dtype=jnp.int32), (2, 11))
  seg = jnp.ones((2, 11), jnp.int32)
  ref = attn_lib.attention(q, k, v, idx, idx, seg, seg, scale=0.25, impl="xla")
  out = attn_lib.attention(q, k, v, idx, idx, seg, seg, scale=0.25, impl="fused",
                           causal_aligned=True)
  _close(out, ref, "float32")
  with pytest.raises(ValueError, match="'fused'"):
    attn_lib.attention(q, k, v, idx, idx, seg, seg, scale=0.25, impl="cudnn")


@pytest.mark.parametrize("dtype, shared_key", [("float32", False), ("bfloat16", False),
                                               ("float32", True), ("bfloat16", True)])
def test_cache_slots_equal_xla(dtype, shared_key):
  """Decode-shaped call: 3 queries at slots 5..7 of a 12-slot cache; slots after them and a
  left-pad slot carry segment 0 (never attended by segment-1 queries)."""
  q, k, v = _inputs(shared_key, dtype, seed=2, T=3, S=12, D=8, Dv=8)
  q_index = jnp.broadcast_to(jnp.arange(5, 8, dtype=jnp.int32), (2, 3))
  k_index = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (2, 12))
  q_seg = jnp.ones((2, 3), jnp.int32)
  k_seg = jnp.asarray([[0] + [1] * 7 + [0] * 4, [1] * 8 + [0] * 4], jnp.int32)
  ref = attn_lib.xla_attention(q, k, v, q_index, k_index, q_seg, k_seg, 0.4)
  out = fused.fused_attention(q, k, v, q_index, k_index, q_seg, k_seg, scale=0.4)
  _close(out, ref, dtype)
  with pytest.raises(ValueError, match="T == S"):
    fused.fused_attention(q, k, v, q_index, k_index, q_seg, k_seg, scale=0.4, causal_aligned=True)


def test_shared_key_unequal_dims():
  """The absorbed decode path (one key [B, S, D], values Dv != D): the plan's "core" fallback
  and the forced MQA + padded-value layout that cuDNN gets both equal the xla core."""
  q, k, v = _inputs(True, "float32", seed=3, D=12, Dv=8)
  idx, seg = _packed()
  ref = attn_lib.xla_attention(q, k, v, idx, idx, seg, seg, 0.3)
  _close(fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.3), ref, "float32")
  forced = fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.3, force="xla")
  _close(forced, ref, "float32")


def test_value_wider_than_key_and_fully_masked_rows():
  """Dv > Dqk pads q and k instead; a query whose segment no key has returns zeros (as the
  xla core does), not the uniform average of masked values."""
  q, k, v = _inputs(False, seed=4, D=6, Dv=10)
  idx, seg = _packed()
  k_seg = jnp.where(seg == 2, 7, seg)  # segment-2 queries see nothing
  ref = attn_lib.xla_attention(q, k, v, idx, idx, seg, k_seg, 0.5)
  out = fused.fused_attention(q, k, v, idx, idx, seg, k_seg, scale=0.5)
  _close(out, ref, "float32")
  assert not np.asarray(out)[0, 4:9].any()


def test_gradients_equal_xla():
  q, k, v = _inputs(False, seed=5)
  idx, seg = _packed()

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

  ga = jax.grad(loss(lambda q, k, v: attn_lib.xla_attention(q, k, v, idx, idx, seg, seg, 0.3)),
                argnums=(0, 1, 2))(q, k, v)
  gb = jax.grad(loss(lambda q, k, v: fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.3,
                                                           causal_aligned=True)),
                argnums=(0, 1, 2))(q, k, v)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw, kind, dim", [
    (dict(dtype=jnp.bfloat16, qk_dim=192, v_dim=128, shared_key=False, compute_capability="9.0"),
     "cudnn", 192),  # Youtu-LLM / DeepSeek expanded path on H100
    (dict(dtype=jnp.float16, qk_dim=20, v_dim=16, shared_key=False, compute_capability="8.0"),
     "cudnn", 24),  # rounded up to a multiple of 8
    (dict(dtype=jnp.bfloat16, qk_dim=192, v_dim=128, shared_key=False, compute_capability="8.0"),
     "xla", 192),  # A100: cuDNN flash stops at 128
    (dict(dtype=jnp.float32, qk_dim=192, v_dim=128, shared_key=False, compute_capability="9.0"),
     "xla", 192),  # float32: never cuDNN
    (dict(dtype=jnp.bfloat16, qk_dim=576, v_dim=512, shared_key=True, compute_capability="9.0"),
     "core", 576),  # absorbed decode: 512 + 64 over the limit, no padded cache copy
    (dict(dtype=jnp.bfloat16, qk_dim=24, v_dim=16, shared_key=True, compute_capability="9.0"),
     "cudnn", 24),  # tiny absorbed decode fits cuDNN as MQA
    (dict(dtype=jnp.bfloat16, qk_dim=192, v_dim=128, shared_key=False, compute_capability=None),
     "xla", 192),  # CPU / TPU
    (dict(dtype=jnp.float32, qk_dim=24, v_dim=24, shared_key=True, compute_capability=None),
     "core", 24),  # a shared key off cuDNN: the xla core takes it natively
])
def test_plan(kw, kind, dim):
  p = fused.plan(**kw)
  assert (p.kind, p.head_dim) == (kind, dim), p.reason


def test_plan_on_this_host_is_not_cudnn_off_gpu():
  if jax.default_backend() == "gpu":
    pytest.skip("GPU host")
  assert fused.cuda_compute_capability() is None


PRESETS = ["youtu_llm_tiny", "deepseek_v3_tiny", "longcat_flash_tiny"]


@pytest.mark.parametrize("name", PRESETS)
def test_tiny_model_forward_and_grad_equal_xla(name):
  cfg = models.presets.get(name, moe_dispatch="dropless")
  variables = perturbed_variables(cfg)
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 128, (2, 10)), jnp.int32)
  seg = jnp.asarray([[1] * 4 + [2] * 6, [1] * 10], jnp.int32)

  def loss(c):
    module = models.build(c)
    def f(params):
      logits = module.apply({**variables, "params": params}, tokens, segment_ids=seg)
      return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits
    return jax.jit(jax.value_and_grad(f, has_aux=True))(variables["params"])

  (la, xa), ga = loss(cfg)
  (lb, xb), gb = loss(cfg.replace(attention_impl="fused"))
  np.testing.assert_allclose(np.asarray(xb), np.asarray(xa), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(lb), float(la), rtol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-6)


def test_bf16_tiny_model_tracks_xla():
  cfg = models.presets.get("youtu_llm_tiny", dtype="bfloat16")
  variables = perturbed_variables(cfg)
  tokens = jnp.asarray(np.random.RandomState(1).randint(0, 128, (2, 16)), jnp.int32)
  a = jax.jit(models.build(cfg).apply)(variables, tokens)
  b = jax.jit(models.build(cfg.replace(attention_impl="fused")).apply)(variables, tokens)
  scale = float(jnp.abs(a).max())
  assert float(jnp.abs(a - b).max()) < 3e-2 * scale


@pytest.mark.parametrize("name", ["youtu_llm_tiny", "longcat_flash_tiny"])
def test_prefill_then_decode_equals_full_forward(name):
  cfg = models.presets.get(name, moe_dispatch="dropless", attention_impl="fused")
  variables = perturbed_variables(cfg, seed=2)
  module = models.build(cfg)
  tokens = jnp.asarray(np.random.RandomState(2).randint(0, 128, (2, 9)), jnp.int32)
  full = jax.jit(module.apply)(variables, tokens)
  step = jax.jit(lambda v, t, c: module.apply(v, t, cache=c))
  logits, cache = step(variables, tokens[:, :4], init_cache(cfg, 2, 12))
  outs = [logits]
  for t in range(4, 9):
    logits, cache = step(variables, tokens[:, t:t + 1], cache)
    outs.append(logits)
  scale = float(jnp.abs(full).max())
  np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full),
                             atol=2e-5 * scale, rtol=0)
  # generate (left-padded prompts, the jitted while-loop) gives the xla core's tokens
  prompts = [[3, 4, 5, 6], [7, 8]]
  ref = sampling.generate(cfg.replace(attention_impl="xla"), variables, prompts, 4)
  assert sampling.generate(cfg, variables, prompts, 4) == ref


@pytest.mark.parametrize("typo", ["cudnn", "fuse", "flash"])
def test_mistyped_impl_is_a_one_line_error_naming_the_key(typo):
  with pytest.raises(ValueError) as e:
    ModelConfig(attention_impl=typo)
  msg = str(e.value)
  assert "\n" not in msg and "attention_impl" in msg and "'fused'" in msg and repr(typo) in msg


def test_cudnn_refusal_falls_back_to_xla(caplog):
  """Forcing cuDNN where it is missing (CPU) logs once and runs XLA: a GPU whose cuDNN is too
  old for a shape degrades the same way instead of failing the trace."""
  if jax.default_backend() == "gpu":
    pytest.skip("GPU host")
  q, k, v = _inputs(False, "bfloat16", seed=6, D=8, Dv=8)
  idx, seg = _packed()
  ref = fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.3)
  with caplog.at_level("WARNING"):
    out = fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.3, force="cudnn")
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def test_memory_estimate_has_no_scores_for_fused():
  """parallel/memory.py: "fused" holds the mask and its bias per token and key, not f32
  scores and probabilities per head."""
  from agentic_jax.parallel import memory  # pylint: disable=import-outside-toplevel
  cfg = models.presets.get("youtu_llm", num_layers=2, attention_impl="fused")
  terms = memory._per_token_terms(cfg, 4096, 1)["dense"]  # pylint: disable=protected-access
  xla = memory._per_token_terms(cfg.replace(attention_impl="xla"), 4096, 1)["dense"]  # pylint: disable=protected-access
  c, h = 2, cfg.num_attention_heads
  want = 4096 * (1 + c) + 4 * h + c * h * max(cfg.qk_head_dim, cfg.v_head_dim)
  assert terms["batched_dots"] == want
  assert xla["batched_dots"] == 2 * h * 4096 * 4 + c * h * cfg.v_head_dim


@pytest.fixture
def pretend_h100(monkeypatch):
  """JAX's Python-side cuDNN checks (head dim, layout, dtype, bias) run at trace time; with the
  version and capability queries answered as on an H100 with cuDNN 9.10, tracing on CPU shows
  that our shapes pass them, forward and backward (nothing runs: jaxprs only)."""
  fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
  for name in ("check_cudnn_version", "check_compute_capability",
               "is_cuda_compute_capability_equal"):
    if not hasattr(fa, name):
      pytest.skip(f"jax {jax.__version__} has no {name}")
  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(fa, "check_compute_capability", lambda cap: True)
  monkeypatch.setattr(fa, "is_cuda_compute_capability_equal", lambda cap: False)
  monkeypatch.setattr(fused, "cuda_compute_capability", lambda: "9.0")

  def refuse(msg):
    raise AssertionError(f"fell back from cuDNN: {msg}")
  monkeypatch.setattr(fused, "_warn_once", refuse)


def test_mla_shapes_pass_jax_cudnn_checks(pretend_h100):
  del pretend_h100
  B, T, H = 2, 256, 16  # Youtu-LLM's expanded path: qk 192, v 128
  q = jax.ShapeDtypeStruct((B, T, H, 192), jnp.bfloat16)
  v = jax.ShapeDtypeStruct((B, T, H, 128), jnp.bfloat16)
  i = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def loss(q, k, v, idx, seg):
    out = fused.fused_attention(q, k, v, idx, idx, seg, seg, scale=0.1, causal_aligned=True)
    return out.astype(jnp.float32).sum()

  jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, q, v, i, i))
  assert "dot_product_attention_fwd" in jaxpr and "dot_product_attention_bwd" in jaxpr


def test_tiny_model_train_and_decode_trace_to_cudnn(pretend_h100):
  del pretend_h100
  cfg = models.presets.get("youtu_llm_tiny", dtype="bfloat16", attention_impl="fused")
  variables = models.abstract_variables(cfg)  # shapes only: nothing may lower on CPU here
  module = models.build(cfg)
  tokens = jnp.zeros((2, 16), jnp.int32)
  grad = jax.grad(lambda p: module.apply({"params": p}, tokens).sum())
  assert "dot_product_attention_bwd" in str(jax.make_jaxpr(grad)(variables["params"]))
  # the absorbed path: one shared 24-dim key as MQA, latent values padded 16 -> 24
  step = lambda v, c: module.apply(v, tokens[:, :1], cache=c)
  cache = jax.eval_shape(lambda: init_cache(cfg, 2, 8))
  assert "dot_product_attention_fwd" in str(jax.make_jaxpr(step)(variables, cache))
