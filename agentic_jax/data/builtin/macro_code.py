"""Synthetic "macro-operation" Python tasks: tiny programs made of a few hidden multi-line steps.

Purpose (RA3, arXiv 2509.25810, issue 13): RA3 inserts short latent rationales before groups of
code lines. To test whether such an abstraction helps a TINY model (2 layers, 128 hidden, vocab
1024, 256-token context) we need code whose lines are predictable once the step ("macro-op") is
named, and hard to predict without it. Each program transforms a list of ints `xs` by a few ops:

    from agentic_jax.data.builtin import macro_code
    progs = macro_code.programs(seed=0, n=100)              # split="train"
    held_out = macro_code.programs(seed=0, n=20, split="eval")
    p = progs[0]; source = p.prompt + p.body                # p.test defines check(candidate)

    def solve(xs):
        \"\"\"Steps: evens, times 2, cumsum.\"\"\"
        out = []
        for x in xs:
            if x % 2 == 0:
                out.append(x)
        xs = out
        ...                                                 # one Block per step
        return xs

Design choices:
- Eight ops (`OPS`), each a short docstring phrase (one word, or a word and ONE single-digit
  parameter: "add 3") and a 2-5 line template at function-body indentation. Most ops open with
  the same lines (`out = []`, `for x in xs:`), so after the shared prefix only the op's identity
  (the rationale) tells the model which line comes next; every op ends with `xs = out` (cumsum:
  `xs = out[1:]`), so ops compose by concatenation. Lines are short and regular on purpose.
- The expected outputs come from `apply`, a reference written directly in Python (never by
  exec'ing a template); the tests check that each template agrees with it.
- The last block is always `return xs` (op "return"), so a program is prompt + its blocks.
- Split by COMPOSITION (`split_of`): the sequence of op names, parameters excluded, goes to
  "eval" iff sha256("macro_code:" + ",".join(ops)) read as an int is 0 mod 5 (~20%). Held-out
  programs are therefore unseen SEQUENCES of ops that each appear in training; the rule is fixed
  so the split never moves when the generator's sampling changes.
- Size: with the default 2-3 ops a program is 11-18 lines, ~14 on average (prompt 2, 4-5 per
  op, return 1); at MAX_OPS (5) it stays under ~100 whitespace-separated words (meant to fit a
  256-token context).
- An op never directly follows itself (reverse twice is no step). Other pairs may still cancel
  or do nothing on some inputs (evens after times 2); the tests stay correct, only less telling.
- The hidden test asserts on fixed small inputs (the empty list, one element, lists with
  negatives) plus one seeded random list, so hard-coding outputs does not pass.

Pure text generation: this module imports nothing from agentic_jax (data is a lower layer than
envs/sandbox; envs/macro_code.py turns programs into sandboxed RL tasks).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import random
from typing import Callable, Optional, Sequence

SPLITS = ("train", "eval")
EVAL_BUCKETS = 5          # composition hash % EVAL_BUCKETS == 0 -> "eval" (~20%)
MAX_OPS = 5               # longest composition programs() accepts (prompt + body < ~120 words)
ENTRY_POINT = "solve"
RETURN_OP = "return"
Step = tuple[str, Optional[int]]   # (op name, its parameter or None)
# Fixed inputs of every hidden test: empty, single, and lists with negatives, zero, odd and even.
TEST_INPUTS = ((), (5,), (3, -1, 4, 1, -5, 9, 2, 6), (-2, 0, 7, 8, -3))


@dataclasses.dataclass(frozen=True)
class _Op:
  phrase: str                      # "add {k}" or "evens"
  params: Optional[range]          # the single-digit parameter's values; None = no parameter
  template: tuple[str, ...]        # lines without "\n", "{k}" where the parameter goes
  ref: Callable[[list, int], list]  # reference semantics, written directly


_LOOP = ("    out = []", "    for x in xs:")  # the prefix most ops share
_END = ("    xs = out",)

_OPS: dict[str, _Op] = {
    "add": _Op("add {k}", range(1, 10), _LOOP + ("        out.append(x + {k})",) + _END,
               lambda xs, k: [x + k for x in xs]),
    "times": _Op("times {k}", range(2, 6), _LOOP + ("        out.append(x * {k})",) + _END,
                 lambda xs, k: [x * k for x in xs]),
    "square": _Op("square", None, _LOOP + ("        out.append(x * x)",) + _END,
                  lambda xs, k: [x * x for x in xs]),
    "above": _Op("above {k}", range(0, 6),
                 _LOOP + ("        if x > {k}:", "            out.append(x)") + _END,
                 lambda xs, k: [x for x in xs if x > k]),
    "evens": _Op("evens", None,
                 _LOOP + ("        if x % 2 == 0:", "            out.append(x)") + _END,
                 lambda xs, k: [x for x in xs if x % 2 == 0]),
    "reverse": _Op("reverse", None, _LOOP + ("        out.insert(0, x)",) + _END,
                   lambda xs, k: xs[::-1]),
    # a running total without a separate accumulator keeps the template at 4 lines
    "cumsum": _Op("cumsum", None, ("    out = [0]", "    for x in xs:",
                                   "        out.append(out[-1] + x)", "    xs = out[1:]"),
                  lambda xs, k: list(itertools.accumulate(xs))),
    "drop": _Op("drop {k}", range(1, 4),
                ("    out = []", "    for i, x in enumerate(xs):", "        if i >= {k}:",
                 "            out.append(x)") + _END,
                lambda xs, k: xs[k:]),
}
OPS: tuple[str, ...] = tuple(_OPS)   # the op names, in a fixed order


@dataclasses.dataclass(frozen=True)
class Block:
  op: str                    # an entry of OPS, or "return"
  phrase: str                # as in the docstring: "add 3", "evens", "return"
  lines: tuple[str, ...]     # each ends with "\n", at function-body indentation


@dataclasses.dataclass(frozen=True)
class MacroProgram:
  id: str                    # "macro/{split}/{seed}/{i}"
  entry_point: str           # "solve"
  prompt: str                # signature + one-line docstring listing the steps' phrases
  blocks: tuple[Block, ...]  # one per step, then the return block
  test: str                  # defines check(candidate)

  @property
  def body(self) -> str:
    return "".join(line for b in self.blocks for line in b.lines)

  @property
  def ops(self) -> tuple[str, ...]:
    """The composition (op names without parameters, without the return)."""
    return tuple(b.op for b in self.blocks if b.op != RETURN_OP)


def _check_name(op: str) -> _Op:
  if op not in _OPS:
    raise ValueError(f"op: expected one of {list(OPS)}, got {op!r}")
  return _OPS[op]


def _check_op(op: str, k: Optional[int]) -> _Op:
  spec = _check_name(op)
  if spec.params is None and k is not None:
    raise ValueError(f"op {op!r} takes no parameter, got k={k!r}")
  if spec.params is not None and k not in spec.params:
    raise ValueError(f"op {op!r}: expected k in {list(spec.params)}, got {k!r}")
  return spec


def params(op: str) -> Optional[range]:
  """The allowed parameter values of `op` (None: it takes none)."""
  return _check_name(op).params


def phrase(op: str, k: Optional[int] = None) -> str:
  """The op's docstring phrase: phrase("add", 3) == "add 3"."""
  return _check_op(op, k).phrase.format(k=k)


