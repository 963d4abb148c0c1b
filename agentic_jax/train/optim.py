"""AdamW with global-norm clipping, and the learning-rate schedules.

The gradient transformation is optax's AdamW without its learning-rate factor:
    clip_by_global_norm(clip_norm) -> scale_by_adam(b1, b2, eps)
    -> add_decayed_weights(weight_decay, mask=matrices)
and the step multiplies the result by -lr(step) itself (`apply_lr`). That is exactly
optax.adamw(lr_schedule, ...) (which chains the same three plus scale_by_learning_rate),
except that the schedule reads TrainState.step instead of the optimizer's own update count:
a NaN-skipped update leaves the Adam moments and count untouched (bias correction stays
right) while the schedule, like the data, moves on with the step.

Schedules (lr(step) for step = 0, 1, ..., num_steps - 1; peak = optim.lr,
floor = optim.lr * optim.min_lr_ratio, w = warmup_steps):
  warmup (both): lr(s) = peak * (s + 1) / w for s < w (the first update is not wasted at 0).
  "wsd":    warmup, then constant peak, then the last D = round(decay_fraction * num_steps)
            steps decay linearly to the floor: lr(s) = peak - (peak - floor) * (s - s0 + 1) / D
            for s >= s0 = num_steps - D, so the last step runs at the floor.
  "cosine": warmup, then floor + (peak - floor) * (1 + cos(pi * p)) / 2 with
            p = (s - w + 1) / (num_steps - w), reaching the floor at the last step.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Schedule = Callable[[Array], Array]

# Leaves that weight decay applies to: matrices (dense kernels, embeddings, expert and
# SwiGLU projections). Norm weights and biases are excluded. Chosen by name, not ndim,
# because scanned layers give 1-D norm weights a leading layer axis.
DECAY_LEAF_NAMES = ("kernel", "embedding", "gate_proj", "up_proj", "down_proj")


def make_schedule(name: str, *, lr: float, num_steps: int, warmup_steps: int,
                  decay_fraction: float = 0.1, min_lr_ratio: float = 0.0) -> Schedule:
  if num_steps <= 0:
    raise ValueError(f"train.num_steps must be positive, got {num_steps}")
  if not 0 <= warmup_steps <= num_steps:
    raise ValueError(f"optim.warmup_steps must be in [0, num_steps={num_steps}], got {warmup_steps}")
  if not 0.0 <= min_lr_ratio <= 1.0:
    raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
  peak = float(lr)
  floor = peak * float(min_lr_ratio)
  w = int(warmup_steps)

  def warm(s):
    return peak * (s + 1.0) / max(w, 1)

  if name == "wsd":
    if not 0.0 <= decay_fraction <= 1.0:
      raise ValueError(f"optim.decay_fraction must be in [0, 1], got {decay_fraction}")
    d = int(round(decay_fraction * num_steps))
    s0 = num_steps - d
    if s0 < w:
      raise ValueError(f"optim: warmup ({w} steps) overlaps the decay ({d} steps of {num_steps})")

    def wsd(step):
      s = jnp.asarray(step, jnp.float32)
      decay = peak - (peak - floor) * (s - s0 + 1.0) / max(d, 1)
      out = jnp.where(s < w, warm(s), jnp.where(s >= s0, decay, peak))
      return out.astype(jnp.float32)
    return wsd

  if name == "cosine":
    span = max(num_steps - w, 1)

    def cosine(step):
      s = jnp.asarray(step, jnp.float32)
      p = jnp.clip((s - w + 1.0) / span, 0.0, 1.0)
      cos = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
      return jnp.where(s < w, warm(s), cos).astype(jnp.float32)
    return cosine

  raise ValueError(f"optim.schedule must be 'wsd' or 'cosine', got {name!r}")


def decay_mask(params: Any) -> Any:
  """True for leaves named in DECAY_LEAF_NAMES."""
  def is_matrix(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return name in DECAY_LEAF_NAMES
  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(optim: Mapping) -> optax.GradientTransformation:
  """The lr-free AdamW chain (see module docstring). `optim` is the config's optim section."""
  parts = []
  if optim["clip_norm"] and optim["clip_norm"] > 0:
    parts.append(optax.clip_by_global_norm(optim["clip_norm"]))
  parts.append(optax.scale_by_adam(b1=optim["b1"], b2=optim["b2"], eps=optim["eps"]))
  if optim["weight_decay"]:
    parts.append(optax.add_decayed_weights(optim["weight_decay"], mask=decay_mask))
  return optax.chain(*parts)


def apply_lr(updates: Any, lr: Array) -> Any:
  """-lr * updates (the descent direction), in each update's dtype."""
  return jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)


def schedule_from_config(config: Any) -> Schedule:
  o = config.optim
  return make_schedule(o.schedule, lr=o.lr, num_steps=config.train.num_steps,
                       warmup_steps=o.warmup_steps, decay_fraction=o.decay_fraction,
                       min_lr_ratio=o.min_lr_ratio)
