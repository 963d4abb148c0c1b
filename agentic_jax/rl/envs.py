"""Backward-compatible alias: the RL environments and their registry live in agentic_jax.envs."""
# pylint: disable=unused-import
from agentic_jax.envs import (EVAL_BUCKETS, EVAL_START, CalculatorEnv, answer_tools,
                              calculator_split, check_sandbox, env_names, make_env_factory)