def block(op: str, k: Optional[int] = None) -> Block:
  """The op's Block: its phrase and its template lines with the parameter filled in."""
  spec = _check_op(op, k)
  return Block(op, spec.phrase.format(k=k), tuple(t.format(k=k) + "\n" for t in spec.template))


def return_block() -> Block:
  return Block(RETURN_OP, RETURN_OP, ("    return xs\n",))


def apply(op: str, k: Optional[int], xs: Sequence[int]) -> list[int]:
  """The reference semantics of one op on a list of ints (a new list; `xs` is not changed)."""
  return _check_op(op, k).ref(list(xs), k)


def run_steps(steps: Sequence[Step], xs: Sequence[int]) -> list[int]:
  """The reference output of a program: each (op, k) applied in order."""
  out = list(xs)
  for op, k in steps:
    out = apply(op, k, out)
  return out


def split_of(ops: Sequence[str]) -> str:
  """"train" or "eval" for a composition (op names in order, parameters excluded): "eval" iff
  sha256("macro_code:" + ",".join(ops)), as a big-endian int, is 0 mod EVAL_BUCKETS (~20%).
  Stable across runs and interpreters (hashlib, not hash())."""
  ops = tuple(ops)
  for op in ops:
    _check_name(op)
  digest = hashlib.sha256(("macro_code:" + ",".join(ops)).encode()).digest()
  return "eval" if int.from_bytes(digest, "big") % EVAL_BUCKETS == 0 else "train"


