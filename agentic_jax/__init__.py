"""agentic_jax: models, sampling and conversion for agentic LMs in JAX."""

import sys as _sys

from agentic_jax import allocator as _allocator

__version__ = "0.1.0"

# Before JAX builds its backend (lazily, on first use): glibc would otherwise mmap and fault in
# every XLA:CPU step's temporaries anew (agentic_jax/allocator.py; AGENTIC_JAX_MALLOC=system
# opts out). A mistyped value must not break `import agentic_jax`: one line, malloc untouched.
try:
  _allocator.configure()
except ValueError as _e:
  print(f"warning: {_e}; malloc left at the system's settings", file=_sys.stderr)
