"""benchmarks/accel_train.py: the --quick run end to end (JSON keys, MFU against the labelled
denominator), the rated-peak choice for known devices, and the full-size models as documented
(parameter counts, a traced train step) so the GPU run does not fail on its configuration."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {"model", "attention_impl", "dtype", "params_total", "params_activated", "batch",
            "seq_len", "tokens_per_step", "step_ms", "tokens_per_s", "model_flops_per_step",
            "model_tflops", "mfu", "decode", "attention_path", "remat_policy", "notes"}
DECODE_KEYS = {"batch", "prompt_len", "new_tokens", "cache_len", "prefill_ms", "generate_ms",
               "decode_tokens_per_s", "end_to_end_tokens_per_s", "dtype", "new_tokens_emitted"}


def _bench():
  spec = importlib.util.spec_from_file_location(
      "accel_train", os.path.join(ROOT, "benchmarks", "accel_train.py"))
  mod = importlib.util.module_from_spec(spec)
  saved = list(sys.path)
  try:  # the script puts the repo on sys.path for its own imports
    spec.loader.exec_module(mod)
  finally:
    sys.path[:] = saved
  return mod


@pytest.mark.slow  # a subprocess that compiles two train steps and two decoders (~40 s on 2 cores)
def test_quick_run_writes_the_table_and_json(tmp_path):
  out = tmp_path / "accel.json"
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "accel_train.py"),
                         "--quick", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| model | attention |" in proc.stdout
  res = json.loads(out.read_text())
  assert {"rows", "device_kind", "mfu_denominator", "flops_formula", "quick", "jax"} <= set(res)
  assert res["quick"] is True
  assert [r["model"] for r in res["rows"]] == ["dense", "moe"]
  denom = res["mfu_denominator"]
  bench = _bench()
  rated = bench.peaks.lookup(res["device_kind"])
  if rated is not None:  # a known accelerator: its rated bf16 peak
    assert denom["rated"] and denom["flops"] == rated.bf16 and "rated peak" in denom["label"]
  else:  # CPU: the best matmul of the run, and labelled so
    assert not denom["rated"] and denom["label"] == "best-of-run f32 matmul"
    assert denom["flops"] == res["matmul_best_flops"] > 0
  for r in res["rows"]:
    assert ROW_KEYS <= set(r) and DECODE_KEYS <= set(r["decode"]), r
    assert r["tokens_per_step"] == r["batch"] * r["seq_len"]
    assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / (r["step_ms"] / 1e3)
                                     / denom["flops"])
    assert r["decode"]["new_tokens_emitted"] == r["decode"]["batch"] * r["decode"]["new_tokens"]
    assert r["attention_path"]["kind"] in ("cudnn", "xla")
  moe = res["rows"][1]
  assert moe["moe_dispatch"] == "dropless_ragged" and moe["params_activated"] < moe["params_total"]


@pytest.mark.parametrize("kind, name", [("NVIDIA H100 80GB HBM3", "H100 SXM"),
                                        ("NVIDIA H200", "H200 SXM"), ("TPU v5 lite", "TPU v5e")])
def test_known_devices_use_the_rated_bf16_peak(kind, name):
  denom = _bench().mfu_denominator(kind, None)  # no matmul ceiling needed, nor measured
  assert denom["rated"] and f"rated peak ({name} bf16)" == denom["label"]
  assert denom["flops"] == _bench().peaks.lookup(kind).bf16


def test_full_size_models_as_documented_and_trace():
  bench = _bench()
  from agentic_jax import models  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import flops, optim, state, step  # pylint: disable=import-outside-toplevel
  from agentic_jax.train.input import SyntheticIterator  # pylint: disable=import-outside-toplevel
  dense, moe = bench.dense_config(False), bench.moe_config(False)
  assert models.count_params(dense) == 1_536_837_632
  assert models.count_params(moe) == 2_845_927_424
  k = bench._balanced_ffn_per_token(moe)  # pylint: disable=protected-access
  assert k == 4.0
  assert 1.4e9 < flops.flop_model(moe).activated_params(k) < 1.5e9
  assert (dense.dtype, moe.dtype, moe.dispatch_kernel) == ("bfloat16", "bfloat16", "dropless_ragged")
  for cfg in (dense, moe):
    cfg = cfg.replace(attention_impl="fused")
    config = bench.train_config(cfg, 8, 2048)
    fn = step.make_train_step(cfg, config, num_kinds=1, num_sources=1)
    st = state.abstract_state(cfg, optim.make_optimizer(config.optim), 0)
    batch = next(SyntheticIterator(batch_size=8, seq_len=2048, vocab_size=cfg.vocab_size, seed=0))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    _, metrics = jax.eval_shape(fn, st, batch)
    assert metrics["loss"].shape == ()
