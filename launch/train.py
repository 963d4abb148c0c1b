"""Training entry point: mid-training (default), RL, or the mid-training -> RL recipe.

    python launch/train.py --config=configs/midtrain.py:tiny --workdir=/tmp/mt
    python launch/train.py --config=configs/midtrain.py:tiny --workdir=/tmp/mt --config.optim.lr=3e-4

The job is `config.job` ("midtrain" when the config has no such key): "midtrain" ->
agentic_jax.train.loop.run, "rl" -> agentic_jax.rl.loop.run, "recipe" ->
agentic_jax.rl.recipe.run; all take (config, workdir) and return a summary dict.

Multi-process (multi-host, or several processes on one host): every process runs the same
command plus its own --process_id, e.g. two processes on this machine:

    for i in 0 1; do python launch/train.py --config=... --workdir=/tmp/run \\
        --coordinator_address=localhost:12355 --num_processes=2 --process_id=$i & done; wait

Without these flags the cluster is auto-detected (Cloud TPU VM / GKE TPU pod, a SLURM step
with several tasks, JAX_COORDINATOR_ADDRESS, or AGENTIC_JAX_DISTRIBUTED=auto as set by
launch/tpu_pod.sh); on a plain machine it is a single-process run.
jax.distributed.initialize runs before anything touches a JAX backend.

Rerunning the same command resumes from the newest checkpoint in WORKDIR/checkpoints (and
loads the compiled step from the persistent compilation cache, see --compile_cache).
SIGTERM/SIGINT save a checkpoint and exit 0. Exit status 1 when training halted on a
non-finite loss (train.nan_policy="halt"), when every step of the run was skipped as
non-finite, or when no checkpoint in WORKDIR is readable; 2 for a bad command line or config:
an unknown config key, job or variant, a missing config file, an invalid value (zero size,
non-finite lr, unknown choice, a mesh the devices do not fill), or checkpoints written under
another config. These print one line `error: ...` naming the key, without a traceback.
Exit status 3 when a step (or evaluation / checkpoint write) is stuck in its collectives for
longer than config.train.step_timeout_s, or a SIGTERM finds it stuck (train/watchdog.py): a
`[watchdog] step N did not finish ... on mesh {...}` line names it. XLA:CPU's own in-process
collective abort (40 s by default) is moved past that limit, so the named message comes first.
"""

from __future__ import annotations

import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from agentic_jax import cli, jobs  # error lines and the job table: no JAX imported

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config: path.py[:variant], e.g. configs/midtrain.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory, local or on object storage "
                               "(gs://bucket/run; the gcs extra): checkpoints, metrics, plots; "
                               "shared by all processes of a multi-process run.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", os.path.join("~", ".cache", "agentic_jax", "xla"),
    "Persistent XLA compilation cache (compiles > 1 s; capped at 2 GB), so a rerun or resume "
    "skips recompiling the step; '' disables. JAX_COMPILATION_CACHE_DIR takes precedence.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-process runs); "
    "unset: auto-detect a cluster, else run as a single process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                                   lower_bound=0)
_CPU_COLLECTIVES = flags.DEFINE_string(
    "cpu_collectives", "gloo", "Cross-process collectives of the CPU backend (multi-process CPU "
    "runs); accelerators use their own.")
flags.mark_flags_as_required(["config", "workdir"])

# job name -> module whose run(config, workdir) -> dict runs it (imported only when chosen)
JOBS = {name: run_module for name, (run_module, _) in jobs.JOBS.items()}
# statuses of a run that ended without doing what it was asked (exit 1)
FAILED = ("halted", "all_skipped")


def _job(config) -> str:
  """config.job (default "midtrain"), or exit 2 naming the known jobs."""
  job = config.get("job", "midtrain")
  if job not in JOBS:
    cli.fail(f"config.job={job!r} is not a known job; expected one of {sorted(JOBS)}")
  return job


def _job_module(job: str):
  """Imports the job's module (after jax.distributed is set up: imports may touch JAX)."""
  try:
    return importlib.import_module(JOBS[job])
  except ModuleNotFoundError as e:
    if e.name and JOBS[job].startswith(e.name):
      cli.fail(f"config.job={job!r} needs {JOBS[job]}, which this checkout does not have ({e})")
    raise


def _defer_xla_cpu_collective_abort(config) -> None:
  """XLA:CPU ends the process from C++ when an in-process collective waits 40 s (message
  without step or mesh). With a watchdog limit, move that past it (unless XLA_FLAGS sets it),
  so a slow-but-progressing step on a loaded host is not killed and a stuck one is reported
  by the watchdog. Must run before the CPU backend is created."""
  try:
    limit = float(config.train.get("step_timeout_s", 0) or 0)
  except (AttributeError, KeyError, TypeError, ValueError):
    return  # not a training config with a limit; validation reports bad values later
  flag = "xla_cpu_collective_call_terminate_timeout_seconds"
  current = os.environ.get("XLA_FLAGS", "")
  if limit > 0 and flag not in current:
    os.environ["XLA_FLAGS"] = f"{current} --{flag}={int(limit) + 60}".strip()


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, jax) only on request
    logging.set_verbosity(logging.WARNING)
  # Nothing below may touch a JAX backend before initialize_distributed.
  from agentic_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel  after flag parsing (fast --help)
  jax.config.parse_flags_with_absl()
  if _COMPILE_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILE_CACHE.value))
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)
  try:
    job = _job(_CONFIG.value)
  except OSError as e:  # ml_collections defers a config file it could not open to first use
    cli.fail(f"--config: {cli.last_line(e)}")
  _defer_xla_cpu_collective_abort(_CONFIG.value)
  try:
    info = distributed.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
        cpu_collectives=_CPU_COLLECTIVES.value)
  except ValueError as e:  # inconsistent --num_processes / --process_id
    cli.fail(e)
  if info.initialized and info.process_id == 0:
    print(f"[distributed] {info.num_processes} processes ({info.method}); "
          f"{jax.device_count()} devices, {jax.local_device_count()} per process", flush=True)
  from agentic_jax import fs  # pylint: disable=import-outside-toplevel
  try:
    fs.check_backend(_WORKDIR.value)
  except ValueError as e:  # gs://... without gcsfs: say so before anything compiles
    cli.fail(f"--workdir={e}")
  module = _job_module(job)
  from agentic_jax.train import checkpoint, config  # pylint: disable=import-outside-toplevel
  try:
    result = module.run(_CONFIG.value, _WORKDIR.value)
  except config.ConfigError as e:  # a bad value, or checkpoints written under another config
    cli.fail(e)
  except checkpoint.CorruptCheckpointError as e:  # nothing readable; nothing was moved
    cli.fail(e, 1)
  status = result.get("status") if isinstance(result, dict) else None
  if info.initialized:
    jax.distributed.shutdown()
  if status in FAILED:
    cli.fail(f"the run ended with status {status!r} (see the output above)", 1)
  sys.exit(0)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
