"""Adversarial round 2 for the sandbox (issue 10): what an attacker or a careless program may do
to the host side of a run: leave trees the clean-up trips on, swap its scratch for a symlink,
set immutable flags, hide behind fifos, close its stdout, leave daemons or pipe holders behind,
stop itself, print bytes that are not UTF-8. Each ends in a structured result with nothing left
on the host. Same requirements as test_sandbox (bubblewrap)."""

import os
import shutil
import signal
import subprocess
import tempfile
import uuid

import pytest

from agentic_jax.sandbox import scratch as sandbox_scratch
from agentic_jax.sandbox import run_command, run_python
from tests.sandbox_fixtures import ROOT, code, processes_with, scratch_modes

# every test: nothing left behind as our child, and we can still start processes (conftest.py)
pytestmark = pytest.mark.usefixtures("unharmed_test_process")

_UNISOLATED = {"bwrap_path": "/nonexistent/bwrap", "allow_unisolated": True}


# ----------------------------------------------------------------- what the clean-up meets


_LEFTOVERS = code("""
    import os
    os.mkfifo("fifo")
    os.mkfifo("/tmp/fifo2")
    if os.fork() == 0:
        open("fifo", "w")  # blocks for good: nobody ever reads
    for name in (b"new\\nline", b"\\xff\\xfe not utf-8", b"x" * 255, b"-rf", b"...", b" ", b"*",
                 b"\\x1b[2J"):
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY))
    os.symlink("/etc/passwd", "link")
    os.symlink("loop", "loop")
    os.symlink(".", "self")
    os.mkdir("readonly")
    open("readonly/f", "w").close()
    os.chmod("readonly", 0o500)
    os.mkdir("none")
    open("none/f", "w").close()
    os.chmod("none", 0)
    os.link("main.py", "hardlink")
    os.chmod("/tmp", 0o500)  # the run's own /tmp: it owns it
    print(len(os.listdir(".")))
""")


@pytest.mark.parametrize("scratch_fs", scratch_modes())
def test_fifos_odd_names_links_and_permissions_are_cleaned_up(scratch_fs, scratch_root):
  res = run_python(_LEFTOVERS, scratch_fs=scratch_fs, scratch_root=scratch_root)
  assert (res.returncode, res.stdout, res.killed_reason) == (0, "16\n", None), res.stderr
  assert res.scratch_leaked == 0 and os.listdir(scratch_root) == []


_SWAP_SCRATCH = code("""
    import os, sys
    host = sys.argv[1]
    os.chdir(os.environ["TMPDIR"])  # /tmp inside; the run's own directory when unisolated
    os.rename("scratch", "moved")  # the working directory goes away...
    os.symlink(host, "scratch")    # ...and a symlink to a host directory takes its place
    os.symlink(host, "moved/to_host")
    os.symlink(host + "/keep", "moved/to_file")
    if sys.argv[2] == "isolated":  # the run's own /dev/shm (unisolated: the host's)
        os.symlink(host, "/dev/shm/to_host")
    print("swapped")
""")


@pytest.mark.parametrize("scratch_fs", scratch_modes())
@pytest.mark.parametrize("isolated", [True, False])
def test_symlinks_to_the_host_are_removed_never_followed(scratch_fs, isolated, scratch_root):
  host = tempfile.mkdtemp(dir=scratch_root)
  os.chmod(host, 0o777)  # writable by the sandbox's uid: only the clean-up's care protects it
  with open(os.path.join(host, "keep"), "w") as f:
    f.write("host")
  res = run_python(_SWAP_SCRATCH, args=[host, "isolated" if isolated else "host"],
                   scratch_fs=scratch_fs, scratch_root=scratch_root,
                   **({} if isolated else _UNISOLATED))
  assert (res.returncode, res.stdout, res.scratch_leaked) == (0, "swapped\n", 0), res.stderr
  assert sorted(os.listdir(scratch_root)) == [os.path.basename(host)]
  assert os.listdir(host) == ["keep"]
  with open(os.path.join(host, "keep")) as f:
    assert f.read() == "host"


