"""Mid-training entry point.

    python launch/train.py --config=configs/midtrain.py:tiny --workdir=/tmp/mt
    python launch/train.py --config=configs/midtrain.py:tiny --workdir=/tmp/mt --config.optim.lr=3e-4

Rerunning the same command resumes from the newest checkpoint in WORKDIR/checkpoints (and
loads the compiled step from the persistent compilation cache, see --compile_cache).
SIGTERM/SIGINT save a checkpoint and exit 0. Exit status 1 when training halted on a
non-finite loss (train.nan_policy="halt"), 2 for a bad command line (e.g. an unknown
config key).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config: path.py[:variant], e.g. configs/midtrain.py:tiny",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, plots).")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", os.path.join("~", ".cache", "agentic_jax", "xla"),
    "Persistent XLA compilation cache (compiles > 1 s; capped at 2 GB), so a rerun or resume "
    "skips recompiling the step; '' disables. JAX_COMPILATION_CACHE_DIR takes precedence.")
flags.mark_flags_as_required(["config", "workdir"])


def _parse(argv: list[str]) -> list[str]:
  """absl flag parsing, with a one-line error for a mistyped config key instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # ml_collections: override of a key that does not exist
    bad = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    sys.stderr.write(f"error: unknown config key among {bad}: {detail}\n")
    sys.exit(2)


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, jax) only on request
    logging.set_verbosity(logging.WARNING)
  import jax  # pylint: disable=import-outside-toplevel  after flag parsing (fast --help)
  jax.config.parse_flags_with_absl()
  if _COMPILE_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILE_CACHE.value))
    jax.config.update("jax_compilation_cache_max_size", 2 << 30)
  from agentic_jax.train import loop  # pylint: disable=import-outside-toplevel
  result = loop.run(_CONFIG.value, _WORKDIR.value)
  sys.exit(1 if result["status"] == "halted" else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
