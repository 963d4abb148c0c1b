"""The jobs `launch/train.py` runs, by `config.job`, and the check of any job's config.

    from agentic_jax import jobs
    jobs.validate(config)                 # ConfigError naming the first bad key, any job
    result = jobs.module(config).run(config, workdir)

A job is a module with `run(config, workdir, ...) -> dict` and a check of its config. This table
sits above train/ and rl/ (it imports both, lazily), so neither imports the other's checks:
train.config validates mid-training configs only, rl.config RL configs, rl.recipe recipes.
A new job: its module (a step function + train/runner.py) and one row here.
"""

from __future__ import annotations

import importlib
from typing import Any

# job name -> (module with run(config, workdir), "module:function" checking its config)
JOBS: dict[str, tuple[str, str]] = {
    "midtrain": ("agentic_jax.train.loop", "agentic_jax.train.config:validate_midtrain"),
    "rl": ("agentic_jax.rl.loop", "agentic_jax.rl.config:check_rl_config"),
    "recipe": ("agentic_jax.rl.recipe", "agentic_jax.rl.recipe:validate_recipe"),
    "ra3": ("agentic_jax.rl.ra3", "agentic_jax.rl.ra3:validate_ra3"),
}
DEFAULT_JOB = "midtrain"


def job_name(config: Any) -> str:
  """config.job ("midtrain" when absent); ConfigError naming config.job when unknown."""
  from agentic_jax.train.config import ConfigError  # pylint: disable=import-outside-toplevel
  job = config.get("job", DEFAULT_JOB)
  if job not in JOBS:
    raise ConfigError(f"config.job: expected one of {sorted(JOBS)}, got {job!r}")
  return job


def module(config_or_job: Any):
  """The module that runs the job (imported only when chosen: imports may touch JAX)."""
  job = config_or_job if isinstance(config_or_job, str) else job_name(config_or_job)
  return importlib.import_module(JOBS[job][0])


def validate(config: Any) -> None:
  """Every value of the config of its job (config.job); ConfigError naming the first bad key.
  Reads the device count, so call it after jax.distributed is initialised."""
  mod, fn = JOBS[job_name(config)][1].split(":")
  getattr(importlib.import_module(mod), fn)(config)
