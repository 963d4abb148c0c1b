"""Validates sample files: one line per problem as `FILE:LINE: field: reason`, then a summary.

  python launch/check_data.py --input=FILE [--input=FILE2 ...] [--format=native|adp]

Each file may be JSON Lines or a JSON array (as ADP publishes samples); see data/reader.py.
Exit status: 0 when every record of every file is valid; 1 when any record is bad, or a file cannot
be read, is not UTF-8, is a broken JSON array, or has no records (or none valid). Nothing the files
contain can make it print a traceback: unprintable characters are escaped.
"""

import sys

from absl import app, flags

from agentic_jax import cli
from agentic_jax.data import reader
from agentic_jax.data.schema import printable

INPUT = flags.DEFINE_multi_string("input", None, "JSONL / JSON-array file(s) to validate.",
                                  required=True)
FORMAT = flags.DEFINE_enum("format", "native", list(reader.FORMATS),
                           "native: agentic_jax schema; adp: Agent Data Protocol 1.0.0-1.5.0.")


def check(paths: list[str], fmt: str) -> int:
  """Prints each file's problems and summary (and a total for several files); the exit status."""
  failed = False
  total = reader.ReadReport("total")
  for path in paths:
    fatal = None
    try:
      _, report = reader.read_samples(path, fmt, on_bad_record="skip", max_problems=None)
    except reader.FileError as e:
      report, fatal = e.report, e
    except OSError as e:
      print(f"{printable(path)}: cannot read: {e.strerror or e}")
      failed = True
      continue
    for problem in report.problems:
      print(problem)
    if fatal is not None:
      print(fatal)
    print(report.summary())
    failed = failed or bool(report.skipped) or fatal is not None
    total.merge(report)
  if len(paths) > 1:
    print(total.summary())
  return 1 if failed else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # messages are made printable, but a non-UTF-8 terminal could still refuse "é": escape, not crash
  sys.stdout.reconfigure(errors="backslashreplace")
  return check(INPUT.value, FORMAT.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
