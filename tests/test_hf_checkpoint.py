"""Hugging Face checkpoint directories <-> orbax checkpoints (issue 15; convert/checkpoint.py).

Tiny random transformers models of each family are saved with save_pretrained (sharded with an
index, or one file without), imported (launch/convert.py --from_hf), run (logits = the
transformers model's), exported (--from_ckpt --to_hf) and loaded back with from_pretrained
(logits equal again). DeepSeek-V3 with block-quantised FP8 weights and MTP tensors: the FP8
weights import as the dequantised values (the reference dequantises in torch here), the MTP
tensors come back bit for bit in their stored dtype. Files that do not fit give one-line
errors listing the tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from agentic_jax import convert, models  # noqa: E402
from agentic_jax.convert import safetensors_io  # noqa: E402
from tests import hf_models as H  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT = os.path.join(ROOT, "launch", "convert.py")
BLOCK = 16  # the FP8 test's quantization block (DeepSeek-V3 uses 128 x 128)


def _float32_model(variant: str, seed: int = 3, **overrides):
  model = H.build(variant, seed=seed, **overrides).float()
  return model


def _ours(ckpt: str, toks: np.ndarray) -> np.ndarray:
  cfg, variables = convert.load_checkpoint(ckpt)
  out = models.build(cfg).apply(variables, jnp.asarray(toks))
  return np.asarray(out[0] if isinstance(out, tuple) else out, np.float64)


def _theirs(model, toks: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(toks, np.int64))).logits.double().numpy()


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, CONVERT, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


@pytest.mark.parametrize("variant,shard", [("longcat", "60KB"), ("deepseek", None),
                                           ("youtu", "40KB"), ("youtu_untied_halfsplit", None)])
def test_import_export_round_trip_through_files(variant, shard, tmp_path):
  model = _float32_model(variant)
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  model.save_pretrained(hf_dir, **({"max_shard_size": shard} if shard else {}))
  assert os.path.exists(os.path.join(hf_dir, safetensors_io.INDEX_FILE)) == bool(shard)
  r = _cli(f"--from_hf={hf_dir}", f"--to={ckpt}")
  assert r.returncode == 0, r.stderr[-3000:]
  toks = H.tokens(2, 12, seed=1)
  ref = _theirs(model, toks)
  np.testing.assert_allclose(_ours(ckpt, toks), ref, rtol=2e-5, atol=2e-5)
  r = _cli(f"--from_ckpt={ckpt}", f"--to_hf={out}", "--max_shard_size=50KB")
  assert r.returncode == 0, r.stderr[-3000:]
  index = json.load(open(os.path.join(out, safetensors_io.INDEX_FILE)))
  assert len(set(index["weight_map"].values())) > 1  # sharded, with an index
  import transformers  # pylint: disable=import-outside-toplevel
  back = transformers.AutoModelForCausalLM.from_pretrained(  # the kernels `model` was built with
      out, attn_implementation="eager", experts_implementation="eager").eval()
  assert type(back) is type(model)
  # the same tensors (LongCat's dead zero-expert rows come back as zeros) ...
  got, want = back.state_dict(), model.state_dict()
  for name, t in want.items():
    expect = t
    if name.endswith("experts.gate_up_proj") and variant.startswith("longcat"):
      n = model.config.n_routed_experts
      expect = torch.cat([t[:n], torch.zeros_like(t[n:])])
    torch.testing.assert_close(got[name], expect, rtol=0, atol=0, msg=name)
  # ... so the same logits
  np.testing.assert_array_equal(_theirs(back, toks), ref)


def _quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """Block-wise FP8 (e4m3) with per-block scale_inv = amax / 448, as DeepSeek-V3 ships."""
  o, i = w.shape
  rows, cols = -(-o // BLOCK), -(-i // BLOCK)
  scale = torch.empty(rows, cols)
  q = torch.empty(o, i, dtype=torch.float8_e4m3fn)
  for a in range(rows):
    for b in range(cols):
      blk = w[a * BLOCK:(a + 1) * BLOCK, b * BLOCK:(b + 1) * BLOCK]
      s = blk.abs().max().clamp(min=1e-8) / 448.0
      scale[a, b] = s
      q[a * BLOCK:(a + 1) * BLOCK, b * BLOCK:(b + 1) * BLOCK] = (blk / s).to(torch.float8_e4m3fn)
  return q, scale


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  full = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:q.shape[0], :q.shape[1]]
  return q.to(torch.float32) * full


def test_deepseek_fp8_weights_dequantise_and_mtp_tensors_are_carried(tmp_path):
  model = _float32_model("deepseek")
  hf_dir, ckpt, out = (str(tmp_path / n) for n in ("hf", "ckpt", "out"))
  model.save_pretrained(hf_dir)
  tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
  dequantized = {}
  for name in list(tensors):
    if name.endswith("_proj.weight") and ".layers." in name and "norm" not in name:
      q, s = _quantize(tensors[name])
      tensors[name], tensors[name + "_scale_inv"] = q, s
      dequantized[name] = _dequantize(q, s)
  # an MTP module at layer index num_hidden_layers, as the released checkpoint stores it
  n_layers = model.config.num_hidden_layers
  mtp = {f"model.layers.{n_layers}.eh_proj.weight": torch.randn(64, 128),
         f"model.layers.{n_layers}.enorm.weight": torch.randn(64).to(torch.bfloat16)}
  q, s = _quantize(torch.randn(32, 64))
  mtp[f"model.layers.{n_layers}.self_attn.q_a_proj.weight"] = q
  mtp[f"model.layers.{n_layers}.self_attn.q_a_proj.weight_scale_inv"] = s
  tensors.update(mtp)
  save_file(tensors, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
  config = json.load(open(os.path.join(hf_dir, "config.json")))
  config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                   "weight_block_size": [BLOCK, BLOCK]}
  json.dump(config, open(os.path.join(hf_dir, "config.json"), "w"))
  report = convert.hf_to_checkpoint(hf_dir, ckpt, say=lambda _: None)
  assert report["mtp_tensors_kept"] == len(mtp)
  assert report["dequantized_fp8"] == len(dequantized)  # the MTP weights stay FP8, carried
  # the reference: transformers with the weights dequantised here (its experts live fused in
  # memory: gate_up_proj[j] = [gate_j; up_j], down_proj[j] = down_j)
  state = model.state_dict()
  for name in list(state):
    if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
      prefix, fused = name.rsplit(".", 1)
      state[name] = torch.stack([
          torch.cat([dequantized[f"{prefix}.{j}.gate_proj.weight"],
                     dequantized[f"{prefix}.{j}.up_proj.weight"]])
          if fused == "gate_up_proj" else dequantized[f"{prefix}.{j}.down_proj.weight"]
          for j in range(state[name].shape[0])])
    elif name in dequantized:
      state[name] = dequantized[name]
  model.load_state_dict(state)
  toks = H.tokens(2, 12, seed=2)
  np.testing.assert_allclose(_ours(ckpt, toks), _theirs(model, toks), rtol=2e-5, atol=2e-5)
  convert.checkpoint_to_hf(ckpt, out, say=lambda _: None)
  written = load_file(os.path.join(out, "model.safetensors"))
  for name, t in mtp.items():  # bit for bit, in the stored dtype
    assert written[name].dtype == t.dtype, name
    assert torch.equal(written[name].view(torch.uint8), t.view(torch.uint8)), name
  assert "quantization_config" not in json.load(open(os.path.join(out, "config.json")))
  torch.testing.assert_close(written["model.layers.1.mlp.experts.3.up_proj.weight"],
                             dequantized["model.layers.1.mlp.experts.3.up_proj.weight"])


def test_fused_expert_tensors_import_like_per_expert_ones(tmp_path):
  """The in-memory transformers layout (experts.gate_up_proj [E, 2I, d], down_proj [E, d, I]),
  as some exports store it, gives the same checkpoint as the per-expert files."""
  model = _float32_model("longcat")
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  model.save_pretrained(a)
  os.makedirs(b)
  save_file({k: v.contiguous() for k, v in model.state_dict().items()},
            os.path.join(b, "model.safetensors"), metadata={"format": "pt"})
  for f in ("config.json",):
    with open(os.path.join(a, f)) as src, open(os.path.join(b, f), "w") as dst:
      dst.write(src.read())
  assert any(k.endswith("experts.gate_up_proj") for k in load_file(os.path.join(b, "model.safetensors")))
  convert.hf_to_checkpoint(a, str(tmp_path / "ca"), say=lambda _: None)
  convert.hf_to_checkpoint(b, str(tmp_path / "cb"), say=lambda _: None)
  _, va = convert.load_checkpoint(str(tmp_path / "ca"))
  _, vb = convert.load_checkpoint(str(tmp_path / "cb"))
  import jax  # pylint: disable=import-outside-toplevel
  jax.tree.map(np.testing.assert_array_equal, va, vb)


@pytest.fixture
def saved_youtu(tmp_path):
  model = _float32_model("youtu")
  hf_dir = str(tmp_path / "hf")
  model.save_pretrained(hf_dir)
  return hf_dir


def _edit_tensors(hf_dir: str, fn) -> None:
  path = os.path.join(hf_dir, "model.safetensors")
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("case,message", [
    ("missing", "missing: model.layers.1.mlp.down_proj.weight"),
    ("unexpected", "unexpected: model.layers.0.mlp.extra.weight"),
    ("shape", "model.layers.0.mlp.up_proj.weight: shape (64, 64)"),
    ("model_type", "model_type 'llama' is not supported"),
    ("not_safetensors", "not a safetensors file"),
])
def test_bad_sources_fail_with_one_line(saved_youtu, tmp_path, case, message):
  hf_dir = saved_youtu
  if case == "missing":
    _edit_tensors(hf_dir, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
  elif case == "unexpected":
    _edit_tensors(hf_dir, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.ones(2)}))
  elif case == "shape":
    _edit_tensors(hf_dir, lambda t: t.update({"model.layers.0.mlp.up_proj.weight":
                                              torch.ones(64, 64)}))
  elif case == "model_type":
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    cfg["model_type"] = "llama"
    json.dump(cfg, open(os.path.join(hf_dir, "config.json"), "w"))
  else:
    with open(os.path.join(hf_dir, "model.safetensors"), "wb") as f:
      f.write(b"\xff" * 64)
  r = _cli(f"--from_hf={hf_dir}", f"--to={tmp_path / 'ckpt'}")
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
  assert not os.path.exists(tmp_path / "ckpt" / "checkpoints" / "0")  # nothing half-written


_MEASURE = r"""
import sys, threading, time
from agentic_jax.convert import checkpoint as C
import jax
import orbax.checkpoint  # noqa: F401
from orbax.checkpoint.experimental.v1 import partial  # noqa: F401
def anon_mib():  # heap memory: file pages mapped by the process (libraries, caches) excluded
  for line in open("/proc/self/status"):
    if line.startswith("RssAnon"):
      return int(line.split()[1]) / 1024
