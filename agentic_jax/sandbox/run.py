"""One sandboxed command from start to end: start the launcher, feed stdin and read stdout and
stderr, watch the run's limits (wall clock, output, whole-run CPU time, scratch usage) and stop
everything it started. `sandbox.run_command` builds the command and reads the Outcome."""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import signal
import socket
import subprocess
import time
from typing import Optional, Union

from agentic_jax.sandbox import launcher as sandbox_launcher
from agentic_jax.sandbox import limits
from agentic_jax.sandbox import scratch

# The whole-run CPU watcher kills past cpu_s + this: startup of the launcher and bwrap is counted
# too, and a single process should meet RLIMIT_CPU's SIGXCPU (reported as exactly that) first.
CPU_TOLERANCE_S = 0.5
CPU_POLL_S = 0.1      # a cgroup read, or one pass over /proc (a few ms): cheap either way
TMPFS_POLL_S = 0.05   # one fstatvfs
WATCH_POLL_MIN_S = 0.1  # a watched directory: at least this, and 10x the last walk's duration
WATCH_WALK_S = 0.5    # time budget of one walk while running (the final one gets 4x)
EXIT_GRACE_S = 2.0    # after the program's exit, how long pipes held by something else are read
_READ_CHUNK = 1 << 16
Content = Union[str, bytes]


@dataclasses.dataclass(frozen=True)
class ScratchWatch:
  layout: scratch.Layout
  max_bytes: int
  max_files: int


@dataclasses.dataclass(frozen=True)
class Outcome:
  returncode: int           # as the launcher/bwrap reported it (__init__.py maps bwrap's 128+N)
  stdout: bytes
  stderr: bytes
  reason: Optional[str]     # why we stopped it: "timeout", "output_limit", "cpu", "scratch_*"
  detail: Optional[str]     # the watcher's words when it stopped the run (cpu, scratch_*)
  full: Optional[tuple[str, str]]  # the scratch limit met when the run ended by itself, in words
  duration_s: float
  cpu_s: float              # CPU seconds of all the run's processes (0.0 when not measured)
  usage: scratch.Usage      # the scratch at its fullest seen
  launcher_error: bytes     # the launcher's own failure, before the program ran
  oom_kills: int = 0        # processes the memory cgroup killed


