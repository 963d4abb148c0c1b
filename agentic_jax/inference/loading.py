"""Loading a trained or converted model for inference: config, variables and its own tokenizer.

    info = checkpoint_info(path)               # cheap: reads JSON and directory listings only
    cfg, variables, tokenizer = load_model(path)

`path` is either a run's WORKDIR (launch/train.py) or a converted Hugging Face checkpoint
directory (agentic_jax.convert): both hold

    PATH/checkpoints/<step>/state      orbax PyTree with params (and router_state for MoE)
    PATH/checkpoints/<step>/meta       JSON whose "config" holds the run's config, with its
                                       `model` section (train/config.model_config builds it)
    PATH/tokenizer.model | tokenizer.json

so one code path serves both. The parameters are restored by train/init_from.load (a partial
restore of params / router_state only: a training checkpoint also holds the optimizer state,
which inference never reads), against the model the meta's own `model` section describes.

Every problem with the directory (missing, no checkpoint, no meta or model section, no
tokenizer; prompt ids past the model's vocabulary, `check_ids`) is a `LoadError` with a
one-line message, raised before any array is read or anything is compiled, so a command line
tool can report it and exit.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Optional, Sequence

from agentic_jax import fs
from agentic_jax.models import ModelConfig


class LoadError(ValueError):
  """A directory that does not hold a loadable model (the message is one line)."""


class CheckpointInfo(NamedTuple):
  path: str  # the directory, resolved
  step: int  # the checkpoint that will be loaded
  model_section: dict  # the meta's config.model, as saved (JSON)
  config: ModelConfig  # built from model_section


class LoadedModel(NamedTuple):
  """load_model's result; unpacks as `cfg, variables, tokenizer = load_model(path)`."""
  config: ModelConfig
  variables: dict  # {"params", "router_state"?}
  tokenizer: Any  # data.tokenizer.Tokenizer


def _tuples(value: Any) -> Any:
  """JSON lists back to tuples: ModelConfig's sequence fields are tuples, and the config must
  stay hashable (it is a static argument of every jitted decoder function)."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def checkpoint_info(path: str, step: Optional[int] = None) -> CheckpointInfo:
  """Which checkpoint of `path` (a WORKDIR or converted checkpoint directory) would be loaded
  and its model config, from metadata only. `step` None = the latest. LoadError otherwise."""
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import init_from  # pylint: disable=import-outside-toplevel
  if not path:
    raise LoadError("no directory given")
  try:
    fs.check_backend(path)
  except ValueError as e:
    raise LoadError(str(e)) from e
  resolved = fs.resolve(path)
  if not fs.isdir(resolved):
    raise LoadError(f"{path}: no such directory")
  steps = init_from.checkpoint_steps(resolved)
  if not steps:
    raise LoadError(f"{path}: no checkpoint in {fs.join(resolved, 'checkpoints')} (expected "
                    "checkpoints/<step>/{state, meta}, as training or agentic_jax.convert writes)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise LoadError(f"{path}: no checkpoint at step {step}; found steps {steps}")
  meta_file = fs.join(resolved, "checkpoints", str(step), "meta", "metadata")
  try:
    meta = json.loads(fs.read_text(meta_file))
  except (OSError, ValueError) as e:
    raise LoadError(f"{path}: cannot read the checkpoint's meta {meta_file}: {e}") from e
  section = (meta.get("config") or {}).get("model") if isinstance(meta, dict) else None
  if not isinstance(section, dict):
    raise LoadError(f"{path}: the checkpoint's meta ({meta_file}) has no config.model section")
  try:
    cfg = config_lib.model_config({k: _tuples(v) for k, v in section.items()})
  except (TypeError, ValueError) as e:
    raise LoadError(f"{path}: the checkpoint's config.model is not a valid model: {e}") from e
  return CheckpointInfo(resolved, int(step), section, cfg)


def load_tokenizer(path: str) -> Any:
  """The tokenizer kept beside the checkpoint (data.tokenizer.load_from_dir: tokenizer.model,
  else tokenizer.json through HFTokenizer).

  Its vocab_size is not compared with the model's: HFTokenizer appends the chat markers a
  released tokenizer lacks, which the model's embedding has rows for only after
  convert.vocab.grow_vocab, yet plain prompts never use them. What matters is the ids a prompt
  actually holds: `check_ids`."""
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  try:
    return tok_lib.load_from_dir(fs.resolve(path))
  except (FileNotFoundError, ValueError, ImportError) as e:
    raise LoadError(f"{path}: {' '.join(str(e).split())}") from e


def check_ids(cfg: ModelConfig, tokenizer: Any, ids: Sequence[int]) -> None:
  """LoadError when an id of `ids` has no embedding row in the model (JAX would clamp the
  lookup silently): typically a chat marker the tokenizer added to a released vocabulary."""
  bad = sorted({int(i) for i in ids if not 0 <= int(i) < cfg.vocab_size})
  if bad:
    raise LoadError(
        f"token ids {bad[:5]} ({tokenizer.decode(bad[:5])!r}) are outside the model's vocabulary "
        f"(vocab_size {cfg.vocab_size}): the tokenizer holds tokens the checkpoint has no "
        "embedding rows for (chat markers added to a released tokenizer need "
        "agentic_jax.convert.vocab.grow_vocab)")


def load_variables(info: CheckpointInfo) -> dict:
  """The params (and router_state) of the checkpoint `info` names, on the first device."""
  from agentic_jax.train import init_from  # pylint: disable=import-outside-toplevel
  from agentic_jax.train.config import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    # the meta's own section as "this config's": nothing differs, so nothing is reported
    loaded = init_from.load(info.path, info.config, info.model_section, info.step,
                            say=lambda _: None)
  except (ConfigError, FileNotFoundError) as e:
    raise LoadError(f"{info.path}: {' '.join(str(e).split())}") from e
  return loaded.variables


def load_model(path: str, step: Optional[int] = None) -> LoadedModel:
  """(ModelConfig, variables, tokenizer) of checkpoint `step` (default: the latest) in `path`
  (module doc). The metadata and the tokenizer are checked before any array is read."""
  info = checkpoint_info(path, step)
  tokenizer = load_tokenizer(info.path)
  return LoadedModel(info.config, load_variables(info), tokenizer)
