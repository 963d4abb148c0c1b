"""A sandbox run's scratch space: every place it may write, i.e. its /tmp (holding the working
directory /tmp/scratch) and /dev/shm. Size and entry limits, usage measurement, and a clean-up
that nothing the program leaves can break.

Host layout of one run: BASE (ours, mode 0711) / fs (the limited space, owned by the program's
uid) / {tmp (the sandbox's /tmp) / scratch (the working directory, holding the given files),
shm (its /dev/shm)}. The limits cover the whole of BASE/fs, so neither /tmp nor /dev/shm is a
way around them (bwrap's own /dev is remounted read-only). In a tmpfs run BASE/stage holds the
working directory's files until the launcher copies them in, and BASE lies on /dev/shm when
possible: each host-side entry costs ~3 ms to remove on a disk mounted with `discard`.

Two mechanisms (`SandboxResult.enforced` names the one used):
- "scratch:tmpfs" (a caller that may mount, i.e. root with CAP_SYS_ADMIN): the launcher mounts a
  tmpfs with size= and nr_inodes= on BASE/fs in a private mount namespace. Hard limits: writes
  past them fail with ENOSPC. The host never sees the program's files (the namespace's end frees
  them, even when the caller dies), so the program's leftovers need no clean-up at all; usage is
  read with fstatvfs on a descriptor of the tmpfs, O(1) however many files there are.
- "scratch:watch" (anywhere else): BASE/fs is a host directory which the sandbox measures while
  the program runs (dir_usage(), bounded in time and entries) and kills the run once over a limit.
  Soft: a program may exceed a limit by what it writes between two polls, and files it unlinks
  while holding them open are not seen (RLIMIT_FSIZE still caps each file, RLIMIT_NOFILE their
  number). Clean-up is remove_tree(): iterative, descriptor-relative, never follows symlinks,
  fixes permissions and immutable flags, stays on one filesystem, never raises.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import fcntl
import logging
import os
import stat
import subprocess
import tempfile
import threading
import time
from typing import Mapping, Optional, Union

from agentic_jax.sandbox import launcher as sandbox_launcher

log = logging.getLogger(__name__)

Content = Union[str, bytes]
# Made by us below fs, not the program's entries; the last one is the working directory.
SKELETON = ("shm", "tmp", "tmp/scratch")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS = 0x80086601, 0x40086602
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


@dataclasses.dataclass(frozen=True)
class Layout:
  base: str              # ours; removed after the run
  fs: str                # the limited space (a tmpfs mount point, or the watched directory)
  stage: Optional[str]   # tmpfs runs: the working directory's files, copied in by the launcher
  tmpfs: bool

  @property
  def tmp(self) -> str:  # the sandbox's /tmp
    return os.path.join(self.fs, "tmp")

  @property
  def scratch(self) -> str:  # the working directory, /tmp/scratch inside
    return os.path.join(self.fs, "tmp", "scratch")

  @property
  def shm(self) -> str:  # the sandbox's /dev/shm (POSIX semaphores and shared memory)
    return os.path.join(self.fs, "shm")


@dataclasses.dataclass(frozen=True)
class Usage:
  bytes: int   # allocated bytes of the program's entries (tmpfs pages; st_blocks on a host dir)
  files: int   # entries of any kind (files, directories, links, fifos), the given files included
  no_space: bool = False   # tmpfs: no block left (the next write fails with ENOSPC)
  no_inodes: bool = False  # tmpfs: no inode left (the next new entry fails with ENOSPC)


@dataclasses.dataclass(frozen=True)
class Removal:
  removed: int        # entries removed
  leaked: int         # entries that could not be removed (logged)
  error: Optional[str] = None  # the first reason something was left


# ------------------------------------------------------------------------------ set-up


_PROBE_LOCK = threading.Lock()
_TMPFS_WHY_NOT: dict[str, Optional[str]] = {}


def tmpfs_unavailable() -> Optional[str]:
  """None when the launcher can mount a private tmpfs here (checked once per process), else why
  not (not root, no CAP_SYS_ADMIN in a container, ...)."""
  with _PROBE_LOCK:
    if "why" not in _TMPFS_WHY_NOT:
      if os.geteuid() != 0:
        why = "not root: cannot mount a private tmpfs"
      else:
        d = tempfile.mkdtemp(prefix="agentic_sandbox_probe_")
        try:
          res = subprocess.run(sandbox_launcher.launcher_argv({"probe_tmpfs": d, "err_fd": 2}),
                               capture_output=True, timeout=30)
          why = None if res.returncode == 0 else res.stderr.decode(errors="replace")[-500:]
        except (OSError, subprocess.SubprocessError) as e:
          why = str(e)
        finally:
          os.rmdir(d)
      if why is not None:
        log.info("sandbox: scratch limits are polled (no private tmpfs): %s", why)
      _TMPFS_WHY_NOT["why"] = why
    return _TMPFS_WHY_NOT["why"]


def check_files(files: Mapping[str, Content], max_bytes: int, max_files: int) -> dict[str, bytes]:
  """Validated {relative path: bytes}; ValueError when they alone exceed the scratch limits (a
  caller's mistake, not the program's)."""
  out: dict[str, bytes] = {}
  dirs: set[str] = set()
  for path, content in files.items():
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
      raise ValueError(f"files: path {path!r}: expected a relative path without '.', '..' or "
                       f"empty components")
    if not isinstance(content, (str, bytes)):
      raise TypeError(f"files[{path!r}]: expected str or bytes, got {type(content).__name__}")
    out[path] = content.encode("utf-8") if isinstance(content, str) else content
    dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
  size = sum(-(-len(c) // _PAGE) * _PAGE for c in out.values())  # as a tmpfs allocates them
  if size > max_bytes or len(out) + len(dirs) > max_files:
    raise ValueError(f"files: {len(out) + len(dirs)} entries of {size} bytes exceed the scratch "
                     f"limits ({max_files} entries, {max_bytes} bytes)")
  return out


def create(root: Optional[str], files: Mapping[str, bytes], *, tmpfs: bool,
           uid: Optional[int]) -> Layout:
  """Makes a run's directories under `root` (default: /dev/shm for a tmpfs run when usable, else
  the system temp dir) with the files."""
  if root is None and tmpfs and _usable_shm():
    root = "/dev/shm"
  base = tempfile.mkdtemp(prefix="agentic_sandbox_", dir=root)
  try:
    os.chmod(base, 0o711)  # the program's uid must traverse it, never list or change it
    fs = os.path.join(base, "fs")
    os.mkdir(fs, 0o755)
    if tmpfs:
      stage = top = os.path.join(base, "stage")
      os.mkdir(stage, 0o755)
    else:
      stage = None
      for d in SKELETON:
        os.mkdir(os.path.join(fs, d), 0o755)
      top = os.path.join(fs, SKELETON[-1])
    for path, content in files.items():
      target = os.path.join(top, *path.split("/"))
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with open(target, "wb") as f:
        f.write(content)
    if uid is not None and not tmpfs:  # the program owns its space (the launcher does it for tmpfs)
      for d, _, names in os.walk(fs):
        os.chown(d, uid, uid)
        for name in names:
          os.chown(os.path.join(d, name), uid, uid)
  except BaseException:
    remove_tree(base)
    raise
  return Layout(base, fs, stage, tmpfs)


def _usable_shm() -> bool:
  try:
    st = os.statvfs("/dev/shm")
  except OSError:
    return False
  return os.access("/dev/shm", os.W_OK | os.X_OK) and st.f_bavail * st.f_frsize > 64 << 20


def tmpfs_options(max_bytes: int, max_files: int, uid: Optional[int]) -> str:
  owner = f",uid={uid},gid={uid}" if uid is not None else ""
  inodes = max_files + len(SKELETON) + 1  # + the tmpfs root
  return f"size={max_bytes},nr_inodes={inodes},mode=0755{owner}"


# ---------------------------------------------------------------------------- measuring


def tmpfs_usage(fd: int) -> Usage:
  st = os.fstatvfs(fd)
  return Usage(bytes=(st.f_blocks - st.f_bfree) * st.f_frsize,
               files=max(0, st.f_files - st.f_ffree - len(SKELETON) - 1),
               no_space=st.f_bfree == 0, no_inodes=st.f_ffree == 0)


def dir_usage(fs: str, max_bytes: int, max_files: int, budget_s: float) -> Usage:
  """A watched run's usage, counted as on a tmpfs (our SKELETON directories are not the
  program's entries); stops early once past a limit."""
  u = measure(fs, max_bytes=max_bytes, max_files=max_files + len(SKELETON), budget_s=budget_s)
  return Usage(bytes=u.bytes, files=max(0, u.files - len(SKELETON)))


