"""Sandbox for model-written code: bubblewrap isolation plus resource limits.

    res = run_python("print(input()[::-1])", stdin="abc", timeout_s=5)
    assert (res.returncode, res.stdout, res.killed_reason) == (0, "cba\\n", None) and res.isolated
    res = run_command(["python", "-m", "unittest"], files={"test_x.py": "..."})

Whatever the program does, run_python/run_command return a SandboxResult: a limit it hits is
named in `limit` (with `limit_detail` in words), and nothing it leaves behind (deep trees,
symlinks, unreadable directories, immutable files, fifos, odd names, daemons) makes them raise;
what the clean-up could not remove is logged and counted in `scratch_leaked`.

Layers (measured on this machine kind, machine-notes §4; `SandboxResult.enforced` lists them):
- bubblewrap: new user/pid/net/ipc/uts/cgroup namespaces; a read-only root holding only the
  host's system directories (HOST_PATHS: /usr, /etc, /bin, /lib...; pass host_paths=("/",) for
  the whole host filesystem, read-only); fresh /proc; a fresh /dev, read-only but for
  /dev/shm; the run's own scratch as /tmp and /dev/shm, with the working directory and HOME
  /tmp/scratch (see scratch.py);
  `--die-with-parent`, `--new-session`, all capabilities dropped, nested user namespaces
  disabled, and an environment made of `minimal_env()` only.
- an unprivileged uid (65534) when the caller is root: root-only host files stay unreadable and
  RLIMIT_NPROC (ignored for root) works. Its interpreter must be world-executable, so Python
  code runs on the system python3 (stdlib only), not on the training venv.
- scratch limits on bytes and entries of all it may write (/tmp and /dev/shm): a private tmpfs
  with hard size and inode limits where the caller may mount (root), else a watched host
  directory (scratch.py).
- per-run cgroups when writable (root here, v1 or v2): `pids.max` bounds processes+threads,
  the memory limit bounds all processes together with their tmpfs, and cpuacct counts the
  CPU time of all of them, which the sandbox holds to cpu_s (else it sums /proc).
- rlimits: address space (= memory_mb), CPU seconds (per process), file size, open files, no
  core dumps, and RLIMIT_NPROC when no pids cgroup exists.
- a wall-clock timeout and an output cap, after which the whole process group, the bwrap pid
  namespace and the cgroups are SIGKILLed.

Without a working bwrap, run_python/run_command raise SandboxUnavailable unless
allow_unisolated=True, in which case everything above except bubblewrap still applies and the
result says isolated=False (no filesystem or network isolation: trusted code only; without
cgroups, a child that leaves the process group may outlive the run).

Modules: this file (run_python/run_command, SandboxResult, SandboxUnavailable), `run` (one run
from start to end), `limits` (rlimits, cgroups, uid), `scratch` (the run's /tmp), `launcher` (the
trusted set-up process, started by file path). The package imports nothing else from
agentic_jax; its users are agentic_jax/envs/ (rl -> envs -> sandbox). `agentic_jax.rl.sandbox`
is an old name kept as a re-export.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import signal
import sys
import threading
from typing import Mapping, Optional, Sequence, Union

from agentic_jax.sandbox import limits
from agentic_jax.sandbox import run as sandbox_run
from agentic_jax.sandbox import scratch

__all__ = ["SCRATCH", "SYSTEM_PYTHON", "NOBODY", "HOST_PATHS", "INSTALL_HINT", "SCRATCH_FS",
           "Content", "SandboxUnavailable", "SandboxResult", "minimal_env", "run_python",
           "run_command"]

log = logging.getLogger(__name__)

SCRATCH = "/tmp/scratch"          # working directory inside the sandbox
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
# Only the system's programs and libraries are visible inside, not the host's other files: the
# repository, datasets and the environments' own reference solutions (a reward-hacking route)
# stay out of reach even where they are world-readable.
HOST_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`; it is a "
                "system requirement, see README), or pass allow_unisolated=True (config key "
                "`config.rl.env_options.allow_unisolated`) to run with resource limits only, WITHOUT "
                "filesystem or network isolation")
_BWRAP_TASKS = 2  # bwrap's monitor + the pid namespace's init (measured: 9 forks at pids.max=12
                 # with max_processes=10)
SCRATCH_FS = ("auto", "tmpfs", "watch")
Content = Union[str, bytes]


class SandboxUnavailable(RuntimeError):
  """Isolation cannot be provided and unisolated execution was not allowed."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  returncode: int          # negative signal number when killed by a signal (subprocess style)
  stdout: str              # utf-8 (invalid bytes replaced), at most max_output_bytes
  stderr: str
  timed_out: bool
  # None, "timeout", "output_limit", "scratch_bytes", "scratch_files" (we killed it; scratch
  # only when watched, a tmpfs scratch fails the writes instead), "cpu" (SIGXCPU, or we
  # killed it past the run's CPU budget), "memory" (the memory cgroup OOM-killed
  # a process of the run, possibly a child while the main program went on, or Python died of
  # MemoryError under RLIMIT_AS), "file_size" (SIGXFSZ) or "signal SIGNAME".
  killed_reason: Optional[str]
  isolated: bool           # True when bubblewrap was used
  duration_s: float
  enforced: tuple[str, ...] = ()  # the mechanisms in effect, e.g. ("bwrap", "uid=65534", ...)
  # The limit the run met: killed_reason's limits, or "scratch_bytes"/"scratch_files" when the
  # program ran into a full tmpfs scratch (ENOSPC; found by polling and at the end: best
  # effort when it had unlinked what it held). None for "signal ..." deaths.
  limit: Optional[str] = None
  limit_detail: Optional[str] = None  # in words, naming the option that sets the limit
  cpu_s: float = 0.0       # CPU seconds of all the run's processes together (as measured)
  scratch_bytes: int = 0   # the run's /tmp + /dev/shm at their fullest seen: allocated bytes ...
  scratch_files: int = 0   # ... and entries, the given files included
  scratch_leaked: int = 0  # entries the clean-up could not remove (logged; 0 normally)

  @property
  def ok(self) -> bool:
    return self.returncode == 0 and self.killed_reason is None


