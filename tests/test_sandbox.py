"""Sandbox for model-written code: every attack ends in a structured result, the test process
unharmed. Needs bubblewrap (`apt-get install -y bubblewrap`); without it these tests fail with
SandboxUnavailable's install hint. Expected values below are derived from the limits passed."""

import concurrent.futures
import errno
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from agentic_jax import sandbox
from agentic_jax.sandbox import limits
from agentic_jax.sandbox import SandboxUnavailable, run_command, run_python
from agentic_jax.sandbox.limits import count_tasks_of_uid

from tests.sandbox_fixtures import ROOT, processes_with as _processes_with  # noqa: F401
from tests.sandbox_fixtures import code as _code, scratch_modes

# every test: nothing left behind as our child, and we can still start processes (conftest.py)
pytestmark = pytest.mark.usefixtures("unharmed_test_process")


# ------------------------------------------------------------------------- normal programs


def test_normal_program_exact_output_and_returncode():
  res = run_python("import sys\nprint('hello', 6 * 7)\nprint('warn', file=sys.stderr)\n"
                   "sys.exit(3)")
  assert (res.stdout, res.stderr, res.returncode) == ("hello 42\n", "warn\n", 3)
  assert res.killed_reason is None and not res.timed_out and not res.ok
  assert (res.limit, res.limit_detail, res.scratch_leaked) == (None, None, 0)
  assert res.scratch_files == 1 and res.scratch_bytes > 0  # main.py
  assert res.isolated and res.enforced[0] == "bwrap"
  assert 0 < res.duration_s < 5
  assert run_python("print('é✓')").stdout == "é✓\n"  # utf-8 both ways


def test_stdin_is_passed_and_large_stdin_does_not_deadlock():
  res = run_python("import sys\nfor line in sys.stdin: print(line.strip()[::-1])",
                   stdin="abc\nxy\n")
  assert (res.returncode, res.stdout) == (0, "cba\nyx\n")
  big = "x" * (3 << 20)  # larger than a pipe buffer: must be fed while output is read
  res = run_python("import sys\ndata = sys.stdin.read()\nprint(len(data), set(data))", stdin=big)
  assert res.stdout == "3145728 {'x'}\n"
  # Without stdin the program reads EOF, never the test's own stdin.
  assert run_python("import sys\nprint(repr(sys.stdin.read()))").stdout == "''\n"


def test_files_mapping_is_the_working_directory():
  files = {"helper.py": "X = 41\n", "pkg/data.txt": "abc"}
  res = run_python(_code("""
      import os, helper
      print(os.getcwd(), os.environ["HOME"], helper.X + 1)
      print(open("pkg/data.txt").read(), sorted(os.listdir(".")))
  """), files=files)
  assert res.returncode == 0, res.stderr
  assert res.stdout == "/tmp/scratch /tmp/scratch 42\nabc ['helper.py', 'main.py', 'pkg']\n"


def test_run_command_unittest_on_a_small_repository():
  files = {"calc/__init__.py": "",
           "calc/ops.py": "def add(a, b):\n    return a - b\n",  # the bug
           "test_ops.py": _code("""
               import unittest
               from calc.ops import add
               class T(unittest.TestCase):
                   def test_zero(self):
                       self.assertEqual(add(2, 0), 2)
                   def test_add(self):
                       self.assertEqual(add(2, 3), 5)
           """)}
  res = run_command(["python", "-m", "unittest"], files=files)
  assert res.returncode == 1 and res.killed_reason is None
  assert "Ran 2 tests" in res.stderr and "FAILED (failures=1)" in res.stderr
  assert "AssertionError: -1 != 5" in res.stderr
  files["calc/ops.py"] = "def add(a, b):\n    return a + b\n"
  res = run_command(["python", "-m", "unittest"], files=files)
  assert res.ok and res.stderr.rstrip().endswith("OK")


def test_limits_and_identity_seen_inside():
  res = run_python(_code("""
      import os, resource as r
      for n in ("AS", "CPU", "FSIZE", "CORE", "NOFILE"):
          print(n, *r.getrlimit(getattr(r, "RLIMIT_" + n)))
      print(os.getuid(), os.getgroups())
  """), memory_mb=300, cpu_s=3, max_file_mb=2, max_open_files=100)
  assert res.returncode == 0, res.stderr
  uid = 65534 if ROOT else os.getuid()
  assert res.stdout.splitlines() == [
      f"AS {300 << 20} {300 << 20}", "CPU 3 4", f"FSIZE {2 << 20} {2 << 20}", "CORE 0 0",
      "NOFILE 100 100", f"{uid} []"]


