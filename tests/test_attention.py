"""Attention cores: chunked online softmax == materialised softmax; masks as specified."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.models.attention import chunked_attention, xla_attention


def _inputs(shared_key: bool, seed=0, B=2, T=11, H=3, D=6, Dv=5):
  rng = np.random.RandomState(seed)
  q = jnp.asarray(rng.randn(B, T, H, D), jnp.float32)
  kshape = (B, T, D) if shared_key else (B, T, H, D)
  vshape = (B, T, Dv) if shared_key else (B, T, H, Dv)
  k = jnp.asarray(rng.randn(*kshape), jnp.float32)
  v = jnp.asarray(rng.randn(*vshape), jnp.float32)
  idx = jnp.broadcast_to(jnp.arange(T), (B, T))
  seg = jnp.asarray([[1] * 4 + [2] * 5 + [0] * 2, [1] * T])
  return q, k, v, idx, seg


def _naive(q, k, v, idx, seg, scale):
  """Loop reference straight from the definition."""
  q, k, v, idx, seg = map(np.asarray, (q, k, v, idx, seg))
  B, T, H, _ = q.shape
  out = np.zeros((B, T, H, v.shape[-1]))
  for b in range(B):
    for h in range(H):
      kb = k[b] if k.ndim == 3 else k[b, :, h]
      vb = v[b] if v.ndim == 3 else v[b, :, h]
      for t in range(T):
        ok = (idx[b] <= idx[b, t]) & (seg[b] == seg[b, t])
        s = (kb[ok] @ q[b, t, h]) * scale
        p = np.exp(s - s.max())
        out[b, t, h] = (p / p.sum()) @ vb[ok]
  return out


@pytest.mark.parametrize("shared_key", [False, True])
@pytest.mark.parametrize("chunk", [4, 11, 64])
def test_chunked_equals_xla_equals_naive(shared_key, chunk):
  q, k, v, idx, seg = _inputs(shared_key)
  ref = _naive(q, k, v, idx, seg, 0.3)
  a = xla_attention(q, k, v, idx, idx, seg, seg, 0.3)
  b = chunked_attention(q, k, v, idx, idx, seg, seg, 0.3, chunk)
  np.testing.assert_allclose(np.asarray(a), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(b), ref, rtol=1e-5, atol=1e-5)


def test_chunked_gradients_match_xla():
  q, k, v, idx, seg = _inputs(False, seed=3)
  f = lambda fn, *a: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, idx, idx, seg, seg, 0.5, *a)))
  ga = jax.grad(f(xla_attention), argnums=(0, 1, 2))(q, k, v)
  gb = jax.grad(f(chunked_attention, 4), argnums=(0, 1, 2))(q, k, v)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_segments_do_not_leak():
  """Changing keys/values of segment 2 leaves segment-1 queries' outputs untouched."""
  q, k, v, idx, seg = _inputs(False, seed=4)
  other = np.asarray(seg)[..., None, None] == 2
  k2 = jnp.where(other, 100.0, k)
  v2 = jnp.where(other, -100.0, v)
  for fn in (lambda *a: xla_attention(*a, 0.4), lambda *a: chunked_attention(*a, 0.4, 4)):
    a = np.asarray(fn(q, k, v, idx, idx, seg, seg))
    b = np.asarray(fn(q, k2, v2, idx, idx, seg, seg))
    first = np.asarray(seg)[0] == 1
    np.testing.assert_array_equal(a[0, first], b[0, first])
    assert not np.allclose(a[0, ~first & (np.asarray(seg)[0] == 2)],
                           b[0, ~first & (np.asarray(seg)[0] == 2)])