def minimal_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
  """The whole environment of sandboxed programs: nothing from the host leaks in."""
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": SCRATCH, "TMPDIR": "/tmp",
         "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0",
         "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
  env.update(extra or {})
  return env


def run_python(code: str, *, args: Sequence[str] = (), script_name: str = "main.py",
               **kwargs) -> SandboxResult:
  """Runs `python SCRIPT_NAME ARGS...` on `code` in the sandbox; keyword arguments as run_command.
  Tracebacks name /tmp/scratch/main.py, the same on every machine."""
  files = dict(kwargs.pop("files", None) or {})
  if script_name in files:
    raise ValueError(f"files: {script_name!r} is the script's own name; pass another script_name")
  files[script_name] = code
  return run_command(["python", script_name, *args], files=files, **kwargs)


def run_command(argv: Sequence[str], *, timeout_s: float = 10.0, memory_mb: int = 512,
                stdin: Optional[Content] = None, files: Optional[Mapping[str, Content]] = None,
                allow_unisolated: bool = False, cpu_s: Optional[float] = None,
                max_processes: int = 64, max_file_mb: int = 16, max_open_files: int = 256,
                max_output_bytes: int = 1 << 20, max_scratch_mb: int = 64,
                max_scratch_files: int = 10_000, scratch_fs: str = "auto",
                env: Optional[Mapping[str, str]] = None,
                python: Optional[str] = None, bwrap_path: Optional[str] = None,
                run_as_uid: Optional[int] = NOBODY, scratch_root: Optional[str] = None,
                host_paths: Sequence[str] = HOST_PATHS, use_cgroups: bool = True) -> SandboxResult:
  """Runs argv in a fresh scratch directory (its working directory) holding `files`.

  argv[0] "python"/"python3" means the sandbox's interpreter (`python`, default: the system
  python3 when world-executable, else sys.executable). cpu_s bounds the CPU time of the whole
  run, all processes together (each process also gets it as RLIMIT_CPU); default timeout_s + 1,
  so a single-threaded loop is reported as "timeout" and parallel ones hit "cpu" first.
  max_output_bytes caps each of stdout and stderr. max_scratch_mb and max_scratch_files bound
  what the run may write, /tmp and /dev/shm together (the given files included): a program
  writing without end would otherwise fill the host's disk (one wrote 1 GB in 16 MB files) or
  inode table (100,000 empty files); the defaults are far above what tests and repositories need.
  scratch_fs: "tmpfs" (hard limits; needs a caller that may mount, i.e. root), "watch" (a host
  directory polled against the limits) or "auto" (tmpfs where possible). run_as_uid applies only
  when the caller is root (None: stay root, rely on cgroups). host_paths are the host directories
  visible (read-only) inside; ("/",) shows the whole host filesystem. scratch_root: where the
  run's host directory is made (default: /dev/shm for a tmpfs run where usable, else the
  system temp dir). Raises SandboxUnavailable (see module
  docstring) and ValueError on bad arguments, never because of what the program does.
  """
  if not argv:
    raise ValueError("argv: empty command")
  for name, value, low in (("timeout_s", timeout_s, 0), ("memory_mb", memory_mb, 16),
                           ("max_processes", max_processes, 1), ("max_file_mb", max_file_mb, 0),
                           ("max_open_files", max_open_files, 3),
                           ("max_output_bytes", max_output_bytes, 0),
                           ("max_scratch_mb", max_scratch_mb, 0),
                           ("max_scratch_files", max_scratch_files, 0),
                           ("cpu_s", 1 if cpu_s is None else cpu_s, 0)):
    if not value > low:
      raise ValueError(f"{name}: expected > {low}, got {value!r}")
  if scratch_fs not in SCRATCH_FS:
    raise ValueError(f"scratch_fs: expected one of {SCRATCH_FS}, got {scratch_fs!r}")
  max_scratch_bytes = max_scratch_mb << 20
  staged = scratch.check_files(files or {}, max_scratch_bytes, max_scratch_files)
  uid = run_as_uid if (run_as_uid is not None and os.geteuid() == 0) else None
  argv = list(argv)
  interpreter = None
  if argv[0] in ("python", "python3"):
    interpreter = argv[0] = _select_python(python, uid)
  bwrap, why_not = _find_bwrap(bwrap_path)
  if bwrap is not None:
    why_not = _probe(bwrap, uid, interpreter, tuple(host_paths))
    if why_not is not None:
      bwrap = None
  if bwrap is None and not allow_unisolated:
    raise SandboxUnavailable(f"sandbox isolation unavailable: {why_not}. To fix: {INSTALL_HINT}.")
  tmpfs = scratch_fs != "watch" and scratch.tmpfs_unavailable() is None
  if scratch_fs == "tmpfs" and not tmpfs:
    raise SandboxUnavailable(f"scratch_fs='tmpfs': {scratch.tmpfs_unavailable()}; "
                             f"use scratch_fs='auto' or 'watch'")

  if (uid is not None and scratch_root is not None
      and not limits.traversable_by_others(scratch_root)):
    raise ValueError(f"scratch_root: {scratch_root!r} must be reachable by uid {uid} "
                     f"(every directory on the path searchable by others)")
  controllers = limits.cgroup_controllers() if use_cgroups else {}
  if os.geteuid() == 0 and uid is None and "pids" not in controllers:
    raise SandboxUnavailable(
        "no process-count limit is possible: running as root (RLIMIT_NPROC does not apply) "
        "with run_as_uid=None and no writable pids cgroup; keep run_as_uid (default 65534)")
  # bwrap's monitor and the pid-namespace init count against the limit too.
  max_tasks = max_processes + (_BWRAP_TASKS if bwrap else 0)
  cpu_budget = timeout_s + 1 if cpu_s is None else cpu_s
  cgroups = None
  if controllers:
    try:
      cgroups = limits.RunCgroups(controllers, pids_max=max_tasks, memory_bytes=memory_mb << 20)
    except OSError as e:
      raise SandboxUnavailable(f"could not create this run's cgroups: {e}") from e
  layout = None
  try:
    layout = scratch.create(scratch_root, staged, tmpfs=tmpfs, uid=uid)
    nproc = None
    if "pids" not in controllers:
      # RLIMIT_NPROC counts every task of the real uid, so other programs of that uid (e.g.
      # concurrent sandboxes) share the budget: approximate, the pids cgroup is exact.
      owner = uid if uid is not None else os.getuid()
      if owner != 0:
        nproc = max_tasks + limits.count_tasks_of_uid(owner)
    rl = limits.rlimits(memory_mb=memory_mb, cpu_s=cpu_budget, max_file_mb=max_file_mb,
                        max_open_files=max_open_files, nproc=nproc)
    full_env = minimal_env(env)
    if bwrap is not None:
      prefix = _bwrap_argv(bwrap, layout, uid, full_env, host_paths, interpreter)
    else:
      full_env["HOME"] = layout.scratch
      full_env["TMPDIR"] = layout.tmp
      prefix = None
    enforced = ["bwrap" if bwrap else "unisolated"] + ([f"uid={uid}"] if uid is not None else [])
    enforced += (cgroups.mechanisms if cgroups else []) + [f"rlimit:{n[7:]}" for n, _, _ in rl]
    enforced += ["timeout", "output_cap", "scratch:tmpfs" if tmpfs else "scratch:watch",
                 "cpu_total:cgroup" if cgroups and "cpuacct" in cgroups.dirs else "cpu_total:proc"]
    out = sandbox_run.execute(
        argv, bwrap_prefix=prefix, cwd=layout.scratch, env=full_env, rlimits=rl, uid=uid,
        cgroups=cgroups, stdin=stdin, timeout_s=timeout_s, max_output_bytes=max_output_bytes,
        cpu_s=cpu_budget,
        watch=sandbox_run.ScratchWatch(layout, max_scratch_bytes, max_scratch_files))
  finally:
    leaked = _clean_up(cgroups, layout)
  if out.launcher_error:
    raise SandboxUnavailable(f"sandbox launcher failed before running the program: "
                             f"{out.launcher_error.decode(errors='replace')}")
  result = _result(out, isolated=bwrap is not None)
  limit, detail = result.killed_reason, out.detail
  if out.detail is None:  # not stopped by the watcher: the limits' own words
    if limit is None or limit.startswith("signal "):
      limit, detail = out.full or (None, None)  # met a full scratch, then ended by itself
    else:
      detail = _describe(limit, timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_budget,
                         max_file_mb=max_file_mb, max_output_bytes=max_output_bytes)
  return dataclasses.replace(result, enforced=tuple(enforced), limit=limit, limit_detail=detail,
                             scratch_leaked=leaked)


