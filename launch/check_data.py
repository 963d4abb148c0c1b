"""Validates JSONL sample files: one line per problem as `FILE:LINE: field: reason`, then a summary.

  python launch/check_data.py --input=FILE [--input=FILE2 ...] [--format=native|adp]

Exit status: 0 when every record is valid, 1 when any record is bad or a file cannot be read.
"""

from absl import app, flags

from agentic_jax.data import reader

INPUT = flags.DEFINE_multi_string("input", None, "JSONL file(s) to validate.", required=True)
FORMAT = flags.DEFINE_enum("format", "native", list(reader.FORMATS),
                           "native: agentic_jax schema; adp: Agent Data Protocol 1.x.")


def check(paths: list[str], fmt: str) -> int:
  bad = 0
  total = reader.ReadReport("total")
  for path in paths:
    try:
      _, report = reader.read_samples(path, fmt, on_bad_record="skip", max_problems=None)
    except OSError as e:
      print(f"{path}: cannot read: {e.strerror or e}")
      bad += 1
      continue
    for problem in report.problems:
      print(problem)
    print(report.summary())
    bad += report.skipped
    total.merge(report)
  if len(paths) > 1:
    print(total.summary())
  return 1 if bad else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  return check(INPUT.value, FORMAT.value)


if __name__ == "__main__":
  app.run(main)
