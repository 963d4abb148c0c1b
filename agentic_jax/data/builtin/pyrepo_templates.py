"""Templates of tiny Python repositories whose unit tests fail because of one planted bug.

Each template draws names and test values from `rng` and returns a `RepoSpec`: the correct
repository, the correct snippet (`good`) and the buggy one (`bad`) of the module, optionally a
plausible but wrong fix (`wrong`, replacing `bad`), and the explanations the scripted agent gives.
Expected values in the tests are computed here in Python, independently of the module's code.
"""

from __future__ import annotations

import dataclasses
import math
import random
from fractions import Fraction
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class RepoSpec:
  template: str
  module_path: str
  test_path: str
  func: str
  files: dict  # the correct repository {path: text}
  good: str
  bad: str
  wrong: Optional[str]
  diagnosis: str      # why `bad` is wrong and what the fix does
  wrong_thought: str  # the reasoning that leads to `wrong`

  def buggy_files(self) -> dict:
    return self.with_snippet(self.bad)

  def with_snippet(self, snippet: str) -> dict:
    text = self.files[self.module_path]
    if text.count(self.good) != 1:
      raise AssertionError(f"template {self.template}: the good snippet must occur exactly once")
    return {**self.files, self.module_path: text.replace(self.good, snippet, 1)}


def _spec(template, rng, mods, funcs, module, test, good, bad, wrong, diagnosis, wrong_thought):
  mod, f = rng.choice(mods), rng.choice(funcs)
  fill = lambda s: s.replace("@F", f).replace("@M", mod)  # noqa: E731
  cls = "".join(w.capitalize() for w in f.split("_"))
  files = {f"{mod}.py": fill(module), f"test_{mod}.py": fill(test).replace("@C", cls)}
  return RepoSpec(template, f"{mod}.py", f"test_{mod}.py", f, files, fill(good), fill(bad),
                  None if wrong is None else fill(wrong), fill(diagnosis), fill(wrong_thought))


def _mean(rng: random.Random) -> RepoSpec:
  single = rng.randint(2, 99)
  vals = [rng.randint(1, 50) for _ in range(rng.randint(3, 5))]
  while sum(vals) % len(vals) == 0:  # a non-integer mean, so integer division is caught
    vals[0] += 1
  module = '''"""Small statistics helpers."""


def @F(values):
    """Return the arithmetic mean of a non-empty sequence."""
    if not values:
        raise ValueError("@F() of an empty sequence")
    return sum(values) / len(values)


def spread(values):
    """Difference between the largest and the smallest value."""
    return max(values) - min(values)
'''
  test = f'''import unittest

from @M import @F, spread


class @CTest(unittest.TestCase):
    def test_single_value(self):
        self.assertEqual(@F([{single}]), {single})

    def test_several_values(self):
        self.assertAlmostEqual(@F({vals}), {float(Fraction(sum(vals), len(vals)))!r})

    def test_empty_raises(self):
        with self.assertRaises(ValueError):
            @F([])

    def test_spread(self):
        self.assertEqual(spread({vals}), {max(vals) - min(vals)})
'''
  return _spec("mean", rng, ["stats", "numtools", "metrics"], ["mean", "average", "arith_mean"],
               module, test, "    return sum(values) / len(values)",
               "    return sum(values) / (len(values) - 1)", "    return sum(values) // len(values)",
               "`@F` divides by `len(values) - 1` instead of `len(values)`, so a single value divides "
               "by zero and every other mean comes out too large. It must divide by the number of "
               "values.",
               "`@F` divides by `len(values) - 1`; the values are integers, so I'll divide by "
               "`len(values)` with integer division.")


