"""The MoE dispatch table (models/moe_kernels.py): every registered kernel computes the dense
reference (values and gradients), a kernel registered in one place - here, only inside this
test - is accepted by ModelConfig and runs in a model forward, the older two-level config
spelling still selects the dropless kernels, and names outside the table are rejected with
an error naming the field. Mesh runs of the built-in kernels: tests/test_moe_mesh.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.models import moe_dispatch as md
from agentic_jax.models import moe_kernels
from agentic_jax.models.config import ModelConfig

M, K, N, Z, D, I = 24, 2, 4, 2, 16, 8  # tokens, top-k, FFN experts, zero experts, widths
BUILTIN = ("dense", "capacity", "dropless_blocked", "dropless_ragged", "expert_parallel")


def _moe_cfg(**kw) -> ModelConfig:
  # capacity_factor N: C = min(M, M*K) = M, so capacity drops nothing and must equal dense.
  base = dict(layer_type="scmoe", hidden_size=D, n_routed_experts=N, zero_expert_num=Z,
              num_experts_per_tok=K, moe_intermediate_size=I, scoring_func="softmax",
              capacity_factor=float(N), dropless_block_size=4)
  return ModelConfig(**{**base, **kw})


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(M, D).astype(np.float32)
  idx = np.argsort(rng.rand(M, N + Z), axis=1)[:, :K].astype(np.int32)  # distinct, zero ids too
  gates = rng.rand(M, K).astype(np.float32)
  w = [rng.randn(N, D, I).astype(np.float32) * 0.3, rng.randn(N, D, I).astype(np.float32) * 0.3,
       rng.randn(N, I, D).astype(np.float32) * 0.3]
  return [jnp.asarray(a) for a in (x, idx, gates, *w)]


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _dense_copy(x, idx, gates, wg, wu, wd, *, n_experts):
  """An independent dense kernel: a Python loop over the experts, each applied to every token
  and weighted by the gates of the slots that chose it (zero-expert ids match no expert)."""
  y = jnp.zeros(x.shape, jnp.float32)
  for e in range(n_experts):
    weight = jnp.sum(jnp.where(idx == e, gates, 0.0), axis=-1)  # [M]
    h = jax.nn.silu(x @ wg[e]) * (x @ wu[e])
    y = y + weight[:, None] * (h @ wd[e]).astype(jnp.float32)
  return y, {"dropped_slots": jnp.int32(0), "expert_rows": jnp.int32(x.shape[0] * n_experts)}


@pytest.fixture
def dense_copy():
  """Registers "dense_copy" for one test (the one place a fork would touch), then removes it;
  yields the list of calls so a test can see the selector really ran it."""
  calls = []

  def kernel(*args, **options):
    calls.append(options)
    return _dense_copy(*args, **options)

  moe_kernels.register_kernel("dense_copy", kernel,
                              options=lambda cfg: {"n_experts": cfg.n_routed_experts})
  yield calls
  del moe_kernels.KERNELS["dense_copy"]


def test_builtin_table():
  assert set(BUILTIN) <= set(moe_kernels.names())
  for name in BUILTIN:
    assert _moe_cfg(moe_dispatch=name).dispatch_kernel == name


@pytest.mark.parametrize("name", moe_kernels.names())
def test_every_registered_kernel_gives_the_dense_result(name):
  cfg = _moe_cfg(moe_dispatch=name)
  x, idx, gates, wg, wu, wd = _inputs()
  probe = jnp.asarray(np.random.RandomState(1).randn(M, D), jnp.float32)

  def loss(dispatch, x, gates, wg, wu, wd):
    y, stats = dispatch(x, idx, gates, wg, wu, wd)
    return jnp.sum(y * probe), (y, stats)

  run = lambda *a: moe_kernels.dispatch(cfg, *a)  # the selector, as the MoE layer calls it
  grad = jax.grad(loss, argnums=(1, 2, 3, 4, 5), has_aux=True)
  got, (y, stats) = jax.jit(lambda *a: grad(run, *a))(x, gates, wg, wu, wd)
  want, (y_ref, _) = jax.jit(lambda *a: grad(md.dense_dispatch, *a))(x, gates, wg, wu, wd)
  assert _rel(y, y_ref) <= 1e-5, name
  for g, r, what in zip(got, want, ("x", "gates", "wg", "wu", "wd")):
    assert _rel(g, r) <= 1e-4, (name, what, _rel(g, r))
  assert int(stats["dropped_slots"]) == 0
  assert int(stats["expert_rows"]) > 0


def test_a_kernel_registered_in_one_place_runs_in_a_model_forward(dense_copy):
  cfg = models.presets.get("longcat_flash_tiny", moe_dispatch="dense_copy")
  assert cfg.dispatch_kernel == "dense_copy"
  variables = models.init_variables(cfg, jax.random.key(0))
  tokens = jnp.asarray(np.random.RandomState(3).randint(0, cfg.vocab_size, (2, 8)), jnp.int32)
  logits = models.build(cfg).apply(variables, tokens)
  want = models.build(cfg.replace(moe_dispatch="dense")).apply(variables, tokens)
  assert dense_copy and dense_copy[0] == {"n_experts": cfg.n_routed_experts}  # it really ran
  assert _rel(logits, want) <= 1e-5
  # The test kernel also meets the per-kernel contract on the random slots above.
  x, idx, gates, wg, wu, wd = _inputs(seed=5)
  y, _ = moe_kernels.dispatch(_moe_cfg(moe_dispatch="dense_copy"), x, idx, gates, wg, wu, wd)
  assert _rel(y, md.dense_dispatch(x, idx, gates, wg, wu, wd)[0]) <= 1e-5


def test_unknown_name_is_rejected_naming_the_field_and_the_registered_names():
  with pytest.raises(ValueError, match=r"ModelConfig\.moe_dispatch: .*'dropless_blocked'.*"
                                       r"\(got 'dense_copy'\)"):
    _moe_cfg(moe_dispatch="dense_copy")  # not registered outside the fixture
  with pytest.raises(ValueError, match=r"ModelConfig\.moe_dispatch:"):
    models.presets.get("deepseek_v3_tiny", moe_dispatch="sparse")


def test_validation_reads_the_table(dense_copy):
  _moe_cfg(moe_dispatch="dense_copy")  # accepted while registered
  with pytest.raises(ValueError, match=r"ModelConfig\.moe_dispatch: .*'dense_copy'"):
    _moe_cfg(moe_dispatch="nope")  # the error lists it among the registered names


@pytest.mark.parametrize("backend, flat", [("blocked", "dropless_blocked"),
                                           ("ragged_dot", "dropless_ragged")])
def test_two_level_spelling_still_selects_the_dropless_kernels(backend, flat):
  old = _moe_cfg(moe_dispatch="dropless", dropless_backend=backend)
  assert old.dispatch_kernel == flat
  assert moe_kernels.kernel_of(old) is moe_kernels.KERNELS[flat]
  x, idx, gates, wg, wu, wd = _inputs(seed=2)
  y_old, _ = moe_kernels.dispatch(old, x, idx, gates, wg, wu, wd)
  y_new, _ = moe_kernels.dispatch(_moe_cfg(moe_dispatch=flat), x, idx, gates, wg, wu, wd)
  np.testing.assert_array_equal(np.asarray(y_old), np.asarray(y_new))
  with pytest.raises(ValueError, match=r"ModelConfig\.dropless_backend:"):
    _moe_cfg(moe_dispatch="dropless", dropless_backend="megablox")


def test_register_kernel_refuses_clashes_and_bad_entries():
  with pytest.raises(ValueError, match="already registered"):
    moe_kernels.register_kernel("dense", md.dense_dispatch)
  with pytest.raises(ValueError, match="reserved"):
    moe_kernels.register_kernel("dropless", md.blocked_dispatch)
  with pytest.raises(ValueError, match="mesh"):
    moe_kernels.register_kernel("x_test", md.dense_dispatch, mesh="auto")
  with pytest.raises(ValueError, match="shard_options"):
    moe_kernels.register_kernel("x_test", md.dense_dispatch, mesh="gspmd",
                                shard_options=moe_kernels.capacity_shard_options)
  assert "x_test" not in moe_kernels.KERNELS
  entry = moe_kernels.KERNELS["dense"]
  try:  # replace=True swaps an entry on purpose
    moe_kernels.register_kernel("dense", _dense_copy, replace=True,
                                options=lambda cfg: {"n_experts": cfg.n_routed_experts})
    assert moe_kernels.KERNELS["dense"].fn is _dense_copy
  finally:
    moe_kernels.KERNELS["dense"] = entry


def test_pad_token_rows():
  x, idx, gates, *_ = _inputs()
  px, pidx, pg = md.pad_token_rows(x[:5], idx[:5], gates[:5], 4, N)
  assert px.shape == (8, D) and pidx.shape == (8, K) and pg.shape == (8, K)
  np.testing.assert_array_equal(np.asarray(px[:5]), np.asarray(x[:5]))
  assert np.all(np.asarray(px[5:]) == 0) and np.all(np.asarray(pg[5:]) == 0)
  assert np.all(np.asarray(pidx[5:]) == N)  # past the FFN experts: no kernel computes them
  # Padding rows change no output row and drop nothing (blocked kernel on padded rows).
  y, _ = md.blocked_dispatch(px, pidx, pg, *_inputs()[3:], block=4)
  want, _ = md.blocked_dispatch(x[:5], idx[:5], gates[:5], *_inputs()[3:], block=4)
  np.testing.assert_allclose(np.asarray(y[:5]), np.asarray(want), rtol=1e-6, atol=1e-6)
  same = md.pad_token_rows(x[:8], idx[:8], gates[:8], 4, N)
  assert same[0].shape == (8, D)  # already divides: unchanged
