"""Expert parallelism: how to turn it on, what overlaps with what, and how to check it.

Enable
------
    cfg = models.presets.get("longcat_flash", moe_dispatch="expert_parallel", capacity_factor=2.0)
    mesh = make_mesh({"fsdp": -1, "expert": 16})          # experts split 16 ways
    params live split over `expert` by the default rules ("expert" -> expert axis), and the
    batch rows over data x fsdp x expert (rules "activation_batch"), so every expert-axis
    device brings its own tokens. The exchange itself is agentic_jax/models/
    moe_expert_parallel.py: a capacity-based all-to-all inside jax.shard_map; zero-expert
    slots never leave their device. `capacity_factor >= expert size` never drops a slot;
    smaller values drop the last slots per (source, destination) pair, counted in the sown
    `dropped_slots`.

ScMoE overlap
-------------
In the LongCat ScMoE layer (models/blocks.py)

    x1 = norm_post0(h0 + MLA_0(h0));  m = MoE(x1)                 # dispatch, experts, combine
    h2 = h1 + FFN_0(x1);  h3 = h2 + MLA_1(norm(h2));  h4 = h3 + FFN_1(norm(h3)) + m

the MoE branch reads only x1 and is consumed only by the final add, so its all-to-alls have
no data dependence on FFN_0 and MLA_1 and the scheduler may run them concurrently.
`moe_exchange_dependencies` checks this from the jaxpr (tested on CPU, where collectives are
synchronous so the overlap itself cannot be observed).

Verify the overlap in a profile (TPU or GPU)
--------------------------------------------
1. Run a few train steps under the profiler, after a warm-up step:
       jax.profiler.start_trace("/tmp/trace"); <3 steps>; jax.block_until_ready(...);
       jax.profiler.stop_trace()
   and open it in XProf / TensorBoard's profile plugin (or Perfetto, `create_perfetto_link=True`).
2. On the device timeline of one step, find a ScMoE layer: its ops carry the op_name
   metadata `.../layers/mlp/...` (scanned) or `.../layers_3/mlp/...` (unscanned) for the MoE
   branch, `.../mlps_0/...` for FFN_0 and `.../self_attn_1/...` for MLA_1.
3. Overlap means the all-to-all of `.../mlp/shard_map` runs asynchronously: an
   all-to-all start/done pair (TPU: `all-to-all` ops on the async/ICI track; GPU: the NCCL
   all-to-all kernel on its own stream) whose span contains the fusions of `mlps_0` and
   `self_attn_1`. If instead the collective sits alone on the critical path with the compute
   streams idle, the scheduler serialised it.
4. Without a trace, `collective_overlap(compiled.as_text())` lists, for each asynchronous
   all-to-all in the SCHEDULED HLO of `jax.jit(step).lower(...).compile()`, the ops placed
   between its start and done (fusions named after `mlps_0` / `self_attn_1` in their
   metadata there are the overlap) and whether XLA marked it `is_sync` (then it is not).
   On GPU the latency-hiding scheduler must be on (`--xla_gpu_enable_latency_hiding_scheduler=true`
   in XLA_FLAGS); on TPU it is the default.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from agentic_jax import models
from agentic_jax.parallel.mesh import abstract_mesh


def _sublayer(name_stack: str, layer: str) -> str | None:
  """'CausalLM/layers_0/self_attn_1/q_a_proj' -> 'self_attn_1' (for layer 'layers_0')."""
  parts = name_stack.split("/")
  if layer in parts:
    i = parts.index(layer)
    return parts[i + 1] if i + 1 < len(parts) else ""
  return None


def moe_exchange_dependencies(cfg: models.ModelConfig, mesh: Mapping[str, int],
                              layer: str = "layers_0") -> dict[str, set[str]]:
  """From the forward jaxpr of `cfg` (moe_dispatch="expert_parallel") on an abstract mesh:
  {"inputs": sublayers of `layer` the MoE exchange (its shard_map) transitively reads,
   "consumers": sublayers of `layer` that read its output, transitively}. "" stands for
  ops of the layer itself (residual adds). Nothing is compiled or run."""
  variables = models.abstract_variables(cfg)
  tokens = jax.ShapeDtypeStruct((8, 16), jnp.int32)
  with jax.sharding.use_abstract_mesh(abstract_mesh(mesh)):
    closed = jax.make_jaxpr(lambda v, t: models.build(cfg).apply(v, t))(variables, tokens)
  eqns = closed.jaxpr.eqns
  exchange = [i for i, e in enumerate(eqns) if e.primitive.name == "shard_map"
              and _sublayer(str(e.source_info.name_stack), layer) == "mlp"]
  if not exchange:
    raise ValueError(f"no expert-parallel exchange in {layer}: is moe_dispatch "
                     f"'expert_parallel' and the mesh's expert axis > 1?")
  producer = {id(v): i for i, e in enumerate(eqns) for v in e.outvars}

  def ancestors(start: list[int]) -> set[int]:
    seen, todo = set(), list(start)
    while todo:
      i = todo.pop()
      for v in eqns[i].invars:
        j = producer.get(id(v))
        if j is not None and j not in seen:
          seen.add(j)
          todo.append(j)
    return seen

  readers: dict[int, list[int]] = {}
  for i, e in enumerate(eqns):
    for v in e.invars:
      if id(v) in producer:
        readers.setdefault(producer[id(v)], []).append(i)
  downstream, todo = set(), list(exchange)
  while todo:
    for j in readers.get(todo.pop(), []):
      if j not in downstream:
        downstream.add(j)
        todo.append(j)

  def names(idx: set[int]) -> set[str]:
    out = {_sublayer(str(eqns[i].source_info.name_stack), layer) for i in idx}
    return {n for n in out if n is not None}

  return {"inputs": names(ancestors(exchange)), "consumers": names(downstream)}


_START = re.compile(r"%(\S+) = .*?\b(all-to-all-start|async-start)\(")
_DONE = re.compile(r"\b(?:all-to-all-done|async-done)\([^%]*%([^,)\s]+)")
_OP = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")


def collective_overlap(hlo_text: str) -> dict[str, dict[str, Any]]:
  """For each asynchronous all-to-all in scheduled HLO text (compiled.as_text() on TPU/GPU):
  {start op name: {"between": [ops scheduled between its start and its done],
                   "is_sync": XLA marked it synchronous (backend_config is_sync), i.e. no overlap}}.
  Empty when the backend emits plain synchronous all-to-all ops (CPU)."""
  out: dict[str, dict[str, Any]] = {}
  open_starts: dict[str, dict[str, Any]] = {}
  for line in hlo_text.splitlines():
    start = _START.search(line)
    if start and (start.group(2) == "all-to-all-start" or "all-to-all" in line):
      open_starts[start.group(1)] = {"between": [],
                                     "is_sync": bool(re.search(r'"is_sync":\s*true', line))}
      continue
    done = _DONE.search(line)
    if done and done.group(1) in open_starts:
      out[done.group(1)] = open_starts.pop(done.group(1))
      continue
    op = _OP.match(line)
    if op:
      for entry in open_starts.values():
        entry["between"].append(op.group(1))
  return out


def describe(cfg: Any, mesh: Mapping[str, int]) -> str:
  deps = moe_exchange_dependencies(cfg, mesh)
  return (f"MoE exchange of layers_0 reads: {sorted(deps['inputs'])}\n"
          f"and is read by: {sorted(deps['consumers'])}")
