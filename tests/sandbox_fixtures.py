"""Helpers shared by the sandbox's test modules (test_sandbox, test_sandbox_adversarial)."""

import os
import subprocess
import tempfile
import textwrap

import pytest

from agentic_jax.rl import sandbox_scratch

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


@pytest.fixture(autouse=True)
def unharmed_test_process():
  before = set(live_children())
  yield
  # Nothing the sandbox started is left behind as our child, and we can still start processes.
  assert set(live_children()) - before == set()
  assert subprocess.run(["true"]).returncode == 0


@pytest.fixture
def scratch_root():
  """A directory to make the runs' scratch in (reachable by the sandbox's uid); the test checks
  it is empty afterwards, i.e. that the clean-up removed everything."""
  base = "/var/tmp" if os.path.isdir("/var/tmp") else None
  d = tempfile.mkdtemp(prefix="sandbox_root_", dir=base)
  os.chmod(d, 0o755)
  yield d
  sandbox_scratch.remove_tree(d)


def scratch_modes() -> list:
  """Both scratch mechanisms where the tmpfs one works here; only "watch" elsewhere."""
  why = sandbox_scratch.tmpfs_unavailable()
  return [pytest.param("tmpfs", marks=pytest.mark.skipif(why is not None, reason=str(why))),
          "watch"]


def code(src: str) -> str:
  return textwrap.dedent(src).lstrip("\n")