def _result(out: sandbox_run.Outcome, *, isolated: bool) -> SandboxResult:
  returncode, reason = out.returncode, out.reason
  if isolated and returncode > 128 and sandbox_run.signal_name(returncode - 128):
    returncode = 128 - returncode  # bwrap reports a signal death as 128+N
  if reason is None and out.oom_kills > 0:
    reason = "memory"
  if reason is None and returncode < 0:
    sig = -returncode
    reason = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file_size"}.get(
        sig, f"signal {sandbox_run.signal_name(sig)}")
  stderr = out.stderr.decode("utf-8", errors="replace")
  if reason is None and returncode != 0 and _ends_with_memory_error(stderr):
    reason = "memory"  # RLIMIT_AS made Python raise MemoryError (a traceback, not a kill)
  return SandboxResult(returncode=returncode, stdout=out.stdout.decode("utf-8", errors="replace"),
                       stderr=stderr, timed_out=reason == "timeout", killed_reason=reason,
                       isolated=isolated, duration_s=out.duration_s, cpu_s=out.cpu_s,
                       scratch_bytes=out.usage.bytes, scratch_files=out.usage.files)


def _describe(limit: str, *, timeout_s: float, memory_mb: int, cpu_s: float, max_file_mb: int,
              max_output_bytes: int) -> str:
  return {
      "timeout": f"it ran past the {timeout_s:g} s wall-clock limit (timeout_s)",
      "output_limit": f"it wrote more than {max_output_bytes} bytes to stdout or stderr "
                      f"(max_output_bytes)",
      "cpu": f"a process used its {math.ceil(cpu_s)} CPU-seconds (cpu_s, as RLIMIT_CPU)",
      "memory": f"it needed more than {memory_mb} MiB of memory (memory_mb)",
      "file_size": f"it wrote a file past {max_file_mb} MiB (max_file_mb)",
  }.get(limit, limit)


