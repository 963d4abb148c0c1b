"""Sharding over a device mesh, multi-host helpers and memory planning.

    from agentic_jax import parallel
    mesh = parallel.make_mesh(config.mesh)                 # data / fsdp / tensor / expert, Auto axes
    variables = parallel.shard_init(cfg, jax.random.key(0), mesh)
    logits = parallel.sharded_forward(cfg, mesh)(variables, tokens)

Modules: mesh (axes from config), rules (logical-axis rules tables, strict), sharding
(variable/batch/state shardings, sharded init, jit helpers), distributed (jax.distributed
setup, host-local -> global batches), memory (per-device memory plan from shapes only;
CLI launch/plan.py), golden (checked-in sharding tables), expert (expert parallelism: usage,
ScMoE overlap check and how to verify it in a profile).
This package imports `agentic_jax.models`, never the reverse.
"""

from agentic_jax.parallel.distributed import (
    DataShard, allgather_objects, any_process, barrier, data_shard, fetch, global_from_host,
    host_local_batch_to_global, initialize_distributed, process_share, replicated_array)
from agentic_jax.parallel.mesh import MESH_AXES, abstract_mesh, make_mesh, mesh_sizes, parse_mesh_spec
from agentic_jax.parallel.rules import (
    DEFAULT_RULES, REPLICATED_RULES, Rules, ShardingRuleError, activation_names, check_model_rules,
    check_rules, flax_rules, get_rules, resolve)
from agentic_jax.parallel.sharding import (
    addressable_bytes, axis_sizes, batch_sharding, batch_shards, batch_spec, jit_sharded,
    logits_spec, per_device_bytes, shard_batch, shard_init, shard_variables, sharded_forward,
    shardings_like_params, specs_like_params, variable_shardings, variable_specs)

__all__ = [
    "DataShard", "allgather_objects", "any_process", "barrier", "data_shard", "fetch",
    "global_from_host", "process_share", "replicated_array",
    "DEFAULT_RULES", "MESH_AXES", "REPLICATED_RULES", "Rules", "ShardingRuleError", "abstract_mesh",
    "activation_names", "addressable_bytes", "axis_sizes", "batch_sharding", "batch_shards",
    "batch_spec", "check_model_rules", "check_rules", "flax_rules", "get_rules",
    "host_local_batch_to_global", "initialize_distributed", "jit_sharded", "logits_spec",
    "make_mesh", "mesh_sizes", "parse_mesh_spec", "per_device_bytes", "resolve", "shard_batch",
    "shard_init", "shard_variables", "sharded_forward", "shardings_like_params", "specs_like_params",
    "variable_shardings", "variable_specs",
]