C.read_hf_config(sys.argv[1])  # every import the conversion needs, before the baseline
jax.numpy.zeros(1).block_until_ready()
base, peak, done = anon_mib(), [0.0], threading.Event()
def sample():
  while not done.is_set():
    peak[0] = max(peak[0], anon_mib())
    time.sleep(0.002)
t = threading.Thread(target=sample, daemon=True)
t.start()
C.hf_to_checkpoint(sys.argv[1], sys.argv[2], batch_bytes=4 << 20, say=lambda _: None)
done.set()
t.join()
print(base, max(peak[0], anon_mib()))
"""


def test_conversion_streams_under_a_memory_bound_far_below_the_model(tmp_path):
  """A ~220 MiB model (16 wide layers, largest tensor 4 MiB) converts with peak host memory
  growing by well under half its size: tensors are read, converted and written a few MiB at
  a time (the converting process's anonymous resident memory, sampled every 2 ms, over its
  value after imports)."""
  L, D, I, V, H, dn, dr, dv, rq, rkv = 16, 512, 2048, 4096, 8, 32, 16, 32, 128, 64
  hf_dir = str(tmp_path / "hf")
  os.makedirs(hf_dir)
  json.dump(dict(model_type="youtu", vocab_size=V, hidden_size=D, intermediate_size=I,
                 num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H,
                 q_lora_rank=rq, kv_lora_rank=rkv, qk_nope_head_dim=dn, qk_rope_head_dim=dr,
                 v_head_dim=dv, max_position_embeddings=256, tie_word_embeddings=True,
                 rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
            open(os.path.join(hf_dir, "config.json"), "w"))
  specs = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
  for i in range(L):
    p = f"model.layers.{i}."
    specs.update({
        p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
        p + "self_attn.q_a_proj.weight": (rq, D), p + "self_attn.q_a_layernorm.weight": (rq,),
        p + "self_attn.q_b_proj.weight": (H * (dn + dr), rq),
        p + "self_attn.kv_a_proj_with_mqa.weight": (rkv + dr, D),
        p + "self_attn.kv_a_layernorm.weight": (rkv,),
        p + "self_attn.kv_b_proj.weight": (H * (dn + dv), rkv),
        p + "self_attn.o_proj.weight": (D, H * dv), p + "mlp.gate_proj.weight": (I, D),
        p + "mlp.up_proj.weight": (I, D), p + "mlp.down_proj.weight": (D, I)})
  rng = np.random.default_rng(0)
  safetensors_io.write_dir(hf_dir, {k: (s, np.float32) for k, s in specs.items()},
                           lambda k: rng.standard_normal(specs[k], dtype=np.float32) * 0.02,
                           max_shard_bytes=64 << 20)
  size_mib = sum(np.prod(s) * 4 for s in specs.values()) / 2**20
  assert size_mib > 200
  r = subprocess.run([sys.executable, "-c", _MEASURE, hf_dir, str(tmp_path / "ckpt")], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  base, peak = map(float, r.stdout.split()[-2:])
  assert peak - base < 0.5 * size_mib, (base, peak, size_mib)
  cfg, variables = convert.load_checkpoint(str(tmp_path / "ckpt"))  # and it is all there
  assert cfg.num_layers == L
  np.testing.assert_array_equal(
      np.asarray(variables["params"]["layers_7"]["mlp"]["down_proj"]),
      safetensors_io.SafetensorsDir(hf_dir).read("model.layers.7.mlp.down_proj.weight").T)


def test_written_sharded_for_a_mesh(tmp_path):
  """--mesh=fsdp:2,expert:2: every array is stored in chunks that tile the device shards of the
  training layout (parallel/rules.py), and reads back equal to the unsharded conversion."""
  from etils import epath  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  model = _float32_model("deepseek")
  hf_dir = str(tmp_path / "hf")
  model.save_pretrained(hf_dir)
  r = _cli(f"--from_hf={hf_dir}", f"--to={tmp_path / 'sharded'}", "--mesh=fsdp:2,expert:2")
  assert r.returncode == 0, r.stderr[-3000:]
  convert.hf_to_checkpoint(hf_dir, str(tmp_path / "plain"), say=lambda _: None)
  cfg, plain = convert.load_checkpoint(str(tmp_path / "plain"))
  _, sharded = convert.load_checkpoint(str(tmp_path / "sharded"))
  import jax  # pylint: disable=import-outside-toplevel
  jax.tree.map(np.testing.assert_array_equal, plain, sharded)
  meta = ocp.StandardCheckpointHandler().metadata(
      epath.Path(tmp_path / "sharded" / "checkpoints" / "0" / "state")).tree
  specs = parallel.variable_specs(cfg, parallel.abstract_mesh(
      {"data": 1, "fsdp": 2, "tensor": 1, "expert": 2}))
  sizes = {"data": 1, "fsdp": 2, "tensor": 1, "expert": 2}
  split = 0
  for path in (("params", "layers_1", "mlp", "experts", "gate_proj"),
               ("params", "embed_tokens", "embedding"),
               ("params", "layers_0", "self_attn", "q_b_proj", "kernel")):
    leaf, spec = meta, specs
    for k in path:
      leaf, spec = leaf[k], spec[k]
    want = []
    for dim, axes in zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec))):
      names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
      parts = int(np.prod([sizes[a] for a in names])) if names else 1
      want.append(dim // parts)
      split += parts > 1
    # chunks tile each device's shard (orbax may split a replicated shard further among the
    # replicas that write it), so no chunk straddles two shards
    chunk = tuple(leaf.storage.chunk_shape)
    assert all(w % c == 0 for w, c in zip(want, chunk)), (path, leaf.storage, spec)
  assert split >= 2  # the layout really splits these arrays


def test_a_killed_conversion_is_redone_cleanly(tmp_path):
  """A conversion killed mid-way leaves orbax's partial-save directory; rerunning the command
  removes it and converts from scratch (nothing of the half-written try is mistaken for data)."""
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  model = _float32_model("deepseek")
  hf_dir, ckpt = str(tmp_path / "hf"), str(tmp_path / "ckpt")
  model.save_pretrained(hf_dir, max_shard_size="30KB")
  proc = subprocess.Popen([sys.executable, CONVERT, f"--from_hf={hf_dir}", f"--to={ckpt}",
                           "--batch_mb=1"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  steps = os.path.join(ckpt, "checkpoints")
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None and not (os.path.isdir(steps) and any(
      n.startswith("0.") for n in os.listdir(steps))):
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  if not any(n.startswith("0.") for n in os.listdir(steps)):  # finished before the kill
    pytest.skip("the conversion finished before it could be killed")
  os.makedirs(os.path.join(steps, "0.partial_save", "junk"), exist_ok=True)
  assert not os.path.exists(os.path.join(steps, "0"))
  r = _cli(f"--from_hf={hf_dir}", f"--to={ckpt}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert sorted(os.listdir(steps)) == ["0"]
  toks = H.tokens(1, 8, seed=4)
  np.testing.assert_allclose(_ours(ckpt, toks), _theirs(model, toks), rtol=2e-5, atol=2e-5)
