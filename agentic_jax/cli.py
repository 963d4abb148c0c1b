"""What every `launch/` script shares: user errors as one line on stderr, never a traceback.

    from absl import app
    from agentic_jax import cli

    def main(argv):
      if bad: cli.fail("--mesh=...: axes are ...")     # "error: ..." and exit 2
    app.run(main, flags_parser=cli.parse_flags)

`parse_flags` is absl's flag parsing with the errors a user makes turned into one line and exit
status 2: an unknown or malformed flag, a `--config=FILE:VARIANT` whose `get_config` raises (an
unknown variant), and a `--config.KEY=VALUE` override of a key that does not exist (ml_collections
raises KeyError / AttributeError from inside absl there, with a did-you-mean hint we keep).
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn, Sequence

from absl import flags


def one_line(message: object) -> str:
  """`message` with every run of whitespace (line breaks included) squeezed to one space."""
  return " ".join(str(message).split())


def fail(message: object, code: int = 2) -> NoReturn:
  """Exit `code` after `error: MESSAGE` on one line of stderr."""
  sys.stderr.write(f"error: {one_line(message)}\n")
  sys.exit(code)


def last_line(text: object) -> str:
  """The last non-empty line without its exception class: the message of the traceback that
  ml_collections embeds in its config-file errors."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  last = lines[-1] if lines else str(text)
  return re.sub(r"^\w+(Error|Exception): ", "", last)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's `flags.FLAGS(argv)` (pass as `app.run(main, flags_parser=cli.parse_flags)`), with a
  one-line error and exit 2 for a bad flag, a failing config file or an unknown config key."""
  try:
    return flags.FLAGS(list(argv))
  except (flags.Error, ValueError, TypeError) as e:
    if "Error whilst parsing config file" in str(e):  # get_config raised (e.g. unknown variant)
      fail(last_line(e))
    if not isinstance(e, flags.Error):
      raise  # not a user error: a bug, shown with its traceback
    fail(f"{e} (--helpfull lists the flags)")
  except (AttributeError, KeyError) as e:  # ml_collections: override of a key that does not exist
    bad = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
    fail(f"unknown config key among {bad}: {detail}")
