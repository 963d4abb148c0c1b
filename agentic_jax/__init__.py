"""agentic_jax: models, sampling and conversion for agentic LMs in JAX."""

__version__ = "0.1.0"
