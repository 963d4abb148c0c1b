"""Functions of the Python standard library used for contextually-native samples, each with a
seeded generator of arguments (Python literals) that exercise its edge cases.

Only module-level functions that are written in Python and return a value are listed; a target
whose module or function is missing on this interpreter is skipped (and counted) by the caller.
"""

from __future__ import annotations

import random
from typing import Callable, NamedTuple

Args = tuple


class Target(NamedTuple):
  module: str
  func: str
  args: Callable[[random.Random], Args]


_WORDS = ["alpha", "beta", "gamma", "delta", "spam", "eggs", "ham", "Foo", "BAR", "x"]


def _text_block(rng: random.Random, indent: str) -> str:
  lines = []
  for _ in range(rng.randint(2, 4)):
    extra = rng.choice(["", "", "  ", "\t"])
    lines.append(indent + extra + " ".join(rng.sample(_WORDS, rng.randint(1, 3))))
  if rng.random() < 0.5:
    lines.insert(rng.randint(1, len(lines) - 1), rng.choice(["", "   "]))
  return "\n".join(lines) + rng.choice(["", "\n"])


def _unit(rng):
  return rng.choice([0.0, 0.1, 0.2, 0.25, 0.5, 0.75, 0.9, 1.0])


def _ints(rng, lo=0, hi=9, n=(0, 7)):
  return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _sorted_dups(rng):
  return sorted(_ints(rng, 0, 6, (0, 8)))


def _path(rng):
  parts = rng.sample(["usr", "lib", "a", "b.txt", "..", ".", "src", ".hidden", "x.tar.gz"],
                     rng.randint(1, 4))
  p = rng.choice(["", "/", "//"]) + "/".join(parts)
  return p + rng.choice(["", "", "/"])


def _query(rng):
  pairs = [f"{rng.choice(['a', 'b', 'key', 'q'])}={rng.choice(['1', '', 'x+y', '%20z'])}"
           for _ in range(rng.randint(0, 3))]
  return rng.choice(["&", ";", "&&"]).join(pairs) + rng.choice(["", "&", "=v"])


def _url(rng):
  return rng.choice(["http://a/b/c/d;p?q", "https://example.org/x/y.html", "http://h/", "/rel/p"])


def _year(rng):
  return rng.choice([1600, 1700, 1900, 2000, 2023, 2024, 2100, rng.randint(1, 2400)])


def _pattern(rng):
  return rng.choice(["*.py", "a?c", "[abc]*", "[!x]y", "*[0-9]", "[]]", "data*.csv", "x", "[a-"])


def _name(rng):
  return rng.choice(["a.py", "abc", "xy", "data1.csv", "]", "b.PY", "test.txt", "a-c", "x"])


