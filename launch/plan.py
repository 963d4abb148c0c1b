"""Memory planner: bytes per device of a training step on a mesh, from shapes only.

    python launch/plan.py --config=configs/midtrain.py:longcat_flash --mesh=data:8,fsdp:32,expert:16 \
        --per_device_batch=1
    python launch/plan.py --model=deepseek_v3 --mesh=fsdp:64,tensor:4,expert:16 --batch=1024 \
        --seq_len=4096 --device_memory_gib=95
    python launch/plan.py --model=longcat_flash --mesh=fsdp:-1,expert:16 --num_devices=512 \
        --per_device_batch=1 --config.model.remat_policy=dots   # (with --config) any model field

Prints params, AdamW state, gradients (exact: every array's bytes over the mesh axes its
sharding rule splits it by) and an activation estimate (formula and remat policies in
agentic_jax/parallel/memory.py), then whether the total fits the device memory minus a
reserve. Nothing is allocated: it runs for the 560B LongCat-Flash on a laptop in seconds.

Defaults come from --config when given (model, mesh, data.batch_size, data.seq_len,
optim.grad_accum); --model picks a preset instead. --batch is the GLOBAL batch (rows per
optimizer step); the per-device micro-batch is batch / (grad_accum * data * fsdp * expert).
--accelerator=NAME takes the device memory from parallel/memory.py's table (h100 80 GiB,
v5p 95 GiB, ...) instead of --device_memory_gib.

An RL config (configs/flow_grpo.py, grpo.py, dapo.py, dr_grpo.py: config.job == "rl") is
planned as the RL job runs it (memory.plan_rl_memory): params, the frozen reference copy and
AdamW state throughout, then the rollout (decode cache and prefill of tasks_per_step x
group_size rows, or the eval batch if larger, at max_context_tokens rounded up to the
sampler's prompt bucket + max_new_tokens slots), the reference forward over the step's packed
rows (one minibatch's rows at a time, as rl/step.py chunks it), and the update of one
minibatch; the total counts the largest of the three. Rollout rows are split over the batch
shards, as rl/sampler.py decodes them (--rollout_split=replicated plans every row on every
device, for comparison). Rows and lengths come from config.rl (override
them with --config.rl.KEY=...); the config must pass check_rl_config on the mesh.

    python launch/plan.py --config=configs/flow_grpo.py:longcat_flash --accelerator=v5p

Exit status 0 (fits or no device memory given), 1 (does not fit), 2 (bad arguments).
"""

from __future__ import annotations

import json
import os
import sys

# Planning needs no accelerator: never grab (or wait for) the TPU/GPU of the host it runs on.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags
from ml_collections import config_flags

from agentic_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config path.py[:variant]; optional if --model is given.",
    lock_config=True)
_MODEL = flags.DEFINE_string("model", None, "Model preset name (instead of --config).")
_MESH = flags.DEFINE_string("mesh", None, "Mesh sizes NAME:SIZE,... over data/fsdp/tensor/expert "
                            "(one may be -1 with --num_devices); default: the config's mesh.")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None, "Device count, to resolve a -1 axis.")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch rows per optimizer step.")
_PER_DEVICE = flags.DEFINE_integer("per_device_batch", None, "Rows per device per micro-batch "
                                   "(overrides --batch).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per row (default: config or 4096).")
_GRAD_ACCUM = flags.DEFINE_integer("grad_accum", None, "Micro-batches per step (default: config or 1).")
_DEVICE_GIB = flags.DEFINE_float("device_memory_gib", 80.0, "Memory of one device in GiB; 0 = skip "
                                 "the fit check.")
_ACCELERATOR = flags.DEFINE_string("accelerator", None, "Device kind whose memory to plan for "
                                   "(parallel/memory.py ACCELERATORS: a100, h100, h200, h800, "
                                   "v4, v5e, v5p, v6e); instead of --device_memory_gib.")
_ROLLOUT_SPLIT = flags.DEFINE_enum(
    "rollout_split", "batch", ["batch", "replicated"],
    "RL configs: how the rollout rows lie on the mesh. batch: split over the batch shards, as "
    "rl/sampler.py decodes them (Sampler split_rows, its default); replicated: every device "
    "decodes every row (a decoder without the logical-axis rules; for comparison).")
_RESERVE = flags.DEFINE_float("reserve", 0.1, "Share of device memory kept free for XLA "
                              "temporaries, collectives and fragmentation.")
_RULES = flags.DEFINE_string("rules", "default", "Logical-axis rules table (parallel.rules).")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as JSON instead of a table.")
_CACHE_LEN = flags.DEFINE_integer("cache_len", None, "Also plan a decoding cache of this many "
                                  "slots per row (per-device batch rows): MLA's compressed cache, "
                                  "or GQA K/V with the IQuest Loop's window rings.")


STAGE_SECTIONS = ("mstep", "midtrain")


