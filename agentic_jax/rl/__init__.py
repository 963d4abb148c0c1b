"""Agentic RL: sandboxed execution of model-written code (`sandbox`), the rollout engine
(`sampler`: batched policy-turn sampling on the cached decoder; `rollout`: multi-turn episodes,
training rows, greedy evaluation), environments, GRPO-family / Flow-GRPO losses and the RL loop
(issue 5). Submodules are imported explicitly (`from agentic_jax.rl import rollout`)."""
