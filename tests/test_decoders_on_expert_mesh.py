"""The decoders that build their own model modules, rl/ra3_annotate.annotate (the RA3 E-step's
and evaluation's decoder) and sampling_speculative.generate_arrays (draft="mtp"), on params
sharded over an fsdp x expert mesh with moe_dispatch="expert_parallel", called outside any
mesh context: they find the mesh from the variables (sampling.decode_mesh) and run the
expert-parallel exchange (all-to-alls in the compiled program), not the dropless dispatch that
gathers every expert's weights on every device, with the tokens of `dropless` on one device.

The multi-device half runs in a subprocess with 8 fake CPU devices
(tests/decoders_on_expert_mesh_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "decoders_on_expert_mesh_worker.py")
XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
MOE_LAYERS = 2  # longcat_flash_tiny; the exchange runs 3 all-to-alls per MoE layer and forward


@pytest.fixture(scope="module")
def result():
  env = dict(os.environ, XLA_FLAGS=XLA_FLAGS, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, WORKER], cwd=ROOT, env=env, text=True,
                        capture_output=True, timeout=600)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"worker failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
  return json.loads(lines[-1][len("RESULT "):])


def _exchanged(r: dict) -> None:
  # the prefill (outside the decode loop) and the loop body both exchanged tokens by
  # all-to-all; the dropless fallback compiles none
  want = 3 * MOE_LAYERS
  assert r["all_to_all"]["prefill"] >= want and r["all_to_all"]["step"] >= want, r


def test_ra3_annotate_runs_the_exchange_with_the_tokens_of_one_device(result):
  r = result["annotate"]
  assert r["new_rationales"] >= 1, r  # sampled decisions wrote rationales (rationale mode ran)
  assert r["tokens_equal"] and r["logp_max_diff"] <= 1e-5, r
  _exchanged(r)


def test_speculative_decoder_runs_the_exchange_with_the_tokens_of_one_device(result):
  r = result["speculative"]
  assert r["reference_is_plain_greedy"] and all(n > 1 for n in r["distinct_tokens"]), r
  assert r["tokens_equal"] and r["logp_max_diff"] <= 1e-5, r
  _exchanged(r)