def _clamp(rng):
  lo, hi = rng.randint(-20, 0), rng.randint(5, 40)
  inside, below, above = rng.randint(lo + 1, hi - 1), lo - rng.randint(1, 9), hi + rng.randint(1, 9)
  module = '''def @F(x, lo, hi):
    """Limit x to the closed interval [lo, hi]."""
    if lo > hi:
        raise ValueError("lo must not exceed hi")
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_inside(self):
        self.assertEqual(@F({inside}, {lo}, {hi}), {inside})

    def test_below(self):
        self.assertEqual(@F({below}, {lo}, {hi}), {lo})

    def test_above(self):
        self.assertEqual(@F({above}, {lo}, {hi}), {hi})

    def test_upper_bound_is_inclusive(self):
        self.assertEqual(@F({hi}, {lo}, {hi}), {hi})

    def test_reversed_bounds(self):
        with self.assertRaises(ValueError):
            @F(0, {hi}, {lo})
'''
  return _spec("clamp", rng, ["bounds", "mathutils", "limits"], ["clamp", "clip", "bound"],
               module, test, "    if x > hi:\n        return hi", "    if x > hi:\n        return lo",
               "    if x >= hi:\n        return lo",
               "When `x` is above the interval, `@F` returns `lo` instead of `hi`. Values above "
               "`hi` must be clamped to `hi`.",
               "The values above the interval are not handled; the comparison with `hi` should "
               "probably include the bound itself.")


def _chunks(rng):
  size, k = rng.randint(2, 4), rng.randint(2, 3)
  ragged, exact = list(range(1, size * k + 2)), list(range(10, 10 + size * k))
  split = lambda xs: [xs[i:i + size] for i in range(0, len(xs), size)]  # noqa: E731
  module = '''def @F(items, size):
    """Split items into consecutive lists of at most `size` elements."""
    if size <= 0:
        raise ValueError("size must be positive")
    return [items[i:i + size] for i in range(0, len(items), size)]
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_last_chunk_is_shorter(self):
        self.assertEqual(@F({ragged}, {size}), {split(ragged)})

    def test_exact_multiple(self):
        self.assertEqual(@F({exact}, {size}), {split(exact)})

    def test_empty(self):
        self.assertEqual(@F([], {size}), [])

    def test_size_must_be_positive(self):
        with self.assertRaises(ValueError):
            @F([1, 2], 0)
'''
  body = "    return [items[i:i + size] for i in range(0, {}, size)]"
  return _spec("chunks", rng, ["listutils", "batching", "seqtools"],
               ["chunks", "batched", "split_every"], module, test, body.format("len(items)"),
               body.format("len(items) - size"), body.format("len(items) - 1"),
               "The range in `@F` stops at `len(items) - size`, so the last chunk is dropped. The "
               "start indices must run up to `len(items)`.",
               "The last chunk goes missing, so the range bound is off by one; `len(items) - 1` "
               "should include it.")


def _vowels(rng):
  lower = rng.choice(["banana", "education", "queue", "audio", "sequoia"])
  mixed = rng.choice(["Apple", "ORANGE", "Umbrella", "IdEa", "Onion"])
  count = lambda s: sum(ch in "aeiou" for ch in s.lower())  # noqa: E731
  module = '''VOWELS = "aeiou"


def @F(text):
    """Count the vowels in text, ignoring case."""
    return sum(1 for ch in text.lower() if ch in VOWELS)
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_lowercase(self):
        self.assertEqual(@F({lower!r}), {count(lower)})

    def test_mixed_case(self):
        self.assertEqual(@F({mixed!r}), {count(mixed)})

    def test_no_vowels(self):
        self.assertEqual(@F("rhythm"), 0)
'''
  body = "    return sum(1 for ch in {} if ch in VOWELS)"
  return _spec("vowels", rng, ["textutils", "strings", "letters"],
               ["count_vowels", "vowel_count", "num_vowels"], module, test,
               body.format("text.lower()"), body.format("text"), body.format("text.upper()"),
               "`@F` compares the raw characters with the lower-case `VOWELS`, so upper-case vowels "
               "are not counted. It must lower-case the text first.",
               "Upper-case vowels are missed, so I'll normalise the case of the text with "
               "`upper()`.")


