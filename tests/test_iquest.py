"""IQuest-Coder (GQA, layer_type "llama") and its Loop variant (model-spec §5, §6).

* Parity with transformers' `iquestcoder` (IQuestCoderConfig -> LlamaForCausalLM, float64,
  perturbed norms): logits and greedy generation, conversion both ways.
* The Loop forward against a direct loop written plainly here in numpy (true sliding window,
  S > W), and for S <= W against the public implementation's semantics rebuilt from
  transformers' own Llama modules (its causal mask over all loop-2 keys, which only agrees
  with a window when S <= W); loop_num = 1 is the plain model; zero gate weights give 0.5.
* Decoding (sampling.prefill / decode_step) equals the full forward at every position, for the
  plain model and for the Loop with its ring-buffer window cache, prompts longer than W.
"""

from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402

from agentic_jax import convert, models, sampling  # noqa: E402
from agentic_jax.convert import hf_config  # noqa: E402
from agentic_jax.models.gqa import LoopGate  # noqa: E402

RTOL = 1e-4
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def hf_model(seed: int = 0, **overrides) -> torch.nn.Module:
  """Tiny float64 IQuestCoder with random RMSNorm weights (init leaves them at 1) and biases."""
  config = transformers.IQuestCoderConfig(**{**TINY, **overrides}, attn_implementation="eager")
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(config).double().eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, t in model.named_parameters():
      if t.ndim == 1:
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        t.copy_(1.0 + 0.3 * noise if "norm" in name else 0.02 * noise)
  return model


def tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 128, size=(batch, length))


def rel_err(ours, ref) -> float:
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def hf_logits(model, toks) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(toks, np.int64))).logits.numpy()


# ------------------------------------------------------------------ transformers parity


def test_hf_model_is_llama_with_gqa():
  model = hf_model()
  assert type(model).__name__ == "LlamaForCausalLM"
  assert model.model.layers[0].self_attn.k_proj.weight.shape == (2 * 16, 64)


@pytest.mark.parametrize("overrides", [{}, dict(attention_bias=True, head_dim=8, num_key_value_heads=1,
                                                rope_parameters={"rope_type": "default",
                                                                 "rope_theta": 5e5})])
def test_logits_match_transformers(overrides):
  model = hf_model(**overrides)
  cfg, variables = convert.from_hf(model)
  assert cfg.layer_type == "llama" and cfg.kv_heads == model.config.num_key_value_heads
  toks = tokens(2, 12, seed=1)
  ref = hf_logits(model, toks)
  ours = models.build(cfg).apply(variables, jnp.asarray(toks))
  assert rel_err(ours, ref) <= RTOL


def test_convert_round_trip_and_config():
  model = hf_model(attention_bias=True)
  cfg, variables = convert.from_hf(model)
  state = convert.to_hf_state_dict(cfg, variables)
  ref = {k: v.numpy() for k, v in model.state_dict().items()}
  assert set(state) == set(ref)
  for k in ref:
    np.testing.assert_allclose(state[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
  config = transformers.IQuestCoderConfig(**hf_config.config_to_hf(cfg))
  assert hf_config.config_from_hf(config) == cfg.replace(moe_dispatch="dropless")
  rebuilt = transformers.AutoModelForCausalLM.from_config(config).double().eval()
  rebuilt.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in state.items()})
  toks = tokens(1, 7, seed=3)
  np.testing.assert_allclose(hf_logits(rebuilt, toks), hf_logits(model, toks), rtol=1e-5, atol=1e-6)


def test_greedy_generate_matches_transformers():
  model = hf_model()
  cfg, variables = convert.from_hf(model)
  prompts = [tokens(1, 5, seed=4)[0].tolist(), tokens(1, 9, seed=5)[0].tolist()]
  ours = sampling.generate(cfg, variables, prompts, max_new_tokens=8)
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                           min_new_tokens=8, pad_token_id=0)
    assert got == out[0, len(prompt):].tolist()


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


