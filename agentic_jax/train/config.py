"""Helpers between ml_collections training configs and the library.

    config = load_config("configs/midtrain.py:tiny")   # same as --config=configs/midtrain.py:tiny
    model_cfg = model_config(config.model)             # validated ModelConfig

`model_section(preset, **overrides)` builds a config's `model` section: the preset name plus
EVERY ModelConfig field filled from the preset, so `--config.model.hidden_size=128` works for
any field and a misspelt field is rejected by the locked config. Optional int fields (None in
the preset) become typed placeholders, so they can still be overridden from the command line.

`validate(config)` checks every value of a training config (mid-training, RL or recipe, by
config.job) before anything is built or compiled, and raises ConfigError - one line that
starts with the key, e.g. "config.data.batch_size: expected an int >= 1, got 0". The run
loops call it first; launch/train.py prints it as `error: ...` and exits 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import typing
from typing import Any, Iterator, Optional, Sequence

import ml_collections
from ml_collections import config_dict

from agentic_jax.models import presets
from agentic_jax.models.config import ModelConfig

NAN_POLICIES = ("skip", "halt")
BALANCE_LOSSES = ("none", "sequence", "device")  # objectives/next_token.py
REQUIRED_KEYS = ("seed", "train.num_steps", "train.log_every", "checkpoint.every", "mesh.data",
                 "mesh.fsdp", "mesh.tensor", "mesh.expert")


def _optional_inner(tp: Any) -> Optional[type]:
  args = typing.get_args(tp)
  inner = [a for a in args if a is not type(None)]
  return inner[0] if len(args) == 2 and len(inner) == 1 else None


def model_section(preset: str, **overrides: Any) -> ml_collections.ConfigDict:
  """`model` config section: {"preset": name, <every ModelConfig field>: value}."""
  return _section(presets.get(preset, **overrides), preset)


# ModelConfig fields that say how to compute, not what the parameters are: a config keeps its
# own when its model comes from a checkpoint (model_section_from_checkpoint).
COMPUTE_FIELDS = ("moe_dispatch", "dropless_backend", "capacity_factor", "dropless_block_size",
                  "expert_axis", "ep_token_axes", "attention_impl", "attention_chunk_size",
                  "scan_layers", "remat_policy", "dtype", "param_dtype")


def model_section_from_checkpoint(path: str, like: Any) -> ml_collections.ConfigDict:
  """The `model` section of the model in checkpoint `path` (a converted Hugging Face checkpoint
  or a run's WORKDIR: its latest step's meta), preset "init_from", with the compute fields of
  section `like` (COMPUTE_FIELDS: the config's dispatch, dtypes, scan, remat). FileNotFoundError
  when `path` holds no checkpoint."""
  from agentic_jax.convert import checkpoint as ckpt  # pylint: disable=import-outside-toplevel
  cfg = ckpt.model_config_from_section(ckpt.read_meta(path)["config"]["model"])
  own = {k: getattr(model_config(like), k) for k in COMPUTE_FIELDS}
  return _section(cfg.replace(**own), "init_from")


def split_variant(arg: str) -> tuple[str, dict[str, str]]:
  """A config file's `get_config` argument "VARIANT[,key=value...]" (big_vision style) ->
  (variant, {key: value}); e.g. "tiny,init_from=/ckpt/dsv3"."""
  variant, *rest = arg.split(",")
  options = {}
  for item in rest:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"config argument {arg!r}: expected VARIANT[,key=value...], got {item!r}")
    options[key.strip()] = value.strip()
  return variant.strip(), options


def split_init_from(arg: str) -> tuple[str, str]:
  """(variant, init_from) of an RL config file's argument "VARIANT[,init_from=DIR]"; any other
  option is a ValueError."""
  variant, options = split_variant(arg)
  if set(options) - {"init_from"}:
    raise ValueError(f"config argument {arg!r}: the only option is init_from=DIR")
  return variant, options.get("init_from", "")


def _section(cfg: ModelConfig, preset: str) -> ml_collections.ConfigDict:
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


class ConfigError(ValueError):
  """An invalid config value: one line starting with the key (config.section.key: ...)."""


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


# ------------------------------------------------------------------ validation

# Prefixes of messages raised by the library's own checks that already start with a key
# relative to the config root (optim.py: "optim.lr ...", step.py: "moe.bias_update ...").
_SECTIONS = ("seed", "model", "data", "objective", "moe", "optim", "train", "checkpoint", "mesh",
             "rl", "tokenizer", "init_from", "recipe_data", "midtrain")


def _keyed(message: str, key: str, under: Optional[str] = None) -> str:
  """`message` as one line starting with a config key: kept if it already starts with one,
  "ModelConfig.f" -> "config.model.f", a path relative to the root (or to `under`) gets that
  prefix, else `key: message`."""
  message = " ".join(message.split())
  if message.startswith("config."):
    return message
  if under is not None:
    return f"{under}.{message}"
  if message.startswith("ModelConfig."):
    return "config.model." + message[len("ModelConfig."):]
  if message.split(".")[0].split(":")[0].split(" ")[0] in _SECTIONS:
    return "config." + message
  return f"{key}: {message}"


@contextlib.contextmanager
def config_errors(key: str, under: Optional[str] = None) -> Iterator[None]:
  """Turns the ValueError / KeyError / TypeError of a reused library check into a ConfigError
  naming `key` (unless its message already names one; `under`: the messages' paths are
  relative to that key)."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(_keyed(str(e.args[0]) if e.args else str(e), key, under)) from None


def _value(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(f"config.{dotted}: required key is missing")
    node = node[part]
  return node


def check_int(config: Any, dotted: str, low: int = 1, *, also: Sequence[int] = ()) -> int:
  """config.<dotted> as an int >= low (or one of `also`, e.g. -1), else ConfigError."""
  v = _value(config, dotted)
  if isinstance(v, bool) or not isinstance(v, int) or (v < low and v not in also):
    extra = "".join(f" or {a}" for a in also)
    raise ConfigError(f"config.{dotted}: expected an int >= {low}{extra}, got {v!r}")
  return v


def check_number(config: Any, dotted: str, low: float = -math.inf, high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
  """config.<dotted> as a finite number in the interval, else ConfigError ('(' = open end)."""
  v = _value(config, dotted)
  ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
  if ok:
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok:
    span = (f"{'(' if low_open or low == -math.inf else '['}{low:g}, "
            f"{high:g}{')' if high_open or high == math.inf else ']'}")
    raise ConfigError(f"config.{dotted}: expected a finite number in {span}, got {v!r}")
  return float(v)


def check_choice(config: Any, dotted: str, choices: Sequence[Any]) -> Any:
  v = _value(config, dotted)
  if v not in choices:
    raise ConfigError(f"config.{dotted}: expected one of {list(choices)}, got {v!r}")
  return v


def check_bool(config: Any, dotted: str) -> bool:
  v = _value(config, dotted)
  if not isinstance(v, bool):
    raise ConfigError(f"config.{dotted}: expected True or False, got {v!r}")
  return v


def validate_common(config: Any, *, num_devices: Optional[int] = None) -> ModelConfig:
  """The sections every job shares (seed, model, optim, train, checkpoint, mesh); returns the
  ModelConfig. `num_devices` (default: all devices) is what config.mesh must fill."""
  for dotted in REQUIRED_KEYS:
    _value(config, dotted)
  check_int(config, "seed", 0)
  with config_errors("config.model"):
    model_cfg = model_config(config.model)
  for key in ("train.num_steps", "train.log_every", "checkpoint.every", "checkpoint.keep",
              "optim.grad_accum"):
    check_int(config, key)
  check_int(config, "optim.warmup_steps", 0)
  check_choice(config, "train.nan_policy", NAN_POLICIES)
  if "step_timeout_s" in config.train:  # 0 = no watchdog timer (train/watchdog.py)
    check_number(config, "train.step_timeout_s", 0.0)
  for key in ("train.progress", "checkpoint.async_save"):
    check_bool(config, key)
  check_number(config, "optim.lr", 0.0, low_open=True)
  check_number(config, "optim.eps", 0.0, low_open=True)
  for key in ("optim.b1", "optim.b2"):
    check_number(config, key, 0.0, 1.0, high_open=True)
  for key in ("optim.weight_decay", "optim.clip_norm"):  # clip_norm 0 = no clipping
    check_number(config, key, 0.0)
  for key in ("optim.decay_fraction", "optim.min_lr_ratio"):
    check_number(config, key, 0.0, 1.0)
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  with config_errors("config.optim.schedule"):  # unknown schedule, warmup past the decay
    optim_lib.schedule_from_config(config)
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  if num_devices is None:
    import jax  # pylint: disable=import-outside-toplevel
    num_devices = jax.device_count()
  with config_errors("config.mesh"):
    parallel.mesh_sizes(config.mesh, num_devices, prefix="config.mesh")
  if "sharding_rules" in config:
    with config_errors("config.sharding_rules"):
      parallel.get_rules(config.sharding_rules)
  return model_cfg


def batch_shards(config: Any, num_devices: int) -> int:
  """How many ways config.mesh splits a batch's rows (a validated mesh)."""
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  sizes = parallel.mesh_sizes(config.mesh, num_devices, prefix="config.mesh")
  return parallel.batch_shards(sizes, parallel.get_rules(config.get("sharding_rules", "default")))


def _check_data(config: Any, num_devices: int, num_processes: int) -> None:
  from agentic_jax.data import pipeline, reader, render  # pylint: disable=import-outside-toplevel
  rows = check_int(config, "data.batch_size")
  check_int(config, "data.seq_len")
  check_int(config, "data.tokenizer.vocab_size")
  check_choice(config, "data.mask_policy", render.POLICIES)
  if "rationale_weight" in config.data:  # absent in configs written before it: 1.0 (input.py)
    check_number(config, "data.rationale_weight", 0.0)
  check_choice(config, "data.on_bad_record", reader.ON_BAD_RECORD)
  check_choice(config, "data.overlong", pipeline.OVERLONG_MODES)
  from agentic_jax.train import input as input_lib  # pylint: disable=import-outside-toplevel
  specs = input_lib.source_specs(config.data)  # config.data.mix: ConfigError naming the key
  if "synthetic" in config.data:
    check_bool(config, "data.synthetic")
  if config.data.stages:
    with config_errors("config.data.stages", under="config.data"):
      pipeline.parse_stages([s.to_dict() if hasattr(s, "to_dict") else dict(s)
                             for s in config.data.stages], [s.name for s in specs],
                            [s.weight for s in specs])
  if "pack_groups" in config.data:
    from agentic_jax.data import groups  # pylint: disable=import-outside-toplevel
    with config_errors("config.data.pack_groups"):
      groups.check_groups(rows, config.data.pack_groups)
  accum = int(config.optim.grad_accum)
  if rows % accum:
    raise ConfigError(f"config.data.batch_size: {rows} rows do not split into "
                      f"config.optim.grad_accum={accum} equal micro-batches")
  if rows % num_processes:
    raise ConfigError(f"config.data.batch_size: {rows} rows do not split over the "
                      f"{num_processes} processes")
  shards = batch_shards(config, num_devices)
  if rows % shards:
    raise ConfigError(f"config.data.batch_size: {rows} rows do not split over the {shards} "
                      "batch shards of config.mesh (data x fsdp x expert)")


def check_init_from(config: Any) -> str:
  """config.init_from: "" (or absent, configs written before it), or the WORKDIR of a previous
  run holding at least one checkpoint in WORKDIR/checkpoints (train/init_from.py); else
  ConfigError. Whether its parameters fit config.model is checked when they are read (orbax
  metadata, in train/init_from.load), not here."""
  value = config.get("init_from", "")
  if not isinstance(value, str):
    raise ConfigError(f"config.init_from: expected a path or '', got {value!r}")
  if not value:
    return value
  from agentic_jax import fs  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import init_from  # pylint: disable=import-outside-toplevel
  if not fs.isdir(value):
    raise ConfigError(f"config.init_from: {value!r} is not a directory (expected the WORKDIR "
                      "of a previous mid-training or RL run, or '')")
  if not fs.isdir(fs.join(value, "checkpoints")):
    raise ConfigError(f"config.init_from: {value!r} has no checkpoints/ directory (expected the "
                      "WORKDIR of a previous mid-training or RL run)")
  if not init_from.checkpoint_steps(value):
    raise ConfigError(f"config.init_from: {fs.join(value, 'checkpoints')!r} holds no "
                      "checkpoint")
  return value


def validate_midtrain(config: Any, *, num_devices: Optional[int] = None,
                      num_processes: Optional[int] = None) -> None:
  """Every key of a mid-training config (configs/midtrain.py); ConfigError naming the first bad
  one."""
  import jax  # pylint: disable=import-outside-toplevel
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  model_cfg = validate_common(config, num_devices=num_devices)
  check_init_from(config)
  _check_data(config, num_devices, num_processes)
  check_number(config, "train.peak_flops", 0.0, low_open=True)
  every = check_int(config, "train.eval_every", 0) if "eval_every" in config.train else 0
  if every or "eval_batches" in config.train:  # eval_every 0 = no evaluation
    check_int(config, "train.eval_batches", 1 if every else 0)
  from agentic_jax import objectives  # pylint: disable=import-outside-toplevel
  check_choice(config, "objective.name", objectives.registered())
  # the next_token loss's options (the section minus name is its options dict)
  if "balance_loss" in config.objective:
    check_choice(config, "objective.balance_loss", BALANCE_LOSSES)
  if "balance_groups" in config.objective:
    check_int(config, "objective.balance_groups")
  for key in ("objective.balance_alpha", "objective.z_loss", "objective.mtp_loss_weight",
              "moe.bias_rate"):
    if key.split(".")[1] in config[key.split(".")[0]]:
      check_number(config, key, 0.0)
  from agentic_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  check_choice(config, "moe.bias_update", step_lib.BIAS_UPDATES)
  check_number(config, "moe.target_ffn_per_token", 0.0, low_open=True)
  with config_errors("config.moe"):
    step_lib.make_bias_update(model_cfg, config.moe)


def validate(config: Any) -> None:
  """Every value of a mid-training config; ConfigError naming the first bad key. Other jobs'
  configs are checked by their own modules (agentic_jax.jobs.validate dispatches on config.job).
  Reads the device count, so call it after jax.distributed is initialised."""
  job = config.get("job", "midtrain")
  if job != "midtrain":
    raise ConfigError(f"config.job: {job!r} is not a mid-training job (train.loop runs 'midtrain'; "
                      "agentic_jax.jobs.validate checks every job)")
  validate_midtrain(config)
