"""agentic_jax/allocator.py: with the tuned glibc settings an XLA:CPU program whose temporaries
exceed glibc's mmap limit stops page-faulting them in every call; opt-out, typo and preload
handling. Each case runs in a fresh interpreter: the settings only act before JAX's threads
exist."""

import os
import subprocess
import sys

import pytest

from agentic_jax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two 64 MiB cumsum temporaries per call (cumsum does not fuse into its consumer): above
# glibc's 32 MiB mmap ceiling, so under the system settings each call maps them afresh.
PROGRAM = r"""
import resource, statistics
import agentic_jax
from agentic_jax import allocator
import jax, jax.numpy as jnp

@jax.jit
def f(x):
  return (jnp.cumsum(jnp.sin(x), 0) * jnp.cumsum(jnp.cos(x), 1)).sum()

x = jnp.full((4096, 4096), 1e-3, jnp.float32)
for _ in range(6):
  f(x).block_until_ready()
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(allocator.state(), ",".join(map(str, faults)))
"""


def _run(mode: str) -> tuple[str, list[int]]:
  """(allocator state, minor page faults of each measured call)."""
  env = dict(os.environ, AGENTIC_JAX_MALLOC=mode, JAX_PLATFORMS="cpu")
  env.pop("LD_PRELOAD", None)
  out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=True).stdout.strip().splitlines()[-1]
  state, faults = out.rsplit(" ", 1)
  return state, [int(n) for n in faults.split(",")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: Linux only")
def test_tuned_malloc_stops_the_per_call_page_faults():
  state, tuned = _run("tuned")
  if state != "glibc tuned":
    pytest.skip(f"not a glibc process: {state}")
  sys_state, system = _run("system")
  assert sys_state == "system (AGENTIC_JAX_MALLOC)"
  # control: under glibc's defaults every call faults the two 64 MiB temporaries in (>= 16k
  # pages each). Tuned: the heap's pages are reused; a call may still grow the heap now and
  # then while allocations of consecutive calls overlap (seen with jax 0.12: 2-4 of 12 calls),
  # so the test asks for reuse (calls without faults) and far fewer faults in all.
  assert sorted(system)[len(system) // 2] > 20_000, system
  assert min(tuned) < 1_000, (tuned, system)
  assert sum(tuned) < sum(system) / 2, (tuned, system)


def test_mistyped_mode_is_one_line_and_leaves_malloc_alone():
  env = dict(os.environ, AGENTIC_JAX_MALLOC="tcmaloc")
  res = subprocess.run([sys.executable, "-c",
                        "import agentic_jax; from agentic_jax import allocator; "
                        "print(allocator.state())"],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
  assert res.stdout.strip() == "not configured"
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and "AGENTIC_JAX_MALLOC='tcmaloc'" in lines[0], res.stderr
  with pytest.raises(ValueError, match="AGENTIC_JAX_MALLOC"):
    allocator.configure("tcmaloc")


@pytest.mark.parametrize("lib,expect", [("/usr/lib/libtcmalloc_minimal.so.4", "preloaded tcmalloc"),
                                        ("/usr/lib/libjemalloc.so.2", "preloaded jemalloc")])
def test_a_preloaded_allocator_is_left_in_charge(monkeypatch, lib, expect):
  monkeypatch.setattr(allocator, "_state", "not configured")
  monkeypatch.setenv("LD_PRELOAD", lib)
  assert allocator.configure("tuned") == expect
  assert allocator.configure("system") == "system (AGENTIC_JAX_MALLOC)"
