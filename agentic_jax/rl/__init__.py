"""Agentic RL: the rollout engine (`sampler`: batched policy-turn sampling on the cached decoder;
`rollout`: multi-turn episodes, training rows, greedy evaluation), GRPO-family / Flow-GRPO losses
and the RL loop (issue 5). The environments live in agentic_jax/envs/ (`envs` here is an alias)
and the sandbox for model-written code in agentic_jax/sandbox/ (`sandbox` here is an alias).
Submodules are imported explicitly (`from agentic_jax.rl import rollout`)."""