@functools.lru_cache(maxsize=None)
def compositions(length: int, split: str) -> tuple[tuple[str, ...], ...]:
  """Every composition of `length` ops in `split`; an op never directly follows itself (two
  consecutive same ops are one op in disguise, e.g. reverse twice, drop 1 twice)."""
  out = []
  for ops in itertools.product(OPS, repeat=length):
    if all(a != b for a, b in zip(ops, ops[1:])) and split_of(ops) == split:
      out.append(ops)
  return tuple(out)


def _check_int(name: str, value: object, low: int, high: Optional[int] = None) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low or (
      high is not None and value > high):
    bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
    raise ValueError(f"{name}: expected an int {bound}, got {value!r}")


def _test_source(steps: Sequence[Step], inputs: Sequence[Sequence[int]]) -> str:
  asserts = "".join(f"    assert candidate({list(xs)!r}) == {run_steps(steps, xs)!r}\n"
                    for xs in inputs)
  return "def check(candidate):\n" + asserts


def make_program(steps: Sequence[Step], *, program_id: str = "macro",
                 extra_inputs: Sequence[Sequence[int]] = ()) -> MacroProgram:
  """The program of the given (op, k) steps; its test uses TEST_INPUTS + extra_inputs."""
  if not steps:
    raise ValueError("steps: expected at least one (op, k) step")
  blocks = tuple(block(op, k) for op, k in steps) + (return_block(),)
  doc = ", ".join(b.phrase for b in blocks[:-1])
  prompt = f'def {ENTRY_POINT}(xs):\n    """Steps: {doc}."""\n'
  test = _test_source(steps, tuple(TEST_INPUTS) + tuple(tuple(x) for x in extra_inputs))
  return MacroProgram(program_id, ENTRY_POINT, prompt, blocks, test)


def programs(seed: int, n: int, *, split: str = "train", min_ops: int = 2,
             max_ops: int = 3) -> list[MacroProgram]:
  """`n` programs of `split`, deterministic in all arguments (and programs(seed, n) is a prefix
  of programs(seed, n + 1)). Each: a length uniform in [min_ops, max_ops], a composition uniform
  among that length's compositions of the split, each parameter uniform in its op's range, and
  one extra random test input of 3-6 ints in [-9, 9]. Typically 11-18 lines (~14) at 2-3 ops."""
  _check_int("seed", seed, -(1 << 63))
  _check_int("n", n, 0)
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
  _check_int("min_ops", min_ops, 1, MAX_OPS)
  _check_int("max_ops", max_ops, 1, MAX_OPS)
  if min_ops > max_ops:
    raise ValueError(f"min_ops ({min_ops}) must be <= max_ops ({max_ops})")
  lengths = [m for m in range(min_ops, max_ops + 1) if compositions(m, split)]
  if not lengths:
    raise ValueError(f"split {split!r} has no composition of {min_ops}-{max_ops} ops")
  rng = random.Random(f"macro_code:{seed}:{split}:{min_ops}:{max_ops}")
  out = []
  for i in range(n):
    ops = rng.choice(compositions(rng.choice(lengths), split))
    steps = [(op, None if _OPS[op].params is None else rng.choice(_OPS[op].params))
             for op in ops]
    extra = [rng.randint(-9, 9) for _ in range(rng.randint(3, 6))]
    out.append(make_program(steps, program_id=f"macro/{split}/{seed}/{i}", extra_inputs=[extra]))
  return out
