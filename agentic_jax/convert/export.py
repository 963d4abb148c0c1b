"""agentic_jax checkpoints -> Hugging Face checkpoint directories, streamed (the inverse of
convert/checkpoint.py's import; its module docstring describes both layouts).

    checkpoint_to_hf("/ckpt/dsv3", "/hf/dsv3")     # launch/convert.py --from_ckpt --to_hf

One decoder layer is restored at a time (orbax partial restore) and each HF tensor is produced
when its bytes are due in the safetensors shard being written, so host memory holds about one
layer. Experts are written per expert (`mlp.experts.{j}.{gate,up,down}_proj.weight`), as
released checkpoints and save_pretrained store them; LongCat's dead zero-expert rows as zeros.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Callable, Optional

import numpy as np
from flax import traverse_util

from agentic_jax import fs
from agentic_jax.convert import mapping
from agentic_jax.convert import safetensors_io as st_io
from agentic_jax.convert.checkpoint import (HF_CONFIG_FILE, TOKENIZER_FILES, ConversionError,
                                            checkpoint_step_dir, model_config_from_section)
from agentic_jax.convert.hf_config import config_to_hf
from agentic_jax.models import ModelConfig, abstract_variables

_SEP = "/"


_OUT_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(st_io.DTYPES["BF16"]),
               "float16": np.dtype(np.float16)}


def _layer_of(hf_name: str) -> int:
  m = re.match(r"model\.layers\.(\d+)\.", hf_name)
  return int(m.group(1)) if m else -1


@dataclasses.dataclass(frozen=True)
class _Out:
  """One HF tensor to write: from our variables `ours` through `fn`, or stored (`extra`)."""
  shape: tuple[int, ...]
  ours: tuple[str, ...] = ()
  fn: Optional[Callable[..., np.ndarray]] = None
  extra: Optional[int] = None


def _export_plan(cfg: ModelConfig, shapes: dict[str, tuple]) -> dict[str, _Out]:
  """HF name -> how to make it, in layer order, with per-expert tensors (as released
  checkpoints and save_pretrained store them)."""
  plan: dict[str, _Out] = {}
  n, inter, d = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
  for e in mapping.entries(cfg):
    if e.alias_of is not None:
      continue  # a tied lm_head: transformers ties it on load
    name = e.transform.name
    if name == "fused_gate_up":
      prefix = e.hf[:-len("gate_up_proj")]
      for j in range(cfg.num_slots):  # LongCat: zero rows for the dead zero-expert slots
        for k, part in enumerate(("gate", "up")):
          fn = ((lambda gate, up, j=j, k=k: np.swapaxes((gate, up)[k][j], 0, 1)) if j < n else
                (lambda gate, up: np.zeros((inter, d), np.float32)))
          plan[f"{prefix}{j}.{part}_proj.weight"] = _Out((inter, d), e.ours, fn)
      continue
    if name == "experts_down":
      prefix = e.hf[:-len("down_proj")]
      for j in range(n):
        plan[f"{prefix}{j}.down_proj.weight"] = _Out(
            (d, inter), e.ours, lambda down, j=j: np.swapaxes(down[j], 0, 1))
      continue
    ours = [shapes[p] for p in e.ours]
    if name in ("copy", "float32"):
      shape = ours[0]
    elif name == "linear":
      shape = ours[0][::-1]
    elif name in ("linear_heads", "linear_kv_heads"):  # [in, H, hd] -> [H * hd, in]
      shape = (ours[0][1] * ours[0][2], ours[0][0])
    elif name in ("linear_out_heads", "linear_gqa_out"):  # [H, dv, d] -> [d, H * dv]
      shape = (ours[0][2], ours[0][0] * ours[0][1])
    elif name in ("q_bias", "kv_bias"):  # GQA biases [H, hd] -> [H * hd]
      shape = (ours[0][0] * ours[0][1],)
    else:
      raise ValueError(f"no export rule for transform {name!r}")
    plan[e.hf] = _Out(tuple(shape), e.ours,
                      lambda *xs, t=e.transform: t.to_hf(cfg, *xs))
  order = sorted(plan, key=lambda k: (_layer_of(k), list(plan).index(k)))
  return {k: plan[k] for k in order}


class _LayerCache:
  """Our variables restored one decoder layer (or top-level leaf) at a time."""

  def __init__(self, state_dir: str, cfg: ModelConfig):
    import jax  # pylint: disable=import-outside-toplevel
    self.state_dir, self.jax = state_dir, jax
    self.want = {_SEP.join(k): v for k, v in
                 traverse_util.flatten_dict(abstract_variables(cfg)).items()}
    self.key, self.values = None, {}

  @staticmethod
  def _group(path: str) -> str:
    parts = path.split(_SEP)
    return parts[1] if parts[1].startswith("layers_") else path

  def get(self, path: str) -> np.ndarray:
    group = self._group(path)
    if group != self.key:
      import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
      device = self.jax.sharding.SingleDeviceSharding(self.jax.local_devices()[0])
      members = {p: v for p, v in self.want.items() if self._group(p) == group}
      target = traverse_util.unflatten_dict({
          tuple(p.split(_SEP)): self.jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)
          for p, v in members.items()})
      got = ocp.PyTreeCheckpointer().restore(self.state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
      self.values = {_SEP.join(k): np.asarray(v, np.float32)
                     for k, v in traverse_util.flatten_dict(got).items()}
      self.key = group
    return self.values[path]


def checkpoint_to_hf(ckpt_dir: str, hf_dir: str, *, dtype: str = "float32",
                     max_shard_bytes: int = 5 << 30, say: Callable[[str], None] = print) -> dict:
  """Writes CKPT_DIR's latest step (a converted checkpoint or a run's WORKDIR) as a Hugging
  Face checkpoint directory: config.json (the source's hf_config.json updated with our
  fields, or built from ours), sharded safetensors with an index, the MTP tensors carried
  through, and the tokenizer files beside it. transformers loads it with from_pretrained."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  if dtype not in _OUT_DTYPES:
    raise ConversionError(f"--dtype={dtype!r}: expected one of {sorted(_OUT_DTYPES)}")
  t0 = time.perf_counter()
  step_dir = checkpoint_step_dir(ckpt_dir)
  meta = json.loads(fs.read_text(fs.join(step_dir, "meta", "metadata")))
  saved_cfg = model_config_from_section(meta["config"]["model"])
  if saved_cfg.scan_layers:
    raise ConversionError(f"{ckpt_dir}: saved with scan_layers=True; export reads unscanned "
                          "checkpoints (convert with load_checkpoint + to_hf_state_dict)")
  cfg = saved_cfg
  base_path = fs.join(ckpt_dir, HF_CONFIG_FILE)
  base = json.loads(fs.read_text(base_path)) if fs.exists(base_path) else None
  hf_config = config_to_hf(cfg, base=base)
  hf_config["torch_dtype"] = hf_config["dtype"] = dtype
  state_dir = fs.join(step_dir, "state")
  cache = _LayerCache(state_dir, cfg)
  shapes = {p: tuple(v.shape) for p, v in cache.want.items()}
  plan = _export_plan(cfg, shapes)
  out_dtype = _OUT_DTYPES[dtype]
  extra_names = list(meta.get("hf_extra") or [])
  specs = {k: (o.shape, out_dtype) for k, o in plan.items()}
  extra = {}
  if extra_names:  # carried through as stored (float8 weights keep their scales)
    from etils import epath  # pylint: disable=import-outside-toplevel  (orbax's path type)
    stored = ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)).tree.get(
        "hf_extra") or {}
    for k, name in enumerate(extra_names):
      leaf = stored[f"t{k:05d}"]
      extra[name] = f"t{k:05d}"
      dt = np.dtype(st_io.DTYPES[_code_of(meta["hf_extra_dtypes"][k])])
      specs[name] = (tuple(leaf.shape), dt)
      plan[name] = _Out(tuple(leaf.shape), extra=k)

  def produce(name: str) -> np.ndarray:
    o = plan[name]
    if o.extra is not None:
      got = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
          item={"hf_extra": {extra[name]: 0}}, partial_restore=True))
      return np.asarray(got["hf_extra"][extra[name]]).astype(specs[name][1])
    return np.asarray(o.fn(*(cache.get(p) for p in o.ours))).astype(out_dtype)

  files = st_io.write_dir(hf_dir, specs, produce, max_shard_bytes=max_shard_bytes)
  fs.write_text(fs.join(hf_dir, "config.json"), json.dumps(hf_config, indent=2))
  copied = [f for f in TOKENIZER_FILES if fs.exists(fs.join(ckpt_dir, f))]
  for f in copied:
    fs.copy(fs.join(ckpt_dir, f), fs.join(hf_dir, f))
  report = {"tensors": len(specs), "files": files, "mtp_tensors": len(extra_names),
            "dtype": dtype, "tokenizer_files": copied,
            "seconds": round(time.perf_counter() - t0, 2)}
  say(f"[convert] {ckpt_dir} -> {hf_dir}: {len(specs)} tensors in {len(files)} file(s), "
      f"{len(extra_names)} MTP tensors carried through, {dtype} ({report['seconds']} s)")
  return report


def _code_of(dtype_name: str) -> str:
  """safetensors code of a numpy dtype name as str(np.dtype) prints it."""
  for code, dt in st_io.DTYPES.items():
    if str(dt) == dtype_name:
      return code
  raise ConversionError(f"hf_extra dtype {dtype_name!r} has no safetensors code")
