"""Backward-compatible alias: the RL environments and their registry live in agentic_jax.envs."""
from agentic_jax.envs import (EVAL_BUCKETS, EVAL_START, CalculatorEnv, answer_tools,
                              calculator_split, check_sandbox, env_names, make_env_factory)

__all__ = ["EVAL_BUCKETS", "EVAL_START", "CalculatorEnv", "answer_tools", "calculator_split",
           "check_sandbox", "env_names", "make_env_factory"]
