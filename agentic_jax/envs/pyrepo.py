"""RL environment "pyrepo": the failing-test repositories of `data/builtin/pyrepo.py`, tests run
in the sandbox.

    make_env, make_tasks = make_env_factory("pyrepo", shell=True)   # RepoOptions
    env = RepoEnv()                               # tests run through sandbox.run_command
    obs = env.reset(pyrepo.make_tasks(0, 1)[0])   # statement + file list
    env.step("run_tests()"); env.step("cat(stats.py)")
    env.step("edit(stats.py)\\n<<<<<<< SEARCH\\n...\\n=======\\n...\\n>>>>>>> REPLACE")
    env.step("submit()")                          # reward 1.0 iff `python -m unittest` passes

Same tools, statement and observations as the mid-training source "pyrepo" (`pyrepo.PyRepoEnv`,
reused here), so a mid-trained policy sees in RL what it saw in mid-training. The episode's
repository is a private copy (a dict of file texts: `ls`/`cat`/`edit` act on it and nothing
else, paths are checked by `testrun.check_path`, so `../x` or `/etc/passwd` is refused with an
explanatory observation); every test run writes it into a fresh sandbox scratch directory
(bubblewrap: no network, read-only system, limits) and runs `python -m unittest` there. The
output is normalised exactly like `testrun` (the scratch dir reads /repo, durations 0.000s).

Option shell=True adds `sh(COMMAND)`: `/bin/sh -c COMMAND` on a throwaway copy of the repository
in the sandbox (grep, wc, python -c ...). Its changes are discarded: the sandbox does not hand
files back, so `edit` stays the only way to change the repository.

Tasks: train = `pyrepo.make_tasks(seed, n)` (templates x variants 0..VARIANTS-1, cycled); eval =
the same templates at variants VARIANTS..2*VARIANTS-1 (at most templates x VARIANTS per seed).
The sandbox policy is code.py's (`check_sandbox` when the factory is built).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import threading
from typing import Mapping, Optional

from agentic_jax.data.builtin import pyrepo, testrun
from agentic_jax.data.builtin.protocol import (
    INFO_ERROR, INFO_TOOL, ActionError, StepResult, Tool, error_result, parse_action, tools_help)
from agentic_jax.envs.code import check_sandbox
from agentic_jax.envs.registry import (EnvOptions, EnvSpec, check_n, check_split, option,
                                       register_env)
from agentic_jax import sandbox

ANSWER_TOOLS = ("submit",)
SH_TOOL = Tool("sh", "sh(COMMAND)", "runs a shell command on a throwaway copy of the repository "
               "(changes are discarded)")
_UNISOLATED_SCRATCH = re.compile(r"/[^\s'\"]*agentic_sandbox_[A-Za-z0-9_]+(?:/fs/tmp/scratch)?")


def _normalise(text: str) -> str:
  text = _UNISOLATED_SCRATCH.sub(testrun.REPO_ROOT, text)  # scratch path without bubblewrap
  return testrun.normalise_output(text, sandbox.SCRATCH)


class SandboxRunner:
  """files -> testrun.TestRun, `python -m unittest` in the sandbox (a `pyrepo.Runner`).

  Results are cached by repository content (a test run of the same files is deterministic after
  normalisation); runs that were killed are not cached (load could have caused them)."""

  def __init__(self, *, timeout_s: float = 20.0, memory_mb: int = 512,
               allow_unisolated: bool = False, cache_size: int = 4096):
    self.timeout_s, self.memory_mb, self.allow_unisolated = timeout_s, memory_mb, allow_unisolated
    self.cache_size = cache_size
    self._cache: collections.OrderedDict[str, testrun.TestRun] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.runs = 0  # sandbox runs actually started (cache misses)

  def __call__(self, files: Mapping[str, str]) -> testrun.TestRun:
    key = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    with self._lock:
      if key in self._cache:
        self._cache.move_to_end(key)
        return self._cache[key]
    res = sandbox.run_command(["python", "-m", "unittest"], files=dict(files),
                              timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                              allow_unisolated=self.allow_unisolated, max_output_bytes=1 << 16)
    with self._lock:  # environments of several rows step at once (rl/env_pool.py)
      self.runs += 1
    output = _normalise(res.stdout + res.stderr)
    if res.killed_reason == "timeout":
      output += f"\n[the test run was killed after {self.timeout_s:g} s]"  # as testrun says it
    elif res.killed_reason is not None:
      output += f"\n[the test run was killed: {res.killed_reason}]"
    run = testrun.TestRun(res.ok, res.returncode, output, res.killed_reason == "timeout")
    if res.killed_reason is None:
      with self._lock:
        self._cache[key] = run
        while len(self._cache) > self.cache_size:
          self._cache.popitem(last=False)
    return run


class RepoEnv(pyrepo.PyRepoEnv):
  """pyrepo.PyRepoEnv with sandboxed test runs (and optionally the `sh` tool)."""

  answer_tools = ANSWER_TOOLS

  def __init__(self, *, max_steps: int = 20, timeout_s: float = 20.0, memory_mb: int = 512,
               allow_unisolated: bool = False, shell: bool = False,
               runner: Optional[SandboxRunner] = None):
    super().__init__(runner=runner or SandboxRunner(timeout_s=timeout_s, memory_mb=memory_mb,
                                                    allow_unisolated=allow_unisolated),
                     max_steps=max_steps)
    self.timeout_s, self.memory_mb, self.allow_unisolated = timeout_s, memory_mb, allow_unisolated
    self.shell = shell
    if shell:
      self.tools = {**pyrepo.TOOLS, "sh": SH_TOOL}
      self.system_prompt = pyrepo.SYSTEM_PROMPT.replace(
          tools_help(pyrepo.TOOLS), tools_help(self.tools))

  def _dispatch(self, action: str) -> StepResult:
    if not self.shell:
      return super()._dispatch(action)
    try:
      act = parse_action(action, self.tools)
    except ActionError as e:
      return error_result(str(e), e.tool)
    if act.name != "sh":
      return super()._dispatch(action)
    res = sandbox.run_command(["/bin/sh", "-c", act.arg], files=dict(self.files),
                              timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                              allow_unisolated=self.allow_unisolated, max_output_bytes=1 << 16)
    text = _normalise(res.stdout + res.stderr)
    if res.killed_reason is not None:
      text += f"\n[the command was killed: {res.killed_reason}]"
    elif res.returncode != 0:
      text += f"\n[exit code {res.returncode}]"
    return StepResult(text or "(no output)", False, 0.0,
                      {INFO_TOOL: "sh", INFO_ERROR: False, "returncode": res.returncode,
                       "killed_reason": res.killed_reason})


# --- the registered environment ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RepoOptions(EnvOptions):
  timeout_s: float = option(20.0, positive=True, doc="wall-clock limit of one test run (s)")
  memory_mb: int = option(512, positive=True, doc="memory limit of one sandbox run (MB)")
  max_steps: int = option(20, positive=True, doc="tool calls per episode")
  allow_unisolated: bool = option(False, doc="run without bubblewrap (resource limits only)")
  shell: bool = option(False, doc="add the sh(COMMAND) tool")


def make_pyrepo(options: RepoOptions):
  """(make_env, make_tasks) of the failing-test repositories."""
  check_sandbox(options.allow_unisolated)
  names = sorted(pyrepo.TEMPLATES)
  # one runner (and its cache of test results) shared by all the factory's environments
  runner = SandboxRunner(timeout_s=options.timeout_s, memory_mb=options.memory_mb,
                         allow_unisolated=options.allow_unisolated)

  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    check_split(split)
    check_n(n)
    if split == "train":
      return pyrepo.make_tasks(seed, n)  # cycles through templates x variants 0..VARIANTS-1
    distinct = len(names) * pyrepo.VARIANTS
    if n > distinct:
      raise ValueError(f"pyrepo: asked for {n} eval tasks but there are only {distinct} distinct "
                       f"eval repositories per seed")
    return [pyrepo.make_task(seed, names[i % len(names)], pyrepo.VARIANTS + i // len(names))
            for i in range(n)]

  def make_env() -> RepoEnv:
    return RepoEnv(max_steps=options.max_steps, timeout_s=options.timeout_s,
                   memory_mb=options.memory_mb, allow_unisolated=options.allow_unisolated,
                   shell=options.shell, runner=runner)

  return make_env, make_tasks


register_env(EnvSpec(name="pyrepo", options=RepoOptions, factory=make_pyrepo))