TARGETS: tuple[Target, ...] = (
    Target("textwrap", "dedent", lambda r: (_text_block(r, r.choice(["  ", "    ", "\t", " "])),)),
    Target("textwrap", "indent", lambda r: (_text_block(r, ""), r.choice(["> ", "  ", "# "]))),
    Target("colorsys", "rgb_to_yiq", lambda r: (_unit(r), _unit(r), _unit(r))),
    Target("colorsys", "yiq_to_rgb", lambda r: (_unit(r), _unit(r) - 0.5, _unit(r) - 0.5)),
    Target("colorsys", "rgb_to_hls", lambda r: (_unit(r), _unit(r), _unit(r))),
    Target("colorsys", "hls_to_rgb", lambda r: (_unit(r), _unit(r), _unit(r))),
    Target("colorsys", "rgb_to_hsv", lambda r: (_unit(r), _unit(r), _unit(r))),
    Target("colorsys", "hsv_to_rgb", lambda r: (_unit(r), _unit(r), _unit(r))),
    Target("calendar", "isleap", lambda r: (_year(r),)),
    Target("calendar", "leapdays", lambda r: (_year(r), _year(r))),
    Target("calendar", "monthrange", lambda r: (_year(r), r.choice([1, 2, 3, 11, 12, 13]))),
    Target("calendar", "_monthlen", lambda r: (_year(r), r.choice([1, 2, 4, 12]))),
    Target("calendar", "_prevmonth", lambda r: (_year(r), r.choice([1, 2, 6, 12]))),
    Target("calendar", "_nextmonth", lambda r: (_year(r), r.choice([1, 2, 6, 12]))),
    Target("bisect", "bisect_left", lambda r: (_sorted_dups(r), r.randint(-1, 7))),
    Target("bisect", "bisect_right", lambda r: (_sorted_dups(r), r.randint(-1, 7))),
    Target("heapq", "nlargest", lambda r: (r.randint(0, 4), _ints(r))),
    Target("heapq", "nsmallest", lambda r: (r.randint(0, 4), _ints(r))),
    Target("statistics", "median", lambda r: (_ints(r, 0, 20, (0, 6)),)),
    Target("statistics", "median_low", lambda r: (_ints(r, 0, 20, (0, 6)),)),
    Target("statistics", "median_high", lambda r: (_ints(r, 0, 20, (0, 6)),)),
    Target("statistics", "mode", lambda r: (_ints(r, 0, 4, (0, 6)),)),
    Target("statistics", "multimode", lambda r: (_ints(r, 0, 4, (0, 6)),)),
    Target("statistics", "variance", lambda r: (_ints(r, 0, 10, (0, 5)),)),
    Target("statistics", "harmonic_mean", lambda r: (_ints(r, 0, 10, (0, 4)),)),
    Target("statistics", "quantiles", lambda r: (_ints(r, 0, 30, (0, 7)),)),
    Target("fnmatch", "fnmatchcase", lambda r: (_name(r), _pattern(r))),
    Target("fnmatch", "filter", lambda r: (r.sample(["a.py", "b.txt", "c.py", "abc", "x1"], 3),
                                            _pattern(r))),
    Target("fnmatch", "translate", lambda r: (_pattern(r),)),
    Target("posixpath", "join", lambda r: (_path(r), _path(r))),
    Target("posixpath", "split", lambda r: (_path(r),)),
    Target("posixpath", "basename", lambda r: (_path(r),)),
    Target("posixpath", "dirname", lambda r: (_path(r),)),
    Target("posixpath", "commonpath", lambda r: ([_path(r), _path(r)],)),
    Target("genericpath", "commonprefix", lambda r: (r.sample(["interview", "internet", "inter",
                                                              "", "in", "x"], r.randint(0, 3)),)),
    Target("string", "capwords", lambda r: (r.choice(["hello  world", " spam eggs ", "a-b c",
                                                      "ALL CAPS", ""]),)),
    Target("shlex", "quote", lambda r: (r.choice(["", "abc", "a b", "it's", "$HOME", "x;y"]),)),
    Target("urllib.parse", "unquote", lambda r: (r.choice(["a%20b", "%E2%82%AC", "100%", "%zz",
                                                           "plain", "%41%42"]),)),
    Target("urllib.parse", "parse_qsl", lambda r: (_query(r),)),
    Target("urllib.parse", "urljoin", lambda r: (_url(r), r.choice(["g", "../g", "//x/y", "?q",
                                                                     "#f", "", "/abs"]))),
    Target("urllib.parse", "_splitnetloc", lambda r: (r.choice(["//host/path", "//h:80?q",
                                                                "//a#f", "x//y/z"]),
                                                      r.choice([0, 1]))),
    Target("json.encoder", "py_encode_basestring_ascii",
           lambda r: (r.choice(["plain", 'q"uote', "tab\t", "caf\u00e9", "\U0001f600", ""]),)),
    Target("json.encoder", "py_encode_basestring", lambda r: (r.choice(["a\nb", 'x"', "\\"]),)),
    Target("base64", "b16decode", lambda r: (r.choice([b"4142", b"6a6b", b"ABC", b"0F"]),
                                             r.random() < 0.5)),
    Target("quopri", "quote", lambda r: (bytes([r.choice([9, 32, 61, 65, 200, 255])]),)),
    Target("quopri", "ishex", lambda r: (bytes([r.choice(b"09afAFgG=")]),)),
    Target("quopri", "unhex", lambda r: (r.choice([b"3D", b"ff", b"0a", b"A9", b"7"]),)),
    Target("quopri", "needsquoting", lambda r: (bytes([r.choice(b" \t=_aZ\x80")]),
                                                r.random() < 0.5, r.random() < 0.5)),
    Target("difflib", "get_close_matches",
           lambda r: (r.choice(["appel", "pyton", "wheel"]),
                      r.sample(["ape", "apple", "peach", "python", "while", "wheat"], 4),
                      r.randint(1, 3), r.choice([0.0, 0.6, 0.8]))),
    Target("difflib", "_format_range_unified", lambda r: (r.randint(0, 5), r.randint(0, 7))),
    Target("difflib", "_format_range_context", lambda r: (r.randint(0, 5), r.randint(0, 7))),
    Target("ipaddress", "_count_righthand_zero_bits",
           lambda r: (r.choice([0, 1, 8, 12, 1024, 255, 2 ** 31]), r.choice([8, 32]))),
    Target("operator", "countOf", lambda r: (_ints(r, 0, 3), r.randint(0, 3))),
    Target("operator", "indexOf", lambda r: (_ints(r, 0, 3), r.randint(0, 3))),
    Target("operator", "concat", lambda r: (r.choice([[1], "ab", (2,)]), r.choice([[3], "c", (4,)]))),
    Target("inspect", "cleandoc", lambda r: (r.choice(["  one\n    two\n  three", "Title\n\n  body",
                                                       "\n\n  x\n   y\n\n", "\tTab\n\tbody"]),)),
    Target("http.server", "_url_collapse_path",
           lambda r: (r.choice(["/a/b/../c", "/a/./b/", "/../x", "//a//b", "/a/b/..", "/a?x=/../"]),)),
    Target("email.utils", "unquote", lambda r: (r.choice(['"abc"', "<addr>", '"a\\"b"', "plain",
                                                          '"x']),)),
    Target("locale", "_strip_padding", lambda r: (r.choice(["  12", "12  ", " 3 ", "1234"]),
                                                  r.randint(0, 3))),
    Target("glob", "has_magic", lambda r: (r.choice(["a*b", "plain", "x?", "[ab]", b"a*", b"ab"]),)),
)
