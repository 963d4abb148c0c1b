"""The IQuest Loop (model-spec §5): its forward against a direct loop written plainly here in
numpy (true sliding window, S > W), and for S <= W against the public implementation's
semantics rebuilt from transformers' own Llama modules (its causal mask over all loop-2 keys,
which agrees with a window only when S <= W); loop_num = 1 is transformers' plain model; zero
gate weights give 0.5. Decoding (sampling.prefill / decode_step) equals the full forward at
every position, for the plain model and for the Loop with its ring-buffer window cache, with
prompts longer than W; remat and packed rows change nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import transformers  # noqa: E402

from agentic_jax import convert, models, sampling  # noqa: E402
from agentic_jax.models.gqa import LoopGate  # noqa: E402
from tests.iquest_fixtures import (RTOL, TINY, hf_logits, loop_variables, rel_err,  # noqa: E402
                                   tokens)


# ------------------------------------------------------------------ the Loop, plainly


def _flat(variables) -> dict:
  return {"/".join(k): np.asarray(v, np.float64)
          for k, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
          for k in [[getattr(p, "key", p) for p in k]]}


def reference_loop(cfg, variables, toks, *, gate=None) -> np.ndarray:
  """Model-spec §5 written out: token by token, head by head, in float64. `gate`: a fixed g
  instead of the learned one."""
  p = _flat(variables)
  heads, kvh, d, w = cfg.num_attention_heads, cfg.kv_heads, cfg.attn_head_dim, cfg.loop_window_size
  batch, length = toks.shape

  def rms(x, weight):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.rms_norm_eps) * weight

  inv = 1.0 / cfg.rope_theta ** (np.arange(0, d, 2) / d)
  ang = np.arange(length)[:, None] * inv  # [T, D/2]
  cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]

  def rope(x):  # rotate_half on contiguous halves
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  def softmax_attend(qv, keys, values):  # qv [D], keys/values [n, D]
    s = keys @ qv / np.sqrt(d)
    e = np.exp(s - s.max())
    return (e / e.sum()) @ values

  h = p["embed_tokens/embedding"][toks]
  loop1 = {}
  for loop in range(cfg.loop_num):
    for l in range(cfg.num_layers):
      pre = f"layers_{l}/"
      x = rms(h, p[pre + "input_layernorm/weight"])
      q = rope(np.einsum("btd,dhe->bthe", x, p[pre + "self_attn/q_proj/kernel"]))
      k = rope(np.einsum("btd,dhe->bthe", x, p[pre + "self_attn/k_proj/kernel"]))
      v = np.einsum("btd,dhe->bthe", x, p[pre + "self_attn/v_proj/kernel"])
      if loop == 0:
        loop1[l] = (k, v)
      k1, v1 = loop1[l]
      out = np.zeros_like(q)
      for b in range(batch):
        for i in range(length):
          for hh in range(heads):
            g_ = hh // (heads // kvh)
            if loop == 0:
              out[b, i, hh] = softmax_attend(q[b, i, hh], k[b, :i + 1, g_], v[b, :i + 1, g_])
              continue
            glob = softmax_attend(q[b, i, hh], k1[b, :i + 1, g_], v1[b, :i + 1, g_])
            lo = max(0, i - w + 1)
            local = softmax_attend(q[b, i, hh], k[b, lo:i + 1, g_], v[b, lo:i + 1, g_])
            if gate is None:
              z = q[b, i, hh] @ p[pre + "loop_gate/weight"][hh] + p[pre + "loop_gate/bias"][hh]
              g = 1 / (1 + np.exp(-z))
            else:
              g = gate
            out[b, i, hh] = g * glob + (1 - g) * local
      h = h + np.einsum("bthe,hed->btd", out, p[pre + "self_attn/o_proj/kernel"])
      x = rms(h, p[pre + "post_attention_layernorm/weight"])
      a = x @ p[pre + "mlp/gate_proj"]
      h = h + (a / (1 + np.exp(-a)) * (x @ p[pre + "mlp/up_proj"])) @ p[pre + "mlp/down_proj"]
  h = rms(h, p["norm/weight"])
  return h @ p["lm_head/kernel"]


def test_loop_forward_matches_direct_reference_past_the_window():
  cfg = models.presets.get("iquest_loop_tiny")
  assert cfg.loop_num == 2 and cfg.loop_window_size == 4
  variables = loop_variables(cfg)
  toks = tokens(2, 11, seed=6)  # S = 11 > W = 4: the window cuts
  ours = np.asarray(models.build(cfg).apply(variables, jnp.asarray(toks)))
  ref = reference_loop(cfg, variables, toks)
  assert rel_err(ours, ref) <= RTOL
  # the window matters: a global-only second loop (W >= S) gives other logits
  wide = models.build(cfg.replace(loop_window_size=64)).apply(variables, jnp.asarray(toks))
  assert rel_err(wide, ref) > 1e-3


def public_loop_semantics(hf: torch.nn.Module, gates: list, toks: np.ndarray) -> np.ndarray:
  """The public remote code's loop for S <= W, from transformers' Llama modules: loop 2 mixes
  attention over loop-1 K/V with attention under the causal mask over all its own K/V
  (what the remote code's sliced mask gives when nothing falls out of the window)."""
  inner = hf.model
  ids = torch.from_numpy(np.asarray(toks, np.int64))
  h = inner.embed_tokens(ids)
  pos = torch.arange(ids.shape[1])[None]
  cos, sin = inner.rotary_emb(h, pos)
  causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
  attn0 = inner.layers[0].self_attn
  heads, kvh = attn0.config.num_attention_heads, attn0.config.num_key_value_heads
  rep = heads // kvh

  def split(x, n):
    return x.view(*x.shape[:2], n, -1).transpose(1, 2)  # [B, n, T, D]

  loop1 = []
  for loop in range(2):
    for l, layer in enumerate(inner.layers):
      x = layer.input_layernorm(h)
      at = layer.self_attn
      q, k, v = split(at.q_proj(x), heads), split(at.k_proj(x), kvh), split(at.v_proj(x), kvh)
      q, k = transformers.models.llama.modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
      k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
      sdpa = torch.nn.functional.scaled_dot_product_attention
      if loop == 0:
        loop1.append((k, v))
        out = sdpa(q, k, v, attn_mask=causal)
      else:
        glob = sdpa(q, *loop1[l], attn_mask=causal)
        local = sdpa(q, k, v, attn_mask=causal)
        weight, bias = gates[l]
        g = torch.sigmoid(torch.einsum("bhtd,hd->bht", q, weight) + bias[None, :, None])[..., None]
        out = g * glob + (1 - g) * local
      out = out.transpose(1, 2).reshape(*h.shape[:2], -1)
      h = h + at.o_proj(out)
      h = h + layer.mlp(layer.post_attention_layernorm(h))
  return hf.lm_head(inner.norm(h)).detach().numpy()


def test_loop_matches_public_semantics_within_the_window():
  cfg = models.presets.get("iquest_loop_tiny", loop_window_size=16)
  variables = loop_variables(cfg, seed=1)
  state = convert.to_hf_state_dict(cfg, variables)
  config = transformers.IQuestCoderConfig(**{**TINY, "rope_parameters": {
      "rope_type": "default", "rope_theta": cfg.rope_theta}, "rms_norm_eps": cfg.rms_norm_eps},
      attn_implementation="eager")
  hf = transformers.AutoModelForCausalLM.from_config(config).double().eval()
  gates = [(torch.from_numpy(np.asarray(state.pop(f"model.gate_projections.{l}.weight"), np.float64)),
            torch.from_numpy(np.asarray(state.pop(f"model.gate_projections.{l}.bias"), np.float64)))
           for l in range(cfg.num_layers)]
  hf.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()})
  toks = tokens(2, 16, seed=7)  # S = W
  with torch.no_grad():
    ref = public_loop_semantics(hf, gates, toks)
  ours = models.build(cfg).apply(variables, jnp.asarray(toks))
  assert rel_err(ours, ref) <= RTOL
  # and loop_num = 1 on the same weights is transformers' plain Llama
  plain = models.build(cfg.replace(loop_num=1)).apply(
      {"params": {k: ({kk: vv for kk, vv in v.items() if kk != "loop_gate"}
                      if k.startswith("layers_") else v)
                  for k, v in variables["params"].items()}}, jnp.asarray(toks))
  assert rel_err(plain, hf_logits(hf, toks)) <= RTOL
  assert rel_err(ours, hf_logits(hf, toks)) > 1e-3  # the second loop changes the logits