def measure(path: str, *, max_bytes: int, max_files: int, budget_s: float = 1.0) -> Usage:
  """Entries and allocated bytes below `path` (like `du`; `path` itself not counted), walked
  without recursion, by descriptor (no path length limit, symlinks never followed, one
  filesystem). Stops early once past max_bytes or max_files (the answer is known) or after
  budget_s (a partial, lower count: the next poll starts again)."""
  deadline = time.monotonic() + budget_s
  files = size = 0
  seen: set[tuple[int, int]] = set()  # hard links count once
  try:
    fd = os.open(path, _DIR_FLAGS)
  except OSError:
    return Usage(0, 0)
  root = os.fstat(fd)
  stack: list[tuple[tuple[int, int], list[str]]] = []  # (dev, ino) of each open level, pending
  try:
    pending = _list(fd)
    while True:
      while pending and files <= max_files and size <= max_bytes:
        name = pending.pop()
        try:
          st = os.lstat(name, dir_fd=fd)
        except OSError:
          continue  # removed meanwhile
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
          if (st.st_dev, st.st_ino) in seen:
            continue
          seen.add((st.st_dev, st.st_ino))
        files += 1
        size += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode) and st.st_dev == root.st_dev:
          try:
            child = _open_dir(fd, name)
          except OSError:
            continue
          stack.append(((st.st_dev, st.st_ino), pending))
          os.close(fd)
          fd, pending = child, _list(child)
      if not stack or files > max_files or size > max_bytes or time.monotonic() > deadline:
        break
      up = _ascend(fd, stack[-2][0] if len(stack) > 1 else (root.st_dev, root.st_ino))
      if up is None:
        break  # the program moved directories while we walked: a partial count
      os.close(fd)
      fd = up
      pending = stack.pop()[1]
  finally:
    os.close(fd)
  return Usage(bytes=size, files=files)