@pytest.mark.parametrize("scratch_fs", scratch_modes())
def test_dev_is_read_only_and_dev_shm_counts_against_the_scratch_limits(scratch_fs):
  # bwrap's /dev is a writable tmpfs of its own: without care, a way around the scratch limits.
  res = run_python(code("""
      import errno, multiprocessing
      try:
          open("/dev/escape", "w")
      except OSError as e:
          print(errno.errorcode[e.errno])
      lock = multiprocessing.Lock()  # POSIX semaphores live in /dev/shm: they must work
      del lock
      for i in range(40):
          open(f"/dev/shm/f{i}", "w").close()
  """), scratch_fs=scratch_fs, max_scratch_files=30)
  assert res.stdout == "EROFS\n" and res.limit == "scratch_files"
  if scratch_fs == "tmpfs":  # a hard limit: the 30th entry (main.py is one) fails
    assert res.scratch_files == 30 and "No space left on device: '/dev/shm/f29'" in res.stderr
    assert res.killed_reason is None


def test_immutable_and_append_only_flags_cannot_block_the_clean_up(scratch_root):
  if not ROOT or shutil.which("chattr") is None:
    pytest.skip("needs root and chattr")
  flags = "touch f && chattr +i f && mkdir d && touch d/g && chattr +a d && lsattr -d f d"
  # Inside the sandbox the flags cannot be set: all capabilities are dropped.
  res = run_command(["/bin/sh", "-c", "touch f && chattr +i f"], scratch_root=scratch_root)
  assert res.returncode != 0 and "Operation not permitted" in res.stderr
  # An unisolated root program on a host directory can set them (trusted code only, but the
  # clean-up must still cope).
  res = run_command(["/bin/sh", "-c", flags], run_as_uid=None, scratch_fs="watch",
                    scratch_root=scratch_root, **_UNISOLATED)
  if res.returncode != 0:
    pytest.skip(f"this filesystem has no immutable flags: {res.stderr.strip()}")
  assert res.scratch_leaked == 0 and os.listdir(scratch_root) == []


def test_remove_tree_as_a_non_root_caller_restores_permissions():
  # A non-root caller's sandbox files are its own; a program can chmod 000 directories, which
  # then block a naive clean-up. Run the clean-up module as uid 65534 on such a tree.
  if not ROOT or not os.access("/usr/bin/python3", os.X_OK):
    pytest.skip("needs root to become another uid, and the system python3")
  pkg = tempfile.mkdtemp()
  try:
    os.chmod(pkg, 0o755)
    sb = os.path.join(pkg, "agentic_jax", "sandbox")
    os.makedirs(sb)
    for d in (os.path.dirname(sb), sb):
      open(os.path.join(d, "__init__.py"), "w").close()
    for name in ("scratch.py", "launcher.py"):
      shutil.copy(os.path.join(os.path.dirname(sandbox_scratch.__file__), name), sb)
    for d, dirs, names in os.walk(pkg):
      for n in dirs + names:
        os.chmod(os.path.join(d, n), 0o755)
    script = code("""
        import os, tempfile
        from agentic_jax.sandbox import scratch as sc
        root = tempfile.mkdtemp()
        os.makedirs(root + "/a/b/c")
        open(root + "/a/b/c/f", "w").close()
        os.symlink("/etc/passwd", root + "/a/p")
        os.chmod(root + "/a/b/c", 0)
        os.chmod(root + "/a/b", 0o100)
        os.chmod(root + "/a", 0o500)
        print(sc.measure(root, max_bytes=1 << 30, max_files=100).files)
        print(sc.remove_tree(root), os.path.exists(root))
    """)
    out = subprocess.run(["/usr/bin/python3", "-I", "-c",
                          f"import sys; sys.path.insert(0, {pkg!r})\n" + script],
                         user=65534, group=65534, capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "5", "Removal(removed=6, leaked=0, error=None) False"]
  finally:
    shutil.rmtree(pkg)