def test_zero_gate_weights_give_one_half():
  cfg = models.presets.get("iquest_loop_tiny")
  gate = LoopGate(cfg)
  q = jax.random.normal(jax.random.key(0), (2, 5, cfg.num_attention_heads, cfg.attn_head_dim))
  params = gate.init(jax.random.key(1), q)  # the public code's zero init
  np.testing.assert_array_equal(np.asarray(gate.apply(params, q)), 0.5)
  variables = loop_variables(cfg, seed=2, gate_scale=0.0)
  toks = tokens(1, 9, seed=8)
  ours = models.build(cfg).apply(variables, jnp.asarray(toks))
  assert rel_err(ours, reference_loop(cfg, variables, toks, gate=0.5)) <= RTOL


# ------------------------------------------------------------------ decoding


@pytest.mark.parametrize("preset", ["iquest_coder_tiny", "iquest_loop_tiny"])
def test_decode_equals_full_forward_at_every_position(preset):
  cfg = models.presets.get(preset)
  variables = loop_variables(cfg, seed=4)
  module = models.build(cfg)
  # two prompts of 7 and 3 tokens (left padding), prompt 7 > W = 4, then 9 decode steps
  seqs = [tokens(1, 16, seed=9)[0], tokens(1, 12, seed=10)[0]]
  prompt_lens = [7, 3]
  prompts, lengths = sampling.pad_prompts([s[:n].tolist() for s, n in zip(seqs, prompt_lens)])
  logits, cache = sampling.prefill(cfg, variables, jnp.asarray(prompts), jnp.asarray(lengths),
                                   cache_len=prompts.shape[1] + 9)
  steps = [np.asarray(logits)]
  for t in range(9):
    tok = jnp.asarray([s[n + t] for s, n in zip(seqs, prompt_lens)], jnp.int32)
    logits, cache = sampling.decode_step(cfg, variables, tok, jnp.asarray(lengths) + t, cache)
    steps.append(np.asarray(logits))
  for row, (s, n) in enumerate(zip(seqs, prompt_lens)):
    full = np.asarray(module.apply(variables, jnp.asarray(s[None, :n + 9])))[0]
    for t, step in enumerate(steps):  # logits after token n - 1 + t
      np.testing.assert_allclose(step[row], full[n - 1 + t], rtol=1e-4, atol=1e-4,
                                 err_msg=f"{preset} row {row} position {n - 1 + t}")
  if cfg.loop_num > 1:  # the ring holds exactly the last W slots written
    assert cache.window_k.shape[3] == cfg.loop_window_size
    np.testing.assert_array_equal(np.sort(np.asarray(cache.window_index)),
                                  np.arange(prompts.shape[1] + 9 - cfg.loop_window_size,
                                            prompts.shape[1] + 9))