def loop_variables(cfg, seed: int = 0, gate_scale: float = 0.5) -> dict:
  """Random variables with random (not zero) gates and norm weights, so all of them matter."""
  variables = models.init_variables(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def perturb(path, x):
    name = jax.tree_util.keystr(path)
    if "loop_gate" in name:
      return jnp.asarray(gate_scale * rng.standard_normal(x.shape), x.dtype)
    if "norm" in name:
      return jnp.asarray(1 + 0.3 * rng.standard_normal(x.shape), x.dtype)
    return x * 10.0  # init std 0.02 leaves attention near uniform; 0.2 makes it peaked
  return jax.tree_util.tree_map_with_path(perturb, variables)


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


def test_loop_conversion_round_trip_keeps_gates():
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=3)
  state = convert.to_hf_state_dict(cfg, variables)
  assert state["model.gate_projections.1.weight"].shape == (4, 16)
  config = types.SimpleNamespace(**hf_config.config_to_hf(cfg))
  assert config.model_type == "iquestloopcoder" and config.loop_window_size == 4
  cfg2, variables2 = convert.from_hf_state_dict(config, state)
  assert cfg2 == cfg.replace(moe_dispatch="dropless")
  jax.tree.map(np.testing.assert_array_equal, variables2, variables)


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


# ------------------------------------------------------------------ planner


def test_decode_cache_bytes_by_hand():
  from agentic_jax.parallel import memory
  cfg = models.presets.get("iquest_loop_tiny")  # L 2, KV 2, D 16, W 4, loop_num 2, float32
  b, s = 3, 20
  loop1 = 2 * 2 * b * s * 2 * 16  # k and v of every layer, every slot
  rings = 2 * 1 * 2 * b * 4 * 2 * 16  # one later loop: only W = 4 slots
  ints = b * s + 4 + 1  # segment ids, ring slot index, write index
  assert memory.decode_cache_bytes(cfg, b, s) == 4 * (loop1 + rings + ints)
  plain = models.presets.get("iquest_coder_tiny")
  assert memory.decode_cache_bytes(plain, b, s) == 4 * (loop1 + b * s + 1)  # no ring at all
  # the released Loop at 128k context: the rings add W / S of the loop-1 cache
  full = models.presets.get("iquest_loop_40b")
  big = memory.decode_cache_bytes(full, 1, 131072)
  loop1_full = 2 * 80 * 131072 * 8 * 128 * 2  # bf16
  assert big == loop1_full + loop1_full * 64 // 131072 + 4 * (131072 + 64 + 1)
  plan = memory.plan_memory(cfg, {"data": 1}, batch_per_device=b, seq_len=16, cache_len=s)
  assert plan.bytes_of("decode cache") == memory.decode_cache_bytes(cfg, b, s)
  # a second loop costs activations: the loop model's estimate exceeds the plain one's
  act = lambda c: memory.activation_bytes(c, {"data": 1}, batch_per_device=1, seq_len=16)["saved"]  # noqa: E731
  assert act(cfg) > 2 * act(plain) - 4 * 64 * 16 * 2


def test_flops_count_every_loop():
  from agentic_jax.train import flops
  plain, looped = models.presets.get("iquest_coder_tiny"), models.presets.get("iquest_loop_tiny")
  d, f, h, kv, hd, layers, vocab = 64, 128, 4, 2, 16, 2, 128
  per_layer = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f  # q, k, v, o, SwiGLU
  fp, fl = flops.flop_model(plain), flops.flop_model(looped)
  assert fp.dense_matmul_params == layers * per_layer + d * vocab  # + untied lm_head
  assert fl.dense_matmul_params == 2 * layers * per_layer + d * vocab
  assert fp.attention_per_token_per_len == layers * h * 2 * hd
  assert fl.attention_per_token_per_len == 2 * fp.attention_per_token_per_len


