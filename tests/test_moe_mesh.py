"""MoE dispatch under device meshes (models/moe_mesh.py): on every mesh shape, with the expert
axis and without, each dispatch path gives the single-device loss, gradients and dropped
slots, and no collective runs inside a while loop (the cause of XLA:CPU's rendezvous aborts
on expert meshes). The 8-device half runs in a subprocess (tests/moe_mesh_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agentic_jax.models import moe_dispatch as md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "moe_mesh_worker.py")
XLA_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")


@pytest.fixture(scope="module")
def cases():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=XLA_FLAGS)
  proc = subprocess.run([sys.executable, WORKER], cwd=ROOT, env=env, text=True,
                        capture_output=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])["cases"]


def test_every_mesh_and_dispatch_path_equals_one_device(cases):
  assert {c["dispatch"] for c in cases} == {"dense", "capacity", "dropless", "ragged_dot",
                                            "expert_parallel"}
  assert len(cases) == 5 * 5
  for c in cases:
    where = (c["dispatch"], c["mesh"])
    assert c["loss_rel"] <= 1e-5, where
    # Gradients: the same sums in another order (per-shard partial sums, psum) - f32 noise.
    assert c["grad_rel"] <= 5e-5, where
    assert c["dropped"] == c["ref_dropped"], where


def test_capacity_really_drops_and_drops_the_same_slots(cases):
  """Factor 0.5 overflows experts, so equal losses mean the same slots were dropped: each
  shard ranks its slots within the whole batch (rank offsets from the earlier shards)."""
  for c in cases:
    if c["dispatch"] == "capacity":
      assert c["ref_dropped"] > 0 and c["dropped"] == c["ref_dropped"], c
    else:
      assert c["dropped"] == 0, c


def test_no_collective_inside_a_loop(cases):
  for c in cases:
    assert c["loop_collectives"] == 0, c


def test_capacity_rank_offsets_match_the_whole_batch():
  """Two halves of a batch, each given the counts of the slots before it, keep exactly the
  slots one call over the whole batch keeps (single device, no mesh)."""
  rng = np.random.RandomState(0)
  m, k, n, d, inter = 24, 2, 4, 8, 16
  x = jnp.asarray(rng.randn(m, d), jnp.float32)
  idx = jnp.asarray(rng.randint(0, n + 2, (m, k)), jnp.int32)  # 2 zero-expert slots
  idx = idx.at[::2, 0].set(0)  # expert 0 over-full in both halves
  idx = idx.at[:, 1].set(jnp.where(idx[:, 1] == idx[:, 0], n + 1, idx[:, 1]))
  gates = jnp.asarray(rng.rand(m, k), jnp.float32)
  w = [jnp.asarray(rng.randn(*s) * 0.1, jnp.float32) for s in ((n, d, inter), (n, d, inter),
                                                                (n, inter, d))]
  opts = dict(capacity_factor=0.6, chunk=4)
  whole, whole_stats = md.capacity_dispatch(x, idx, gates, *w, **opts)
  half = m // 2
  first, s1 = md.capacity_dispatch(x[:half], idx[:half], gates[:half], *w, num_tokens=m,
                                   rank_offset=jnp.zeros((n,), jnp.int32), **opts)
  offset = md.expert_counts(idx[:half], n)
  second, s2 = md.capacity_dispatch(x[half:], idx[half:], gates[half:], *w, num_tokens=m,
                                    rank_offset=offset, **opts)
  assert int(whole_stats["dropped_slots"]) > 0
  assert int(s1["dropped_slots"]) + int(s2["dropped_slots"]) == int(whole_stats["dropped_slots"])
  np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-6, atol=1e-6)
  # counts by hand: FFN slots (< n) per expert in the first half
  flat = np.asarray(idx[:half]).reshape(-1)
  assert list(np.asarray(offset)) == [int(np.sum(flat == e)) for e in range(n)]
