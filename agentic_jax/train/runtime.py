"""Kept for older imports (train/checkpoint.py, tests): the stop flag and the config diff live in
the shared runner, agentic_jax/train/runner.py."""

from agentic_jax.train.runner import StopFlag, config_diff  # noqa: F401  (re-exported)
