"""Segmentation of expert trajectories into primitive actions (RA3, issue 13).

RA3 (../shared/docs/objectives-spec.md §3, ../shared/docs/ra3.md §1) decides at every action
boundary whether to keep the current latent rationale ("continue") or to write a new one. This
module only finds the boundaries: it cuts an expert trajectory into primitive actions a_0..a_T,
each with the context s_t before it.

    segments, report = segment(source, mode="lines" | "blocks" | "turns",
                               max_action_chars=None, drop_empty=True, blocks="statements")

Modes
  "lines"   code: one action per physical line (ra3.md §1: "a primitive action is one line of
            Python"). A line keeps its trailing "\\n".
  "blocks"  code: statement blocks, found with `ast` (the code must parse) and `tokenize`:
              blocks="statements": one action per *logical* line, so a statement spread over
                several lines (brackets, backslashes, a multi-line string) is one action, and a
                compound statement header (`def f(x):`, `for ...:`, `else:`) is an action of its
                own, separate from its body (a decorator line is a logical line too, so it
                is an action of its own).
              blocks="compound": one action per top-level statement, a compound statement
                together with its whole body (decorators included).
            Lines outside every statement (blank lines, comment-only lines) are actions of their
            own, one per line. Code that does not parse (SyntaxError, a null byte, a lone "\\r"
            line break, which `ast` and our "\\n" line split would count differently) falls back
            to "lines"; the report says so (`fell_back_to_lines`, `fallback_reason`).
  "turns"   agent trajectories (`schema.EnvSample`): an action is an assistant turn together with
            the tool_call turns right after it. Choice: a tool_call turn that follows no
            assistant turn (it comes right after a user/observation turn) is an action by
            itself: the agent still acted there. System, user and observation turns are context
            only. A trajectory with no assistant or tool_call turn has no action.

Spans and context
  Code: `start`/`end` are character offsets into the source (`source[start:end] == text`),
  `unit == "char"`, and `context == source[:start]` (a str).
  Turns: `start`/`end` are turn indices (`sample.turns[start:end]` are the action's turns, also in
  `turns`), `unit == "turn"`, `context` is the tuple of turns before the action, and `text` is
  the contents of the action's turns joined with "\\n".

Options
  max_action_chars  an action longer than this is cut at line boundaries into pieces of at most
                    this many characters (`piece`, `pieces`; `text_offset` = where the piece
                    starts in the whole action's text, so for turns the earlier pieces are
                    `full_text[:text_offset]`; for code the spans are exact per piece and the
                    context of a piece includes the earlier pieces). Choice: a single line longer
                    than the limit is never cut mid-line (that would cut a token or an
                    identifier); it stays whole and is counted in `report.overlong_lines`.
  drop_empty        whitespace-only actions (blank lines, an assistant turn with no text and no
                    tool call) are skipped and counted in `report.dropped_empty`; with
                    drop_empty=False they are kept as segments. Nothing is dropped silently.

Line breaks are "\\n" only ("\\r\\n" ends in "\\n", so Windows files work).
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
from typing import Optional, Union

from agentic_jax.data.schema import EnvSample, Turn

MODES = ("lines", "blocks", "turns")
BLOCK_KINDS = ("statements", "compound")


@dataclasses.dataclass(frozen=True)
class Segment:
  """One primitive action (or one piece of a long action)."""
  text: str
  start: int  # char offset (unit "char") or turn index (unit "turn"), inclusive
  end: int  # exclusive
  unit: str  # "char" | "turn"
  context: Union[str, tuple[Turn, ...]]  # everything before the action
  index: int = 0  # position among the returned segments
  piece: int = 0  # which piece of a split action
  pieces: int = 1  # how many pieces the action was split into
  text_offset: int = 0  # where this piece starts within the whole action's text
  turns: tuple[Turn, ...] = ()  # the action's turns (mode "turns")


@dataclasses.dataclass(frozen=True)
class SegmentReport:
  """What segmentation did, so no action disappears unnoticed."""
  mode: str
  num_segments: int = 0  # segments returned (pieces counted one by one)
  num_actions: int = 0  # actions before splitting long ones (dropped empties excluded)
  dropped_empty: int = 0  # whitespace-only actions skipped (drop_empty=True)
  kept_empty: int = 0  # whitespace-only actions kept (drop_empty=False)
  split_actions: int = 0  # actions cut into several pieces by max_action_chars
  overlong_lines: int = 0  # single lines longer than max_action_chars, kept whole
  fell_back_to_lines: bool = False  # mode "blocks" on code that does not parse
  fallback_reason: str = ""


def _line_spans(source: str) -> list[tuple[int, int]]:
  """(start, end) char offsets of each "\\n"-terminated line (the last may lack the "\\n")."""
  spans, pos = [], 0
  while pos < len(source):
    nl = source.find("\n", pos)
    end = len(source) if nl < 0 else nl + 1
    spans.append((pos, end))
    pos = end
  return spans


def _statement_line_groups(source: str, kind: str) -> list[tuple[int, int]]:
  """0-based inclusive (first, last) line ranges of the statements; raises on unparsable code."""
  if kind == "compound":
    tree = ast.parse(source)
    groups = []
    for node in tree.body:
      first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
      groups.append((first - 1, node.end_lineno - 1))
    return groups
  ast.parse(source)  # the code must parse; tokenize alone accepts some invalid code
  groups, first = [], None
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                    tokenize.ENCODING, tokenize.ENDMARKER):
      continue
    if tok.type == tokenize.NEWLINE:
      if first is not None:
        groups.append((first, tok.start[0] - 1))
      first = None
      continue
    if first is None:
      first = tok.start[0] - 1
  return groups


def _code_actions(source: str, mode: str, blocks: str) -> tuple[list[tuple[int, int]], str]:
  """Char spans of the actions of a code string, and the fallback reason ("" if none)."""
  lines = _line_spans(source)
  if mode == "lines" or not lines:
    return lines, ""
  if "\r" in source.replace("\r\n", ""):
    reason = "lone '\\r' line break"
    return lines, reason
  try:
    groups = _statement_line_groups(source, blocks)
  except (SyntaxError, ValueError, tokenize.TokenError, IndentationError) as e:
    return lines, f"{type(e).__name__}: {e}"
  owner: dict[int, tuple[int, int]] = {}
  for first, last in groups:
    for i in range(first, last + 1):
      owner.setdefault(i, (first, last))
  spans, i = [], 0
  while i < len(lines):
    first, last = owner.get(i, (i, i))
    last = min(max(last, i), len(lines) - 1)
    spans.append((lines[i][0], lines[last][1]))
    i = last + 1
  return spans, ""


def _split_text(text: str, max_chars: Optional[int]) -> tuple[list[tuple[int, int]], int]:
  """Pieces (offsets into text) of at most max_chars chars cut at line boundaries, and the number
  of single lines longer than max_chars (kept whole)."""
  if max_chars is None or len(text) <= max_chars:
    return [(0, len(text))], 0
  pieces, overlong = [], 0
  cur_start = cur_end = 0
  for start, end in _line_spans(text):
    if end - start > max_chars:
      overlong += 1
    if end - cur_start > max_chars and cur_end > cur_start:
      pieces.append((cur_start, cur_end))
      cur_start = start
    cur_end = end
  pieces.append((cur_start, cur_end))
  return pieces, overlong


def _turn_actions(sample: EnvSample) -> list[tuple[int, int]]:
  spans, i, turns = [], 0, sample.turns
  while i < len(turns):
    if turns[i].role in ("assistant", "tool_call"):
      j = i + 1
      while j < len(turns) and turns[j].role == "tool_call":
        j += 1
      spans.append((i, j))
      i = j
    else:
      i += 1
  return spans


def segment(source: Union[str, EnvSample], *, mode: str = "lines",
            max_action_chars: Optional[int] = None, drop_empty: bool = True,
            blocks: str = "statements") -> tuple[list[Segment], SegmentReport]:
  """Cuts `source` (code as a str for "lines"/"blocks", an EnvSample for "turns") into actions."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if blocks not in BLOCK_KINDS:
    raise ValueError(f"blocks must be one of {BLOCK_KINDS}, got {blocks!r}")
  if max_action_chars is not None and (isinstance(max_action_chars, bool)
                                       or not isinstance(max_action_chars, int)
                                       or max_action_chars < 1):
    raise ValueError(f"max_action_chars must be a positive int or None, got {max_action_chars!r}")
  if mode == "turns":
    if not isinstance(source, EnvSample):
      raise TypeError(f"mode 'turns' needs a schema.EnvSample, got {type(source).__name__}")
    actions = []
    for a, b in _turn_actions(source):
      text = "\n".join(t.content for t in source.turns[a:b])
      actions.append((a, b, text))
    fallback = ""
  else:
    if not isinstance(source, str):
      raise TypeError(f"mode {mode!r} needs code as a str, got {type(source).__name__}")
    spans, fallback = _code_actions(source, mode, blocks)
    actions = [(a, b, source[a:b]) for a, b in spans]

  segments: list[Segment] = []
  counts = dict(num_actions=0, dropped_empty=0, kept_empty=0, split_actions=0, overlong_lines=0)
  for a, b, text in actions:
    if not text.strip():
      if drop_empty:
        counts["dropped_empty"] += 1
        continue
      counts["kept_empty"] += 1
    counts["num_actions"] += 1
    pieces, overlong = _split_text(text, max_action_chars)
    counts["overlong_lines"] += overlong
    counts["split_actions"] += len(pieces) > 1
    for k, (p, q) in enumerate(pieces):
      if mode == "turns":
        seg = Segment(text=text[p:q], start=a, end=b, unit="turn", context=source.turns[:a],
                      turns=source.turns[a:b])
      else:
        seg = Segment(text=text[p:q], start=a + p, end=a + q, unit="char",
                      context=source[:a + p])
      segments.append(dataclasses.replace(seg, index=len(segments), piece=k, pieces=len(pieces),
                                          text_offset=p))
  report = SegmentReport(mode=mode, num_segments=len(segments), fell_back_to_lines=bool(fallback),
                         fallback_reason=fallback, **counts)
  return segments, report
