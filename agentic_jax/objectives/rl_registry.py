"""The RL loss registry: one `register_loss(LossSpec(...))` per loss carries everything about it.

To add a loss: write the function and its options dataclass, call register_loss.

    @dataclasses.dataclass(frozen=True)
    class MyOptions(PolicyOptions):           # the shared knobs (below) + the loss's own
      agg: str = "token-mean"                 # a shared knob with this loss's default
      scale: float = option(1.0, check=lambda v: v > 0, expect="a number > 0")

    def my_loss(logp, old_logp, advantages, mask, *, options: MyOptions, **inputs):
      ...                                     # -> (loss, metrics incl. "pg_loss", "num_tokens")

    register_loss(LossSpec(name="my_loss", fn=my_loss, options=MyOptions,
                           presets={"paper": {}, "small": {"scale": 0.5}},  # cite sources
                           default_preset="paper", batch_mode="trajectory"))

Everything else derives from the registry: the config's loss choices (rl/config.py LOSSES),
the typed placeholders of config.rl.loss_options (the union of every loss's option fields and
types), the preset and batch mode an RL config starts from, and the checks (the options class).

Options dataclasses (frozen) subclass PolicyOptions, whose fields the RL step reads for every
loss (advantages, reward shaping, filtering, aggregation, KL, entropy). Field types are bool,
int, float, str or Optional[one of them]; `option(default, choices=..., check=..., expect=...)`
attaches the allowed values, checked with the types in __post_init__ (ints are accepted for
floats and stored as floats), and `validate()` holds checks across fields. A bad value raises
OptionError (a ValueError) whose .key is the option: the config check reports it as
config.rl.loss_options.<key>. An options instance is also a read-only Mapping (options["agg"]).

Resolution: the options class's defaults <- the preset's overrides <- explicit options
(`resolve_options`), one validated instance, static under jit.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from agentic_jax.objectives import rl_advantages as adv_lib

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm",
             "group-traj-turn-token-mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
BATCH_MODES = ("turn", "trajectory")  # rows of a policy update: one per policy turn | trajectory
_TYPES = (bool, int, float, str)
_TYPE_WORDS = {bool: "a bool", int: "an int", float: "a number", str: "a string"}


class OptionError(ValueError):
  """A bad loss option: .key names it, .detail says what is wrong ("must be ..., got ...")."""

  def __init__(self, key: str, detail: str, *, where: str = "rl loss options",
               message: Optional[str] = None):
    self.key, self.detail, self.where = key, detail, where
    self.message = message or f"option {key!r} {detail}"
    super().__init__(f"{where}: {self.message}")

  def at(self, where: str) -> "OptionError":
    return OptionError(self.key, self.detail, where=where, message=self.message)


def option(default: Any, *, choices: Union[Sequence[Any], Callable[[], Sequence[Any]], None] = None,
           check: Optional[Callable[[Any], bool]] = None, expect: str = "") -> Any:
  """A dataclass field with its allowed values: `choices` (or a function returning them, for
  registries that grow) and/or `check(value) -> bool` described by `expect` ("a number > 0").
  A subclass may redefine the field with a plain default: the checks are inherited."""
  return dataclasses.field(default=default,
                           metadata={"choices": choices, "check": check, "expect": expect})


@functools.lru_cache(maxsize=None)
def option_types(cls: type) -> dict[str, tuple[type, bool]]:
  """{field: (type, optional)} of an options dataclass; TypeError on an unsupported type."""
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    tp, optional = hints[f.name], False
    if typing.get_origin(tp) in (Union, getattr(types, "UnionType", Union)):
      args = [a for a in typing.get_args(tp) if a is not type(None)]
      if len(args) == 1 and len(typing.get_args(tp)) == 2:
        tp, optional = args[0], True
    if tp not in _TYPES:
      raise TypeError(f"{cls.__name__}.{f.name}: option type {hints[f.name]} is not supported; "
                      "use bool, int, float, str or Optional[one of them]")
    out[f.name] = (tp, optional)
  return out


def _checks(cls: type, name: str) -> Mapping[str, Any]:
  for klass in cls.__mro__:  # the nearest definition that carries checks
    f = klass.__dict__.get("__dataclass_fields__", {}).get(name)
    if f is not None and f.metadata:
      return f.metadata
  return {}


def option_choices(cls: type, name: str) -> Optional[tuple]:
  """The allowed values of option `name` of `cls` (None = any value of its type)."""
  choices = _checks(cls, name).get("choices")
  return tuple(choices() if callable(choices) else choices) if choices is not None else None


@dataclasses.dataclass(frozen=True)
class LossOptions(Mapping):
  """Base of every options dataclass: typed, checked on construction, a read-only Mapping."""

  def __post_init__(self):
    for name, (tp, optional) in option_types(type(self)).items():
      v = getattr(self, name)
      if v is None and optional:
        continue
      ok = isinstance(v, bool) if tp is bool else (
          not isinstance(v, bool) and isinstance(v, (int, float) if tp is float else tp))
      if not ok:
        raise OptionError(name, f"must be {_TYPE_WORDS[tp]}{' or None' if optional else ''}, "
                                f"got {v!r}")
      if tp is float and isinstance(v, int):
        object.__setattr__(self, name, float(v))
      meta = _checks(type(self), name)
      choices = option_choices(type(self), name)
      if choices is not None and v not in choices:
        raise OptionError(name, f"must be one of {choices}, got {v!r}")
      if meta.get("check") is not None and not meta["check"](getattr(self, name)):
        raise OptionError(name, f"must be {meta['expect']}{' or None' if optional else ''}, "
                                f"got {v!r}")
    self.validate()

  def validate(self) -> None:
    """Checks across fields (override, call super().validate()); raise OptionError."""

  @classmethod
  def create(cls, values: Mapping[str, Any], *, where: str = "rl loss options"):
    """An instance from a dict of (some) options; unknown keys and bad values raise
    OptionError with `where` in front."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
      raise OptionError(unknown[0], f"is not an option of {where}; known: {sorted(names)}",
                        where=where, message=f"unknown option(s) {unknown}; known: {sorted(names)}")
    try:
      return cls(**values)
    except OptionError as e:
      raise e.at(where) from None

  def to_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  def __getitem__(self, key: str) -> Any:
    if key not in self.__dataclass_fields__:  # pylint: disable=no-member
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self) -> Iterator[str]:
    return iter(f.name for f in dataclasses.fields(self))

  def __len__(self) -> int:
    return len(dataclasses.fields(self))


