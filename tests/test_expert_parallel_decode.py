"""Decoding with moe_dispatch="expert_parallel" (issue 18): on a mesh with an expert axis the
decoder runs the all-to-all exchange with a capacity that cannot drop, and equals `dropless`
on one device; off such a mesh decode_config keeps switching to `dropless`.

The multi-device half runs in subprocesses with 8 fake CPU devices
(tests/expert_parallel_decode_worker.py), one per preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from agentic_jax import models, parallel, sampling
from agentic_jax.models import moe_expert_parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "expert_parallel_decode_worker.py")
XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
# preset -> MoE layers (the exchange runs 3 all-to-alls per MoE layer and forward)
PRESETS = {"longcat_flash_tiny": 2, "deepseek_v3_tiny": 2}


@pytest.fixture(scope="module")
def ep_cfg():
  return models.presets.get("longcat_flash_tiny", moe_dispatch="expert_parallel")


@pytest.mark.parametrize("sizes, ep", [({"expert": 2}, 2), ({"fsdp": 2, "expert": 4}, 4),
                                       ({"data": 2, "expert": 4}, 4)])
def test_decode_config_keeps_the_exchange_with_a_capacity_that_cannot_drop(ep_cfg, sizes, ep):
  mesh = parallel.abstract_mesh(sizes)
  dc = sampling.decode_config(ep_cfg, mesh)
  assert dc.moe_dispatch == "expert_parallel" and dc.capacity_factor == float(ep)
  assert dc.replace(capacity_factor=ep_cfg.capacity_factor) == ep_cfg
  k = ep_cfg.num_experts_per_tok
  for m in (1, 2, 3, 7, 64, 4096):  # every slot of m rows fits one destination's block
    assert moe_expert_parallel.send_capacity(m, k, ep, dc.capacity_factor) == m * k
  # the mesh in force is the default
  with jax.sharding.use_abstract_mesh(mesh):
    assert sampling.decode_config(ep_cfg) == dc
  # per-token steps: same dispatch, the local kernel's block shrunk like dropless's
  step = sampling.step_config(ep_cfg, 16, mesh)
  assert step.moe_dispatch == "expert_parallel" and step.dropless_block_size == 8
  assert step.replace(dropless_block_size=dc.dropless_block_size) == dc


@pytest.mark.parametrize("sizes", [None, {"data": 8}, {"fsdp": 4, "tensor": 2}])
def test_off_an_expert_mesh_decoding_uses_dropless(ep_cfg, sizes):
  mesh = None if sizes is None else parallel.abstract_mesh(sizes)
  assert sampling.decode_config(ep_cfg, mesh) == ep_cfg.replace(moe_dispatch="dropless")
  cap = ep_cfg.replace(moe_dispatch="capacity")
  assert sampling.decode_config(cap, parallel.abstract_mesh({"expert": 4})).moe_dispatch == \
      "dropless"


def test_decode_mesh_of_host_variables_is_empty(ep_cfg):
  variables = models.abstract_variables(ep_cfg)
  assert sampling.decode_mesh(variables).empty
  assert sampling.decode_mesh({"w": np.zeros(3)}).empty
  mesh = parallel.abstract_mesh({"expert": 4})
  with jax.sharding.use_abstract_mesh(mesh):
    assert sampling.decode_mesh(variables) == mesh


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu")
  procs = {p: subprocess.Popen([sys.executable, WORKER, p], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in PRESETS}
  out = {}
  for preset, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{preset} worker failed:\n{stdout}\n{stderr[-5000:]}"
    out[preset] = json.loads(lines[-1][len("RESULT "):])
  return out


@pytest.mark.slow  # two 8-device subprocesses, ~45 s (conftest.SLOW_MODULES' tier)
@pytest.mark.parametrize("preset", PRESETS)
def test_expert_parallel_decoding_equals_dropless_on_one_device(results, preset):
  r = results[preset]
  assert len(r["cases"]) == 5
  # the reference decodes are not degenerate: several distinct tokens per row
  assert all(len(set(row)) > 1 for row in r["sampled_tokens"])
  assert r["greedy_tokens"] != r["sampled_tokens"]
  for case, c in r["cases"].items():
    assert c["tokens_equal"] and c["logp_max_diff"] <= 1e-5, (case, c)
    assert c["sampler_tokens_equal"] and c["sampler_logp_max_diff"] <= 1e-5, (case, c)
    # the compiled decoder really exchanged tokens by all-to-all, in the prefill and in the
    # per-token step of the decode loop (a silent fallback to dropless has none)
    want = 3 * PRESETS[preset]
    assert c["all_to_all"]["prefill"] >= want and c["all_to_all"]["step"] >= want, (case, c)