def _factorial(rng):
  m = rng.randint(4, 9)
  module = '''def @F(n):
    """Return n! for a non-negative integer n."""
    if n < 0:
        raise ValueError("n must be non-negative")
    result = 1
    for k in range(2, n + 1):
        result *= k
    return result
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_zero_and_one(self):
        self.assertEqual(@F(0), 1)
        self.assertEqual(@F(1), 1)

    def test_larger(self):
        self.assertEqual(@F({m}), {math.prod(range(1, m + 1))})

    def test_negative(self):
        with self.assertRaises(ValueError):
            @F(-1)
'''
  return _spec("factorial", rng, ["combinatorics", "mathutils", "counting"],
               ["factorial", "fact", "product_up_to"], module, test,
               "    for k in range(2, n + 1):", "    for k in range(2, n):", "    for k in range(1, n):",
               "The loop in `@F` uses `range(2, n)`, which stops before `n`, so the last factor is "
               "missing. It must run to `n + 1`.",
               "The product is missing a factor; the range should start at 1.")


def _palindrome(rng):
  phrase = rng.choice(["Was it a car or a cat I saw?", "No lemon, no melon", "Step on no pets!",
                       "A man, a plan, a canal: Panama", "Eva, can I see bees in a cave?"])
  word, other = rng.choice(["level", "racecar", "refer", "noon"]), rng.choice(["python", "hello"])
  module = '''def @F(text):
    """True if text reads the same backwards, ignoring case, spaces and punctuation."""
    cleaned = [ch.lower() for ch in text if ch.isalnum()]
    return cleaned == cleaned[::-1]
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_simple_word(self):
        self.assertTrue(@F({word!r}))

    def test_phrase(self):
        self.assertTrue(@F({phrase!r}))

    def test_not_a_palindrome(self):
        self.assertFalse(@F({other!r}))
'''
  return _spec("palindrome", rng, ["wordplay", "textcheck", "strings"],
               ["is_palindrome", "palindromic", "reads_same_backwards"], module, test,
               "    cleaned = [ch.lower() for ch in text if ch.isalnum()]",
               "    cleaned = [ch for ch in text if ch.isalnum()]",
               "    cleaned = [ch.lower() for ch in text]",
               "`@F` keeps the original case of the letters, so a phrase with capitals is rejected. "
               "The characters must be lower-cased before comparing.",
               "The phrase test fails, so the filtering must be the problem; I'll compare all the "
               "lower-cased characters.")


def _search(rng):
  items = sorted(rng.sample(range(1, 100), rng.randint(5, 9)))
  single, absent = rng.randint(1, 99), next(x for x in range(1, 101) if x not in items)
  module = '''def @F(items, target):
    """Index of target in the sorted list items, or -1 if it is absent."""
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_single_element(self):
        self.assertEqual(@F([{single}], {single}), 0)

    def test_first_and_last(self):
        items = {items}
        self.assertEqual(@F(items, {items[0]}), 0)
        self.assertEqual(@F(items, {items[-1]}), {len(items) - 1})

    def test_absent(self):
        self.assertEqual(@F({items}, {absent}), -1)
        self.assertEqual(@F([], {absent}), -1)
'''
  body = "    while lo {} hi:\n        mid = (lo + hi{}) // 2"
  return _spec("binary_search", rng, ["search", "sortedlist", "lookup"],
               ["binary_search", "find_sorted", "index_of"], module, test, body.format("<=", ""),
               body.format("<", ""), body.format("<", " + 1"),
               "The loop in `@F` runs `while lo < hi`, so it stops before checking the last "
               "remaining candidate (a one-element list is never searched). The condition must be "
               "`lo <= hi`.",
               "The search misses the element at the end, so the midpoint should round up.")


def _running_max(rng):
  pos = [rng.randint(1, 30) for _ in range(5)]
  neg = [-rng.randint(2, 30) for _ in range(4)]
  prefix_max = lambda xs: [max(xs[:i + 1]) for i in range(len(xs))]  # noqa: E731
  module = '''def @F(values):
    """Running maximum: element i is the largest of values[0], ..., values[i]."""
    result = []
    best = None
    for v in values:
        if best is None or v > best:
            best = v
        result.append(best)
    return result
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_positive(self):
        self.assertEqual(@F({pos}), {prefix_max(pos)})

    def test_negative(self):
        self.assertEqual(@F({neg}), {prefix_max(neg)})

    def test_empty(self):
        self.assertEqual(@F([]), [])
'''
  body = "    best = {}\n    for v in values:\n        if {}v > best:"
  return _spec("running_max", rng, ["series", "sequences", "running"],
               ["running_max", "cumulative_max", "prefix_max"], module, test,
               body.format("None", "best is None or "), body.format("0", ""), body.format("-1", ""),
               "`@F` starts from `best = 0`, so a list of negative numbers reports 0 as its maximum. "
               "It must start from no value and take the first element.",
               "Negative values are wrong because the start value 0 is too large; starting at -1 "
               "should cover them.")


