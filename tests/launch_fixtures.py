"""Helpers of the tests that start launch/train.py or workers in subprocesses on fake CPU
devices, one process or several joined by jax.distributed on localhost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from typing import Sequence

import pytest

# LLVM -O0 roughly halves the CPU time of the many small compiles.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def cpu_env(devices: int) -> dict:
  """The environment of a child JAX process with `devices` fake CPU devices."""
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")


def wait_all(named: Sequence[tuple[str, subprocess.Popen]], timeout: float = 300) -> list[str]:
  """Waits for every (name, process); all must exit 0 (else all are killed and the test
  fails naming the first culprit). Returns their stdouts."""
  outs = []
  for name, proc in named:
    try:
      out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      for _, p in named:
        p.kill()
      pytest.fail(f"{name} timed out")
    assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}\n{err[-5000:]}"
    outs.append(out)
  return outs


def records(workdir: str) -> list[dict]:
  """The metrics.jsonl records of a run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def rel(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


def launch(script: str, args: Sequence[str], workdir: str, *, processes: int = 1,
           devices: int = 8, cwd: str = ".") -> list[subprocess.Popen]:
  """`script` (launch/train.py) with `args` in `workdir`: one process with `devices` fake CPU
  devices, or `processes` processes with devices / processes each, joined by jax.distributed
  on a free localhost port. Returns the started processes (process 0 first)."""
  import sys  # pylint: disable=import-outside-toplevel
  base = [sys.executable, script, *args, f"--workdir={workdir}"]
  if processes == 1:
    cmds = [base]
  else:
    port = free_port()
    cmds = [base + [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                    f"--process_id={i}"] for i in range(processes)]
  return [subprocess.Popen(c, cwd=cwd, env=cpu_env(devices // processes), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]

