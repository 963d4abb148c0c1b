"""Memory planner: hand-derived numbers, the 560B preset from shapes only, the CLI, and the
planner's state bytes == the bytes each of 8 fake devices really holds (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from agentic_jax import models, parallel
from agentic_jax.parallel import memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAN = [sys.executable, os.path.join(ROOT, "launch", "plan.py")]


def test_per_device_bytes_by_hand():
  x = jax.ShapeDtypeStruct((128, 64), jnp.float32)
  sizes = {"data": 2, "fsdp": 2, "tensor": 2}
  assert parallel.per_device_bytes(x, P("tensor", "fsdp"), sizes) == 128 * 64 * 4 // 4
  assert parallel.per_device_bytes(x, P(None, ("data", "fsdp")), sizes) == 128 * 64 * 4 // 4
  assert parallel.per_device_bytes(x, P(), sizes) == 128 * 64 * 4


def test_replicated_params_are_the_whole_model():
  cfg = models.presets.get("youtu_llm_tiny")  # dense: no router state
  state = memory.state_bytes(cfg, {"data": 8})
  n = models.count_params(cfg)
  assert state["params"] == state["gradients"] == 4 * n
  assert state["optimizer"] == 2 * 4 * n + 4  # mu, nu (f32) and the int32 step count
  assert "grad accum" not in state
  assert memory.state_bytes(cfg, {"data": 8}, grad_accum=4)["grad accum"] == 4 * n


def test_full_longcat_flash_plan_from_shapes_by_hand():
  """560B on data 8 x fsdp 32 x expert 16: every routed-expert array is split 16 x 32 = 512
  ways, every other parameter exactly 32 ways (embed or a latent rank over fsdp; tensor = 1),
  and the router bias (28 layers x 768 slots, f32) is replicated."""
  cfg = models.presets.get("longcat_flash")
  start = time.time()
  state = memory.state_bytes(cfg, {"data": 8, "fsdp": 32, "expert": 16})
  assert time.time() - start < 30
  experts = 28 * 512 * 3 * 6144 * 2048
  total = models.count_params(cfg)
  assert total == 560_664_958_976
  want_params = 4 * (experts // 512 + (total - experts) // 32)
  assert state["gradients"] == want_params
  assert state["params"] == want_params + 28 * 768 * 4
  assert state["optimizer"] == 2 * want_params + 4


def test_activation_estimate_by_hand():
  # remat "full" keeps only each layer's input: layers * tokens * d * bytes.
  cfg = models.presets.get("longcat_flash_tiny", remat_policy="full")
  act = memory.activation_bytes(cfg, {"data": 1}, batch_per_device=2, seq_len=8)
  assert act["saved"] == 2 * 16 * 64 * 4
  # logits (f32) + their gradient, plus the embedding output: 16 tokens * (2*128*4 + 64*4).
  assert act["logits+embed"] == 16 * (2 * 128 * 4 + 64 * 4)
  act_tp = memory.activation_bytes(cfg, {"tensor": 2}, batch_per_device=2, seq_len=8)
  assert act_tp["logits+embed"] == 16 * (2 * 64 * 4 + 64 * 4)  # vocab split over tensor
  assert act_tp["recompute peak"] < act["recompute peak"]  # heads / FFN width split too
  # Without remat nothing is recomputed and every layer keeps everything.
  none = memory.activation_bytes(cfg.replace(remat_policy="none"), {"data": 1},
                                 batch_per_device=2, seq_len=8)
  assert none["recompute peak"] == 0
  # 2 layers, each its full set (= the one-layer recompute peak) plus its input.
  assert none["saved"] == pytest.approx(2 * act["recompute peak"] + act["saved"], abs=2)
  dots = memory.activation_bytes(cfg.replace(remat_policy="dots"), {"data": 1},
                                 batch_per_device=2, seq_len=8)
  assert act["saved"] < dots["saved"] < none["saved"]


def test_per_device_batch():
  sizes = {"data": 2, "fsdp": 2, "tensor": 2, "expert": 4}
  assert memory.per_device_batch(64, sizes, grad_accum=2) == 2  # 64 / (2*2*4) / 2
  with pytest.raises(ValueError, match="does not split"):
    memory.per_device_batch(24, sizes)


def test_plan_fits_verdict():
  cfg = models.presets.get("longcat_flash_tiny")
  plan = memory.plan_memory(cfg, {"data": 1}, batch_per_device=1, seq_len=16,
                            device_memory_gib=1e-3, reserve=0.5)
  assert plan.total == sum(b for _, b, _ in plan.rows)
  assert plan.usable_bytes == int(1e-3 * 1024 ** 3 * 0.5)
  assert plan.fits is False and "DOES NOT FIT" in plan.table()
  assert memory.plan_memory(cfg, {"data": 1}, batch_per_device=1, seq_len=16).fits is None


# -------------------------------------------------------------------- CLI


def _plan(*args, timeout=120):
  return subprocess.run(PLAN + list(args), cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_full_preset_json():
  r = _plan("--model=longcat_flash", "--mesh=data:8,fsdp:32,expert:16", "--per_device_batch=1",
            "--seq_len=4096", "--device_memory_gib=80", "--json")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["mesh"] == {"data": 8, "fsdp": 32, "tensor": 1, "expert": 16}
  assert out["total"] == sum(out["bytes"].values())
  assert out["bytes"]["params"] == memory.state_bytes(
      models.presets.get("longcat_flash"), out["mesh"])["params"]
  assert out["fits"] is True


def test_cli_with_training_config():
  r = _plan("--config=configs/midtrain.py:longcat_flash", "--mesh=data:8,fsdp:32,expert:16")
  assert r.returncode == 0, r.stderr
  assert "data=8 x fsdp=32 x expert=16 (4096 devices)" in r.stdout
  assert "note: config data.batch_size" in r.stdout  # 1024 rows cannot cover 4096 shards
  assert "FITS" in r.stdout
  r = _plan("--config=configs/midtrain.py:tiny", "--num_devices=8", "--per_device_batch=2",
            "--config.model.remat_policy=dots")
  assert r.returncode == 0, r.stderr
  assert "remat=dots" in r.stdout


def test_cli_errors():
  r = _plan("--model=longcat_flash_tiny", "--mesh=data:3,tensor:0", "--per_device_batch=1")
  assert r.returncode == 2 and "--mesh.tensor" in r.stderr
  r = _plan("--model=longcat_flash_tiny", "--mesh=expert:3", "--per_device_batch=1")
  assert r.returncode == 2 and "'expert', size 4" in r.stderr
  r = _plan("--mesh=data:2", "--per_device_batch=1")
  assert r.returncode == 2 and "--model" in r.stderr
  r = _plan("--model=deepseek_v3_tiny", "--mesh=data:2", "--per_device_batch=1",
            "--device_memory_gib=0.00001")
  assert r.returncode == 1 and "DOES NOT FIT" in r.stdout


def test_cli_config_errors_are_one_line():
  # a mistyped config key was a KeyError traceback here (launch/train.py already caught it)
  r = _plan("--config=configs/midtrain.py:tiny", "--config.modle.x=1", "--num_devices=8")
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines() == [r.stderr.strip()]
  assert "--config.modle.x" in r.stderr and 'Did you mean "model"' in r.stderr
  r = _plan("--config=configs/midtrain.py:bogus")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "unknown variant 'bogus'" in r.stderr


# ------------------------------------------------------ against real arrays


def test_plan_equals_bytes_on_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "planner_worker.py")], cwd=ROOT,
                     env=env, capture_output=True, text=True, timeout=400)
  lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
  assert r.returncode == 0 and lines, r.stderr[-5000:]
  cases = json.loads(lines[-1][len("RESULT "):])["cases"]
  assert len(cases) == 2
  for case in cases:
    plan, actual = case["plan"], case["actual"]
    # Every split is even, so all 8 devices hold the same number of bytes.
    for key in actual:
      assert len(set(actual[key])) == 1, (case["preset"], key, actual[key])
    assert plan["params"] == actual["params"][0], case
    assert plan["optimizer"] == actual["optimizer"][0], case
    assert plan["gradients"] == actual["trainable"][0], case