def _clean_up(cgroups: Optional[limits.RunCgroups], layout: Optional[scratch.Layout]) -> int:
  """Removes the run's cgroups and directories; never raises (whatever the program left), so a
  bad action cannot crash a rollout. Returns the number of entries left behind (logged)."""
  if cgroups is not None:
    try:
      cgroups.kill_all()
      cgroups.remove()
    except Exception:  # never out of run_command: a leaked cgroup is logged, and removed later
      log.exception("sandbox: removing the run's cgroups failed")
  if layout is None:
    return 0
  return scratch.remove_tree(layout.base).leaked


# ------------------------------------------------------------------------- isolation set-up


def _select_python(python: Optional[str], uid: Optional[int]) -> str:
  if python is not None:
    candidates = [python]
  else:
    candidates = [SYSTEM_PYTHON, sys.executable]
  for path in candidates:
    if path and os.access(path, os.X_OK) and (uid is None or limits.accessible_to_others(path)):
      return path
  raise SandboxUnavailable(
      f"no Python interpreter among {candidates} is executable by uid {uid}: the sandbox drops "
      f"root to uid {uid}, so the interpreter and its directories must be world-readable "
      f"(install Debian's python3, pass python=PATH, or run_as_uid=None to stay root inside)")


def _find_bwrap(bwrap_path: Optional[str]) -> tuple[Optional[str], str]:
  path = bwrap_path if bwrap_path is not None else shutil.which("bwrap")
  if path is None:
    return None, "`bwrap` (bubblewrap) was not found on PATH"
  if not os.access(path, os.X_OK) or os.path.isdir(path):
    return None, f"bubblewrap executable {path!r} does not exist or is not executable"
  return path, ""