@dataclasses.dataclass(frozen=True)
class PolicyOptions(LossOptions):
  """The knobs the RL step applies around every policy loss (rl_objective.RLObjective); the
  defaults are the generic ones, a loss's options class overrides its own (rl_losses doc)."""
  # advantages (rl_advantages)
  advantage: str = option("grpo", choices=adv_lib.registered_advantages)  # grpo|dr_grpo|rloo|...
  group_by: str = option("sample", choices=adv_lib.GROUP_BY)  # population of the group statistics
  std_norm: bool = True  # grpo: divide by the group std
  std_ddof: int = option(1, choices=(0, 1))  # 1 = unbiased (verl), 0 = population std
  adv_eps: float = option(1e-6, check=lambda v: v >= 0, expect="a number >= 0")
  # reward shaping and filtering
  overlong: str = option("none", choices=("none", "shape", "filter"))  # soft penalty | mask rows
  overlong_max_len: int = option(20480, check=lambda v: v > 0, expect="an int > 0")  # L_max
  overlong_buffer: int = option(4096, check=lambda v: v > 0, expect="an int > 0")  # L_cache
  overlong_factor: float = option(1.0, check=lambda v: v >= 0, expect="a number >= 0")
  overlong_counts_tool_tokens: bool = False  # multi-turn: do observation tokens count in |y|?
  dynamic_sampling: bool = False  # drop groups whose rewards are all equal
  # aggregation (rl_losses.aggregation_weights)
  agg: str = option("token-mean", choices=AGG_MODES)
  # L_const of seq-mean-token-sum-norm; None = padded length
  norm_constant: Optional[float] = option(None, check=lambda v: v > 0, expect="a number > 0")
  norm_over_seqs: bool = True  # seq-mean-token-sum-norm: also divide by the trajectories
  agg_scope: str = option("rollout", choices=("rollout", "minibatch"))  # population of the weights
  minibatch_split: str = option("rows", choices=("rows", "groups"))  # what a minibatch keeps whole
  # KL to the reference and entropy bonus
  kl: str = option("none", choices=("none",) + KL_ESTIMATORS)
  kl_coef: float = option(0.0, check=lambda v: v >= 0, expect="a number >= 0")
  kl_where: str = option("loss", choices=("loss", "reward"))
  entropy_coef: float = 0.0

  def validate(self) -> None:
    super().validate()
    if self.overlong_buffer > self.overlong_max_len:
      raise OptionError("overlong_buffer", f"must be an int in (0, overlong_max_len="
                                           f"{self.overlong_max_len}], got {self.overlong_buffer!r}")
    if self.kl == "none" and self.kl_coef != 0:
      raise OptionError("kl_coef", f"{self.kl_coef} needs option 'kl' in {KL_ESTIMATORS}, "
                                   "got 'none'", message=f"option 'kl_coef'={self.kl_coef} needs 'kl' in {KL_ESTIMATORS}, "
                                "got 'none'")


