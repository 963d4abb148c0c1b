"""Multi-token prediction module (issue 17 item 1; models/mtp.py, objectives/mtp.py,
convert/mtp_mapping.py): forward and loss against a direct reference, parameter counts, weight
conversion both ways (state dicts and checkpoint directories)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models
from agentic_jax.models.blocks import DecoderLayer
from agentic_jax.models.layers import rope_cos_sin
from agentic_jax.models.mla import AttentionContext
from agentic_jax.objectives.next_token import next_token_loss

PRESETS = ("deepseek_v3_tiny", "longcat_flash_tiny")


def _perturbed(cfg, seed=0):
  """Random variables with the norms (init: ones) and router biases (zeros) randomised."""
  v = models.init_variables(cfg, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def fix(path, x):
    name = "/".join(str(getattr(p, "key", p)) for p in path)
    if name.endswith("weight") and x.ndim == 1:
      return jnp.asarray(1.0 + 0.3 * rng.standard_normal(x.shape), x.dtype)
    if name.endswith("e_score_correction_bias"):
      return jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(fix, v)


def _rms(x, w, eps):
  x = np.asarray(x, np.float64)
  return np.asarray(w) * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def _reference_mtp_logits(cfg, variables, tokens):
  """Depth by depth from the equations: eh_proj([enorm(emb(t_{i+k})); hnorm(h)]) -> block ->
  norm -> lm_head, h^0 = the main model's final-norm output (the block is the model's own
  decoder layer, applied on its own: its parity is tests/test_parity.py's)."""
  p = variables["params"]
  b, t = tokens.shape
  # h^0: the lm_head input, recovered from the main logits would need an inverse; run the model
  # with return_hidden through a cache instead (the compressed-cache path = the full forward)
  cache = models.init_cache(cfg, b, t)
  _, _, h = models.build(cfg.replace(moe_dispatch="dropless")).apply(
      variables, jnp.asarray(tokens), cache=cache, return_hidden=True)
  h = np.asarray(h, np.float64)
  emb = np.asarray(p["mtp"]["embed_tokens"]["embedding"] if "embed_tokens" in p["mtp"]
                   else p["embed_tokens"]["embedding"])
  head = np.asarray(p["lm_head"]["kernel"])
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  cos, sin = rope_cos_sin(cfg, pos)
  seg = jnp.ones((b, t), jnp.int32)
  ctx = AttentionContext(cos, sin, pos, seg, pos, seg)
  out = []
  for k in range(cfg.num_mtp_layers):
    lp = p["mtp"][f"layers_{k}"]
    nxt = np.zeros_like(tokens)
    nxt[:, :t - k - 1] = tokens[:, k + 1:]
    e = _rms(emb[nxt], lp["enorm"]["weight"], cfg.rms_norm_eps)
    hn = _rms(h, lp["hnorm"]["weight"], cfg.rms_norm_eps)
    x = np.concatenate([e, hn], -1) @ np.asarray(lp["eh_proj"]["kernel"], np.float64)
    block_vars = {"params": lp["block"]}
    if "mtp" in variables.get("router_state", {}):  # DeepSeek: the MTP block is a MoE layer
      block_vars["router_state"] = variables["router_state"]["mtp"][f"layers_{k}"]["block"]
    h, _ = DecoderLayer(cfg.replace(moe_dispatch="dropless"), moe=cfg.layer_type == "deepseek"
                        ).apply(block_vars, jnp.asarray(x, jnp.float32), ctx)
    h = np.asarray(h, np.float64)
    out.append(_rms(h, lp["norm"]["weight"], cfg.rms_norm_eps) @ head)
  return out


@pytest.mark.parametrize("preset", PRESETS)
def test_mtp_forward_matches_direct_reference(preset):
  cfg = models.presets.get(preset, num_mtp_layers=2, moe_dispatch="dropless")
  variables = _perturbed(cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 10))
  logits, mut = models.build(cfg).apply(variables, jnp.asarray(tokens), mutable=["intermediates"])
  got = mut["intermediates"]["mtp_logits"]
  want = _reference_mtp_logits(cfg, variables, tokens)
  assert len(got) == 2
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-4, atol=2e-4)
  # the main logits are untouched by the MTP module, and a plain apply does not run it
  plain = models.build(cfg.replace(num_mtp_layers=0)).apply(
      {c: {k: v for k, v in tree.items() if k != "mtp"} for c, tree in variables.items()},
      jnp.asarray(tokens))
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain))


def _ce(logits, target):
  logits = np.asarray(logits, np.float64)
  m = logits.max()
  return np.log(np.sum(np.exp(logits - m))) + m - logits[target]