def _bwrap_argv(bwrap: str, layout: scratch.Layout, uid: Optional[int],
                env: Mapping[str, str], host_paths: Sequence[str],
                interpreter: Optional[str]) -> list[str]:
  """The run's limited space (scratch.py) gives /tmp, holding SCRATCH, and /dev/shm; the
  rest of /dev is read-only (bwrap's /dev is a tmpfs of its own, without any limit)."""
  out = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
  out += _host_mounts(host_paths, interpreter)
  out += ["--dev", "/dev", "--bind", layout.shm, "/dev/shm", "--remount-ro", "/dev",
          "--proc", "/proc", "--bind", layout.tmp, "/tmp", "--chdir", SCRATCH,
          "--remount-ro", "/", "--hostname", "sandbox"]
  if uid is not None:  # unprivileged bwrap always has a user namespace: forbid nested ones
    out += ["--unshare-user", "--disable-userns"]
  out.append("--clearenv")
  for key, value in env.items():
    out += ["--setenv", key, value]
  return out


def _host_mounts(host_paths: Sequence[str], interpreter: Optional[str]) -> list[str]:
  """Read-only binds of the host paths (symlinks recreated, missing ones skipped), plus the
  interpreter's installation when it lies elsewhere (e.g. a non-root caller's venv)."""
  if "/" in host_paths:
    return ["--ro-bind", "/", "/"]
  out, bound = [], []
  for path in host_paths:
    if os.path.islink(path):
      out += ["--symlink", os.readlink(path), path]
    elif os.path.exists(path):
      out += ["--ro-bind", path, path]
      bound.append(os.path.realpath(path))
  if interpreter is not None:
    for exe in {os.path.abspath(interpreter), os.path.realpath(interpreter)}:
      prefix = os.path.dirname(os.path.dirname(exe))  # PREFIX/bin/python
      if not any(prefix == b or prefix.startswith(b + "/") for b in bound):
        out += ["--ro-bind", prefix, prefix]
        bound.append(prefix)
  return out


_PROBE_LOCK = threading.Lock()
_PROBED: dict[tuple, Optional[str]] = {}


def _probe(bwrap: str, uid: Optional[int], interpreter: Optional[str],
           host_paths: tuple[str, ...]) -> Optional[str]:
  """Starts `interpreter -c pass` (or `true`) in the sandbox once per configuration: None when
  it works, else why not (e.g. user namespaces disabled, interpreter unreadable inside)."""
  key = (bwrap, uid, interpreter, host_paths)
  with _PROBE_LOCK:
    if key in _PROBED:
      return _PROBED[key]
  layout = scratch.create(None, {}, tmpfs=False, uid=uid)
  try:
    env = minimal_env()
    res = sandbox_run.execute(
        [interpreter, "-c", "pass"] if interpreter else ["true"],
        bwrap_prefix=_bwrap_argv(bwrap, layout, uid, env, host_paths, interpreter),
        cwd=layout.scratch, env=env, rlimits=[], uid=uid, cgroups=None, stdin=None,
        timeout_s=20.0, max_output_bytes=1 << 16)
    why = None
    if res.returncode != 0 or res.reason or res.launcher_error:
      why = (f"{bwrap} failed to start a sandbox (exit {res.returncode}, "
             f"{res.reason or 'no kill'}): "
             f"{(res.launcher_error or res.stderr).decode(errors='replace').strip()[:500]}")
  finally:
    scratch.remove_tree(layout.base)
  with _PROBE_LOCK:
    _PROBED[key] = why
  return why




def _ends_with_memory_error(stderr: str) -> bool:
  lines = [l for l in stderr.splitlines() if l.strip()]
  return bool(lines) and (lines[-1] == "MemoryError" or lines[-1].startswith("MemoryError:"))
