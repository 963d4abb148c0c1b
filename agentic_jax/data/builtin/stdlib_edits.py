"""Contextually-native samples from the Python standard library that ships with the interpreter.

For each sample a function of `stdlib_targets.TARGETS` is read from its source file, one bug is
planted (a flipped comparison or operator, an off-by-one constant, a swapped boolean, a dropped
guard clause), and the original and mutated functions are executed on seeded arguments in a
child process (`_stdlib_probe.py`) to find an input where their behaviour differs. The sample is,
in causal order (daVinci-Dev D^ctx):

    context  an issue written from the failing behaviour (the real outputs of both versions)
    file     the module excerpt around the function, with the bug      (path Lib/<module>.py)
    summary  what the fix changes and why
    edit     the fix as a search/replace block that turns the file span back into the original

When no probed mutation changes the behaviour, the issue describes the change instead (counted in
`stats["described"]`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import os
import random
import subprocess
import sys
import sysconfig
import tokenize
from typing import Optional

from agentic_jax.data.builtin import edit_blocks
from agentic_jax.data.builtin.stdlib_targets import TARGETS, Target
from agentic_jax.data.schema import ContextSample, Span

CANDIDATES = 4        # mutations probed per sample
NUM_INPUTS = 8        # argument tuples per probe
CALL_TIMEOUT_S = 0.1  # per call in the probe (a mutation may loop forever)
_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_stdlib_probe.py")
_PROBE_CACHE: dict[str, dict] = {}

_TOKEN_SWAPS = {"<": ["<="], "<=": ["<"], ">": [">="], ">=": [">"], "==": ["!="], "!=": ["=="],
                "+": ["-"], "-": ["+"], "+=": ["-="], "-=": ["+="], "//": ["/"],
                "and": ["or"], "or": ["and"], "True": ["False"], "False": ["True"]}
_KIND = {"<": "compare", "<=": "compare", ">": "compare", ">=": "compare", "==": "compare",
         "!=": "compare", "+": "arith", "-": "arith", "+=": "arith", "-=": "arith", "//": "arith",
         "and": "bool", "or": "bool", "True": "bool", "False": "bool"}


@dataclasses.dataclass(frozen=True)
class Function:
  target: Target
  path: str         # display path, Lib/<relative to the stdlib directory>
  filename: str     # real file
  lines: tuple      # the whole file, lines without newlines
  start: int        # 0-based first line (decorators included)
  end: int          # exclusive

  @property
  def source(self) -> str:
    return "\n".join(self.lines[self.start:self.end]) + "\n"

  @property
  def qualname(self) -> str:
    return f"{self.target.module}.{self.target.func}"


@dataclasses.dataclass(frozen=True)
class Mutation:
  kind: str         # compare | arith | bool | const | identity | guard
  correct: str      # the original text (token or removed lines)
  buggy: str
  line: int         # 0-based line within the function where the change starts
  source: str       # the mutated function source


@functools.lru_cache(maxsize=None)
def _read_module(module: str) -> tuple[str, str, tuple]:
  mod = importlib.import_module(module)
  filename = inspect.getsourcefile(mod)
  stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
  rel = os.path.relpath(os.path.realpath(filename), stdlib)
  if rel.startswith(".."):
    raise LookupError(f"{module} is not under the stdlib directory {stdlib}")
  with open(filename, encoding="utf-8") as f:
    text = f.read()
  return "Lib/" + rel.replace(os.sep, "/"), filename, tuple(text.split("\n"))


def load_function(target: Target) -> Optional[Function]:
  """The function's source location, or None when this interpreter lacks it as Python code."""
  try:
    path, filename, lines = _read_module(target.module)
  except (ImportError, LookupError, OSError, TypeError):
    return None
  tree = _parse("\n".join(lines))
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name == target.func:
      start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
      return Function(target, path, filename, lines, start, node.end_lineno)
  return None


@functools.lru_cache(maxsize=64)
def _parse(text: str) -> ast.Module:
  return ast.parse(text)


def mutations(fn: Function) -> list[Mutation]:
  """Every single-site mutation of the function body that compiles (cached per function)."""
  return list(_mutations(fn.target, fn.filename, fn.source))