def test_concurrent_runs_are_independent():
  def one(i):
    return run_python(f"import sys\nprint({i} * {i}, sys.stdin.read())", stdin=f"s{i}")
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(one, range(6)))
  assert [r.stdout for r in results] == [f"{i * i} s{i}\n" for i in range(6)]


# -------------------------------------------------------------------------------- attacks


def test_infinite_loop_times_out():
  t0 = time.monotonic()
  res = run_python("while True:\n    pass", timeout_s=1.0, cpu_s=5)
  assert res.timed_out and res.killed_reason == "timeout" and res.returncode == -signal.SIGKILL
  assert 1.0 <= res.duration_s < 3.0 and time.monotonic() - t0 < 4.0
  assert res.limit == "timeout" and "1 s" in res.limit_detail and "timeout_s" in res.limit_detail
  res = run_python("import time\nprint('started')\ntime.sleep(60)", timeout_s=1.0)
  assert res.timed_out and res.stdout == "started\n"  # partial output is kept


def test_cpu_limit():
  res = run_python("while True:\n    pass", timeout_s=10.0, cpu_s=1)
  assert (res.killed_reason, res.returncode, res.timed_out) == ("cpu", -signal.SIGXCPU, False)
  assert res.duration_s < 5.0 and res.limit == "cpu" and "cpu_s" in res.limit_detail
  assert res.cpu_s > 0.5  # the run's total CPU time is measured (by other clocks than RLIMIT_CPU)


def test_file_size_limit():
  res = run_python("open('big', 'wb').write(b'x' * (3 << 20))", max_file_mb=1)
  assert res.returncode == 1 and "File too large" in res.stderr  # Python ignores SIGXFSZ
  res = run_command(["dd", "if=/dev/zero", "of=big", "bs=1M", "count=3"], max_file_mb=1)
  assert (res.killed_reason, res.returncode) == ("file_size", -signal.SIGXFSZ)
  assert res.limit == "file_size" and "max_file_mb" in res.limit_detail


_FORK_COUNTER = _code("""
    import os, time
    n = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
    except OSError as e:
        print(n, e.errno)
""")


def test_fork_bomb_is_contained_and_leaves_nothing():
  token = uuid.uuid4().hex  # marks the bomb's processes in /proc/*/cmdline
  bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
  res = run_python(bomb, args=[token], timeout_s=2.0)
  # Whichever bound comes first ends it: the wall clock, or (on idle cores, where the bomb
  # gets more than one CPU-second per second) the whole run's CPU budget cpu_s = timeout + 1.
  assert res.killed_reason in ("timeout", "cpu") and res.duration_s < 5.0
  assert _processes_with(token) == []
  # The limit itself: children that sleep are counted until fork fails with EAGAIN.
  for use_cgroups in (True, False):
    others = count_tasks_of_uid(65534 if ROOT else os.getuid())
    res = run_python(_FORK_COUNTER, args=[token], max_processes=10, use_cgroups=use_cgroups)
    assert res.returncode == 0, res.stderr
    forks, err = map(int, res.stdout.split())
    assert err == errno.EAGAIN
    if any(m.endswith(":pids") for m in res.enforced):
      assert forks == 9  # 10 processes including the program itself
    else:  # RLIMIT_NPROC counts every task of the uid: ones that exit free budget for us
      assert "rlimit:NPROC" in res.enforced and 0 <= forks <= 9 + others
    assert _processes_with(token) == []  # the sleeping children died with the sandbox


def test_memory_bomb_is_stopped():
  res = run_python("b = bytearray(2 << 30)", memory_mb=256)
  assert res.killed_reason == "memory" and res.returncode == 1
  assert res.stderr.rstrip().endswith("MemoryError")
  assert res.limit == "memory" and "256 MiB" in res.limit_detail
  res = run_python("chunks = []\nwhile True:\n    chunks.append(b'x' * (10 << 20))",
                   memory_mb=256, timeout_s=10)
  assert res.killed_reason == "memory" and res.duration_s < 5.0


