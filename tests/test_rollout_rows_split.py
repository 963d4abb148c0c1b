"""The RL Sampler on a mesh splits its decoder rows over the batch axes (issue 18): each
device holds batch / shards rows of the compressed cache, and the tokens and log-probs are
those of one device. Without split_rows, GSPMD keeps every row on every device for these
meshes (what the planner's `--rollout_split=replicated` assumes), except where the MoE
exchange itself splits the tokens.

The multi-device half runs in a subprocess with 8 fake CPU devices
(tests/rollout_rows_split_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agentic_jax import models, parallel
from agentic_jax.rl.sampler import Sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "rollout_rows_split_worker.py")


def test_padded_batch_is_a_multiple_of_the_batch_shards():
  cfg = models.presets.get("longcat_flash_tiny")
  mesh = parallel.abstract_mesh({"fsdp": 2, "tensor": 2, "expert": 2})  # rows split 4 ways
  s = Sampler(cfg, max_new_tokens=4, batch_bucket=6, prompt_bucket=8, mesh=mesh)
  assert s.padded_shape([3] * 5) == (8, 8)    # bucket 6, then up to 2 x 4
  assert s.padded_shape([3] * 8) == (12, 8)   # bucket 12 divides
  assert s.padded_shape([3] * 13) == (20, 8)  # bucket 18, then 20
  assert dict(s.logical_rules)["activation_batch"] == ("fsdp", "expert")
  off = s.replace(split_rows=False)
  assert off.padded_shape([3] * 5) == (6, 8) and off.logical_rules == ()
  assert Sampler(cfg, max_new_tokens=4, batch_bucket=6, prompt_bucket=8).padded_shape(
      [3] * 5) == (6, 8)


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, WORKER], cwd=ROOT, env=env, text=True,
                        capture_output=True, timeout=900)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"worker failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
  return json.loads(lines[-1][len("RESULT "):])


def test_split_rows_decode_the_one_device_tokens_with_a_share_of_the_cache(results):
  assert len(results) == 5
  for name, case in results.items():
    split, unsplit = case["split"], case["unsplit"]
    assert case["distinct_tokens"] > 10, name  # sampled, not degenerate
    for how in (split, unsplit):
      assert how["tokens_equal"] and how["logp_max_diff"] <= 1e-5, (name, case)
    # 11 rows: bucket 12, rounded up to the shards when split
    assert split["batch"] == (12 if case["shards"] == 4 else 16) and unsplit["batch"] == 12
    assert split["cache_rows"] * case["shards"] == split["batch"], (name, case)
    if "expert_parallel" not in name:  # the exchange splits the rows by itself
      assert unsplit["cache_rows"] == unsplit["batch"], (name, case)
