"""Small Python repositories with a failing unit test, as an environment.

    tasks = make_tasks(seed=0, num_tasks=16)
    env = PyRepoEnv()                       # runner=testrun.run_unittest (plain subprocess)
    obs = env.reset(tasks[0])
    env.step("run_tests()"); env.step("cat(stats.py)")
    env.step("edit(stats.py)\n<<<<<<< SEARCH\n...\n=======\n...\n>>>>>>> REPLACE")
    env.step("submit()")                    # reward 1.0 if `python -m unittest` passes

The repository lives in memory; only `run_tests`/`submit` materialise it, through `runner`
(files -> testrun.TestRun). The RL issue passes a sandboxed runner for model-written code.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Mapping, Optional

from agentic_jax.data.builtin import edit_blocks, testrun
from agentic_jax.data.builtin.protocol import (
    INFO_ERROR, INFO_TOOL, ActionError, StepResult, Tool, error_result, limited_step, parse_action,
    tools_help)
from agentic_jax.data.builtin.pyrepo_templates import TEMPLATES, RepoSpec

VARIANTS = 4  # distinct repositories per template and seed (bounds the number of test runs)
TOOLS = {
    "run_tests": Tool("run_tests", "run_tests()",
                      "runs `python -m unittest` in the repository and shows its output",
                      needs_arg=False),
    "ls": Tool("ls", "ls()", "lists the files of the repository", needs_arg=False),
    "cat": Tool("cat", "cat(PATH)", "shows the content of a file"),
    "edit": Tool("edit", "edit(PATH)", "replaces text in a file, with one block on the next lines",
                 takes_body=True),
    "submit": Tool("submit", "submit()", "runs the tests a last time and ends the task",
                   needs_arg=False),
}
SYSTEM_PROMPT = (
    "You fix bugs in a small Python repository. Call exactly one tool per turn, written as "
    "NAME(ARGUMENT):\n" + tools_help(TOOLS) + "\nAn edit block is written on the lines after "
    "edit(PATH):\n" + edit_blocks.format_edit("exact lines currently in the file",
                                              "the lines that replace them"))
STATEMENT = ("The unit tests of this repository fail. Find the bug in the code (not in the tests), "
             "fix it, and submit when `python -m unittest` passes.")

Runner = Callable[[Mapping[str, str]], testrun.TestRun]


@dataclasses.dataclass(frozen=True)
class RepoTask:
  id: str
  files: Mapping[str, str]  # the buggy repository
  statement: str = STATEMENT


def make_spec(seed: int, template: str, variant: int) -> RepoSpec:
  return TEMPLATES[template](random.Random(f"pyrepo-repo:{seed}:{template}:{variant}"))


def make_task(seed: int, template: str, variant: int) -> RepoTask:
  return RepoTask(f"pyrepo-{seed}-{template}-{variant}", make_spec(seed, template, variant).buggy_files())


def make_tasks(seed: int, num_tasks: int) -> list[RepoTask]:
  """`num_tasks` repositories cycling through templates and variants (at most templates x VARIANTS
  distinct ones)."""
  names = sorted(TEMPLATES)
  return [make_task(seed, names[i % len(names)], (i // len(names)) % VARIANTS)
          for i in range(num_tasks)]


class PyRepoEnv:
  """reset(RepoTask) -> statement and file list; step(action) -> StepResult."""

  system_prompt = SYSTEM_PROMPT
  tools = TOOLS

  def __init__(self, runner: Runner = testrun.run_unittest, max_steps: int = 20):
    self.runner, self.max_steps = runner, max_steps
    self.files: dict[str, str] = {}
    self._task: Optional[RepoTask] = None
    self._steps, self._done = 0, True

  def reset(self, task: RepoTask) -> str:
    if not isinstance(task, RepoTask):
      raise TypeError(f"PyRepoEnv.reset expects a RepoTask, got {type(task).__name__}")
    self._task, self.files, self._steps, self._done = task, dict(task.files), 0, False
    return f"{task.statement}\n\nRepository files:\n{self._listing()}"

  def step(self, action: str) -> StepResult:
    return limited_step(self, action,
                        limit_note="step limit reached; the task ends without a submission")

  def _listing(self) -> str:
    return "\n".join(f"  {p}" for p in sorted(self.files))

  def _path(self, arg: str, tool: str) -> str:
    path = arg.strip().strip("'\"")
    for prefix in (testrun.REPO_ROOT + "/", "./"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    try:
      path = testrun.check_path(path)
    except ValueError as e:
      raise ActionError(str(e), tool) from None
    if path not in self.files:
      raise ActionError(f"no such file: {path}; the files are: {', '.join(sorted(self.files))}", tool)
    return path

  def _dispatch(self, action: str) -> StepResult:
    try:
      act = parse_action(action, TOOLS)
      ok = {INFO_TOOL: act.name, INFO_ERROR: False}
      if act.name == "ls":
        return StepResult(self._listing(), False, 0.0, ok)
      if act.name == "cat":
        return StepResult(self.files[self._path(act.arg, "cat")], False, 0.0, ok)
      if act.name == "edit":
        path = self._path(act.arg, "edit")
        try:
          search, replace = edit_blocks.parse_edit(act.body)
          self.files[path] = edit_blocks.apply_edit(self.files[path], search, replace, path=path)
        except edit_blocks.EditError as e:
          raise ActionError(str(e), "edit") from None
        return StepResult(f"edited {path}: replaced {search.count(chr(10)) + 1} line(s) with "
                          f"{replace.count(chr(10)) + 1 if replace else 0}", False, 0.0, ok)
    except ActionError as e:
      return error_result(str(e), e.tool)
    run = self.runner(self.files)
    info = {**ok, "passed": run.passed, "timed_out": run.timed_out}
    if act.name == "run_tests":
      return StepResult(run.output, False, 0.0, info)
    if run.passed:
      return StepResult("submitted: all tests pass", True, 1.0, info)
    return StepResult("submitted, but the tests fail:\n" + run.output, True, 0.0, info)