def test_memory_bomb_across_processes_hits_the_cgroup():
  # Each child stays under RLIMIT_AS (per process); together they exceed the sandbox's 256 MiB.
  # Each holds its memory for a while before exiting, so the children coexist however the
  # scheduler orders them (without the hold, a loaded 2-core machine could run them one after
  # another, never over the limit: seen once in CI).
  code = _code("""
      import os, time
      for _ in range(4):
          if os.fork() == 0:
              b = bytearray(150 << 20)
              for i in range(0, len(b), 4096):
                  b[i] = 1
              time.sleep(3)
              os._exit(0)
      codes = [os.wait()[1] for _ in range(4)]
      print(sorted(codes))
  """)
  res = run_python(code, memory_mb=256)
  if not any(m.endswith(":memory") for m in res.enforced):
    pytest.skip("no writable memory cgroup here (not root?): only per-process RLIMIT_AS applies")
  assert res.killed_reason == "memory" and res.returncode == 0
  statuses = json.loads(res.stdout)
  assert signal.SIGKILL in statuses  # at least one child was OOM-killed (wait status == 9)


_WRITE_ATTEMPTS = """
import os, sys
host_file, host_dir, tmp_name = sys.argv[1:4]
def attempt(name, fn):
    try:
        out = fn()
        print(name, "ok" if out is None or isinstance(out, int) else out)
    except OSError as e:
        print(name, "fail", e.errno)
attempt("read", lambda: open(host_file).read())
attempt("overwrite", lambda: open(host_file, "w").write("pwned"))
attempt("delete", lambda: os.remove(host_file))
attempt("create", lambda: open(os.path.join(host_dir, "new.txt"), "w").write("x"))
attempt("etc", lambda: open("/etc/sandbox_test", "w").write("x"))
attempt("root", lambda: open("/sandbox_test", "w").write("x"))
attempt("tmp", lambda: open(tmp_name, "w").write("x"))
attempt("scratch", lambda: open("inside.txt", "w").write("inside"))
attempt("reread", lambda: open("inside.txt").read())
"""


@pytest.mark.parametrize("visible", ["default", "host_dir", "whole_root"])
def test_writing_outside_scratch_fails_and_host_files_are_untouched(visible):
  base = "/var/tmp" if os.path.isdir("/var/tmp") else os.path.dirname(os.path.abspath(__file__))
  host_dir = tempfile.mkdtemp(prefix="sandbox_host_", dir=base)
  try:
    os.chmod(host_dir, 0o777)  # world-writable: only the sandbox's mounts can stop the writes
    host_file = os.path.join(host_dir, "host.txt")
    with open(host_file, "w") as f:
      f.write("original")
    os.chmod(host_file, 0o666)
    mtime = os.stat(host_file).st_mtime_ns
    tmp_name = f"/tmp/sandbox_leak_{uuid.uuid4().hex}"
    host_paths = {"default": sandbox.HOST_PATHS, "host_dir": sandbox.HOST_PATHS + (host_dir,),
                  "whole_root": ("/",)}[visible]
    res = run_python(_WRITE_ATTEMPTS, args=[host_file, host_dir, tmp_name], host_paths=host_paths)
    assert res.returncode == 0, res.stderr
    if visible == "default":  # outside the system directories the host is invisible
      host = [f"read fail {errno.ENOENT}", f"overwrite fail {errno.ENOENT}",
              f"delete fail {errno.ENOENT}", f"create fail {errno.ENOENT}"]
    else:  # visible but read-only
      host = ["read original", f"overwrite fail {errno.EROFS}", f"delete fail {errno.EROFS}",
              f"create fail {errno.EROFS}"]
    assert res.stdout.splitlines() == host + [
        f"etc fail {errno.EROFS}", f"root fail {errno.EROFS}", "tmp ok", "scratch ok",
        "reread inside"]
    with open(host_file) as f:
      assert f.read() == "original"
    assert os.stat(host_file).st_mtime_ns == mtime
    assert os.listdir(host_dir) == ["host.txt"]
    assert not os.path.exists(tmp_name)  # /tmp inside is the sandbox's own tmpfs
  finally:
    shutil.rmtree(host_dir)


def test_repository_is_invisible_by_default():
  here = os.path.abspath(__file__)
  res = run_python("import sys\ntry:\n    open(sys.argv[1]).read()\n    print('read')\n"
                   "except OSError as e:\n    print(e.errno)", args=[here])
  assert res.stdout == f"{errno.ENOENT}\n"