@functools.lru_cache(maxsize=None)
def _mutations(target: Target, filename: str, src: str) -> tuple[Mutation, ...]:
  lines = src.split("\n")
  node = ast.parse(src).body[0]
  body_row = node.body[0].lineno  # 1-based; tokens before it belong to the signature
  out: list[Mutation] = []

  def add(kind, correct, buggy, row, new_lines):
    text = "\n".join(new_lines)
    try:
      compile(text, filename, "exec", dont_inherit=True)
    except SyntaxError:
      return
    out.append(Mutation(kind, correct, buggy, row, text))

  toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline)
          if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
  for i, tok in enumerate(toks):
    (row, col), (erow, ecol) = tok.start, tok.end
    if row < body_row or row != erow:
      continue
    line = lines[row - 1]
    replacements = []
    if tok.string in _TOKEN_SWAPS and tok.type in (tokenize.OP, tokenize.NAME):
      replacements = [(_KIND[tok.string], tok.string, s) for s in _TOKEN_SWAPS[tok.string]]
    elif tok.type == tokenize.NUMBER and tok.string.isdigit() and int(tok.string) <= 16:
      n = int(tok.string)
      replacements = [("const", tok.string, str(m)) for m in (n + 1, n - 1) if m >= 0]
    elif tok.string == "is" and tok.type == tokenize.NAME:
      nxt = toks[i + 1] if i + 1 < len(toks) else None
      if nxt is not None and nxt.string == "not" and nxt.start[0] == row:
        ecol = nxt.end[1]
        replacements = [("identity", "is not", "is")]
      else:
        replacements = [("identity", "is", "is not")]
    for kind, correct, buggy in replacements:
      new = list(lines)
      new[row - 1] = line[:col] + buggy + line[ecol:]
      add(kind, correct, buggy, row - 1, new)
  for sub in ast.walk(node):  # dropped guard clauses: `if cond: return/raise ...`
    if (isinstance(sub, ast.If) and not sub.orelse and len(sub.body) == 1
        and isinstance(sub.body[0], (ast.Return, ast.Raise, ast.Continue, ast.Break))
        and sub.lineno > node.lineno):
      a, b = sub.lineno - 1, sub.end_lineno
      add("guard", "\n".join(lines[a:b]), "", a, lines[:a] + lines[b:])
  return tuple(out)


# ---------------------------------------------------------------------------------------------
# probing original vs mutated behaviour in a child process