def test_mtp_loss_against_direct_reference():
  cfg = models.presets.get("deepseek_v3_tiny", num_mtp_layers=2, moe_dispatch="dropless")
  variables = _perturbed(cfg, seed=2)
  rng = np.random.default_rng(3)
  b, t = 2, 9
  inputs = rng.integers(0, cfg.vocab_size, (b, t))
  targets = rng.integers(0, cfg.vocab_size, (b, t))
  weights = rng.uniform(0.2, 1.0, (b, t)) * (rng.uniform(size=(b, t)) > 0.2)
  segments = np.array([[1] * 5 + [2] * 4, [1] * 9])  # row 0 packs two sequences
  batch = {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(targets),
           "weights": jnp.asarray(weights, jnp.float32), "segment_ids": jnp.asarray(segments)}
  logits, mut = models.build(cfg).apply(variables, batch["inputs"], batch["segment_ids"],
                                        mutable=["intermediates"])
  lam, normalizer = 0.25, 7.5
  opts = {"mtp_loss_weight": lam, "balance_loss": "none", "z_loss": 0.0}
  loss, aux = next_token_loss(logits, mut["intermediates"], batch, model_cfg=cfg, options=opts,
                              normalizer=jnp.float32(normalizer))
  main = sum(weights[i, j] * _ce(logits[i, j], targets[i, j]) for i in range(b) for j in range(t))
  depth_ce, depth_w = [], []
  for k, lk in enumerate(mut["intermediates"]["mtp_logits"], start=1):
    ce = w = 0.0
    for i in range(b):
      for j in range(t - k):  # position j predicts targets[j + k], in its own sequence only
        if segments[i, j + k] == segments[i, j]:
          ce += weights[i, j + k] * _ce(lk[i, j], targets[i, j + k])
          w += weights[i, j + k]
    depth_ce.append(ce)
    depth_w.append(w)
  np.testing.assert_allclose(np.asarray(aux["mtp_ce_sum"]), depth_ce, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["mtp_weight"]), depth_w, rtol=1e-6)
  want = main / normalizer + lam / 2 * sum(depth_ce) / normalizer
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  # the gradient reaches every MTP parameter
  def f(params):
    lg, m = models.build(cfg).apply({**variables, "params": params}, batch["inputs"],
                                    batch["segment_ids"], mutable=["intermediates"])
    return next_token_loss(lg, m["intermediates"], batch, model_cfg=cfg, options=opts,
                           normalizer=jnp.float32(normalizer))[0]
  grads = jax.grad(f)(variables["params"])["mtp"]
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


def test_param_counts_with_and_without_mtp():
  # released totals (model-spec §2, §3.1, §3.6): DeepSeek-V3 671,026,404,352 without MTP; its MTP
  # layer is one more MoE layer + enorm, hnorm, eh_proj, shared_head.norm (embedding and head
  # shared); LongCat's MTP is a dense layer with its own embedding copy
  for preset, base in (("deepseek_v3", 671_026_404_352), ("longcat_flash", 560_664_958_976)):
    cfg = models.presets.get(preset)
    assert models.count_params(cfg) == base
    d, v = cfg.hidden_size, cfg.vocab_size
    mla = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * 64 * 192 \
        + d * (512 + 64) + 512 + 512 * 64 * 256 + 64 * 128 * d
    if preset == "deepseek_v3":
      mla = d * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * 128 * 192 \
          + d * (512 + 64) + 512 + 512 * 128 * 256 + 128 * 128 * d
      ffn = 256 * 3 * d * 2048 + 3 * d * 2048 + 256 * d  # experts, shared expert, router
      own_embed = 0
    else:
      ffn = 3 * d * cfg.intermediate_size
      own_embed = v * d
    mtp = own_embed + 2 * d + 2 * d * d + (mla + ffn + 2 * d) + d
    assert models.count_params(cfg.replace(num_mtp_layers=1)) == base + mtp


# ----------------------------------------------------------------------------- conversion

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from agentic_jax import convert  # noqa: E402
from agentic_jax.convert import hf as hf_convert  # noqa: E402
from tests import hf_models as H  # noqa: E402