def test_host_environment_secrets_are_not_visible(monkeypatch):
  secret = f"s3cret-{uuid.uuid4().hex}"
  monkeypatch.setenv("AGENTIC_SANDBOX_SECRET", secret)
  res = run_python(_code("""
      import os, sys
      print(sorted(os.environ))
      found = []
      for pid in os.listdir("/proc"):
          if pid.isdigit():
              try:
                  found.append(open(f"/proc/{pid}/environ", "rb").read())
              except OSError:
                  pass
      print(sys.argv[1].encode() in b"".join(found))
      print(os.path.exists(f"/proc/{sys.argv[2]}"))
  """), args=["AGENTIC_SANDBOX_SECRET", str(os.getpid())], env={"EXTRA": "1"})
  assert res.returncode == 0, res.stderr
  assert secret not in res.stdout + res.stderr
  lines = res.stdout.splitlines()
  assert lines[0] == str(sorted(["EXTRA", "HOME", "LANG", "LC_ALL", "PATH", "PWD",
                                 "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED",
                                 "PYTHONIOENCODING", "PYTHONUNBUFFERED", "TMPDIR"]))
  assert lines[1:] == ["False", "False"]  # no environ names it; our pid is not even visible


def test_network_is_unreachable():
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.bind(("127.0.0.1", 0))
  server.listen(8)
  server.setblocking(False)
  port = server.getsockname()[1]
  try:
    res = run_python(_code(f"""
        import socket
        print(socket.if_nameindex())
        for host, port in (("127.0.0.1", {port}), ("1.1.1.1", 80)):
            try:
                socket.create_connection((host, port), timeout=2).close()
                print(host, "connected")
            except OSError as e:
                print(host, "fail", e.errno)
        try:
            socket.getaddrinfo("pypi.org", 443)
            print("dns ok")
        except socket.gaierror:
            print("dns fail")
    """), timeout_s=10)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "[(1, 'lo')]", f"127.0.0.1 fail {errno.ECONNREFUSED}", f"1.1.1.1 fail {errno.ENETUNREACH}",
        "dns fail"]
    with pytest.raises(BlockingIOError):
      server.accept()  # nothing ever reached the host's server
  finally:
    server.close()


def test_killing_the_parent_and_everything_fails():
  # A host process of the same uid the sandbox runs as: kill(-1) inside must not reach it.
  sentinel = subprocess.Popen(["sleep", "30"], user=65534 if ROOT else None)
  try:
    res = run_python(_code("""
        import os, signal
        print("ppid", os.getppid())
        os.kill(os.getppid(), signal.SIGKILL)
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        print("alive")
    """))
    assert (res.returncode, res.stdout) == (0, "ppid 1\nalive\n")
    assert sentinel.poll() is None
  finally:
    sentinel.kill()
    sentinel.wait()


def test_stdout_and_stderr_floods_are_capped():
  res = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 1000)",
                   max_output_bytes=100_000)
  assert (res.killed_reason, res.returncode) == ("output_limit", -signal.SIGKILL)
  assert res.stdout == "x" * 100_000 and res.duration_s < 5.0
  assert res.limit == "output_limit" and "100000 bytes" in res.limit_detail
  res = run_python("import sys\nprint('ok')\nwhile True:\n    sys.stderr.write('e' * 999)",
                   max_output_bytes=5000)
  assert res.killed_reason == "output_limit" and res.stdout == "ok\n"
  assert res.stderr == "e" * 5000


# ------------------------------------------------- scratch, whole-run CPU, clean-up (issue 10)


_DEEP_TREE = _code("""
    import os
    for _ in range(1200):  # past Python's recursion limit, and 10,800 characters: past PATH_MAX
        os.mkdir("deeper__")
        os.chdir("deeper__")
    os.mkfifo("fifo")
    os.symlink(os.environ["HOST_DIR"], "to_host")
    os.chmod(".", 0)
    os.chdir("/tmp/scratch")
    os.chmod("deeper__", 0)
    print("built")
""")


