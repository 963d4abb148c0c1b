"""The RL environment registry: one `register_env(EnvSpec(...))` per environment.

To add an environment: one module in agentic_jax/envs/ with its options dataclass and a
register_env call (and its import in agentic_jax/envs/__init__.py):

    @dataclasses.dataclass(frozen=True)
    class EchoOptions(EnvOptions):
      max_steps: int = option(2, positive=True)           # bool, int, float or str, with a default
      mode: str = option("exact", choices=("exact", "upper"))

    def echo(options: EchoOptions):                        # -> (make_env, make_tasks)
      make_env = lambda: EchoEnv(max_steps=options.max_steps)
      def make_tasks(seed, n, split="train"):
        check_split(split); check_n(n)
        return [...]
      return make_env, make_tasks

    register_env(EnvSpec(name="echo", options=EchoOptions, factory=echo))

Everything else derives from the registry: config.rl.env's choices (`env_names()`), the typed
placeholders of config.rl.env_options (`config_option_types()`: every option of every
registered env; None = the chosen env's default) and the option checks. Options are checked in
one place, EnvOptions.__post_init__: the field's type (ints are accepted for floats and stored
as floats; bool is not an int here), `choices`, `positive`. A bad value raises OptionError (a
ValueError) whose message starts with `config.rl.env_options.KEY:` and fits on one line.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, Mapping, Optional, Sequence

PREFIX = "config.rl.env_options"
SPLITS = ("train", "eval")
_TYPES = (bool, int, float, str)

MakeEnv = Callable[[], Any]        # a fresh Environment (data/builtin/protocol.py) per call
MakeTasks = Callable[..., list]    # make_tasks(seed, n, split="train"|"eval") -> tasks
Factory = Callable[[Any], tuple[MakeEnv, MakeTasks]]


class OptionError(ValueError):
  """A bad environment option: `.key` names it; the message is `config.rl.env_options.KEY: ...`."""

  def __init__(self, key: str, detail: str):
    self.key, self.detail = key, detail
    super().__init__(f"{PREFIX}.{key}: {detail}")


def option(default: Any, *, choices: Optional[Sequence[Any]] = None, positive: bool = False,
           doc: str = "") -> Any:
  """A dataclass field with its allowed values (`choices`, `positive`: > 0) and a description."""
  return dataclasses.field(default=default,
                           metadata={"choices": choices, "positive": positive, "doc": doc})


@functools.lru_cache(maxsize=None)
def option_types(cls: type) -> dict[str, type]:
  """{field: type} of an options dataclass; TypeError on an unsupported type or a missing
  default."""
  hints = typing.get_type_hints(cls)
  out = {}
  for f in dataclasses.fields(cls):
    if hints[f.name] not in _TYPES:
      raise TypeError(f"{cls.__name__}.{f.name}: option type {hints[f.name]} is not supported; "
                      "use bool, int, float or str")
    if f.default is dataclasses.MISSING:
      raise TypeError(f"{cls.__name__}.{f.name}: every option needs a default")
    out[f.name] = hints[f.name]
  return out


@dataclasses.dataclass(frozen=True)
class EnvOptions:
  """Base of every environment's options dataclass: typed fields with defaults, checked here."""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      tp, v = option_types(type(self))[f.name], getattr(self, f.name)
      ok = isinstance(v, bool) if tp is bool else (
          not isinstance(v, bool) and isinstance(v, (int, float) if tp is float else tp))
      if not ok:
        raise OptionError(f.name, f"expected {tp.__name__}, got {type(v).__name__} {v!r}")
      if tp is float:
        object.__setattr__(self, f.name, float(v))
      choices = f.metadata.get("choices")
      if choices is not None and v not in choices:
        raise OptionError(f.name, f"expected one of {list(choices)}, got {v!r}")
      if f.metadata.get("positive") and not v > 0:
        raise OptionError(f.name, f"expected > 0, got {v!r}")

  def to_dict(self) -> dict[str, Any]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class EnvSpec:
  """One RL environment.
  name     config.rl.env's value.
  options  its EnvOptions dataclass (the defaults are the environment's documented defaults).
  factory  factory(options instance) -> (make_env, make_tasks): make_env() a fresh environment
           (reset(task) -> str, step(action) -> StepResult, system_prompt, tools, answer_tools),
           make_tasks(seed, n, split="train") the seeded task stream of split "train" | "eval".
           Work that can fail early (the sandbox check) belongs here, not in make_env."""
  name: str
  options: type
  factory: Factory


