"""The sandbox's launcher: a tiny trusted process that sets a run up, then execs bubblewrap (or the
command itself). Run as `python -I -S .../agentic_jax/sandbox/launcher.py CONFIG_JSON`, by file
path (the package is never imported there); stdlib only.

Why a launcher process instead of `subprocess.Popen(preexec_fn=...)`: preexec_fn is unsafe when
the parent has threads (JAX always has), so the set-up runs in a separate process. In order, as the
caller (often root) and before any untrusted code:
1. join the run's cgroups (so everything below is charged to the run: tmpfs pages included);
2. with a "tmpfs" scratch: enter a private mount namespace, mount a tmpfs with a hard size and
   inode limit on the scratch mount point, copy the given files in, and send the host a file
   descriptor of that tmpfs (fstatvfs on it measures the run's usage; the mount itself dies with
   the namespace, so nothing is left on the host even if the caller is killed);
3. rlimits, drop to the unprivileged uid, restore default SIGPIPE/SIGXFSZ, exec.
Failures go to a close-on-exec pipe (err_fd), never mixed with the untrusted program's output.
"""

from __future__ import annotations  # (no typing import: it would slow every run's start)

import json
import os
import signal
import sys

_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000


def launcher_python() -> str:
  """The interpreter running this file: Debian's python3 starts in ~8 ms vs ~30 ms for pyenv's."""
  for path in ("/usr/bin/python3", sys.executable):
    if path and os.access(path, os.X_OK):
      return path
  raise RuntimeError("no Python interpreter found to run the sandbox launcher")


def launcher_argv(cfg: dict) -> list[str]:
  """The command starting the launcher on `cfg` (see main() for its keys)."""
  return [launcher_python(), "-I", "-S", os.path.abspath(__file__), json.dumps(cfg)]


def mount_private_tmpfs(target: str, options: str) -> None:
  """Mounts a tmpfs on `target` in a new, private mount namespace of this process (needs
  CAP_SYS_ADMIN). Private propagation first, so the mount never shows in the host's namespace."""
  import ctypes  # only here: most runs never pay for its import
  libc = ctypes.CDLL(None, use_errno=True)
  libc.unshare.argtypes = [ctypes.c_int]
  libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                         ctypes.c_char_p]

  def check(rc: int, what: str) -> None:
    if rc != 0:
      err = ctypes.get_errno()
      raise OSError(err, f"{what}: {os.strerror(err)}")

  check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
  check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
  check(libc.mount(b"tmpfs", os.fsencode(target), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                   options.encode()), f"mounting a tmpfs ({options}) on {target}")


def _populate(stage: str, target: str, skeleton: list[str], uid: int | None,
              gid: int | None) -> None:
  """Makes the skeleton directories in the fresh tmpfs and copies our staged files (a small
  trusted tree: the working directory's) into its first one, all owned by the program."""
  import shutil
  for d in skeleton:
    os.mkdir(os.path.join(target, d), 0o755)
  shutil.copytree(stage, os.path.join(target, skeleton[-1]), symlinks=True, dirs_exist_ok=True)
  if uid is None:
    return
  for root, dirs, names in os.walk(target):
    os.chown(root, uid, gid)
    for name in names:
      os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _send_fd(sock_fd: int, path: str) -> None:
  """Sends the host a descriptor of `path` (SCM_RIGHTS). The C module directly: `socket` would
  import selectors & co., ~10 ms on every run."""
  import _socket
  fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
  sock = _socket.socket(fileno=sock_fd)
  try:
    sock.sendmsg([b"t"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                           fd.to_bytes(4, sys.byteorder))])
  finally:
    sock.close()
    os.close(fd)


def main(cfg: dict) -> None:
  """cfg: argv, err_fd, rlimits [(name, soft, hard)], cgroup_procs [paths], uid, gid, cwd, and
  optionally tmpfs {target, options, skeleton, stage, sock_fd}; or probe_tmpfs (a directory):
  only check that a private tmpfs can be mounted, exit 0 if so."""
  import resource
  err = cfg["err_fd"]
  try:
    if "probe_tmpfs" in cfg:
      mount_private_tmpfs(cfg["probe_tmpfs"], "size=4096,nr_inodes=4")
      os._exit(0)
    for procs in cfg["cgroup_procs"]:
      with open(procs, "w") as f:
        f.write(str(os.getpid()))
    tmpfs = cfg.get("tmpfs")
    if tmpfs:
      mount_private_tmpfs(tmpfs["target"], tmpfs["options"])
      _populate(tmpfs["stage"], tmpfs["target"], tmpfs["skeleton"], cfg["uid"], cfg["gid"])
      _send_fd(tmpfs["sock_fd"], tmpfs["target"])
    os.chdir(cfg["cwd"])  # after the mount: the working directory must be on the tmpfs
    for name, soft, hard in cfg["rlimits"]:
      resource.setrlimit(getattr(resource, name), (soft, hard))
    if cfg["uid"] is not None:
      os.setgroups([])
      os.setgid(cfg["gid"])
      os.setuid(cfg["uid"])
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; exec would inherit that
      signal.signal(sig, signal.SIG_DFL)
    os.set_inheritable(err, False)
    os.execvp(cfg["argv"][0], cfg["argv"])
  except BaseException as e:
    os.write(err, ("%s: %s" % (type(e).__name__, e)).encode())
    os._exit(127)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