# --- the registry --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Everything about one RL loss.
  fn(logp, old_logp, advantages, mask, *, options, ref_logp=None, entropy=None, sample_mask=None,
     group_id=None, traj_id=None, token_weights=None) -> (loss, metrics): rows [N, L] as in
     objectives/rl.py; metrics need "pg_loss" and "num_tokens" (masked tokens), may add "kl_ref",
     "entropy", "clipfrac", "approx_kl", "ratio_mean" (the RL step logs 0 for absent ones).
  options         its PolicyOptions subclass (defaults = the loss's documented defaults).
  presets         name -> option overrides (cite the source of each value beside it).
  default_preset  the preset an RL config starts from.
  batch_mode      "turn" (one row per policy turn) or "trajectory" (one per transcript)."""
  name: str
  fn: Callable[..., tuple]
  options: type
  presets: Mapping[str, Mapping[str, Any]]
  default_preset: str
  batch_mode: str


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(spec: LossSpec) -> LossSpec:
  """Adds `spec`; every preset is resolved once here, so a bad one fails at import. Names are
  unique; an option shared with another loss must have the same type (one config section)."""
  where = f"rl loss {spec.name!r}"
  if spec.name in _REGISTRY and _REGISTRY[spec.name].fn is not spec.fn:
    raise ValueError(f"{where} is already registered (by {_REGISTRY[spec.name].fn.__module__})")
  if not (isinstance(spec.options, type) and issubclass(spec.options, PolicyOptions)
          and dataclasses.is_dataclass(spec.options)):
    raise TypeError(f"{where}: options must be a frozen dataclass subclassing PolicyOptions")
  if spec.batch_mode not in BATCH_MODES:
    raise ValueError(f"{where}: batch_mode must be one of {BATCH_MODES}, got {spec.batch_mode!r}")
  if spec.default_preset not in spec.presets:
    raise ValueError(f"{where}: default_preset {spec.default_preset!r} is not one of its presets "
                     f"{sorted(spec.presets)}")
  types_ = option_types(spec.options)
  for other in _REGISTRY.values():
    if other.name == spec.name:
      continue
    for key, tp in option_types(other.options).items():
      if key in types_ and types_[key][0] != tp[0]:
        raise TypeError(f"{where}: option {key!r} is {types_[key][0].__name__} but "
                        f"{tp[0].__name__} in loss {other.name!r}")
  spec.options.create({})  # the defaults pass their own checks
  for preset, overrides in spec.presets.items():
    spec.options.create(dict(overrides), where=f"{where} preset {preset!r}")
  _REGISTRY[spec.name] = spec
  return spec


def unregister_loss(name: str) -> None:
  """Removes a loss (tests that register one of their own)."""
  _REGISTRY.pop(name, None)


def registered_losses() -> list[str]:
  return sorted(_REGISTRY)


def get_spec(name: str) -> LossSpec:
  if name not in _REGISTRY:
    raise ValueError(f"unknown rl loss {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def config_option_types() -> dict[str, tuple[type, bool]]:
  """{option: (type, optional)} over every registered loss: config.rl.loss_options's fields."""
  out: dict[str, tuple[type, bool]] = {}
  for name in sorted(_REGISTRY):
    for key, (tp, optional) in option_types(_REGISTRY[name].options).items():
      out[key] = (tp, optional or out.get(key, (tp, False))[1])
  return out


def resolve_options(name: str, preset: Optional[str] = None, **options: Any) -> PolicyOptions:
  """The validated options instance of loss `name` under `preset` (None = none) with `options`
  on top; ValueError (OptionError for an option) naming what is wrong."""
  spec = get_spec(name)
  if preset is not None and preset not in spec.presets:
    raise ValueError(f"rl loss {name!r}: unknown preset {preset!r}; known: {sorted(spec.presets)}")
  where = f"rl loss {name!r}" + (f" preset {preset!r}" if preset else "")
  return spec.options.create({**(spec.presets[preset] if preset else {}), **options}, where=where)


class _PresetsView(Mapping):
  """PRESETS[loss][preset] -> overrides, read from the registry (no table of its own)."""

  def __getitem__(self, name: str) -> Mapping[str, Mapping[str, Any]]:
    if name not in _REGISTRY:
      raise KeyError(name)
    return _REGISTRY[name].presets

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(_REGISTRY))

  def __len__(self) -> int:
    return len(_REGISTRY)


PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = _PresetsView()