def _word_counts(rng):
  words = rng.sample(["red", "green", "blue", "tea", "cat", "sun"], 3)
  text = f"{words[0].capitalize()}  {words[1]} {words[0]}\n{words[2]}  {words[1]}\n"
  simple = f"{words[2]} {words[2]} {words[0]}"
  counts = lambda s: {w: s.lower().split().count(w) for w in dict.fromkeys(s.lower().split())}  # noqa: E731
  module = '''def @F(text):
    """Map each lower-cased word of text to how often it occurs."""
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_single_spaces(self):
        self.assertEqual(@F({simple!r}), {counts(simple)})

    def test_irregular_whitespace(self):
        self.assertEqual(@F({text!r}), {counts(text)})
'''
  body = "    for word in text.lower(){}.split({}):"
  return _spec("word_counts", rng, ["wordstats", "textutils", "corpus"],
               ["word_counts", "count_words", "word_frequencies"], module, test,
               body.format("", ""), body.format("", '" "'), body.format(".strip()", '" "'),
               "`@F` splits on single spaces, so runs of spaces and newlines produce empty or "
               "glued words. `split()` without an argument splits on any whitespace.",
               "The extra entries come from whitespace at the ends of the text; stripping it "
               "before splitting should remove them.")


def _fahrenheit(rng):
  c = 5 * rng.randint(-8, 20)
  module = '''def @F(celsius):
    """Convert degrees Celsius to degrees Fahrenheit."""
    return celsius * 9 / 5 + 32
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_freezing(self):
        self.assertEqual(@F(0), 32)

    def test_boiling(self):
        self.assertEqual(@F(100), 212)

    def test_other(self):
        self.assertEqual(@F({c}), {9 * c // 5 + 32})
'''
  return _spec("fahrenheit", rng, ["units", "temperature", "convert"],
               ["to_fahrenheit", "celsius_to_fahrenheit", "c2f"], module, test,
               "    return celsius * 9 / 5 + 32", "    return celsius * 5 / 9 + 32",
               "    return (celsius + 32) * 9 / 5",
               "`@F` multiplies by 5/9, which is the Fahrenheit-to-Celsius factor. Celsius to "
               "Fahrenheit multiplies by 9/5 and then adds 32.",
               "The conversion factor looks inverted; I'll add 32 first and then scale by 9/5.")


def _rotate(rng):
  n, k = rng.randint(4, 7), rng.randint(1, 3)
  items = list(range(1, n + 1))
  module = '''def @F(items, k):
    """Rotate items left by k positions (a negative k rotates right)."""
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]
'''
  test = f'''import unittest

from @M import @F


class @CTest(unittest.TestCase):
    def test_left(self):
        self.assertEqual(@F({items}, {k}), {items[k:] + items[:k]})

    def test_right(self):
        self.assertEqual(@F({items}, -1), {items[-1:] + items[:-1]})

    def test_full_turn(self):
        self.assertEqual(@F({items}, {n}), {items})

    def test_empty(self):
        self.assertEqual(@F([], {k}), [])
'''
  return _spec("rotate", rng, ["rotation", "listutils", "cyclic"], ["rotate", "rotate_left", "shift"],
               module, test, "    if not items:\n        return []\n    k %= len(items)",
               "    k %= len(items)", None,
               "`@F` takes `k % len(items)` without checking for an empty list, which divides by "
               "zero. An empty list must be returned unchanged before the modulo.", "")


TEMPLATES: dict[str, Callable[[random.Random], RepoSpec]] = {
    "mean": _mean, "clamp": _clamp, "chunks": _chunks, "vowels": _vowels,
    "factorial": _factorial, "palindrome": _palindrome, "binary_search": _search,
    "running_max": _running_max, "word_counts": _word_counts, "fahrenheit": _fahrenheit,
    "rotate": _rotate,
}
