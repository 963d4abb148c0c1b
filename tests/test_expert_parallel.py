"""Expert parallelism (moe_dispatch="expert_parallel"): equal to the dense dispatch on a
fsdp 2 x expert 4 mesh (forward and gradients), capacity drops as a numpy model predicts, the
ScMoE exchange independent of FFN_0 / MLA_1, and the single-device fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax import models, parallel
from agentic_jax.models import moe_dispatch, moe_expert_parallel
from agentic_jax.parallel import expert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "expert_parallel_worker.py")
XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
CASES = ("longcat_flash_tiny", "deepseek_v3_tiny", "drops")


def test_send_capacity_by_hand():
  assert moe_expert_parallel.send_capacity(8, 2, 4, 1.0) == 4  # ceil(16 / 4)
  assert moe_expert_parallel.send_capacity(8, 2, 4, 4.0) == 16  # = m*K: nothing can drop
  assert moe_expert_parallel.send_capacity(8, 2, 4, 100.0) == 16  # capped at m*K
  assert moe_expert_parallel.send_capacity(3, 1, 4, 1.0) == 1


def test_scmoe_exchange_does_not_depend_on_ffn0_or_mla1():
  cfg = models.presets.get("longcat_flash_tiny", moe_dispatch="expert_parallel")
  deps = expert.moe_exchange_dependencies(cfg, {"fsdp": 2, "expert": 4})
  # It reads MLA_0, the norms in front of it and the router ("" = the layer's residual add) ...
  assert deps["inputs"] == {"", "input_layernorm_0", "self_attn_0", "post_attention_layernorm_0",
                            "mlp"}
  # ... and nothing of FFN_0, MLA_1 or FFN_1; only the final residual add reads its output.
  assert deps["consumers"] == {"", "mlp"}


def test_exchange_dependency_check_needs_the_exchange():
  cfg = models.presets.get("longcat_flash_tiny", moe_dispatch="dense")
  with pytest.raises(ValueError, match="expert_parallel"):
    expert.moe_exchange_dependencies(cfg, {"fsdp": 2, "expert": 4})


def _trace(cfg, sizes):
  with jax.sharding.use_abstract_mesh(parallel.abstract_mesh(sizes)):
    jax.make_jaxpr(lambda v, t: models.build(cfg).apply(v, t))(
        models.abstract_variables(cfg), jax.ShapeDtypeStruct((8, 4), jnp.int32))


def test_expert_parallel_config_errors():
  cfg = models.presets.get("longcat_flash_tiny", moe_dispatch="expert_parallel")  # 4 experts
  with pytest.raises(ValueError, match="n_routed_experts"):
    _trace(cfg, {"data": 2, "expert": 3})
  with pytest.raises(ValueError, match="ep_token_axes"):
    _trace(cfg.replace(ep_token_axes=("data", "fsdp")), {"fsdp": 2, "expert": 4})


def test_collective_overlap_parser():
  hlo = "\n".join([
      "  %p = f32[8]{0} parameter(0)",
      '  %all-to-all-start = ((f32[8]{0}), f32[8]{0}) all-to-all-start(f32[8]{0} %p), '
      'channel_id=1, backend_config={"collective_backend_config":{"is_sync":false}}',
      '  %fusion.3 = f32[8]{0} fusion(f32[8]{0} %p), kind=kLoop, calls=%f, '
      'metadata={op_name="jit(step)/layers_0/mlps_0/mul"}',
      "  %all-to-all-done = f32[8]{0} all-to-all-done(((f32[8]{0}), f32[8]{0}) %all-to-all-start)",
      "  ROOT %add = f32[8]{0} add(%fusion.3, %all-to-all-done)"])
  assert expert.collective_overlap(hlo) == {
      "all-to-all-start": {"between": ["fusion.3"], "is_sync": False}}
  assert expert.collective_overlap("  %a = f32[8]{0} all-to-all(f32[8]{0} %p)") == {}


def test_without_a_mesh_it_runs_the_exact_local_dispatch():
  cfg = models.presets.get("deepseek_v3_tiny", moe_dispatch="expert_parallel", capacity_factor=0.1,
                           dropless_block_size=4)
  rng = np.random.RandomState(0)
  n, d, inter = 8, 16, 8
  x = rng.randn(12, d).astype(np.float32)
  idx = np.stack([np.arange(12) % 10, (np.arange(12) + 3) % 10], 1).astype(np.int32)  # 2 zero ids
  gates = rng.rand(12, 2).astype(np.float32)
  w = [rng.randn(n, d, inter).astype(np.float32), rng.randn(n, d, inter).astype(np.float32),
       rng.randn(n, inter, d).astype(np.float32)]
  y, stats = moe_expert_parallel.expert_parallel_dispatch(cfg, x, idx, gates, *w)
  want, _ = moe_dispatch.dense_dispatch(x, idx, gates, *w)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert int(stats["dropped_slots"]) == 0  # dropless, whatever the capacity factor


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu")
  procs = {c: subprocess.Popen([sys.executable, WORKER, c], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in CASES}
  out = {}
  for case, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{case} worker failed:\n{stdout}\n{stderr[-5000:]}"
    out[case] = json.loads(lines[-1][len("RESULT "):])
  return out


@pytest.mark.parametrize("preset", CASES[:2])
def test_expert_parallel_equals_dense_on_fsdp2_expert4(results, preset):
  r = results[preset]
  assert r["loss_rel"] <= 1e-5 and r["logits_rel"] <= 1e-5, r
  assert r["grad_rel_max"] <= 1e-5, (r["grad_rel_worst"], r["grad_rel_max"])
  assert r["dropped"] == 0  # capacity_factor 4 = expert axis size: nothing can drop
  # The exchange really ran as all-to-alls: 3 per MoE layer forward (2 MoE layers), more in
  # the backward pass; the dense dispatch has none from the MoE.
  assert r["all_to_all_ep"] >= 6 and r["all_to_all_dense"] == 0, r


def test_capacity_drops_match_numpy_model(results):
  r = results["drops"]
  assert r["cap"] == 4  # 8 tokens x 2 slots / 4 destinations, capacity_factor 1
  assert r["dropped"] == r["want_dropped"] > 0  # the skewed routing overflows some blocks
  assert r["dropped"] < r["ffn_slots"]
  assert r["rel"] <= 1e-5