def _list(fd: int) -> list[str]:
  try:
    return os.listdir(fd)
  except PermissionError:  # a non-root caller's own files: the program may have chmod'ed them
    try:
      os.fchmod(fd, 0o700)
      return os.listdir(fd)
    except OSError:
      return []
  except OSError:
    return []


def _open_dir(parent_fd: int, name: str) -> int:
  """Opens directory `name` without following a symlink. One the program made unreadable (chmod
  000; only stops a non-root caller) gets its owner's permissions back first, through an O_PATH
  descriptor checked to be that directory: a symlink swapped in meanwhile is never chmod'ed."""
  try:
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
  except PermissionError:
    pass
  handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
  try:
    if not stat.S_ISDIR(os.fstat(handle).st_mode):
      raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
    os.chmod(f"/proc/self/fd/{handle}", 0o700)
    return os.open(f"/proc/self/fd/{handle}", _DIR_FLAGS & ~os.O_NOFOLLOW)
  finally:
    os.close(handle)


def _ascend(fd: int, expected: tuple[int, int]) -> Optional[int]:
  """The parent directory of `fd`, if it is still the one we came from."""
  try:
    up = os.open("..", _DIR_FLAGS, dir_fd=fd)
  except OSError:
    return None
  st = os.fstat(up)
  if (st.st_dev, st.st_ino) != expected:
    os.close(up)
    return None
  return up


# ----------------------------------------------------------------------------- clean-up


def remove_tree(path: str) -> Removal:
  """Removes `path` and everything below it; never raises. Iterative and descriptor-relative
  (a tree thousands of levels deep, past PATH_MAX, is fine), holds at most three descriptors,
  never follows symlinks, gives directories back their owner's permissions, clears
  immutable/append-only flags, and never descends into another filesystem (a mount made by a
  root program). Meant for after the run: nothing may be changing the tree meanwhile."""
  counts = {"removed": 0, "leaked": 0}
  errors: list[str] = []

  def failed(what: str, e: BaseException) -> None:
    counts["leaked"] += 1
    if not errors:
      errors.append(f"{what}: {e}")

  try:
    _remove(os.path.abspath(path), counts, failed)
  except Exception as e:  # a bug or an impossible state: never let it out of run_python
    failed(f"removing {path!r}", e)
  if counts["leaked"]:
    log.warning("sandbox: %d entries of %s could not be removed (first: %s)", counts["leaked"],
                path, errors[0] if errors else "?")
  return Removal(counts["removed"], counts["leaked"], errors[0] if errors else None)


