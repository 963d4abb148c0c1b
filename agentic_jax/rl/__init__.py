"""Agentic RL: sandboxed execution of model-written code (`sandbox`), environments, rollouts,
GRPO-family / Flow-GRPO losses and the RL loop (issue 5)."""
