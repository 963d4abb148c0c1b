"""Helpers shared by the sandbox's test modules (test_sandbox, test_sandbox_adversarial); their
fixtures `scratch_root` and `unharmed_test_process` are in conftest.py."""

import os
import textwrap

import pytest

from agentic_jax.sandbox import scratch as sandbox_scratch

ROOT = os.geteuid() == 0


def live_children() -> list[int]:
  """Non-zombie processes whose parent is this test process."""
  out = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == os.getpid() and fields[0] != "Z":
        out.append(int(name))
  return out


def processes_with(token: str) -> list[int]:
  """Live processes whose command line contains `token` (the sandboxed program's argument)."""
  out = []
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/cmdline", "rb") as f:
          cmd = f.read()
        with open(f"/proc/{name}/stat") as f:
          state = f.read().rsplit(")", 1)[1].split()[0]
      except OSError:
        continue
      if token.encode() in cmd and state != "Z":
        out.append(int(name))
  return out


def scratch_modes() -> list:
  """Both scratch mechanisms where the tmpfs one works here; only "watch" elsewhere."""
  why = sandbox_scratch.tmpfs_unavailable()
  return [pytest.param("tmpfs", marks=pytest.mark.skipif(why is not None, reason=str(why))),
          "watch"]


def code(src: str) -> str:
  return textwrap.dedent(src).lstrip("\n")
