"""Helpers between ml_collections training configs and the library.

    config = load_config("configs/midtrain.py:tiny")   # same as --config=configs/midtrain.py:tiny
    model_cfg = model_config(config.model)             # validated ModelConfig

`model_section(preset, **overrides)` builds a config's `model` section: the preset name plus
EVERY ModelConfig field filled from the preset, so `--config.model.hidden_size=128` works for
any field and a misspelt field is rejected by the locked config. Optional int fields (None in
the preset) become typed placeholders, so they can still be overridden from the command line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from agentic_jax.models import presets
from agentic_jax.models.config import ModelConfig

REQUIRED_KEYS = ("seed", "train.num_steps", "train.log_every", "checkpoint.every", "mesh.data",
                 "mesh.fsdp", "mesh.tensor", "mesh.expert")


def _optional_inner(tp: Any) -> Optional[type]:
  args = typing.get_args(tp)
  inner = [a for a in args if a is not type(None)]
  return inner[0] if len(args) == 2 and len(inner) == 1 else None


def model_section(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
  """`model` config section: {"preset": name, <every ModelConfig field>: value}."""
  cfg = presets.get(preset, **overrides)
  hints = typing.get_type_hints(ModelConfig)
  section = ml_collections.ConfigDict()
  section.preset = preset
  for f in dataclasses.fields(ModelConfig):
    value = getattr(cfg, f.name)
    inner = _optional_inner(hints[f.name])
    if value is None and inner is not None:
      value = config_dict.placeholder(inner)
    section[f.name] = value
  return section


def model_config(section: Any) -> ModelConfig:
  """The validated ModelConfig of a `model` section (raises ValueError naming the field)."""
  values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
  values.pop("preset", None)
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(values) - names
  if unknown:
    raise ValueError(f"config.model: unknown fields {sorted(unknown)}")
  return ModelConfig(**values)


def check_required(config: Any) -> None:
  """Raises KeyError naming the first missing key scripts outside the code rely on."""
  for dotted in REQUIRED_KEYS:
    node = config
    for part in dotted.split("."):
      if part not in node:
        raise KeyError(f"training config lacks required key config.{dotted}")
      node = node[part]


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`path.py[:arg]` -> the locked ConfigDict of path's get_config(arg), like config_flags."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} not found")
  module_spec = importlib.util.spec_from_file_location(
      f"_agentic_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return config