def probe(jobs: list[dict]) -> list[dict]:
  """Runs the probe on each job ({module, func, filename, orig, mut, inputs}); cached by content.
  A job that crashes the child process gets {"error": ...} and the rest are retried."""
  keys = [hashlib.sha256(json.dumps(j, sort_keys=True).encode()).hexdigest() for j in jobs]
  todo = [(k, j) for k, j in dict(zip(keys, jobs)).items() if k not in _PROBE_CACHE]
  env = {"PATH": os.defpath, "PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8",
         "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
  while todo:
    request = json.dumps({"timeout_s": CALL_TIMEOUT_S, "jobs": [j for _, j in todo]})
    proc = subprocess.run([sys.executable, "-s", "-P", _PROBE], input=request, capture_output=True,
                          text=True, env=env, timeout=60 + 2 * CALL_TIMEOUT_S * NUM_INPUTS * len(todo))
    lines = proc.stdout.splitlines()
    for (key, _), line in zip(todo, lines):
      _PROBE_CACHE[key] = json.loads(line)
    if len(lines) < len(todo):  # the child died on job len(lines): record it, retry the rest
      _PROBE_CACHE[todo[len(lines)][0]] = {"error": f"probe process died (exit {proc.returncode}): "
                                                    f"{proc.stderr[-300:]}"}
      todo = todo[len(lines) + 1:]
    else:
      todo = []
  return [_PROBE_CACHE[k] for k in keys]


def differences(result: dict) -> list[int]:
  """Indices of inputs where both versions ran and behaved differently."""
  if "error" in result:
    return []
  return [i for i, (o, m) in enumerate(zip(result["orig"], result["mut"]))
          if o[0] in ("ok", "raise") and m[0] in ("ok", "raise", "hang") and o != m]


# ---------------------------------------------------------------------------------------------
# writing the sample

def _call_text(fn: Function, args: tuple) -> str:
  return f"{fn.qualname}({', '.join(repr(a) for a in args)})"


def _shown(outcome: list) -> str:
  kind, text = outcome
  if kind == "ok":
    return text
  if kind == "raise":
    return f"Traceback (most recent call last):\n  ...\n{text}"
  return "(the call never returns)"


def _exc(outcome: list) -> str:
  return outcome[1].split(":")[0]


def _title(fn: Function, orig: list, mut: list) -> str:
  name = f"`{fn.qualname}()`"
  if mut[0] == "hang":
    return f"{name} hangs"
  if orig[0] == "ok" and mut[0] == "raise":
    return f"{name} raises {_exc(mut)} on valid input"
  if orig[0] == "raise" and mut[0] == "ok":
    return f"{name} no longer raises {_exc(orig)} on invalid input"
  if orig[0] == "raise":
    return f"{name} raises {_exc(mut)} instead of {_exc(orig)}"
  return f"{name} returns a wrong result"


def _expected(orig: list) -> str:
  if orig[0] == "ok":
    return f"The expected result is:\n\n    {orig[1]}"
  return f"It should raise:\n\n    {orig[1]}"


def issue_text(fn: Function, args: list, result: dict, diffs: list, rng: random.Random) -> str:
  i = diffs[0]
  orig, mut = result["orig"][i], result["mut"][i]
  intro = rng.choice(["I ran into this while using `{q}`:", "Minimal reproducer:",
                      "After the latest change, `{q}` misbehaves:", "Steps to reproduce:"])
  session = f">>> import {fn.target.module}\n>>> {_call_text(fn, args[i])}\n{_shown(mut)}"
  text = (f"{_title(fn, orig, mut)}\n\n{intro.format(q=fn.qualname)}\n\n"
          + "\n".join("    " + line for line in session.split("\n")) + f"\n\n{_expected(orig)}\n")
  if len(diffs) > 1:
    j = diffs[1]
    o, m = result["orig"][j], result["mut"][j]
    got = "never returns" if m[0] == "hang" else (
        f"gives `{m[1]}`" if m[0] == "ok" else f"raises `{m[1]}`")
    want = f"`{o[1]}`" if o[0] == "ok" else f"raising `{o[1]}`"
    text += f"\nThe same happens with `{_call_text(fn, args[j])}`, which {got} instead of {want}.\n"
  return text


def _described_issue(fn: Function, m: Mutation, rng: random.Random) -> str:
  line = m.source.split("\n")[m.line].strip() if m.kind != "guard" else m.correct.split("\n")[0].strip()
  what = (f"the check `{line}` was removed" if m.kind == "guard"
          else f"`{m.correct}` was changed to `{m.buggy}` in `{line}`")
  return (f"Suspicious change in `{fn.qualname}()`\n\nIn a recent change to {fn.path}, {what}. I "
          "could not find an input that shows a difference yet, but the new code does not match "
          f"the documented behaviour of `{fn.target.func}`. Please restore the original logic.\n")


def summary_text(fn: Function, m: Mutation, example: Optional[str], rng: random.Random) -> str:
  f = f"`{fn.target.func}`"
  if m.kind == "guard":
    first = m.correct.split("\n")[0].strip()
    change = (f"{f} lost its early exit `{first}`, so that case fell through to the general code. "
              "The fix restores the check.")
  else:
    line = m.source.split("\n")[m.line].strip()
    change = {
        "compare": f"{f} compared with `{m.buggy}` where `{m.correct}` is needed in `{line}`, which "
                   "moves the boundary case to the wrong branch.",
        "arith": f"{f} used `{m.buggy}` instead of `{m.correct}` in `{line}`.",
        "bool": (f"{f} used `{m.buggy}` instead of `{m.correct}` in `{line}`, which inverts part "
                 "of its logic."),
        "const": f"The constant `{m.buggy}` in `{line}` is off by one: {f} needs `{m.correct}`.",
        "identity": f"{f} tested `{m.buggy}` where `{m.correct}` is meant in `{line}`.",
    }[m.kind] + f" The fix changes it back to `{m.correct}`."
  if example:
    change += " " + rng.choice(["With it, {e}.", "After the fix, {e}.", "This makes {e} again."]
                               ).format(e=example)
  return change


def edit_for(buggy: str, original: str) -> tuple[str, str]:
  """The smallest whole-line search/replace that turns `buggy` into `original`, with enough
  context lines that the search text is unique in `buggy`."""
  b, o = buggy.split("\n"), original.split("\n")
  p = 0
  while p < min(len(b), len(o)) and b[p] == o[p]:
    p += 1
  s = 0
  while s < min(len(b), len(o)) - p and b[-1 - s] == o[-1 - s]:
    s += 1
  lo, hi_b, hi_o = p, len(b) - s, len(o) - s
  grow_up = True
  while True:
    search = "\n".join(b[lo:hi_b])
    if search.strip() and buggy.count(search) == 1:
      return search, "\n".join(o[lo:hi_o])
    if grow_up and lo > 0:
      lo -= 1
    elif hi_b < len(b):
      hi_b, hi_o = hi_b + 1, hi_o + 1
    elif lo > 0:
      lo -= 1
    else:
      raise ValueError("no unique search text")
    grow_up = not grow_up


def _example(fn: Function, args: list, result: dict, diffs: list) -> Optional[str]:
  if not diffs:
    return None
  o = result["orig"][diffs[0]]
  call = f"`{_call_text(fn, args[diffs[0]])}`"
  return f"{call} returns `{o[1]}`" if o[0] == "ok" else f"{call} raises `{_exc(o)}`"


def _plan(seed: int, index: int, functions: list) -> tuple:
  rng = random.Random(f"stdlib-edit:{seed}:{index}")
  fn = functions[rng.randrange(len(functions))]
  muts = mutations(fn)
  by_kind: dict[str, list] = {}
  for m in muts:
    by_kind.setdefault(m.kind, []).append(m)
  chosen = []
  kinds = sorted(by_kind)
  for _ in range(min(CANDIDATES, len(muts))):  # a kind first (constants are the most numerous)
    kind = kinds[rng.randrange(len(kinds))]
    pool = [m for m in by_kind[kind] if m not in chosen] or [m for m in muts if m not in chosen]
    chosen.append(pool[rng.randrange(len(pool))])
  inputs = {}
  for _ in range(NUM_INPUTS):
    args = fn.target.args(rng)
    inputs.setdefault(repr(args), args)
  return rng, fn, chosen, list(inputs.values())


def stdlib_edit_samples(seed: int, num_samples: int,
                        stats: Optional[dict] = None) -> list[ContextSample]:
  stats = {} if stats is None else stats
  functions = []
  for target in TARGETS:
    fn = load_function(target)
    if fn is None or not mutations(fn):
      stats["targets_unavailable"] = stats.get("targets_unavailable", 0) + 1
    else:
      functions.append(fn)
  if not functions:
    raise RuntimeError("no standard-library target function is available on this interpreter")
  plans = [_plan(seed, i, functions) for i in range(num_samples)]
  jobs = [{"module": fn.target.module, "func": fn.target.func, "filename": fn.filename,
           "orig": fn.source, "mut": m.source, "inputs": [repr(a) for a in args]}
          for _, fn, chosen, args in plans for m in chosen]
  results = iter(probe(jobs))
  samples = []
  for i, (rng, fn, chosen, args) in enumerate(plans):
    probed = [(m, next(results)) for m in chosen]
    stats["probe_errors"] = stats.get("probe_errors", 0) + sum("error" in r for _, r in probed)
    found = [(m, r, differences(r)) for m, r in probed if differences(r)]
    if found:
      m, result, diffs = found[0]
      issue = issue_text(fn, args, result, diffs, rng)
    else:
      (m, result), diffs = probed[0], []
      issue = _described_issue(fn, m, rng)
      stats["described"] = stats.get("described", 0) + 1
    samples.append(_sample(f"stdlib_edits-{seed}-{i:05d}", fn, m, issue,
                           summary_text(fn, m, _example(fn, args, result, diffs), rng), rng))
  return samples


def _sample(sample_id: str, fn: Function, m: Mutation, issue: str, summary: str,
            rng: random.Random) -> ContextSample:
  a = max(0, fn.start - rng.randint(0, 6))
  b = min(len(fn.lines), fn.end + rng.randint(0, 6))
  tail = "\n" if b < len(fn.lines) else ""  # (at the end of the file its last line is "")
  original = "\n".join(fn.lines[a:b]) + tail
  mutated_fn = m.source.rstrip("\n").split("\n")
  buggy = "\n".join(list(fn.lines[a:fn.start]) + mutated_fn + list(fn.lines[fn.end:b])) + tail
  search, replace = edit_for(buggy, original)
  if edit_blocks.apply_edit(buggy, search, replace) != original:  # self-check of the edit
    raise AssertionError(f"{sample_id}: the edit does not restore {fn.qualname}")
  return ContextSample(sample_id, "stdlib_edits", (
      Span("context", issue), Span("file", buggy, fn.path), Span("summary", summary),
      Span("edit", edit_blocks.format_edit(search, replace), fn.path)))