def _config_get(config, dotted: str, default):
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return default
    node = node[part]
  return node


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from agentic_jax import models  # pylint: disable=import-outside-toplevel  (fast --help)
  from agentic_jax.parallel import memory, mesh as mesh_lib, rules as rules_lib  # pylint: disable=import-outside-toplevel

  config = _CONFIG.value
  device_gib = _DEVICE_GIB.value
  if _ACCELERATOR.value is not None:
    if _DEVICE_GIB.present:
      raise app.UsageError("give --accelerator or --device_memory_gib, not both")
    if _ACCELERATOR.value not in memory.ACCELERATORS:
      raise app.UsageError(f"--accelerator={_ACCELERATOR.value}: unknown; known: "
                           f"{sorted(memory.ACCELERATORS)} (or give --device_memory_gib)")
    device_gib = memory.ACCELERATORS[_ACCELERATOR.value]
  if config is not None and config.get("job") == "rl":
    return _plan_rl(config, device_gib)
  if config is not None and "model" not in config:
    # jobs of several stages keep the training stage's config in a section: the RA3 job's
    # M-phases (config.mstep), the recipe's mid-training (config.midtrain)
    for name in STAGE_SECTIONS:
      if name in config and "model" in config[name]:
        print(f"planning config.{name} (the job's training stage)")
        config = config[name]
        break
  if config is None and _MODEL.value is None:
    raise app.UsageError("give --config=FILE.py[:variant] or --model=PRESET")
  if _MODEL.value is not None:
    cfg = models.presets.get(_MODEL.value)
  else:
    section = dict(config.model.to_dict())
    section.pop("preset", None)
    cfg = models.ModelConfig(**section)

  if _MESH.value is not None:
    mesh_cfg = mesh_lib.parse_mesh_spec(_MESH.value)
    prefix = "--mesh"
  elif config is not None and "mesh" in config:
    mesh_cfg = config.mesh.to_dict()
    prefix = "config.mesh"
  else:
    raise app.UsageError("give --mesh=NAME:SIZE,... (no config mesh to default to)")
  if -1 in mesh_cfg.values():
    if _NUM_DEVICES.value is None:
      raise app.UsageError(f"{prefix} has a -1 (fill) axis: give --num_devices")
    num_devices = _NUM_DEVICES.value
  else:
    num_devices = _NUM_DEVICES.value
    if num_devices is None:
      num_devices = 1
      for v in mesh_cfg.values():
        num_devices *= v
  sizes = mesh_lib.mesh_sizes(mesh_cfg, num_devices, prefix=prefix)
  rules = rules_lib.get_rules(_RULES.value)

  seq_len = _SEQ_LEN.value or _config_get(config, "data.seq_len", 4096)
  grad_accum = _GRAD_ACCUM.value or _config_get(config, "optim.grad_accum", 1)
  if _PER_DEVICE.value is not None:
    per_device = _PER_DEVICE.value
  else:
    global_batch = _BATCH.value or _config_get(config, "data.batch_size", None)
    if global_batch is None:
      raise app.UsageError("give --batch (global rows) or --per_device_batch")
    try:
      per_device = memory.per_device_batch(global_batch, sizes, grad_accum, rules)
    except ValueError as e:
      if _BATCH.value is not None:
        raise
      # The config's batch was written for another mesh: plan one row per device, loudly.
      per_device = 1
      print(f"note: config data.batch_size={global_batch}: {e}; planning for "
            f"--per_device_batch=1 instead (pass --batch or --per_device_batch to choose)")

  plan = memory.plan_memory(cfg, sizes, rules, batch_per_device=per_device, seq_len=seq_len,
                            grad_accum=grad_accum, device_memory_gib=device_gib or None,
                            reserve=_RESERVE.value, cache_len=_CACHE_LEN.value)
  if _JSON.value:
    print(json.dumps({"mesh": sizes, "per_device_batch": per_device, "seq_len": seq_len,
                      "bytes": {n: b for n, b, _ in plan.rows}, "total": plan.total,
                      "device_bytes": plan.device_bytes, "fits": plan.fits}, indent=1))
  else:
    print(f"model: {_MODEL.value or config.model.get('preset', '?')} "
          f"({models.count_params(cfg):,} params); per device: {per_device} rows x "
          f"{seq_len} tokens, grad_accum {grad_accum}")
    print(plan.table())
  return 1 if plan.fits is False else 0


def _mesh_of(config) -> tuple[dict[str, int], int]:
  """(the mesh sizes, the device count) from --mesh / --num_devices or config.mesh."""
  from agentic_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  if _MESH.value is not None:
    mesh_cfg, prefix = mesh_lib.parse_mesh_spec(_MESH.value), "--mesh"
  else:
    mesh_cfg, prefix = config.mesh.to_dict(), "config.mesh"
  if -1 in mesh_cfg.values() and _NUM_DEVICES.value is None:
    raise app.UsageError(f"{prefix} has a -1 (fill) axis: give --num_devices")
  num_devices = _NUM_DEVICES.value
  if num_devices is None:
    num_devices = 1
    for v in mesh_cfg.values():
      num_devices *= v
  return mesh_lib.mesh_sizes(mesh_cfg, num_devices, prefix=prefix), num_devices


