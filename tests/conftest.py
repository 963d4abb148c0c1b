"""Pytest fixtures used by more than one test module. pytest finds them here, so no test module
imports another; plain helpers (configs, batches, references) live in the *_fixtures.py modules
beside this file and are imported as usual.

  compile_cache          JAX's persistent compilation cache in a fresh directory, for one
                         module (module scope). On by itself in COMPILE_CACHE_MODULES; a test
                         that asks for it gets the directory (to hand to a subprocess).
  tokenizer_path         a 400-piece SentencePiece model trained on calculator_basic samples
                         (module scope): the RL loop, minibatch-weight and recipe tests.
                         test_eval defines its own `tokenizer_path` (512 pieces, every built-in
                         source), which takes precedence there.
  scratch_root           a directory for the sandbox's scratch, checked empty afterwards.
  unharmed_test_process  the sandbox tests' after-check: no child of ours left behind, and we
                         can still start processes (test_sandbox*.py use it via pytestmark).
  free_compiled_programs (autouse, module scope) drops JAX's in-memory caches of compiled
                         programs after each module: each of `.ci/run`'s two worker
                         processes runs many modules, and XLA:CPU keeps every executable's
                         code mapped, so thousands of them approach the kernel's per-process
                         map limit (vm.max_map_count 65530); the suite segfaulted inside
                         XLA's compiler at ~85% before this.

Imports of the code under test sit inside the fixtures, so collecting a module that uses none
of these loads nothing more than it did.
"""
# pylint: disable=import-outside-toplevel

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

# The suite runs with glibc's default malloc (children inherit it through os.environ): the tuned
# setting of agentic_jax/allocator.py puts every thread on one arena, whose lock XLA's compiler
# threads contend for, and the suite compiles thousands of small programs and runs few steps
# (tests/test_moe.py: 62-67 s tuned vs 50-52 s system on a 2-core Xeon). Results do not depend on
# it; tests/test_allocator.py runs both settings explicitly. Set AGENTIC_JAX_MALLOC=tuned to run
# the suite under the tuned setting.
os.environ.setdefault("AGENTIC_JAX_MALLOC", "system")

# Modules whose tests rebuild the same jitted programs (resumed runs, repeated setups, reruns in
# subprocesses): each gets its own persistent compilation cache for the module's duration, so all
# but the first build load the program from disk. Only speed is at stake (see
# train_fixtures.persistent_compile_cache). One list, rather than a mark in each module, so that
# which modules pay for a disk cache is decided in one place.
COMPILE_CACHE_MODULES = frozenset(
    {"test_eval", "test_loop", "test_recipe", "test_rl_loop", "test_validation"})


# The slow tier: modules that run whole jobs, several processes or transformers parity. `pytest -m
# "not slow" tests` is the day-to-day tier (a few minutes); `.ci/run` runs everything. One list,
# like COMPILE_CACHE_MODULES, chosen from `pytest --durations=0` of the whole suite.
SLOW_MODULES = frozenset({
    "test_checkpoint", "test_configs", "test_convert", "test_distributed", "test_eval",
    "test_expert_mesh_train", "test_expert_parallel", "test_generate_eval", "test_hf_checkpoint",
    "test_hf_start", "test_launch_scripts", "test_loop",
    "test_midtrain_init_from", "test_moe_mesh", "test_multihost_rl", "test_multihost_train",
    "test_notebooks", "test_parallel", "test_parity", "test_presets_in_jobs", "test_ra3_job",
    "test_ra3_multihost", "test_recipe", "test_rl_loop", "test_rollout_rows_split",
    "test_speculative", "test_validation", "test_watchdog"})


# The newest-stack tier (`-m stack`): what `.ci/run`'s second leg runs on Python 3.12 with the
# newest JAX / Flax / optax / orbax / grain, so that drift in their APIs shows up in a few minutes:
# a model's forward and gradients (Flax, jax.numpy), attention cores, MoE kernels incl. ragged_dot
# and shard_map on fake devices, an optax train step, orbax checkpoints, grain pipelines, the
# losses. Chosen from `pytest --durations` of the whole suite (~150 worker-seconds of ~5,900).
STACK_MODULES = frozenset({
    "test_attention", "test_checkpoint", "test_layers", "test_moe_kernels", "test_objectives",
    "test_pipeline", "test_reader", "test_rl_losses", "test_rl_step", "test_train_step"})


@pytest.fixture(autouse=True, scope="module")
def free_compiled_programs():
  yield
  import sys
  if "jax" in sys.modules:  # only a module that used JAX has anything to free
    import gc
    sys.modules["jax"].clear_caches()
    gc.collect()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: in a module of conftest.SLOW_MODULES (whole jobs, "
                          "multi-process runs, transformers parity); deselect with -m 'not slow'")
  config.addinivalue_line("markers", "stack: in a module of conftest.STACK_MODULES (the "
                          "newest-stack tier of .ci/run's second leg); select with -m stack")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    module = item.module.__name__.rpartition(".")[2]
    if module in SLOW_MODULES:
      item.add_marker(pytest.mark.slow)
    if module in STACK_MODULES:
      item.add_marker(pytest.mark.stack)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """The cache directory, active (jax.config) until the module's last test has run."""
  from tests.train_fixtures import persistent_compile_cache
  with persistent_compile_cache(str(tmp_path_factory.mktemp("jax_cache"))) as cache_dir:
    yield cache_dir


@pytest.fixture(scope="module", autouse=True)
def _compile_cache_for_listed_modules(request):
  """compile_cache for the modules of COMPILE_CACHE_MODULES, set up before their other module
  fixtures (autouse fixtures come first), as their own autouse fixtures used to be."""
  if request.module.__name__.rpartition(".")[2] in COMPILE_CACHE_MODULES:
    request.getfixturevalue("compile_cache")
  yield


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  from agentic_jax.data import builtin
  from agentic_jax.data import tokenizer as tok_lib
  texts = builtin.corpus_texts(0, sources=("calculator_basic",), samples_per_source=200,
                               stdlib_files=0)
  path = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  tok_lib.SentencePieceTokenizer.train(texts, 400, seed=0).save(path)
  return path


@pytest.fixture
def unharmed_test_process():
  from tests.sandbox_fixtures import live_children
  before = set(live_children())
  yield
  # Nothing the sandbox started is left behind as our child, and we can still start processes.
  assert set(live_children()) - before == set()
  assert subprocess.run(["true"]).returncode == 0


@pytest.fixture
def scratch_root():
  """A directory to make the runs' scratch in (reachable by the sandbox's uid); the test checks
  it is empty afterwards, i.e. that the clean-up removed everything."""
  from agentic_jax.sandbox import scratch as sandbox_scratch
  base = "/var/tmp" if os.path.isdir("/var/tmp") else None
  d = tempfile.mkdtemp(prefix="sandbox_root_", dir=base)
  os.chmod(d, 0o755)
  yield d
  sandbox_scratch.remove_tree(d)
