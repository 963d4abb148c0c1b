"""Agent-native data: schema, ADP import, validation, tokenizer, rendering, grain pipeline,
built-in generators. Depends only on agentic_jax.models-free code (numpy, grain, sentencepiece)."""