def rl_shapes(config) -> dict[str, int]:
  """The global row counts and lengths an RL step runs with (see memory.plan_rl_memory):
  step_rows (packed forward rows when every episode fills a row of its own: one transcript
  per episode in plain mode, one per planner turn in agentflow mode, padded as step.pack_batch
  pads them), minibatches, seq_len, rollout_rows (training batch or eval batch, the larger),
  prompt_len (max_context_tokens rounded up to the sampler's prompt bucket), cache_len."""
  import inspect  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import config as rl_config_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
  rl = config.rl
  objective = rl_config_lib.objective(config)
  q, g, mb = rl.tasks_per_step, rl.group_size, rl.minibatches
  per_group = g * (rl.max_turns if rl.mode == "agentflow" else 1)
  if objective.options.minibatch_split == "groups" and mb > 1:
    # whole groups in each of mb equal blocks (pack_batch(whole_groups=True))
    unit = rl.row_bucket // mb
    step_rows = mb * (-(-(-(-q // mb) * per_group) // unit) * unit)
  else:
    step_rows = -(-(q * per_group) // rl.row_bucket) * rl.row_bucket
  n = q * g
  sampled_eval = rl.eval_tasks * rl.eval_samples if rl.eval_temperature > 0 else 0
  rollout_rows = max(n, -(-sampled_eval // n) * n, rl.eval_tasks)
  bucket = inspect.signature(sampler_lib.Sampler).parameters["prompt_bucket"].default
  prompt_len = -(-rl.max_context_tokens // bucket) * bucket
  return {"step_rows": step_rows, "minibatches": mb, "seq_len": rl.seq_len,
          "rollout_rows": rollout_rows, "prompt_len": prompt_len,
          "cache_len": prompt_len + rl.max_new_tokens}


def _plan_rl(config, device_gib) -> int:
  from agentic_jax import models  # pylint: disable=import-outside-toplevel
  from agentic_jax.parallel import memory, rules as rules_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import config as rl_config_lib  # pylint: disable=import-outside-toplevel
  for name, flag in (("--batch", _BATCH), ("--per_device_batch", _PER_DEVICE),
                     ("--seq_len", _SEQ_LEN), ("--grad_accum", _GRAD_ACCUM),
                     ("--cache_len", _CACHE_LEN), ("--model", _MODEL)):
    if flag.value is not None:
      raise app.UsageError(f"{name} does not apply to an RL config: its rows and lengths are "
                           "config.rl's (override them with --config.rl.KEY=...)")
  sizes, num_devices = _mesh_of(config)
  if _MESH.value is not None:  # the run would use this mesh: check the config with it
    config = config.copy_and_resolve_references()
    for axis, size in sizes.items():
      config.mesh[axis] = size
  rl_config_lib.check_rl_config(config, num_devices=num_devices)
  rules = rules_lib.get_rules(_RULES.value)
  section = dict(config.model.to_dict())
  preset = section.pop("preset", "?")
  cfg = models.ModelConfig(**section)
  shapes = rl_shapes(config)
  shards = sharding.batch_shards(sizes, rules)
  plan = memory.plan_rl_memory(
      cfg, sizes, rules, **shapes, device_memory_gib=device_gib or None, reserve=_RESERVE.value,
      rollout_shards=shards if _ROLLOUT_SPLIT.value == "batch" else 1)
  rl = config.rl
  if _JSON.value:
    print(json.dumps({"mesh": sizes, "batch_shards": shards, **shapes,
                      "rollout_split": _ROLLOUT_SPLIT.value,
                      "bytes": {n: b for n, b, _ in plan.rows}, "phases": plan.phase_bytes(),
                      "peak_phase": plan.peak_phase, "total": plan.total,
                      "device_bytes": plan.device_bytes, "fits": plan.fits}, indent=1))
  else:
    print(f"model: {preset} ({models.count_params(cfg):,} params); RL {rl.loss}/{rl.preset} "
          f"({rl.mode}): {rl.tasks_per_step} tasks x {rl.group_size} rollouts per step, "
          f"contexts up to {rl.max_context_tokens} + {rl.max_new_tokens} new tokens; update: "
          f"{shapes['step_rows']} rows x {rl.seq_len} tokens at most, {rl.minibatches} "
          f"minibatches, over {shards} batch shards; rollout rows {_ROLLOUT_SPLIT.value}")
    print(plan.table())
  return 1 if plan.fits is False else 0


def _run(argv: list[str]) -> None:
  try:
    sys.exit(main(argv))
  except (ValueError, app.UsageError) as e:  # bad mesh / batch / rule / flags: one line, exit 2
    cli.fail(e)


if __name__ == "__main__":
  app.run(_run, flags_parser=cli.parse_flags)