def _with_mtp_tensors(family: str, state: dict, cfg_hf, seed: int = 0) -> dict:
  """The tiny model's state dict plus an MTP module laid out as the released checkpoints store
  it (model-spec §2, §3.6), with random values."""
  rng = np.random.default_rng(seed)
  rand = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
  d = cfg_hf.hidden_size
  out = {k: np.asarray(v.detach().float().numpy()) for k, v in state.items()}
  if family == "deepseek":
    L, moe = cfg_hf.num_hidden_layers, cfg_hf.first_k_dense_replace  # a MoE layer to copy shapes
    for name in list(out):
      if name.startswith(f"model.layers.{moe}."):
        out[name.replace(f"model.layers.{moe}.", f"model.layers.{L}.")] = rand(out[name].shape)
    pre = f"model.layers.{L}"
    out.update({f"{pre}.enorm.weight": rand(d), f"{pre}.hnorm.weight": rand(d),
                f"{pre}.eh_proj.weight": rand((d, 2 * d)), f"{pre}.shared_head.norm.weight": rand(d),
                f"{pre}.embed_tokens.weight": out["model.embed_tokens.weight"].copy(),
                f"{pre}.shared_head.head.weight": out["lm_head.weight"].copy()})
  else:
    pre = "model.mtp.layers.0"
    for name in list(out):
      for src, dst in ((".self_attn.0.", ".self_attn."), (".mlps.0.", ".transformer_layer.mlp."),
                       (".input_layernorm.0.", ".input_layernorm."),
                       (".post_attention_layernorm.0.", ".post_attention_layernorm.")):
        if name.startswith("model.layers.0.") and src in name:
          out[name.replace("model.layers.0.", pre + ".").replace(src, dst)] = rand(out[name].shape)
    out.update({"model.mtp.embed_tokens.weight": rand(out["model.embed_tokens.weight"].shape),
                f"{pre}.enorm.m.weight": rand(d), f"{pre}.hnorm.m.weight": rand(d),
                f"{pre}.eh_proj.weight": rand((d, 2 * d)), "model.mtp.norm.weight": rand(d)})
  return out


@pytest.mark.parametrize("family", ["deepseek", "longcat"])
def test_mtp_weights_convert_both_ways(family):
  model = H.build(family).float()
  tensors = _with_mtp_tensors(family, model.state_dict(), model.config)
  cfg, variables = hf_convert.from_hf_state_dict(model.config, tensors, num_mtp_layers=1)
  assert cfg.num_mtp_layers == 1
  p = variables["params"]["mtp"]["layers_0"]
  eh = tensors["model.layers.3.eh_proj.weight" if family == "deepseek"
               else "model.mtp.layers.0.eh_proj.weight"]
  np.testing.assert_array_equal(np.asarray(p["eh_proj"]["kernel"]), eh.T)  # [emb; h] columns
  if family == "deepseek":  # the MTP block is a MoE layer with its own router bias
    np.testing.assert_array_equal(
        np.asarray(variables["router_state"]["mtp"]["layers_0"]["block"]["mlp"]["router"]
                   ["e_score_correction_bias"]),
        tensors["model.layers.3.mlp.gate.e_score_correction_bias"])
  else:
    np.testing.assert_array_equal(np.asarray(variables["params"]["mtp"]["embed_tokens"]["embedding"]),
                                  tensors["model.mtp.embed_tokens.weight"])
  back = hf_convert.to_hf_state_dict(cfg, variables)
  assert set(back) == {n for n, t in tensors.items() if t.size}
  for name, t in tensors.items():
    if family == "longcat" and name.endswith("experts.gate_up_proj"):
      t = t.copy()
      t[model.config.n_routed_experts:] = 0  # the dead zero-expert rows come back as zeros
    if t.size:
      np.testing.assert_array_equal(back[name], t, err_msg=name)
  # without num_mtp_layers the MTP tensors do not fit the main model's table
  with pytest.raises(ValueError, match="unexpected"):
    hf_convert.from_hf_state_dict(model.config, tensors)


@pytest.mark.parametrize("preset", PRESETS)
def test_num_mtp_layers_round_trips_through_the_hf_config(preset):
  """config_to_hf writes num_mtp_layers as `num_nextn_predict_layers` (DeepSeek-V3's released
  config and transformers' DeepseekV3Config; vLLM reads the same name for LongCat-Flash);
  transformers' config class built from that config.json, then config_from_hf, gives the same
  config back. A converted checkpoint's config.json (`base`) keeps its value when our model has
  no MTP module (its MTP tensors were carried through); the importers build the module only
  when asked."""
  for depth in (0, 1, 2):
    cfg = models.presets.get(preset, num_mtp_layers=depth, moe_dispatch="dropless")
    hf = convert.config_to_hf(cfg)
    assert hf["num_nextn_predict_layers"] == depth and "num_mtp_layers" not in hf
    kwargs = {k: v for k, v in hf.items() if k != "model_type"}
    hf_cfg = transformers.AutoConfig.for_model(hf["model_type"], **kwargs)
    assert convert.config_from_hf(hf_cfg) == cfg
  base = {"num_nextn_predict_layers": 1, "bos_token_id": 0}
  assert convert.config_to_hf(cfg.replace(num_mtp_layers=0), base=base)[
      "num_nextn_predict_layers"] == 1
  assert convert.config_to_hf(cfg.replace(num_mtp_layers=2), base=base)[
      "num_nextn_predict_layers"] == 2
  # a transformers model whose config announces an MTP layer holds no MTP tensors
  family = "deepseek" if preset.startswith("deepseek") else "longcat"
  model = H.build(family).float()
  model.config.num_nextn_predict_layers = 1
  assert convert.config_from_hf(model.config).num_mtp_layers == 1
  assert convert.from_hf(model)[0].num_mtp_layers == 0