def test_loop_generate_is_greedy_over_the_full_forward():
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=5)
  module = models.build(cfg)
  prompt = tokens(1, 6, seed=11)[0].tolist()
  got = sampling.generate(cfg, variables, [prompt], max_new_tokens=7)[0]
  seq = list(prompt)
  for _ in range(7):
    seq.append(int(np.argmax(np.asarray(module.apply(variables, jnp.asarray([seq])))[0, -1])))
  assert got == seq[len(prompt):]


def test_remat_keeps_the_gradients():
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=8)
  toks = jnp.asarray(tokens(2, 9, seed=14))

  def grad_fn(c):
    module = models.build(c)
    return jax.grad(lambda p: jnp.mean(module.apply({"params": p}, toks) ** 2))

  plain = jax.jit(grad_fn(cfg))(variables["params"])
  remat = jax.jit(grad_fn(cfg.replace(remat_policy="full")))(variables["params"])
  # rtol 1e-4: the recomputed forward rounds differently on an AVX-512 Xeon (one of 8192
  # entries off by 2.8e-5 relative, another by 1.1e-7 absolute, with glibc's malloc too); a
  # missing or wrong term is O(1e-2) here
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), plain, remat)
  jaxpr = str(jax.make_jaxpr(grad_fn(cfg.replace(remat_policy="full")))(variables["params"]))
  assert "checkpoint" in jaxpr or "remat" in jaxpr
  assert "checkpoint" not in str(jax.make_jaxpr(grad_fn(cfg))(variables["params"]))


def test_packed_rows_equal_separate_sequences():
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=9)
  module = models.build(cfg)
  a, b = tokens(1, 7, seed=15), tokens(1, 6, seed=16)
  packed = np.concatenate([a, b], 1)
  segments = np.array([[1] * 7 + [2] * 6])
  got = np.asarray(module.apply(variables, jnp.asarray(packed), segment_ids=jnp.asarray(segments)))
  np.testing.assert_allclose(got[:, :7], module.apply(variables, jnp.asarray(a)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, 7:], module.apply(variables, jnp.asarray(b)), rtol=1e-5, atol=1e-5)
