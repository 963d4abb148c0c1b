"""Embedded default data, generated deterministically from a seed (no download, no network).

    from agentic_jax.data import builtin
    samples = builtin.generate("calculator", seed=0, num_samples=200)   # list[schema.Sample]
    texts = builtin.corpus_texts(seed=0)                                 # tokenizer training text

Sources:
  calculator    environmentally-native: a scripted agent solves multi-step word problems with the
                `calc`/`answer` tools of `calculator.CalculatorEnv` (own expression parser); some
                episodes contain a failing call and its correction, some end with a wrong answer.
  calculator_basic  the same agent on one/two-step arithmetic ("What is 12 * 7 - 5?", short word
                problems; `calculator.make_tasks(..., level="basic")`), the RL recipe's tasks.
  pyrepo        environmentally-native: a scripted agent fixes tiny repositories with a failing
                unit test through `run_tests`/`cat`/`edit`/`submit` (`pyrepo.PyRepoEnv`); test
                output comes from real `python -m unittest` runs.
  stdlib_edits  contextually-native: a bug planted in a standard-library function, the issue
                written from the real differing outputs, the file snapshot, a summary, the fix.

The same seed gives identical samples, byte for byte, on the same interpreter. The environments
(`calculator.CalculatorEnv`, `pyrepo.PyRepoEnv`, protocol in `protocol`) are reused by the
RL environments of `agentic_jax.envs`.

A new built-in source kind is one registration; a training config then uses it as one entry of
`config.data.mix` (agentic_jax.train.input):

    @builtin.register_source("my_kind")
    def my_kind(seed: int, num_samples: int, stats: Optional[dict]) -> list[Sample]: ...
    config.data.mix.mine = input.mix_source("my_kind", num_samples=100)
"""

from __future__ import annotations

import random
from typing import Callable, Optional

from agentic_jax.data.builtin import agent, stdlib_edits
from agentic_jax.data.schema import ContextSample, Sample

SOURCES = ("calculator", "pyrepo", "stdlib_edits")  # the default mixture and tokenizer corpus
ALL_SOURCES = SOURCES + ("calculator_basic",)  # the kinds this package registers (below)

# kind -> generator(seed, num_samples, stats) -> list[Sample]; `stats` is a dict the generator
# may add fallback counts to, or None. Pure functions of (seed, num_samples).
Generator = Callable[[int, int, Optional[dict]], list]
_GENERATORS: dict[str, Generator] = {}


def register_source(name: str) -> Callable[[Generator], Generator]:
  """Decorator registering `generator(seed, num_samples, stats)` as built-in source kind `name`
  (what `generate(name, ...)` calls and `config.data.mix.NAME.kind` may name)."""
  if not isinstance(name, str) or not name or name in _GENERATORS:
    raise ValueError(f"register_source: expected a new non-empty name, got {name!r} "
                     f"(registered: {registered()})")

  def add(generator: Generator) -> Generator:
    _GENERATORS[name] = generator
    return generator
  return add


def unregister_source(name: str) -> None:
  """Removes a kind added with register_source (tests)."""
  del _GENERATORS[name]


def registered() -> tuple[str, ...]:
  """Every built-in source kind, in registration order."""
  return tuple(_GENERATORS)


register_source("calculator")(lambda seed, n, stats: [s for _, s in agent.calculator_episodes(seed, n)])
register_source("pyrepo")(lambda seed, n, stats: [s for _, s in agent.pyrepo_episodes(seed, n)])
register_source("stdlib_edits")(stdlib_edits.stdlib_edit_samples)
register_source("calculator_basic")(
    lambda seed, n, stats: [s for _, s in agent.calculator_episodes(seed, n, level="basic")])

# pure-Python stdlib modules whose source goes into the tokenizer corpus
CORPUS_MODULES = ("argparse", "ast", "bisect", "calendar", "colorsys", "dataclasses", "difflib",
                  "enum", "fnmatch", "fractions", "functools", "glob", "heapq", "inspect",
                  "ipaddress", "json.decoder", "json.encoder", "operator", "posixpath", "quopri",
                  "shlex", "statistics", "string", "textwrap", "tokenize", "typing",
                  "unittest.case", "urllib.parse")


def generate(name: str, *, seed: int, num_samples: int, stats: Optional[dict] = None) -> list[Sample]:
  """`num_samples` samples of source `name`; `stats` (if given) receives counts of fallbacks."""
  if name not in _GENERATORS:
    raise ValueError(f"unknown built-in source {name!r}; expected one of {list(registered())}")
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise TypeError(f"seed must be an int, got {type(seed).__name__}")
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
    raise ValueError(f"num_samples must be a non-negative int, got {num_samples!r}")
  return list(_GENERATORS[name](seed, num_samples, stats))


def sample_text(sample: Sample) -> str:
  """Plain text of a sample (no role markers): what a tokenizer should learn to segment."""
  if isinstance(sample, ContextSample):
    return "\n\n".join((f"{s.path}\n" if s.path else "") + s.text for s in sample.spans)
  return "\n\n".join(t.content for t in sample.turns)


def corpus_texts(seed: int, *, samples_per_source: int = 100, stdlib_files: int = 12,
                 max_file_chars: int = 40_000, sources: tuple[str, ...] = SOURCES) -> list[str]:
  """Documents for tokenizer training: the plain text of generated samples of `sources`, plus
  the source of `stdlib_files` standard-library modules (each cut at `max_file_chars`). Documents
  are multi-line; a trainer with a sentence-length limit should split them into lines."""
  texts = [sample_text(s) for name in sources
           for s in generate(name, seed=seed, num_samples=samples_per_source)]
  modules = random.Random(f"corpus:{seed}").sample(CORPUS_MODULES, min(stdlib_files,
                                                                       len(CORPUS_MODULES)))
  for module in modules:
    try:
      _, _, lines = stdlib_edits._read_module(module)
    except (ImportError, LookupError, OSError, TypeError):
      continue  # absent on this interpreter: the corpus is simply smaller
    texts.append("\n".join(lines)[:max_file_chars])
  return texts