def test_mtp_through_checkpoint_directories(tmp_path):
  """save_pretrained + the released layer-L tensors (per-expert, as the release stores them)
  -> convert.hf_to_checkpoint(num_mtp_layers=1) -> the MTP is a module of the checkpoint's
  model -> checkpoint_to_hf writes the same MTP tensors back."""
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  model = H.build("deepseek").float()
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  model.save_pretrained(hf_dir)
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(path)
  rng = np.random.default_rng(5)
  mtp = {n.replace("model.layers.1.", "model.layers.3."): rng.standard_normal(t.shape).astype(t.dtype)
         for n, t in tensors.items() if n.startswith("model.layers.1.")}
  d = model.config.hidden_size
  mtp.update({"model.layers.3.enorm.weight": rng.standard_normal(d).astype(np.float32),
              "model.layers.3.hnorm.weight": rng.standard_normal(d).astype(np.float32),
              "model.layers.3.eh_proj.weight": rng.standard_normal((d, 2 * d)).astype(np.float32),
              "model.layers.3.shared_head.norm.weight": rng.standard_normal(d).astype(np.float32)})
  save_file({**tensors, **mtp}, path, metadata={"format": "pt"})
  report = convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None, num_mtp_layers=1)
  assert report["mtp_tensors_kept"] == 0  # all loaded into the module, none carried
  cfg, variables = convert.load_checkpoint(ckpt)
  assert cfg.num_mtp_layers == 1
  np.testing.assert_array_equal(
      np.asarray(variables["params"]["mtp"]["layers_0"]["block"]["mlp"]["experts"]["down_proj"][2]),
      mtp["model.layers.3.mlp.experts.2.down_proj.weight"].T)
  convert.checkpoint_to_hf(ckpt, out, say=lambda _: None)
  written = load_file(os.path.join(out, "model.safetensors"))
  for name, t in mtp.items():
    np.testing.assert_array_equal(written[name], t, err_msg=name)
  # its config.json announces the module (the source's said 0), and reads back with it
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["num_nextn_predict_layers"] == 1
  assert convert.checkpoint.read_hf_config(out)[0].num_mtp_layers == 1


def test_mid_training_step_trains_the_mtp_module():
  """The mid-training job's config and step with model.num_mtp_layers = 1: the config validates,
  the step's metrics carry the per-depth MTP loss, and the MTP parameters move."""
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train.input import SyntheticIterator  # pylint: disable=import-outside-toplevel
  from tests.train_fixtures import small_config  # pylint: disable=import-outside-toplevel
  config = small_config(**{"model.num_mtp_layers": 1, "objective.mtp_loss_weight": 0.5})
  config_lib.validate_midtrain(config, num_devices=1, num_processes=1)
  model_cfg = config_lib.model_config(config.model)
  assert model_cfg.num_mtp_layers == 1
  tx = optim_lib.make_optimizer(config.optim)
  state = state_lib.init_state(model_cfg, tx, config.seed)
  step = jax.jit(step_lib.make_train_step(model_cfg, config, num_kinds=1, num_sources=1))
  batch = next(SyntheticIterator(batch_size=4, seq_len=32, vocab_size=model_cfg.vocab_size,
                                 seed=3))
  new_state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
  assert metrics["mtp_loss"].shape == (1,) and np.isfinite(float(metrics["mtp_loss"][0]))
  assert float(metrics["mtp_loss"][0]) > 0.5 * np.log(model_cfg.vocab_size)  # untrained: ~ln V
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params["mtp"],
                       new_state.params["mtp"])
  assert all(jax.tree.leaves(moved))
  bad = small_config(**{"model.num_mtp_layers": 1, "objective.mtp_loss_weight": -1.0})
  with pytest.raises(config_lib.ConfigError, match="mtp_loss_weight"):
    config_lib.validate_midtrain(bad, num_devices=1, num_processes=1)
