"""Calls an original and a mutated standard-library function on the same arguments.

Started by stdlib_edits.py as `python -s -P _stdlib_probe.py` with a JSON request on stdin:
{"timeout_s": float, "jobs": [{"module", "func", "filename", "orig", "mut", "inputs": [repr]}]}.
Both sources are compiled into copies of the module's namespace; every call runs under an
interval timer. Prints one JSON line per job: {"orig": [outcome...], "mut": [outcome...]} where an
outcome is ["ok", repr] | ["raise", "Type: message"] | ["hang", ""] | ["bad", why]. Stdlib only.
"""

import ast
import importlib
import itertools
import json
import resource
import signal
import sys
import types


class _Timeout(BaseException):
  pass


def _alarm(signum, frame):
  raise _Timeout()


def _call(fn, args, timeout_s):
  signal.setitimer(signal.ITIMER_REAL, timeout_s, timeout_s / 2)  # re-fires if swallowed
  try:
    value = fn(*args)
    if isinstance(value, (types.GeneratorType, map, filter, zip)):
      value = list(itertools.islice(value, 200))
    text = repr(value)
  except _Timeout:
    return ["hang", ""]
  except RecursionError:
    return ["raise", "RecursionError: maximum recursion depth exceeded"]
  except BaseException as e:  # noqa: BLE001 - any failure of the function is an outcome
    return ["raise", f"{type(e).__name__}: {e}"[:300]]
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
  if " at 0x" in text:
    return ["bad", "the result has no stable repr"]
  if len(text) > 400:
    return ["bad", "the result is too long to show"]
  return ["ok", text]


def _function(module, filename, source, name):
  namespace = dict(vars(module))
  exec(compile(source, filename, "exec"), namespace)  # our own (mutated) stdlib source
  return namespace[name]


def _outcomes(fn, inputs, timeout_s, stop_after_hang):
  out = []
  for text in inputs:
    result = _call(fn, ast.literal_eval(text), timeout_s)  # fresh arguments for every call
    out.append(result)
    if stop_after_hang and result[0] == "hang":
      out += [["bad", "not run after a hang"]] * (len(inputs) - len(out))
      break
  return out


def main():
  resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
  sys.setrecursionlimit(400)
  signal.signal(signal.SIGALRM, _alarm)
  request = json.load(sys.stdin)
  timeout_s = request["timeout_s"]
  for job in request["jobs"]:
    try:
      module = importlib.import_module(job["module"])
      orig = _function(module, job["filename"], job["orig"], job["func"])
      mut = _function(module, job["filename"], job["mut"], job["func"])
      result = {"orig": _outcomes(orig, job["inputs"], timeout_s, False),
                "mut": _outcomes(mut, job["inputs"], timeout_s, True)}
    except BaseException as e:  # noqa: BLE001 - reported, the caller counts it
      result = {"error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