def _remove(path: str, counts: dict, failed) -> None:
  parent, name = os.path.split(path)
  try:
    top = os.open(parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
  except FileNotFoundError:
    return
  fd = -1
  try:
    try:
      st = os.lstat(name, dir_fd=top)
    except FileNotFoundError:
      return
    if not stat.S_ISDIR(st.st_mode):
      _unlink(top, name, False, counts, failed)
      return
    dev = st.st_dev
    fd = _open_dir(top, name)
    # One frame per open level: its name in its parent, the parent's (dev, ino), the
    # subdirectories still to remove (None until listed). Only names are kept, not descriptors.
    frames: list[tuple[str, tuple[int, int], Optional[list[str]]]] = [
        (name, _key(os.fstat(top)), None)]
    while frames:
      fname, parent_key, pending = frames[-1]
      if pending is None:
        pending = _remove_files(fd, dev, counts, failed)
        frames[-1] = (fname, parent_key, pending)
      if pending:
        sub = pending.pop()
        try:
          child = _open_dir(fd, sub)
        except OSError as e:
          failed(f"opening directory {sub!r}", e)
          continue
        frames.append((sub, _key(os.fstat(fd)), None))
        os.close(fd)
        fd = child
        continue
      frames.pop()  # this directory is as empty as it gets: go up and remove it
      up = top if not frames else _ascend(fd, parent_key)
      os.close(fd)
      fd = -1
      if up is None:
        failed(f"going up from {fname!r}", OSError("the tree changed during clean-up"))
        return
      _unlink(up, fname, True, counts, failed)
      if up != top:
        fd = up
  finally:
    if fd >= 0:
      os.close(fd)
    os.close(top)


def _remove_files(fd: int, dev: int, counts: dict, failed) -> list[str]:
  """Unlinks every non-directory in `fd`; returns the subdirectories on the same filesystem."""
  subdirs = []
  for entry in _list(fd):
    try:
      st = os.lstat(entry, dir_fd=fd)
    except FileNotFoundError:
      continue
    except OSError as e:
      failed(f"lstat {entry!r}", e)
      continue
    if not stat.S_ISDIR(st.st_mode):
      _unlink(fd, entry, False, counts, failed)
    elif st.st_dev != dev:
      failed(repr(entry), OSError("a mount point inside scratch: not descended into"))
    else:
      subdirs.append(entry)
  return subdirs


def _key(st: os.stat_result) -> tuple[int, int]:
  return st.st_dev, st.st_ino


def _unlink(dir_fd: int, name: str, is_dir: bool, counts: dict, failed) -> None:
  """unlink/rmdir, retried once after fixing what a program can do to block it: a directory
  without write permission, an immutable or append-only flag (on the entry or its directory)."""
  op = os.rmdir if is_dir else os.unlink
  try:
    op(name, dir_fd=dir_fd)
    counts["removed"] += 1
    return
  except FileNotFoundError:
    return
  except OSError as e:
    first = e
  try:
    os.fchmod(dir_fd, 0o700)
  except OSError:
    pass
  _clear_flags(dir_fd, None)
  _clear_flags(dir_fd, name)
  try:
    op(name, dir_fd=dir_fd)
    counts["removed"] += 1
  except FileNotFoundError:
    pass
  except OSError:
    failed(f"removing {name!r}", first)


def _clear_flags(dir_fd: int, name: Optional[str]) -> None:
  """Drops the immutable and append-only flags (needs CAP_LINUX_IMMUTABLE, as setting them did).
  Opens without following symlinks and without blocking (a fifo) or taking a terminal."""
  try:
    if name is None:
      fd = os.dup(dir_fd)
    else:
      fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                   dir_fd=dir_fd)
  except OSError:
    return
  try:
    buf = array.array("l", [0])
    fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
    if buf[0] & (_FS_IMMUTABLE_FL | _FS_APPEND_FL):
      buf[0] &= ~(_FS_IMMUTABLE_FL | _FS_APPEND_FL)
      fcntl.ioctl(fd, _FS_IOC_SETFLAGS, buf)
  except OSError:
    pass
  finally:
    os.close(fd)
