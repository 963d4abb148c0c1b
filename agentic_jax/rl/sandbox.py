"""Sandbox for model-written code: bubblewrap isolation plus resource limits.

    res = run_python("print(input()[::-1])", stdin="abc", timeout_s=5)
    assert (res.returncode, res.stdout, res.killed_reason) == (0, "cba\\n", None) and res.isolated
    res = run_command(["python", "-m", "unittest"], files={"test_x.py": "..."})

Layers (measured on this machine kind, machine-notes §4; `SandboxResult.enforced` lists them):
- bubblewrap: new user/pid/net/ipc/uts/cgroup namespaces; a read-only root holding only the
  host's system directories (HOST_PATHS: /usr, /etc, /bin, /lib...; pass host_paths=("/",) for
  the whole host filesystem, read-only); fresh /dev and /proc; a size-limited tmpfs /tmp; the
  private scratch dir bound at /tmp/scratch as the working directory and HOME;
  `--die-with-parent`, `--new-session`, all capabilities dropped, nested user namespaces
  disabled, and an environment made of `minimal_env()` only.
- an unprivileged uid (65534) when the caller is root: root-only host files stay unreadable and
  RLIMIT_NPROC (ignored for root) works. Its interpreter must be world-executable, so Python
  code runs on the system python3 (stdlib only), not on the training venv.
- per-run cgroups when writable (root here, v1 or v2): `pids.max` bounds processes+threads,
  the memory limit bounds all processes together with their /tmp files.
- rlimits: address space (= memory_mb), CPU seconds, file size, open files, no core dumps, and
  RLIMIT_NPROC when no pids cgroup exists.
- a wall-clock timeout and an output cap, after which the whole process group, the bwrap pid
  namespace and the cgroups are SIGKILLed.

Without a working bwrap, run_python/run_command raise SandboxUnavailable unless
allow_unisolated=True, in which case everything above except bubblewrap still applies and the
result says isolated=False (no filesystem or network isolation: trusted code only).
"""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Mapping, Optional, Sequence, Union

from agentic_jax.rl import sandbox_limits as limits