def _autodiff_reference(q, k, v, q_index, k_index, q_segment, k_segment, scale):
  """The softmax written plainly (jax.nn.softmax, zero rows for queries that see no key), so
  its gradient is autodiff's: the reference for xla_attention's hand-written backward."""
  causal = k_index[:, None, :] <= q_index[:, :, None]
  mask = (causal & (q_segment[:, :, None] == k_segment[:, None, :]))[:, None]
  kk = k if k.ndim == 4 else jnp.broadcast_to(k[:, :, None], (*k.shape[:2], q.shape[2], k.shape[-1]))
  vv = v if v.ndim == 4 else jnp.broadcast_to(v[:, :, None], (*v.shape[:2], q.shape[2], v.shape[-1]))
  s = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), kk.astype(jnp.float32)) * scale
  p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
  p = jnp.where(mask.any(-1, keepdims=True), p, 0.0)
  return jnp.einsum("bhts,bshd->bthd", p, vv.astype(jnp.float32))


@pytest.mark.parametrize("shared_key", [False, True])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 3e-2)])
def test_xla_attention_gradient_equals_autodiff_of_the_softmax(shared_key, dtype, tol):
  q, k, v, idx, seg = _inputs(shared_key, seed=5)
  q, k, v = (x.astype(dtype) for x in (q, k, v))
  # the second row's queries 0-2 carry a segment no key has: rows that see nothing
  q_seg = seg.at[1, :3].set(7)
  w = jnp.asarray(np.random.RandomState(1).randn(*q.shape[:3], v.shape[-1]), jnp.float32)

  def loss(fn):
    return lambda q, k, v: jnp.sum(w * fn(q, k, v, idx, idx, q_seg, seg, 0.4).astype(jnp.float32))

  # jitted: XLA:CPU runs some bf16 x bf16 -> f32 dots only inside a compiled program
  out = jax.jit(xla_attention, static_argnums=7)(q, k, v, idx, idx, q_seg, seg, 0.4)
  ref = _autodiff_reference(q, k, v, idx, idx, q_seg, seg, 0.4)
  np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=tol, atol=tol)
  assert not np.asarray(out[1, :3], np.float32).any()  # nothing visible: zero output
  ga = jax.jit(jax.grad(loss(xla_attention), argnums=(0, 1, 2)))(q, k, v)
  gb = jax.jit(jax.grad(loss(_autodiff_reference), argnums=(0, 1, 2)))(q, k, v)
  for name, x, y in zip("qkv", ga, gb):
    assert x.dtype == dtype, name
    scale = float(np.abs(np.asarray(y, np.float32)).max())
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               rtol=tol, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize("length", [256, 384, 1024])
def test_causal_block_skip_equals_the_full_scores(length):
  """causal_aligned cuts the queries into blocks that skip the keys past their end: same
  output and gradients as the full masked scores, packed segments included."""
  rng = np.random.RandomState(7)
  q, k = (jnp.asarray(rng.randn(2, length, 2, 8), jnp.float32) for _ in range(2))
  v = jnp.asarray(rng.randn(2, length, 2, 4), jnp.float32)
  idx = jnp.broadcast_to(jnp.arange(length), (2, length))
  seg = jnp.asarray(np.sort(np.random.RandomState(2).randint(1, 4, (2, length)), axis=1))
  w = jnp.asarray(np.random.RandomState(3).randn(2, length, 2, 4), jnp.float32)

  def loss(aligned):
    return lambda q, k, v: jnp.sum(w * xla_attention(q, k, v, idx, idx, seg, seg, 0.3,
                                                     causal_aligned=aligned))

  got = jax.jit(jax.value_and_grad(loss(True), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.value_and_grad(loss(False), argnums=(0, 1, 2)))(q, k, v)
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-5)
  # the skip is real: the queries run as blocks (more, smaller score dots)
  def score_elems(aligned):
    hlo = jax.jit(lambda q, k, v: xla_attention(q, k, v, idx, idx, seg, seg, 0.3,
                                                causal_aligned=aligned)).lower(q, k, v).as_text()
    return hlo.count("dot_general")
  assert score_elems(True) > score_elems(False)
