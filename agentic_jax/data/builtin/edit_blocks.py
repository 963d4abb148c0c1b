"""Search/replace edit blocks (the daVinci-Dev / aider style used by the `edit` tool and by the
`edit` spans of contextually-native samples):

    <<<<<<< SEARCH
    exact lines currently in the file
    =======
    the lines that replace them
    >>>>>>> REPLACE
"""

from __future__ import annotations

SEARCH = "<<<<<<< SEARCH"
DIVIDER = "======="
REPLACE = ">>>>>>> REPLACE"


class EditError(ValueError):
  pass


def format_edit(search: str, replace: str) -> str:
  """The block text; `search`/`replace` are whole lines without the final newline."""
  if not search:
    raise EditError("the SEARCH part of an edit must not be empty")
  lines = [SEARCH, search, DIVIDER] + ([replace] if replace else []) + [REPLACE]
  return "\n".join(lines)


def parse_edit(body: str) -> tuple[str, str]:
  """(search, replace) of one block; raises EditError saying what is malformed."""
  lines = body.strip("\n").split("\n")
  if not lines or lines[0].rstrip() != SEARCH:
    raise EditError(f"an edit block must start with a line {SEARCH!r}")
  if lines[-1].rstrip() != REPLACE:
    raise EditError(f"an edit block must end with a line {REPLACE!r}")
  try:
    sep = next(i for i in range(1, len(lines) - 1) if lines[i].rstrip() == DIVIDER)
  except StopIteration:
    raise EditError(f"an edit block needs a line {DIVIDER!r} between SEARCH and REPLACE") from None
  search, replace = "\n".join(lines[1:sep]), "\n".join(lines[sep + 1:-1])
  if not search:
    raise EditError("the SEARCH part of an edit must not be empty")
  return search, replace


def apply_edit(text: str, search: str, replace: str, *, path: str = "the file") -> str:
  """Replaces the single occurrence of `search`; raises EditError when it is absent or ambiguous."""
  count = text.count(search)
  if count == 0:
    raise EditError(f"the SEARCH text was not found in {path}; it must match the file exactly, "
                    "including indentation")
  if count > 1:
    raise EditError(f"the SEARCH text occurs {count} times in {path}; add surrounding lines so "
                    "that it is unique")
  return text.replace(search, replace, 1)