def test_a_failing_clean_up_is_counted_not_raised(scratch_root, monkeypatch):
  # (scratch_root first: its own clean-up then runs after monkeypatch's undo)
  assert run_python("pass").ok  # bwrap's probe (once per process) cleans up before the patch
  def broken(*_args):
    raise RuntimeError("a bug in the clean-up")
  monkeypatch.setattr(sandbox_scratch, "_remove", broken)
  res = run_python("print('fine')", scratch_root=scratch_root)
  assert (res.returncode, res.stdout) == (0, "fine\n")
  assert res.scratch_leaked == 1  # logged and counted; the fixture removes the directory


# ----------------------------------------------------------------------- process tricks


_CLOSE_STDOUT = code("""
    import os, time
    os.close(1)
    os.close(2)
    time.sleep(0.5)
    open("after", "w").write("still running")
    os._exit(3)
""")


@pytest.mark.parametrize("isolated", [True, False])
def test_closing_stdout_does_not_end_or_kill_the_run(isolated):
  res = run_python(_CLOSE_STDOUT, **({} if isolated else _UNISOLATED))
  assert (res.returncode, res.killed_reason, res.stdout) == (3, None, "")
  assert res.scratch_files == 2  # main.py and the file written after closing stdout


_LEAVE_BEHIND = code("""
    import os, signal, sys, time
    if os.fork() == 0:  # a daemon: new session, double fork, no stdio, deaf to SIGTERM/SIGHUP
        os.setsid()
        if os.fork() == 0:
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(sig, signal.SIG_IGN)
            fd = os.open("/dev/null", os.O_RDWR)
            for i in range(3):
                os.dup2(fd, i)
            time.sleep(30)
        os._exit(0)
    if os.fork() == 0:
        time.sleep(30)  # keeps our stdout and stderr open
    print("parent exits")
""")


@pytest.mark.parametrize("mode", ["isolated+cgroups", "isolated", "unisolated+cgroups"])
def test_daemons_and_pipe_holders_do_not_outlive_the_run(mode):
  if mode == "unisolated+cgroups" and not ROOT:
    pytest.skip("without isolation only cgroups catch a child that leaves the process group")
  token = uuid.uuid4().hex
  kwargs = {"use_cgroups": "cgroups" in mode, **({} if mode.startswith("isolated") else
                                                  _UNISOLATED)}
  res = run_python(_LEAVE_BEHIND, args=[token], timeout_s=20, **kwargs)
  assert (res.returncode, res.stdout, res.killed_reason) == (0, "parent exits\n", None)
  assert res.duration_s < 10  # not the 20 s timeout, nor the children's 30 s
  assert processes_with(token) == []


def test_signals_the_program_sends_itself():
  res = run_python("import os, signal\nprint('x', flush=True)\n"
                   "os.kill(os.getpid(), signal.SIGSTOP)", timeout_s=1.0)
  assert (res.killed_reason, res.limit, res.stdout) == ("timeout", "timeout", "x\n")
  res = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
  assert (res.returncode, res.killed_reason, res.limit) == (-signal.SIGSEGV, "signal SIGSEGV",
                                                           None)
  # SIGXCPU ignored: the hard RLIMIT_CPU or the whole-run watcher still ends it.
  res = run_python("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                   "while True:\n    pass", cpu_s=1, timeout_s=20)
  assert res.killed_reason == "cpu" and res.returncode == -signal.SIGKILL
  # Killing its own process group (the sandbox's session) ends only the run.
  res = run_python("import os, signal\nos.killpg(0, signal.SIGKILL)")
  assert res.returncode == -signal.SIGKILL and res.killed_reason == "signal SIGKILL"


def test_output_that_is_not_utf8_is_capped_and_replaced():
  res = run_python("import os\nwhile True:\n    os.write(1, b'\\xff\\x00' * 4096)",
                   max_output_bytes=1000)
  assert res.killed_reason == "output_limit" and res.stdout == "\ufffd\x00" * 500
