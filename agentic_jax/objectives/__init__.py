"""Training objectives behind a name registry, so a config picks one by string.

    @register_loss("my_loss")
    def my_loss(logits, intermediates, batch, *, model_cfg, options, normalizer,
                batch_fraction=1.0) -> tuple[loss, aux]

Every loss takes the model's float32 logits [B, T, V], the sown "intermediates" tree of the
same forward pass, the batch dict, the ModelConfig, a plain dict of options (the config's
`objective` section minus `name`), the normaliser of the token-weighted terms (sum of
weights over the WHOLE optimizer batch, so gradient accumulation gives the exact big-batch
token mean), and the fraction of the optimizer batch this call sees (scales the per-batch
mean terms such as MoE balance losses). It returns a scalar to minimise and a dict of
arrays (sums and counts, so micro-batches can be added up).

RL policy losses (GRPO family, objectives/rl.py) have a registry of their own: to add a loss,
write the function and its options dataclass, call register_loss(LossSpec(...)) of
objectives/rl_registry.py (one registration carries its presets, default preset and batch mode).
"""

from __future__ import annotations

from typing import Callable

LossFn = Callable[..., tuple]

_REGISTRY: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
  """Decorator: makes `fn` available as `get_loss(name)`. Names are unique."""
  def wrap(fn: LossFn) -> LossFn:
    if name in _REGISTRY and _REGISTRY[name] is not fn:
      raise ValueError(f"loss {name!r} is already registered (by {_REGISTRY[name].__module__})")
    _REGISTRY[name] = fn
    return fn
  return wrap


def get_loss(name: str) -> LossFn:
  if name not in _REGISTRY:
    raise KeyError(f"unknown loss {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def registered() -> list[str]:
  return sorted(_REGISTRY)


# Built-in losses register themselves on import.
from agentic_jax.objectives import next_token  # noqa: E402,F401  pylint: disable=wrong-import-position