@pytest.mark.parametrize("scratch_fs", scratch_modes())
def test_deep_tree_left_in_scratch_is_cleaned_up_without_raising(scratch_fs, scratch_root):
  # Once made the host-side shutil.rmtree raise RecursionError out of run_python (scratch leaked).
  host_dir = tempfile.mkdtemp(dir=scratch_root)
  with open(os.path.join(host_dir, "keep"), "w") as f:
    f.write("host")
  res = run_python(_DEEP_TREE, scratch_fs=scratch_fs, scratch_root=scratch_root,
                   env={"HOST_DIR": host_dir})
  assert (res.returncode, res.stdout, res.limit) == (0, "built\n", None), res.stderr
  assert res.scratch_files == 1200 + 3 and res.scratch_leaked == 0  # + main.py, fifo, link
  assert os.listdir(scratch_root) == [os.path.basename(host_dir)]  # the run's dir is gone
  with open(os.path.join(host_dir, "keep")) as f:  # the symlink was removed, not followed
    assert f.read() == "host"


_FILL_BYTES = _code("""
    import os
    written = 0
    try:
        for i in range(64):  # 1 GiB in 16 MiB files (each under the per-file limit)
            with open(f"f{i}", "wb") as f:
                f.write(b"x" * (16 << 20))
            written += 1
        print("all written")
    except OSError as e:
        print("stopped", written, e.errno)
""")


@pytest.mark.parametrize("scratch_fs", scratch_modes())
def test_scratch_total_bytes_are_limited(scratch_fs):
  res = run_python(_FILL_BYTES, scratch_fs=scratch_fs, max_scratch_mb=32)
  assert res.limit == "scratch_bytes" and "max_scratch_mb" in res.limit_detail
  assert "all written" not in res.stdout
  if scratch_fs == "tmpfs":  # a hard limit: the write fails, the program sees it and goes on
    # (main.py takes a page: the second 16 MiB file does not fit)
    assert (res.stdout, res.killed_reason) == (f"stopped 1 {errno.ENOSPC}\n", None)
    assert res.scratch_bytes <= 32 << 20
  else:  # polled: the run is killed once over the limit
    assert (res.killed_reason, res.returncode) == ("scratch_bytes", -signal.SIGKILL)
    assert res.scratch_bytes > 32 << 20


_MANY_FILES = _code("""
    import os
    made = 0
    try:
        for i in range(100_000):
            open(f"/tmp/e{i}", "w").close()  # in /tmp, outside the working directory
            made += 1
        print("all made")
    except OSError as e:
        print("stopped", made, e.errno)
""")


@pytest.mark.parametrize("scratch_fs", scratch_modes())
def test_scratch_file_count_is_limited(scratch_fs):
  res = run_python(_MANY_FILES, scratch_fs=scratch_fs, max_scratch_files=500)
  assert res.limit == "scratch_files" and "max_scratch_files" in res.limit_detail
  assert "all made" not in res.stdout
  if scratch_fs == "tmpfs":  # main.py is one of the 500 entries
    assert (res.stdout, res.killed_reason) == (f"stopped 499 {errno.ENOSPC}\n", None)
    assert res.scratch_files == 500
  else:
    assert (res.killed_reason, res.returncode) == ("scratch_files", -signal.SIGKILL)
    assert res.scratch_files > 500


def test_scratch_limits_have_documented_defaults_and_given_files_count():
  params = inspect.signature(run_command).parameters
  assert (params["max_scratch_mb"].default, params["max_scratch_files"].default) == (64, 10_000)
  with pytest.raises(ValueError, match="exceed the scratch limits"):
    run_python("pass", files={f"f{i}": "" for i in range(10)}, max_scratch_files=5)
  with pytest.raises(ValueError, match="exceed the scratch limits"):
    run_python("pass", files={"big": b"x" * (2 << 20)}, max_scratch_mb=1)
  with pytest.raises(ValueError, match="scratch_fs"):
    run_python("pass", scratch_fs="disk")


_SPINNERS = _code("""
    import os, sys, time
    daemonise = sys.argv[2] == "daemons"
    for _ in range(6):
        if os.fork() == 0:
            if daemonise:  # orphaned into their own sessions: not our children any more
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
            while True:
                pass
    if daemonise:
        time.sleep(30)
    else:
        codes = [os.wait()[1] for _ in range(6)]
        print("children ended", codes)
""")


