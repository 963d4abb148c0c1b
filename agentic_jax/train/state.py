"""TrainState: everything a training step reads and writes, as one pytree.

A flax struct dataclass, so it passes through jit/scan/orbax unchanged. `rng` is the BASE
key as raw uint32 key data (what orbax stores without special handling); the step derives
its key as fold_in(rng, step), so the randomness of step s does not depend on how the run
got to s.

On a mesh (`state_shardings`) params, router biases and every optimizer moment take their
variable's PartitionSpec from the logical-axis rules; step, rng and counters are
replicated. `init_sharded_state` creates the state directly in that layout (it is never
materialised whole on one device).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from agentic_jax import models, parallel
from agentic_jax.models.config import ModelConfig
from agentic_jax.parallel.rules import DEFAULT_RULES, Rules

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 []: optimizer steps taken, skipped ones included
  params: Any  # float32 (cfg.param_dtype) parameters
  opt_state: Any  # optax state of the gradient transformation
  router_state: Any  # MoE router correction biases ({} for dense models); not trained
  rng: Array  # uint32 [2] base key data
  nan_skips: Array  # int32 []: updates skipped because loss or gradient was not finite


def step_key(state: TrainState) -> Array:
  """The key of the step about to run: fold_in(base, step)."""
  return jax.random.fold_in(state.rng, state.step)


def init_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """Fresh state: params from fold_in(key(seed), 0), step key base from fold_in(key(seed), 1).

  Jittable (and `jax.eval_shape`-able for an abstract state of any size)."""
  base = jax.random.PRNGKey(seed)
  variables = models.init_variables(model_cfg, jax.random.fold_in(base, 0))
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      router_state=variables.get("router_state", {}),
      rng=jax.random.fold_in(base, 1),
      nan_skips=jnp.zeros((), jnp.int32))


def abstract_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
  """ShapeDtypeStructs of `init_state` (no allocation): restore targets, FLOP counts, tests."""
  return jax.eval_shape(lambda: init_state(model_cfg, tx, seed))


def state_shardings(abstract: TrainState, model_cfg: ModelConfig, mesh: jax.sharding.Mesh,
                    rules: Rules = DEFAULT_RULES) -> TrainState:
  """NamedShardings for every leaf of `abstract` (a TrainState of arrays or shapes).

  Each params / router_state / optimizer-moment leaf gets the spec of the variable whose
  path it ends with; scalars (step, Adam count, nan_skips) and `rng` are replicated; a
  leaf that matches no variable raises (parallel.ShardingRuleError)."""
  specs = parallel.variable_specs(model_cfg, mesh, rules)
  return parallel.shardings_like_params(abstract, specs, mesh, replicate=("rng",))


def init_sharded_state(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
                       shardings: TrainState) -> TrainState:
  """`init_state`, jitted with `out_shardings`: every leaf is created in its final layout
  (the values equal the unsharded init: partitionable threefry)."""
  mesh = jax.tree.leaves(shardings)[0].mesh
  with jax.set_mesh(mesh):
    return jax.jit(lambda: init_state(model_cfg, tx, seed), out_shardings=shardings)()


def with_shardings(abstract: TrainState, shardings: TrainState) -> TrainState:
  """ShapeDtypeStructs carrying their sharding: an orbax restore target in the sharded layout."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
