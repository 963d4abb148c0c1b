"""Runs `python -m unittest` in each repository directory listed on stdin (a JSON object).

Started by testrun.py as `python -s -P _unittest_driver.py`. Each repository gets its own forked
child (a fresh process that only shares the already-imported stdlib with this driver), in a new
session, with rlimits and a wall-clock timeout; its stdout+stderr go to the job's output file.
Prints one JSON line per job: {"returncode": int, "timed_out": bool}. Standalone: stdlib only.
"""

import json
import os
import resource
import signal
import sys
import unittest


def _child(repo: str, out_path: str, limits: dict) -> None:
  code = 1
  try:
    os.setsid()
    for name, value in limits.items():
      resource.setrlimit(getattr(resource, name), (value, value))
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(repo)
    try:
      unittest.main(module=None, argv=["python -m unittest"])  # == `python -m unittest`
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # report anything else in the output; never return into the driver
    import traceback
    traceback.print_exc()
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def _wait(pid: int, timeout_s: float) -> tuple[int, bool]:
  """Blocking wait; a SIGALRM after `timeout_s` kills the child's session (waitpid then returns)."""
  killed = []

  def on_alarm(signum, frame):
    killed.append(True)
    try:
      os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

  signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    _, status = os.waitpid(pid, 0)
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
  return os.waitstatus_to_exitcode(status), bool(killed)


def main() -> None:
  request = json.load(sys.stdin)
  for job in request["jobs"]:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
      _child(job["dir"], job["out"], request["limits"])
    returncode, timed_out = _wait(pid, request["timeout_s"])
    print(json.dumps({"returncode": returncode, "timed_out": timed_out}), flush=True)


if __name__ == "__main__":
  main()