def test_midtrain_variants_build_the_gqa_models():
  from agentic_jax.train import config as config_lib
  from tests.train_fixtures import MIDTRAIN
  for variant, loops in (("iquest_coder_tiny", 1), ("iquest_loop_tiny", 2)):
    config = config_lib.load_config(f"{MIDTRAIN}:{variant}")
    cfg = config_lib.model_config(config.model)
    assert (cfg.layer_type, cfg.loop_num, cfg.kv_heads) == ("llama", loops, 2)
    assert config.objective.balance_loss == "none"


# ------------------------------------------------------------------ checkpoint directories


def test_hf_directory_round_trip(tmp_path):
  """save_pretrained -> our checkpoint -> logits; and back to a directory transformers loads."""
  model = hf_model(seed=6).float()
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  model.save_pretrained(hf_dir)
  convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None)
  cfg, variables = convert.load_checkpoint(ckpt)
  toks = tokens(2, 10, seed=12)
  ref = hf_logits(model, toks)
  np.testing.assert_allclose(models.build(cfg).apply(variables, jnp.asarray(toks)), ref,
                             rtol=2e-5, atol=2e-5)
  convert.checkpoint_to_hf(ckpt, out, say=lambda _: None)
  back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
  for name, t in model.state_dict().items():
    torch.testing.assert_close(back.state_dict()[name], t, rtol=0, atol=0, msg=name)


def test_loop_directory_round_trip(tmp_path):
  """A Loop checkpoint directory (config.json of model_type iquestloopcoder + safetensors with
  the gate tensors, as the hub remote code stores it) in and out."""
  from safetensors.numpy import load_file, save_file
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=7)
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  os.makedirs(hf_dir)
  state = {k: np.ascontiguousarray(v, np.float32)
           for k, v in convert.to_hf_state_dict(cfg, variables).items()}
  save_file(state, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    import json
    json.dump(hf_config.config_to_hf(cfg), f)
  convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None)
  cfg2, variables2 = convert.load_checkpoint(ckpt)
  assert (cfg2.loop_num, cfg2.loop_window_size) == (2, 4)
  toks = jnp.asarray(tokens(1, 9, seed=13))
  np.testing.assert_allclose(models.build(cfg2).apply(variables2, toks),
                             models.build(cfg).apply(variables, toks), rtol=1e-5, atol=1e-5)
  convert.checkpoint_to_hf(ckpt, out, say=lambda _: None)
  written = {}
  for name in os.listdir(out):
    if name.endswith(".safetensors"):
      written.update(load_file(os.path.join(out, name)))
  assert set(written) == set(state)
  for k in state:
    np.testing.assert_array_equal(written[k], state[k], err_msg=k)


def test_remat_keeps_the_gradients():
  cfg = models.presets.get("iquest_loop_tiny")
  variables = loop_variables(cfg, seed=8)
  toks = jnp.asarray(tokens(2, 9, seed=14))

  def grad_fn(c):
    module = models.build(c)
    return jax.grad(lambda p: jnp.mean(module.apply({"params": p}, toks) ** 2))

  plain = jax.jit(grad_fn(cfg))(variables["params"])
  remat = jax.jit(grad_fn(cfg.replace(remat_policy="full")))(variables["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), plain, remat)
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


def test_config_errors_name_the_field():
  base = models.presets.get("iquest_coder_tiny")
  for field, value, match in (("num_key_value_heads", 3, "num_key_value_heads"),
                              ("loop_num", 0, "loop_num"), ("scan_layers", True, "scan_layers"),
                              ("attention_impl", "chunked", "attention_impl"),
                              ("loop_window_size", 0, "loop_window_size")):
    with pytest.raises(ValueError, match=f"ModelConfig.{match}"):
      base.replace(**{field: value})
  with pytest.raises(ValueError, match="ModelConfig.loop_num"):
    models.presets.get("youtu_llm_tiny", loop_num=2)