_REGISTRY: dict[str, EnvSpec] = {}


def register_env(spec: EnvSpec) -> EnvSpec:
  """Adds `spec`. Names are unique; an option shared with another environment must have the
  same type (config.rl.env_options is one section); the defaults must pass their own checks."""
  where = f"rl environment {spec.name!r}"
  if not isinstance(spec.name, str) or not spec.name:
    raise ValueError(f"rl environment name: expected a non-empty string, got {spec.name!r}")
  if spec.name in _REGISTRY and _REGISTRY[spec.name].factory is not spec.factory:
    raise ValueError(f"{where} is already registered (by "
                     f"{_REGISTRY[spec.name].factory.__module__})")
  if not (isinstance(spec.options, type) and issubclass(spec.options, EnvOptions)
          and dataclasses.is_dataclass(spec.options)):
    raise TypeError(f"{where}: options must be a frozen dataclass subclassing EnvOptions")
  types_ = option_types(spec.options)
  for other in _REGISTRY.values():
    for key, tp in option_types(other.options).items():
      if other.name != spec.name and key in types_ and types_[key] is not tp:
        raise TypeError(f"{where}: option {key!r} is {types_[key].__name__} but {tp.__name__} in "
                        f"environment {other.name!r} (config.rl.env_options is one section)")
  spec.options()  # the defaults pass their own checks
  _REGISTRY[spec.name] = spec
  return spec


def unregister_env(name: str) -> None:
  """Removes an environment (tests that register one of their own)."""
  _REGISTRY.pop(name, None)


def env_names() -> list[str]:
  """The registered environments (config.rl.env's choices)."""
  return sorted(_REGISTRY)


def get_spec(name: str) -> EnvSpec:
  if name not in _REGISTRY:
    raise ValueError(f"config.rl.env: unknown environment {name!r}; expected one of "
                     f"{env_names()}")
  return _REGISTRY[name]


def config_option_types() -> dict[str, type]:
  """{option: type} over every registered environment: config.rl.env_options's fields."""
  out: dict[str, type] = {}
  for name in env_names():
    out.update(option_types(_REGISTRY[name].options))
  return out


def make_options(name: str, values: Optional[Mapping[str, Any]] = None, **more: Any) -> EnvOptions:
  """The checked options instance of environment `name`; a None value means "not set" (a config
  placeholder: this env's default, or an option of another env). OptionError naming the key."""
  spec = get_spec(name)
  given = {k: v for k, v in {**(values or {}), **more}.items() if v is not None}
  own = sorted(option_types(spec.options))
  for key in sorted(given):
    if key not in own:
      raise OptionError(key, f"unknown option for env {name!r} (leave it None); its options: "
                             f"{own}")
  try:
    return spec.options(**given)
  except OptionError as e:
    raise OptionError(e.key, f"{e.detail} (env {name!r})") from None


def make_env_factory(name: str, options: Optional[EnvOptions] = None, /,
                     **values: Any) -> tuple[MakeEnv, MakeTasks]:
  """(make_env, make_tasks(seed, n, split="train"|"eval")) for config.rl.env = `name`, from a
  typed options instance or from option values (`make_options`: None = not set)."""
  spec = get_spec(name)
  if options is None:
    options = make_options(name, values)
  elif values or not isinstance(options, spec.options):
    raise TypeError(f"make_env_factory({name!r}): pass one {spec.options.__name__} or option "
                    "values, not both")
  return spec.factory(options)


def answer_tools(env: Any) -> Sequence[str]:
  """The tools of `env` that end a task (its `answer_tools`, else those named answer/submit)."""
  tools = getattr(env, "tools", {})
  return tuple(getattr(env, "answer_tools", None) or
               [t for t in ("answer", "submit") if t in tools])


def check_split(split: str) -> None:
  """For make_tasks: split is "train" or "eval"."""
  if split not in SPLITS:
    raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")


def check_n(n: int) -> None:
  """For make_tasks: n is a number of tasks >= 0."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ValueError(f"n: expected a number of tasks >= 0, got {n!r}")
