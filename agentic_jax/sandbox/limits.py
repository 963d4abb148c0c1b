"""Resource limits for the sandbox: rlimits, per-run cgroups (v1 or v2), an unprivileged uid,
the whole run's CPU time, and the process clean-up helpers used when a run is stopped. The
launcher that applies them before exec'ing is `launcher.py`.

Measured on the project's machine kind (root, cgroup v1 hybrid; machine-notes §4): RLIMIT_NPROC
is ignored for root, so the process count is bounded by a `pids` cgroup, and, when the caller is
root, the program also runs as uid 65534 (which makes RLIMIT_NPROC effective and hides root-only
files). A `memory` cgroup bounds the sandbox's total memory (all processes, plus its tmpfs).

CPU: RLIMIT_CPU is per process (six spinning children once used 8 CPU-seconds in a 4-second run),
so the sandbox also polls the run's total CPU time and kills the run past its budget. The total
comes from a per-run cgroup (v1 `cpuacct.usage`, or v2 `cpu.stat`, present in every v2 cgroup
without enabling a controller) or, without one, from /proc (tree_cpu_s).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import signal
import stat
import threading
import time
import uuid
from typing import Iterator, Optional

log = logging.getLogger(__name__)

CGROUP_PARENT = "agentic_jax_sandbox"  # per-run cgroups are created below <own cgroup>/this
_CONTROLLERS = ("pids", "memory", "cpuacct")
_CPU_FILE = {1: "cpuacct.usage", 2: "cpu.stat"}
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def rlimits(*, memory_mb: int, cpu_s: float, max_file_mb: int, max_open_files: int,
            nproc: Optional[int]) -> list[tuple[str, int, int]]:
  """(name, soft, hard) triples. CPU: SIGXCPU at the soft limit (reported as "cpu"), SIGKILL 1 s
  later for programs that ignore SIGXCPU. Core dumps are off."""
  cpu = max(1, math.ceil(cpu_s))
  mib = 1 << 20
  out = [("RLIMIT_AS", memory_mb * mib, memory_mb * mib),
         ("RLIMIT_CPU", cpu, cpu + 1),
         ("RLIMIT_FSIZE", max_file_mb * mib, max_file_mb * mib),
         ("RLIMIT_CORE", 0, 0),
         ("RLIMIT_NOFILE", max_open_files, max_open_files)]
  if nproc is not None:
    out.append(("RLIMIT_NPROC", nproc, nproc))
  return out


def traversable_by_others(path: str) -> bool:
  """Every directory on the resolved path (itself included) searchable by others."""
  d = os.path.realpath(path)
  while True:
    try:
      if not os.stat(d).st_mode & stat.S_IXOTH:
        return False
    except OSError:
      return False
    if os.path.dirname(d) == d:
      return True
    d = os.path.dirname(d)


def accessible_to_others(path: str) -> bool:
  """True when a uid that is neither owner nor group member can execute `path` (every directory
  on the resolved path searchable by others, the file readable and executable by others)."""
  real = os.path.realpath(path)
  try:
    if not stat.S_ISREG(os.stat(real).st_mode):
      return False
    d = real
    while True:
      mode = os.stat(d).st_mode
      need = (stat.S_IXOTH | stat.S_IROTH) if d == real else stat.S_IXOTH
      if mode & need != need:
        return False
      parent = os.path.dirname(d)
      if parent == d:
        return True
      d = parent
  except OSError:
    return False


def count_tasks_of_uid(uid: int) -> int:
  """Threads of all processes whose real uid is `uid` (what RLIMIT_NPROC counts)."""
  total = 0
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
      if int(fields["Uid"].split()[0]) == uid:
        total += int(fields["Threads"])
    except (OSError, KeyError, ValueError):
      continue  # the process exited while we looked
  return total


# ----------------------------------------------------------------------------------- cgroups


@dataclasses.dataclass(frozen=True)
class Controller:
  name: str     # "pids" | "memory" | "cpuacct" (v2: the cgroup's own cpu.stat)
  version: int  # 1 | 2
  parent: str   # directory in which per-run cgroups are created


def _own_cgroup_dirs() -> dict[str, tuple[int, str]]:
  """controller name -> (version, directory of this process's cgroup for it)."""
  own: dict[str, str] = {}   # controller ("" for the v2 unified hierarchy) -> path
  with open("/proc/self/cgroup") as f:
    for line in f:
      _, ctrls, path = line.rstrip("\n").split(":", 2)
      for c in (ctrls.split(",") if ctrls else [""]):
        own[c] = path
  out: dict[str, tuple[int, str]] = {}
  with open("/proc/self/mountinfo") as f:
    for line in f:
      left, right = line.split(" - ", 1)
      fields, rfields = left.split(), right.split()
      root, mountpoint, fstype, superopts = fields[3], fields[4], rfields[0], rfields[2]
      if fstype == "cgroup":
        keys = [c for c in superopts.split(",") if c in _CONTROLLERS]
        version = 1
      elif fstype == "cgroup2":
        keys = [""]
        version = 2
      else:
        continue
      for key in keys:
        if key not in own:
          continue
        rel = own[key]
        if root != "/" and rel.startswith(root):
          rel = rel[len(root):]
        d = os.path.join(mountpoint, rel.lstrip("/"))
        if not os.path.isdir(d):
          d = mountpoint  # cgroup namespace without a matching mount root
        if version == 1:
          out[key] = (1, d)
        else:
          try:
            with open(os.path.join(d, "cgroup.controllers")) as cf:
              available = cf.read().split()
          except OSError:
            continue
          for c in ("pids", "memory"):
            if c in available and c not in out:
              out[c] = (2, d)
          if "cpuacct" not in out:  # cpu.stat's usage_usec needs no enabled controller
            out["cpuacct"] = (2, d)
  return out


def _prepare_parent(name: str, version: int, own_dir: str) -> Optional[Controller]:
  parent = os.path.join(own_dir, CGROUP_PARENT)
  try:
    os.makedirs(parent, exist_ok=True)
    if version == 2 and name != "cpuacct":
      # Enabling a controller for children needs it enabled in every ancestor; the own cgroup
      # may refuse (no-internal-processes rule), in which case v2 cgroups are unavailable.
      for d in (own_dir, parent):
        with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
          f.write(f"+{name}")
    probe = os.path.join(parent, f"probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(probe)
    try:
      limit_file = {"pids": "pids.max",
                    "memory": "memory.limit_in_bytes" if version == 1 else "memory.max",
                    "cpuacct": "cgroup.procs"}[name]
      ok = os.access(os.path.join(probe, limit_file), os.W_OK)
      if name == "cpuacct":
        ok = ok and os.path.exists(os.path.join(probe, _CPU_FILE[version]))
    finally:
      os.rmdir(probe)
  except OSError as e:
    log.info("sandbox: %s cgroup (v%d) unavailable under %s: %s", name, version, own_dir, e)
    return None
  if not ok:
    return None
  _remove_stale(parent)
  return Controller(name, version, parent)


def _remove_stale(parent: str) -> None:
  """Empty per-run cgroups left by processes that died before cleaning up (named PID-...)."""
  for child in os.listdir(parent):
    pid = child.split("-", 1)[0]
    path = os.path.join(parent, child)
    if not pid.isdigit() or not os.path.isdir(path) or os.path.exists(f"/proc/{pid}"):
      continue
    try:
      os.rmdir(path)
    except OSError:
      pass  # still has processes: not ours to kill


_DETECT_LOCK = threading.Lock()
_DETECTED: Optional[dict[str, Controller]] = None


def cgroup_controllers() -> dict[str, Controller]:
  """Writable pids/memory/cpuacct controllers, detected once per process ({} when not root)."""
  global _DETECTED
  with _DETECT_LOCK:
    if _DETECTED is None:
      found: dict[str, Controller] = {}
      try:
        dirs = _own_cgroup_dirs()
      except (OSError, ValueError) as e:
        log.info("sandbox: cannot read cgroup layout: %s", e)
        dirs = {}
      for name in _CONTROLLERS:
        if name in dirs:
          c = _prepare_parent(name, *dirs[name])
          if c is not None:
            found[name] = c
      _DETECTED = found
    return dict(_DETECTED)


_COUNTER = itertools.count()


class RunCgroups:
  """The cgroups of one sandbox run: created with limits, killed and removed afterwards. On v2
  the controllers share one directory."""

  def __init__(self, controllers: dict[str, Controller], *, pids_max: int, memory_bytes: int):
    self.dirs: dict[str, tuple[Controller, str]] = {}
    name = f"{os.getpid()}-{next(_COUNTER)}-{uuid.uuid4().hex[:8]}"
    try:
      for cname, c in controllers.items():
        d = os.path.join(c.parent, name)
        if d not in self.unique_dirs:
          os.mkdir(d)
        self.dirs[cname] = (c, d)
        if cname == "pids":
          _write(d, "pids.max", str(pids_max))
        elif cname == "cpuacct":
          pass  # accounting only: the sandbox polls cpu_s() against the run's budget
        elif c.version == 1:
          _write(d, "memory.limit_in_bytes", str(memory_bytes))
          _try_write(d, "memory.memsw.limit_in_bytes", str(memory_bytes))  # no swap escape
        else:
          _write(d, "memory.max", str(memory_bytes))
          _try_write(d, "memory.swap.max", "0")
    except OSError:
      self.remove()
      raise

  @property
  def unique_dirs(self) -> list[str]:
    return list(dict.fromkeys(d for _, d in self.dirs.values()))

  @property
  def procs_files(self) -> list[str]:
    return [os.path.join(d, "cgroup.procs") for d in self.unique_dirs]

  @property
  def mechanisms(self) -> list[str]:
    return [f"cgroup-v{c.version}:{name}" for name, (c, _) in self.dirs.items()]

  def cpu_s(self) -> Optional[float]:
    """CPU seconds used by all processes that ever ran in the run's cgroup (None: not counted)."""
    if "cpuacct" not in self.dirs:
      return None
    c, d = self.dirs["cpuacct"]
    try:
      with open(os.path.join(d, _CPU_FILE[c.version])) as f:
        if c.version == 1:
          return int(f.read()) / 1e9
        for line in f:
          key, _, value = line.partition(" ")
          if key == "usage_usec":
            return int(value) / 1e6
    except (OSError, ValueError):
      pass
    return None

  def oom_kills(self) -> int:
    if "memory" not in self.dirs:
      return 0
    c, d = self.dirs["memory"]
    fname = "memory.oom_control" if c.version == 1 else "memory.events"
    try:
      with open(os.path.join(d, fname)) as f:
        for line in f:
          key, _, value = line.partition(" ")
          if key == "oom_kill":
            return int(value)
    except (OSError, ValueError):
      pass
    return 0

  def pids(self) -> set[int]:
    out: set[int] = set()
    for d in self.unique_dirs:
      try:
        with open(os.path.join(d, "cgroup.procs")) as f:
          out.update(int(p) for p in f.read().split())
      except (OSError, ValueError):
        pass
    return out

  def kill_all(self, timeout_s: float = 5.0) -> None:
    """SIGKILL everything in the cgroups, repeating until empty (a fork bomb keeps forking
    between reads, but the pids limit bounds each round)."""
    for c, d in self.dirs.values():
      if c.version == 2:
        _try_write(d, "cgroup.kill", "1")
    deadline = time.monotonic() + timeout_s
    while True:
      pids = self.pids()
      if not pids or time.monotonic() > deadline:
        break
      for pid in pids:
        try:
          os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      time.sleep(0.005)

  def remove(self, timeout_s: float = 5.0) -> None:
    for d in self.unique_dirs:
      deadline = time.monotonic() + timeout_s
      while True:
        try:
          os.rmdir(d)
          break
        except FileNotFoundError:
          break
        except OSError as e:  # EBUSY until the killed tasks are fully gone
          if time.monotonic() > deadline:
            log.warning("sandbox: could not remove cgroup %s: %s (left for later cleanup)", d, e)
            break
          time.sleep(0.01)
    self.dirs.clear()


def _write(d: str, fname: str, value: str) -> None:
  with open(os.path.join(d, fname), "w") as f:
    f.write(value)


def _try_write(d: str, fname: str, value: str) -> None:
  try:
    _write(d, fname, value)
  except OSError:
    pass


# ------------------------------------------------------------------------ process clean-up


def wait_exited(pid: int, start: Optional[str], timeout_s: float = 5.0) -> None:
  """Until `pid` (started at `start`) is a zombie or gone."""
  deadline = time.monotonic() + timeout_s
  while start is not None and time.monotonic() < deadline:
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      return
    if fields[0] in ("Z", "X") or fields[19] != start:
      return
    time.sleep(0.002)


def start_time(pid: int) -> Optional[str]:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def sigkill(pid: int) -> None:
  """SIGKILL a pid (or a process group when negative); gone or not ours is fine."""
  try:
    if pid < 0:
      os.killpg(-pid, signal.SIGKILL)
    else:
      os.kill(pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
  """(pid, fields of /proc/PID/stat after the command name) of every live process; fields[0]
  is the state, [1] the ppid, [2] the process group, [11:15] utime stime cutime cstime."""
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        yield int(name), f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
      continue  # exited meanwhile


def wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
  """Until no live (non-zombie) process is left in process group `pgid`, SIGKILLing it."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    alive = any(int(fields[2]) == pgid and fields[0] != "Z" for _, fields in _proc_stats())
    if not alive:
      return
    sigkill(-pgid)
    time.sleep(0.005)


def tree_cpu_s(root_pid: int) -> float:
  """CPU seconds of `root_pid` and all its live descendants, including children they have
  reaped (cutime/cstime), from one pass over /proc. A process is counted once: while alive by
  itself, once reaped in its reaper's c-times. In a pid namespace every orphan is reaped by the
  namespace's init, so nothing escapes; children auto-reaped (SIGCHLD ignored) are missed, but
  RLIMIT_CPU still bounds each of them."""
  parent: dict[int, int] = {}
  ticks: dict[int, int] = {}
  for pid, fields in _proc_stats():
    parent[pid] = int(fields[1])
    ticks[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
  children: dict[int, list[int]] = {}
  for pid, ppid in parent.items():
    children.setdefault(ppid, []).append(pid)
  total, todo = 0, [root_pid] if root_pid in ticks else []
  while todo:
    pid = todo.pop()
    total += ticks[pid]
    todo.extend(children.get(pid, ()))
  return total / _CLK_TCK


def read_available(fd: int) -> bytes:
  os.set_blocking(fd, False)
  out = b""
  while True:
    try:
      chunk = os.read(fd, 4096)
    except BlockingIOError:
      return out
    if not chunk:
      return out
    out += chunk