@pytest.mark.parametrize("use_cgroups", [True, False])
@pytest.mark.parametrize("children", ["children", "daemons"])
def test_cpu_time_is_bounded_for_the_run_as_a_whole(use_cgroups, children):
  # Each spinner stays under its own RLIMIT_CPU (1 s) while the six together pass 1 s: without a
  # whole-run bound they would run to 6 CPU-seconds and the parent report them ended.
  token = uuid.uuid4().hex
  res = run_python(_SPINNERS, args=[token, children], cpu_s=1, timeout_s=20,
                   use_cgroups=use_cgroups)
  assert (res.killed_reason, res.limit, res.returncode) == ("cpu", "cpu", -signal.SIGKILL)
  assert "together" in res.limit_detail and "cpu_s" in res.limit_detail
  assert 1.0 < res.cpu_s < 6.0 and "children ended" not in res.stdout
  cgroup = use_cgroups and any(m.endswith(":cpuacct") for m in res.enforced)
  assert ("cpu_total:cgroup" if cgroup else "cpu_total:proc") in res.enforced
  assert _processes_with(token) == []


def test_cpu_time_from_a_cgroup_v2_hierarchy(monkeypatch):
  # This machine kind counts CPU with cgroup v1's cpuacct; v2 machines read cpu.stat instead.
  # Force the v2 path on a writable cgroup2 mount (the unified one of a hybrid layout).
  with open("/proc/self/mountinfo") as f:
    mount = next((line.split()[4] for line in f if line.split(" - ")[1].split()[0] == "cgroup2"),
                 None)
  if not ROOT or mount is None:
    pytest.skip("needs root and a cgroup2 mount")
  monkeypatch.setattr(limits, "_DETECTED", None)
  monkeypatch.setattr(limits, "_own_cgroup_dirs", lambda: {"cpuacct": (2, mount)})
  token = uuid.uuid4().hex
  res = run_python(_SPINNERS, args=[token, "children"], cpu_s=1, timeout_s=20)
  if "cgroup-v2:cpuacct" not in res.enforced:
    pytest.skip(f"no writable v2 cgroup under {mount}")
  assert res.killed_reason == "cpu" and "cpu_total:cgroup" in res.enforced
  assert _processes_with(token) == []


# ---------------------------------------------------------------- unavailable isolation


def test_missing_bubblewrap_refuses_unless_allowed():
  with pytest.raises(SandboxUnavailable) as info:
    run_python("print(1)", bwrap_path="/nonexistent/bwrap")
  msg = str(info.value)
  assert "/nonexistent/bwrap" in msg and "apt-get install -y bubblewrap" in msg
  assert "allow_unisolated=True" in msg and "config.rl.env_options.allow_unisolated" in msg
  res = run_python("import os\nprint(1)", bwrap_path="/nonexistent/bwrap", allow_unisolated=True)
  assert (res.returncode, res.stdout, res.isolated) == (0, "1\n", False)
  assert res.enforced[0] == "unisolated" and "timeout" in res.enforced
  # Limits still apply without isolation.
  res = run_python("import time\ntime.sleep(60)", timeout_s=1.0, bwrap_path="/nonexistent/bwrap",
                   allow_unisolated=True)
  assert res.killed_reason == "timeout" and res.duration_s < 3.0
  res = run_python("b = bytearray(2 << 30)", memory_mb=256, bwrap_path="/nonexistent/bwrap",
                   allow_unisolated=True)
  assert res.killed_reason == "memory"
  res = run_python("import os\nprint(sorted(os.environ))", bwrap_path="/nonexistent/bwrap",
                   allow_unisolated=True)
  assert "AGENTIC" not in res.stdout and "'PATH'" in res.stdout
  token = uuid.uuid4().hex
  res = run_python(_FORK_COUNTER, args=[token], max_processes=10, bwrap_path="/nonexistent/bwrap",
                   allow_unisolated=True)
  forks, err = map(int, res.stdout.split())
  assert err == errno.EAGAIN and _processes_with(token) == []
  if any(m.endswith(":pids") for m in res.enforced):
    assert forks == 9  # no bwrap processes to count this time


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="files: path '../x'"):
    run_python("pass", files={"../x": ""})
  with pytest.raises(ValueError, match="main.py"):
    run_python("pass", files={"main.py": ""})
  with pytest.raises(ValueError, match="argv: empty"):
    run_command([])
  with pytest.raises(ValueError, match="timeout_s"):
    run_python("pass", timeout_s=0)
  assert sandbox.minimal_env({"A": "b"})["A"] == "b"