def execute(argv: list[str], *, bwrap_prefix: Optional[list[str]], cwd: str, env: dict,
            rlimits: list, uid: Optional[int], cgroups: Optional[limits.RunCgroups],
            stdin: Optional[Content], timeout_s: float, max_output_bytes: int,
            cpu_s: Optional[float] = None, watch: Optional[ScratchWatch] = None) -> Outcome:
  """Runs the (optionally bwrap-prefixed) command through the launcher; never raises because of
  what the program does (OSError from starting the launcher itself does propagate)."""
  err_r, err_w = os.pipe()  # the launcher's own error channel (close-on-exec in the launcher)
  # bwrap's --json-status-fd tells the pid of the namespace's init (bwrap does not pass it on)
  st_r, st_w = os.pipe() if bwrap_prefix is not None else (-1, -1)
  tmpfs = watch is not None and watch.layout.tmpfs
  sock_host, sock_child = socket.socketpair() if tmpfs else (None, None)
  watcher = None
  try:
    command = list(argv) if bwrap_prefix is None else (
        bwrap_prefix + ["--json-status-fd", str(st_w), "--", *argv])
    cfg = {"argv": command, "err_fd": err_w, "rlimits": rlimits, "uid": uid, "gid": uid,
           "cgroup_procs": cgroups.procs_files if cgroups else [], "cwd": cwd}
    pass_fds = [err_w] + ([st_w] if st_w >= 0 else [])
    if tmpfs:
      layout = watch.layout
      cfg["tmpfs"] = {"target": layout.fs, "stage": layout.stage, "skeleton": scratch.SKELETON,
                      "sock_fd": sock_child.fileno(),
                      "options": scratch.tmpfs_options(watch.max_bytes, watch.max_files, uid)}
      pass_fds.append(sock_child.fileno())
    start = time.monotonic()
    proc = subprocess.Popen(sandbox_launcher.launcher_argv(cfg),
                            cwd=watch.layout.base if watch else cwd, env=dict(env),
                            pass_fds=tuple(pass_fds),
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    os.close(err_w)
    if st_w >= 0:
      os.close(st_w)
    err_w = st_w = -1
    if sock_child is not None:
      sock_child.close()
    watcher = _Watch(proc.pid, cgroups, cpu_s, watch, sock_host)
    run = _Run(proc, st_r, cgroups, watcher)
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    out, err, reason = run.pump(data, start + timeout_s, max_output_bytes)
    returncode = proc.wait()
    duration = time.monotonic() - start
    launcher_error = limits.read_available(err_r)
    full = watcher.final()
    detail = watcher.stopped[1] if watcher.stopped and watcher.stopped[0] == reason else None
    return Outcome(returncode, out, err, reason, detail, full, duration,
                   watcher.cpu_peak, watcher.usage, launcher_error,
                   cgroups.oom_kills() if cgroups else 0)
  finally:
    for fd in (err_r, err_w, st_r, st_w):
      if fd >= 0:
        os.close(fd)
    for sock in (sock_host, sock_child):
      if sock is not None:
        sock.close()
    if watcher is not None:
      watcher.close()


Hit = tuple[str, str]  # (limit name, the limit in words)


class _Watch:
  """Polls the limits that no kernel mechanism enforces for the run as a whole: total CPU time
  of all its processes, and (for a watched directory) scratch usage; poll() returns the first
  found past (the run is then killed), `stopped` keeps it. A tmpfs enforces its limits itself:
  the program gets ENOSPC and may handle it (its output stays deterministic: not killed at a
  poll's whim), and a full tmpfs seen is only noted, so the result can say why writes failed."""

  def __init__(self, root_pid: int, cgroups: Optional[limits.RunCgroups],
               cpu_s: Optional[float], watch: Optional[ScratchWatch],
               sock: Optional[socket.socket]):
    self.root_pid, self.cgroups, self.cpu_budget, self.watch = root_pid, cgroups, cpu_s, watch
    self.sock = sock
    self.tmpfs_fd = -1
    self.cpu_peak = 0.0
    self.usage = scratch.Usage(0, 0)
    self.stopped: Optional[Hit] = None
    self.tmpfs_full: Optional[Hit] = None
    self.next_cpu = self.next_scratch = 0.0
    self.scratch_every = TMPFS_POLL_S if watch is not None and watch.layout.tmpfs else (
        WATCH_POLL_MIN_S)

  def poll(self, now: float) -> Optional[str]:
    hit = None
    if self.cpu_budget is not None and now >= self.next_cpu:
      self.next_cpu = now + CPU_POLL_S
      hit = self._check_cpu()
    if hit is None and self.watch is not None and now >= self.next_scratch:
      hit = self._check_scratch(WATCH_WALK_S)
      spent = time.monotonic() - now
      self.next_scratch = now + max(self.scratch_every, 10 * spent)
      if hit is not None and self.watch.layout.tmpfs:
        self.tmpfs_full = self.tmpfs_full or hit
        hit = None
    self.stopped = hit
    return hit[0] if hit else None

  def final(self) -> Optional[Hit]:
    """After the run: the last CPU total and scratch usage; a hit when the scratch is full now
    or a tmpfs was seen full (a program that met ENOSPC and ended by itself). Best effort: what
    a program held open but had unlinked was freed when it ended, and may be missed."""
    self._check_cpu()
    if self.watch is None:
      return None
    return self._check_scratch(4 * WATCH_WALK_S) or self.tmpfs_full

  def _check_cpu(self) -> Optional[Hit]:
    used = self.cgroups.cpu_s() if self.cgroups is not None else None
    if used is None:
      used = limits.tree_cpu_s(self.root_pid)
    self.cpu_peak = max(self.cpu_peak, used)  # /proc can miss a process between exit and reap
    if self.cpu_budget is not None and self.cpu_peak > self.cpu_budget + CPU_TOLERANCE_S:
      return "cpu", (f"its processes together used {self.cpu_peak:.2f} CPU-seconds, over the "
                     f"run's budget of {self.cpu_budget:g} s (cpu_s)")
    return None

  def _check_scratch(self, budget_s: float) -> Optional[Hit]:
    w = self.watch
    if w.layout.tmpfs:
      if self.tmpfs_fd < 0:
        self.tmpfs_fd = self._receive_fd()
        if self.tmpfs_fd < 0:
          return None  # not mounted yet (or the launcher failed: it says so itself)
      usage = scratch.tmpfs_usage(self.tmpfs_fd)
    else:
      usage = scratch.dir_usage(w.layout.fs, w.max_bytes, w.max_files, budget_s)
    self.usage = scratch.Usage(max(self.usage.bytes, usage.bytes),
                               max(self.usage.files, usage.files))
    if usage.files > w.max_files or usage.no_inodes:
      return "scratch_files", (f"its scratch held {usage.files} entries, the limit is "
                               f"{w.max_files} (max_scratch_files)")
    if usage.bytes > w.max_bytes or usage.no_space:
      return "scratch_bytes", (f"its scratch held {usage.bytes} bytes, the limit is "
                               f"{w.max_bytes} (max_scratch_mb)")
    return None

  def _receive_fd(self) -> int:
    try:
      self.sock.setblocking(False)
      _, fds, _, _ = socket.recv_fds(self.sock, 16, 1)
    except OSError:  # BlockingIOError included: not sent yet
      return -1
    return fds[0] if fds else -1

  def close(self) -> None:
    if self.tmpfs_fd >= 0:  # the last reference: the tmpfs and its contents are freed now
      os.close(self.tmpfs_fd)
      self.tmpfs_fd = -1


class _Run:
  """One started sandbox: pumps its pipes, polls the watcher, stops everything it started."""

  def __init__(self, proc: subprocess.Popen, status_fd: int,
               cgroups: Optional[limits.RunCgroups], watcher: _Watch):
    self.proc, self.status_fd, self.cgroups, self.watcher = proc, status_fd, cgroups, watcher
    self.status = bytearray()
    self.init_pid: Optional[int] = None
    self.init_start: Optional[str] = None

  def pump(self, stdin: Optional[bytes], deadline: float,
           cap: int) -> tuple[bytes, bytes, Optional[str]]:
    """Feeds stdin and reads both pipes until the program has exited and the pipes are done
    (a program may close its stdout and go on running: it is waited for), or until the
    deadline, the output cap or a watched limit."""
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
      while True:
        now = time.monotonic()
        if now >= deadline:
          reason = "timeout"
          break
        if exit_seen is None and proc.poll() is not None:
          exit_seen = now
          self.stop()  # leftovers (daemons holding the pipes) die with the program
        reading = out_fd in sel.get_map() or err_fd in sel.get_map()
        if exit_seen is not None and (not reading or now - exit_seen > EXIT_GRACE_S):
          break  # done, or something outside our reach still holds the pipes
        reason = self.watcher.poll(now)
        if reason is not None:
          break
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


def signal_name(num: int) -> Optional[str]:
  try:
    return signal.Signals(num).name
  except ValueError:
    return None