SCRATCH = "/tmp/scratch"          # working directory inside the sandbox
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
# Only the system's programs and libraries are visible inside, not the host's other files: the
# repository, datasets and the environments' own reference solutions (a reward-hacking route)
# stay out of reach even where they are world-readable.
HOST_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`; it is a "
                "system requirement, see README), or pass allow_unisolated=True (config key "
                "`rl.sandbox.allow_unisolated`) to run with resource limits only, WITHOUT "
                "filesystem or network isolation")
_BWRAP_TASKS = 2  # bwrap's monitor + the pid namespace's init (measured: 9 forks at pids.max=12
                 # with max_processes=10)
_READ_CHUNK = 1 << 16
Content = Union[str, bytes]


class SandboxUnavailable(RuntimeError):
  """Isolation cannot be provided and unisolated execution was not allowed."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
  returncode: int          # negative signal number when killed by a signal (subprocess style)
  stdout: str              # utf-8 (invalid bytes replaced), at most max_output_bytes
  stderr: str
  timed_out: bool
  # None, "timeout", "output_limit" (we killed it), "memory" (the memory cgroup OOM-killed a
  # process of the run, possibly a child while the main program went on, or Python died of
  # MemoryError under RLIMIT_AS), "cpu" (SIGXCPU), "file_size" (SIGXFSZ) or "signal SIGNAME".
  killed_reason: Optional[str]
  isolated: bool           # True when bubblewrap was used
  duration_s: float
  enforced: tuple[str, ...] = ()  # the mechanisms in effect, e.g. ("bwrap", "uid=65534", ...)

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
                max_output_bytes: int = 1 << 20, env: Optional[Mapping[str, str]] = None,
                python: Optional[str] = None, bwrap_path: Optional[str] = None,
                run_as_uid: Optional[int] = NOBODY, scratch_root: Optional[str] = None,
                host_paths: Sequence[str] = HOST_PATHS, use_cgroups: bool = True) -> SandboxResult:
  """Runs argv in a fresh scratch directory (its working directory) holding `files`.

  argv[0] "python"/"python3" means the sandbox's interpreter (`python`, default: the system
  python3 when world-executable, else sys.executable). cpu_s defaults to timeout_s + 1 so a
  single-threaded loop is reported as "timeout"; multi-threaded programs hit "cpu" first.
  max_output_bytes caps each of stdout and stderr. run_as_uid applies only when the caller is
  root (None: stay root, rely on cgroups). host_paths are the host directories visible
  (read-only) inside; ("/",) shows the whole host filesystem. Raises SandboxUnavailable (see
  module docstring).
  """
  if not argv:
    raise ValueError("argv: empty command")
  for name, value, low in (("timeout_s", timeout_s, 0), ("memory_mb", memory_mb, 16),
                           ("max_processes", max_processes, 1), ("max_file_mb", max_file_mb, 0),
                           ("max_open_files", max_open_files, 3),
                           ("max_output_bytes", max_output_bytes, 0)):
    if not value > low:
      raise ValueError(f"{name}: expected > {low}, got {value!r}")
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
  cgroups = None
  if controllers:
    try:
      cgroups = limits.RunCgroups(controllers, pids_max=max_tasks, memory_bytes=memory_mb << 20)
    except OSError as e:
      raise SandboxUnavailable(f"could not create this run's cgroups: {e}") from e
  scratch = None
  try:
    scratch = tempfile.mkdtemp(prefix="agentic_sandbox_", dir=scratch_root)
    _write_files(scratch, files or {}, uid)
    nproc = None
    if "pids" not in controllers:
      # RLIMIT_NPROC counts every task of the real uid, so other programs of that uid (e.g.
      # concurrent sandboxes) share the budget: approximate, the pids cgroup is exact.
      owner = uid if uid is not None else os.getuid()
      if owner != 0:
        nproc = max_tasks + limits.count_tasks_of_uid(owner)
    rl = limits.rlimits(memory_mb=memory_mb, cpu_s=timeout_s + 1 if cpu_s is None else cpu_s,
                        max_file_mb=max_file_mb, max_open_files=max_open_files, nproc=nproc)
    full_env = minimal_env(env)
    if bwrap is not None:
      prefix = _bwrap_argv(bwrap, scratch, memory_mb, uid, full_env, host_paths, interpreter)
    else:
      full_env["HOME"] = scratch
      full_env["TMPDIR"] = scratch
      prefix = None
    enforced = ["bwrap" if bwrap else "unisolated"] + ([f"uid={uid}"] if uid is not None else [])
    enforced += (cgroups.mechanisms if cgroups else []) + [f"rlimit:{n[7:]}" for n, _, _ in rl]
    enforced += ["timeout", "output_cap"]
    result = _execute(argv, bwrap_prefix=prefix, cwd=scratch, env=full_env, rlimits_=rl, uid=uid,
                      cgroups=cgroups, stdin=stdin, timeout_s=timeout_s,
                      max_output_bytes=max_output_bytes)
    return dataclasses.replace(result, enforced=tuple(enforced))
  finally:
    if cgroups is not None:
      cgroups.kill_all()
      cgroups.remove()
    if scratch is not None:
      _rmtree(scratch)


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


def _bwrap_argv(bwrap: str, scratch: str, memory_mb: int, uid: Optional[int],
                env: Mapping[str, str], host_paths: Sequence[str],
                interpreter: Optional[str]) -> list[str]:
  out = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
  out += _host_mounts(host_paths, interpreter)
  out += ["--dev", "/dev", "--proc", "/proc", "--size", str(memory_mb << 20), "--tmpfs", "/tmp",
          "--bind", scratch, SCRATCH, "--chdir", SCRATCH, "--remount-ro", "/",
          "--hostname", "sandbox"]
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
  scratch = tempfile.mkdtemp(prefix="agentic_sandbox_probe_")
  try:
    if uid is not None:
      os.chown(scratch, uid, uid)
    env = minimal_env()
    res = _execute([interpreter, "-c", "pass"] if interpreter else ["true"],
                   bwrap_prefix=_bwrap_argv(bwrap, scratch, 256, uid, env, host_paths, interpreter),
                   cwd=scratch, env=env,
                   rlimits_=[], uid=uid, cgroups=None, stdin=None, timeout_s=20.0,
                   max_output_bytes=1 << 16)
    why = None
    if res.returncode != 0 or res.killed_reason:
      why = (f"{bwrap} failed to start a sandbox (exit {res.returncode}, "
             f"{res.killed_reason or 'no kill'}): {res.stderr.strip()[:500]}")
  finally:
    _rmtree(scratch)
  with _PROBE_LOCK:
    _PROBED[key] = why
  return why


def _write_files(scratch: str, files: Mapping[str, Content], uid: Optional[int]) -> None:
  for path, content in files.items():
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
      raise ValueError(f"files: path {path!r}: expected a relative path without '.', '..' or "
                       f"empty components")
    if not isinstance(content, (str, bytes)):
      raise TypeError(f"files[{path!r}]: expected str or bytes, got {type(content).__name__}")
    target = os.path.join(scratch, *parts)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as f:
      f.write(content.encode("utf-8") if isinstance(content, str) else content)
  if uid is not None:  # the unprivileged program owns its scratch dir
    for root, dirs, names in os.walk(scratch):
      os.chown(root, uid, uid)
      for name in names:
        os.chown(os.path.join(root, name), uid, uid)


def _rmtree(path: str) -> None:
  def fix_and_retry(func, p, _exc):  # the program may have removed permissions (non-root caller)
    try:
      os.chmod(os.path.dirname(p), 0o700)
      if os.path.isdir(p) and not os.path.islink(p):
        os.chmod(p, 0o700)
      func(p)
    except OSError:
      pass
  shutil.rmtree(path, onerror=fix_and_retry)


# ------------------------------------------------------------------------------- execution


def _execute(argv: list[str], *, bwrap_prefix: Optional[list[str]], cwd: str,
             env: Mapping[str, str], rlimits_, uid, cgroups, stdin: Optional[Content],
             timeout_s: float, max_output_bytes: int) -> SandboxResult:
  err_r, err_w = os.pipe()  # the launcher's own error channel (close-on-exec in the launcher)
  # bwrap's --json-status-fd tells the pid of the namespace's init (bwrap does not pass it on)
  st_r, st_w = os.pipe() if bwrap_prefix is not None else (-1, -1)
  try:
    command = list(argv) if bwrap_prefix is None else (
        bwrap_prefix + ["--json-status-fd", str(st_w), "--", *argv])
    launcher = limits.launcher_argv(argv=command, err_fd=err_w, rlimits=rlimits_,
                                    cgroup_procs=cgroups.procs_files if cgroups else [],
                                    uid=uid, gid=uid)
    start = time.monotonic()
    proc = subprocess.Popen(launcher, cwd=cwd, env=dict(env),
                            pass_fds=(err_w,) if st_w < 0 else (err_w, st_w),
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    os.close(err_w)
    if st_w >= 0:
      os.close(st_w)
    err_w = st_w = -1
    run = _Run(proc, st_r, cgroups)
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    out, err, reason = run.pump(data, start + timeout_s, max_output_bytes)
    returncode = proc.wait()
    duration = time.monotonic() - start
    launcher_error = limits.read_available(err_r)
  finally:
    for fd in (err_r, err_w, st_r, st_w):
      if fd >= 0:
        os.close(fd)
  if launcher_error:
    raise SandboxUnavailable(f"sandbox launcher failed before running the program: "
                             f"{launcher_error.decode(errors='replace')}")
  if bwrap_prefix is not None and returncode > 128 and _signal_name(returncode - 128):
    returncode = 128 - returncode  # bwrap reports a signal death as 128+N
  if reason is None and cgroups is not None and cgroups.oom_kills() > 0:
    reason = "memory"
  if reason is None and returncode < 0:
    sig = -returncode
    reason = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file_size"}.get(
        sig, f"signal {_signal_name(sig)}")
  stderr = err.decode("utf-8", errors="replace")
  if reason is None and returncode != 0 and _ends_with_memory_error(stderr):
    reason = "memory"  # RLIMIT_AS made Python raise MemoryError (a traceback, not a kill)
  return SandboxResult(returncode=returncode, stdout=out.decode("utf-8", errors="replace"),
                       stderr=stderr, timed_out=reason == "timeout", killed_reason=reason,
                       isolated=bwrap_prefix is not None, duration_s=duration)


class _Run:
  """One started sandbox: pumps its pipes and stops everything it started."""

  def __init__(self, proc: subprocess.Popen, status_fd: int, cgroups):
    self.proc, self.status_fd, self.cgroups = proc, status_fd, cgroups
    self.status = bytearray()
    self.init_pid: Optional[int] = None
    self.init_start: Optional[str] = None

  def pump(self, stdin: Optional[bytes], deadline: float,
           cap: int) -> tuple[bytes, bytes, Optional[str]]:
    """Feeds stdin and reads both pipes until EOF, the deadline or the output cap."""
    proc = self.proc
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd, self.status_fd):
      if fd >= 0:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin or b"")
    in_fd = -1
    if proc.stdin is not None:
      if pending:
        in_fd = proc.stdin.fileno()
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
      else:
        proc.stdin.close()
    reason = None
    exit_seen = None
    try:
      while sel.get_map().keys() - {self.status_fd}:  # some stdio pipe still open
        now = time.monotonic()
        if now >= deadline:
          reason = "timeout"
          break
        if exit_seen is None and proc.poll() is not None:
          exit_seen = now
          self.stop()  # leftovers of an unisolated run die with the program
        if exit_seen is not None and now - exit_seen > 2.0:
          break  # something outside our reach still holds the pipes: stop reading
        for key, _ in sel.select(min(deadline - now, 0.05)):
          fd = key.fd
          if fd == in_fd:
            try:
              pending = pending[os.write(fd, pending[:_READ_CHUNK]):]
            except BlockingIOError:
              continue
            except BrokenPipeError:
              pending = pending[:0]
            if not pending:
              sel.unregister(fd)
              proc.stdin.close()
              in_fd = -1
            continue
          try:
            chunk = os.read(fd, _READ_CHUNK)
          except BlockingIOError:
            continue
          if not chunk:
            sel.unregister(fd)
          elif fd == self.status_fd:
            self._on_status(chunk)
          else:
            bufs[fd] += chunk
            if len(bufs[fd]) > cap:
              del bufs[fd][cap:]
              reason = "output_limit"
        if reason is not None:
          break
    finally:
      sel.close()
      self.stop()
      for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None and not f.closed:
          try:
            f.close()
          except BrokenPipeError:
            pass
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), reason

  def _on_status(self, chunk: bytes) -> None:
    self.status += chunk
    m = re.search(rb'"child-pid"\s*:\s*(\d+)', self.status)
    if m and self.init_pid is None:
      self.init_pid = int(m.group(1))
      self.init_start = limits.start_time(self.init_pid)  # to tell it from a later reuse of the pid

  def stop(self) -> None:
    """Kills everything the run started and returns once it is gone.

    Isolated: SIGKILL the pid namespace's init first (the kernel then kills every process in
    the namespace) and let bwrap's monitor exit on its own; then the process group, then the
    cgroups (killed until empty) or, without cgroups, wait until that init has fully exited,
    which happens only after every other process of its namespace is gone."""
    proc = self.proc
    if proc.poll() is None:
      if self.init_pid is None and self.status_fd >= 0:
        self._on_status(limits.read_available(self.status_fd))
      if self.init_pid is not None:  # still our monitor's child: the pid cannot be reused yet
        limits.sigkill(self.init_pid)
        try:
          proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
          pass
    limits.sigkill(-proc.pid)  # whole process group (launcher/bwrap, or the unisolated program)
    if self.cgroups is not None:
      self.cgroups.kill_all()
    elif self.init_pid is not None:
      limits.wait_exited(self.init_pid, self.init_start)
    else:  # unisolated without cgroups (or bwrap never started its child)
      limits.wait_group_gone(proc.pid)


def _signal_name(num: int) -> Optional[str]:
  try:
    return signal.Signals(num).name
  except ValueError:
    return None


def _ends_with_memory_error(stderr: str) -> bool:
  lines = [l for l in stderr.splitlines() if l.strip()]
  return bool(lines) and (lines[-1] == "MemoryError" or lines[-1].startswith("MemoryError:"))
