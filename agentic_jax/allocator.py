"""Host malloc settings that stop XLA:CPU from page-faulting its temporaries in every step.

Why: XLA:CPU allocates a step's temporaries as one block (231 MB for the tiny benchmark
model's train step, more at m50) with malloc and frees it at the end of the step. Under
glibc's defaults an allocation that large, made from one of XLA's worker threads, is served
by a fresh `mmap` from the thread's arena and handed back with `munmap` on free (a per-thread
arena cannot hold it, and that path ignores the mmap threshold), so every step touches all
its temporaries' pages anew: ~58k minor page faults per step at tiny, ~450k at m50, 25-40%
of the step's time on a 2-core CPU (benchmarks/README.md "The allocator"). `strace` shows
the one mmap/munmap pair per step.

`configure()` sets, through glibc's `mallopt`:
  M_ARENA_MAX = 1          every thread allocates from the main arena (brk heap), which can
                           hold a block of any size; only per-thread arenas force the mmap;
  M_MMAP_MAX = 0           never serve an allocation with its own mmap;
  M_TRIM_THRESHOLD = -1    never give the heap's top back (man mallopt: -1 disables
                           trimming), so the next step reuses the same, already-mapped pages.
Faults per step go to 0 and the step matches a preloaded tcmalloc (measured in
tests/test_allocator.py and benchmarks/README.md); with jax 0.12 an occasional call still
grows the heap once (consecutive calls' blocks overlap), then the pages are reused. The cost: the process keeps its peak
heap mapped (a training process reaches that peak every step anyway), and all threads share
one arena lock. A step allocates little besides its blocks, but XLA's compiler threads allocate
a lot: compiling is ~20-25% slower (tests/test_moe.py, mostly compiles: 62-67 s vs 50-52 s with
AGENTIC_JAX_MALLOC=system on a 2-core Xeon; the lock, since GLIBC_TUNABLES with arena_max=1
alone gives the same, mmap_max/trim_threshold alone do not), so the test suite runs with
"system" (tests/conftest.py).

Arena assignment happens at a thread's first malloc, so this must run before JAX creates its
backend (the thread pools): `import agentic_jax` calls it, which is early enough for launch
scripts, notebooks and forks, since JAX builds its backend lazily on first use. Set
AGENTIC_JAX_MALLOC=system to leave malloc alone. Nothing is changed on a non-glibc libc, or
when tcmalloc / jemalloc is preloaded (LD_PRELOAD), whose own caches already avoid this.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "AGENTIC_JAX_MALLOC"
MODES = ("tuned", "system")

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

_state: str = "not configured"


def state() -> str:
  """What `configure` did in this process: "glibc tuned", "system (AGENTIC_JAX_MALLOC)",
  "preloaded tcmalloc", "preloaded jemalloc", "not glibc (...)" or "not configured"."""
  return _state


def configure(mode: str | None = None) -> str:
  """Applies the settings of the module doc (idempotent); returns `state()`.

  mode: "tuned" or "system"; default: $AGENTIC_JAX_MALLOC, else "tuned". An unknown value
  raises ValueError naming the variable (before any JAX work, so a typo is seen at once).
  """
  global _state
  mode = mode if mode is not None else (os.environ.get(ENV) or "tuned")
  if mode not in MODES:
    raise ValueError(f"{ENV}={mode!r}: choose one of {', '.join(MODES)}")
  if mode == "system":
    _state = f"system ({ENV})"
    return _state
  preload = os.environ.get("LD_PRELOAD", "")
  for name in ("tcmalloc", "jemalloc"):
    if name in preload:
      _state = f"preloaded {name}"
      return _state
  libc_name, _ = platform.libc_ver()
  if platform.system() != "Linux" or libc_name != "glibc":
    _state = f"not glibc ({platform.system()} {libc_name or 'unknown libc'})"
    return _state
  if _state == "glibc tuned":
    return _state
  libc = ctypes.CDLL("libc.so.6")
  ok = all(libc.mallopt(param, value) == 1 for param, value in
           ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1)))
  _state = "glibc tuned" if ok else "glibc (mallopt refused a setting)"
  return _state
