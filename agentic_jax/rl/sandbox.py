"""Old name of `agentic_jax.sandbox` (moved out of rl so that envs need not import rl): a re-export."""

from agentic_jax.sandbox import (HOST_PATHS, INSTALL_HINT, NOBODY, SCRATCH, SCRATCH_FS,
                                 SYSTEM_PYTHON, Content, SandboxResult, SandboxUnavailable,
                                 minimal_env, run_command, run_python)

__all__ = ["SCRATCH", "SYSTEM_PYTHON", "NOBODY", "HOST_PATHS", "INSTALL_HINT", "SCRATCH_FS",
           "Content", "SandboxUnavailable", "SandboxResult", "minimal_env", "run_python",
           "run_command"]
