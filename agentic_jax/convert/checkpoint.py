"""Hugging Face checkpoint directories <-> orbax checkpoints, streamed tensor by tensor.

    hf_to_checkpoint("DeepSeek-V3/", "/ckpt/dsv3")          # launch/convert.py --from_hf --to
    cfg, variables = load_checkpoint("/ckpt/dsv3")           # as from_hf gives them
    export.checkpoint_to_hf("/ckpt/dsv3", "/hf/dsv3")        # launch/convert.py --from_ckpt --to_hf

A converted checkpoint has the layout of a run's WORKDIR, so everything that reads a run reads
it (`--config.init_from=CKPT_DIR`, launch/generate.py, launch/eval.py):

    CKPT_DIR/checkpoints/0/state/   orbax PyTree {params, router_state?, hf_extra?}
    CKPT_DIR/checkpoints/0/meta/metadata   JSON {"step": 0, "config": {"model": ModelConfig
                                           fields}, "source": ..., "hf_extra": [names]}
    CKPT_DIR/hf_config.json          the source config.json (fields we do not own: token ids,
                                     MTP, ...), used again on export
    CKPT_DIR/tokenizer.json, ...     the source's tokenizer files, copied

Memory: source tensors are read one at a time (convert/safetensors_io.py) and handed to orbax
in batches of at most `batch_bytes` through orbax's partial save (each call adds leaves to the
checkpoint being written; `finalize` commits it), so peak host memory is about the largest
tensor of ours (for experts: one layer's stacked [N, d, I]) plus a batch, not the model. Export
restores one decoder layer at a time and writes safetensors shards as they are produced.

Source formats: per-expert tensors (`mlp.experts.{j}.{gate,up,down}_proj.weight`, what
released checkpoints and transformers' save_pretrained hold) or the fused in-memory form
(`mlp.experts.gate_up_proj` / `down_proj`); DeepSeek-V3's block-quantised FP8 weights (a
`weight_scale_inv` [ceil(out/B0), ceil(in/B1)] beside each float8 `weight`; B from
config.json's quantization_config.weight_block_size, default 128x128) are dequantised:
w = fp8 * scale_inv broadcast over its block. MTP tensors (LongCat `model.mtp.*`, DeepSeek's
`model.layers.{num_hidden_layers}.*`) are kept bit for bit under `hf_extra` and written back on
export, so nothing is dropped silently; `hf_to_checkpoint(..., num_mtp_layers=D)` loads them into
the model's MTP module instead (convert/mtp_mapping.py), whatever config.json's
`num_nextn_predict_layers` says. LongCat's
dead zero-expert rows (`experts.{j}` for j >= N, never read by transformers) are skipped on
import and written as zeros on export.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Callable, Optional

import numpy as np
from flax import traverse_util

from agentic_jax import fs
from agentic_jax.convert import mapping
from agentic_jax.convert import safetensors_io as st_io
from agentic_jax.convert.hf_config import SUPPORTED_MODEL_TYPES, config_from_hf
from agentic_jax.models import ModelConfig, abstract_variables

STEP = 0
HF_CONFIG_FILE = "hf_config.json"
# A checkpoint's tokenizer files, copied along. Not a source's tokenizer.model: in our
# directories that name means our own sentencepiece model (data/tokenizer.load_from_dir).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "agentic_jax_tokenizer.json")
_SEP = "/"
_DERIVED = re.compile(r".*rotary_emb\.inv_freq$")  # buffers some old checkpoints hold


class ConversionError(ValueError):
  """A source that cannot be converted: one line naming what is wrong."""


def _names(names, limit: int = 12) -> str:
  names = sorted(names)
  return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------------------ HF config


def read_hf_config(hf_dir: str, **overrides: Any) -> tuple[ModelConfig, dict]:
  """(ModelConfig, config.json as a dict) of a Hugging Face checkpoint directory; the model
  type is checked before transformers (the `hf` extra) is imported."""
  path = fs.join(hf_dir, "config.json")
  if not fs.exists(path):
    raise ConversionError(f"{path}: not found (a Hugging Face checkpoint directory holds "
                          "config.json and *.safetensors)")
  try:
    raw = json.loads(fs.read_text(path))
  except ValueError as e:
    raise ConversionError(f"{path}: not JSON ({e})") from None
  model_type = raw.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ConversionError(f"{path}: model_type {model_type!r} is not supported; supported: "
                          f"{list(SUPPORTED_MODEL_TYPES)}")
  try:
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConversionError("converting a Hugging Face checkpoint needs transformers: "
                          "pip install 'agentic_jax[hf]'") from None
  kwargs = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
  if model_type == "iquestloopcoder":
    # Hub remote code, which transformers lacks: its config is IQuestCoder's plus loop_num and
    # loop_window_size (kept as attributes), read by hf_config under its own model_type.
    hf_config = transformers.AutoConfig.for_model("iquestcoder", **kwargs)
    hf_config.model_type = model_type
  else:
    hf_config = transformers.AutoConfig.for_model(model_type, **kwargs)
  try:
    return config_from_hf(hf_config, **overrides), raw
  except ValueError as e:
    raise ConversionError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------ import


def _mtp_name(cfg: ModelConfig, name: str) -> bool:
  if name.startswith("model.mtp."):
    return True
  m = re.match(r"model\.layers\.(\d+)\.", name)
  return bool(m) and int(m.group(1)) >= cfg.num_layers


def _dead_expert_row(cfg: ModelConfig, name: str) -> bool:
  """LongCat's zero-expert slots in the fused gate_up (rows N..N+Z-1): allocated, never read."""
  m = re.match(r"model\.layers\.\d+\.mlp\.experts\.(\d+)\.(gate|up)_proj\.weight(_scale_inv)?$",
               name)
  return bool(m) and cfg.layer_type == "scmoe" and int(m.group(1)) >= cfg.n_routed_experts


class _Source:
  """HF tensors by the names of the mapping tables, from a directory of safetensors files:
  direct, assembled from per-expert tensors, FP8-dequantised; records what it read."""

  def __init__(self, st: st_io.SafetensorsDir, cfg: ModelConfig, block: tuple[int, int]):
    self.st, self.cfg, self.block = st, cfg, block
    self.read_names: set[str] = set()

  def _expert_names(self, name: str) -> Optional[list[str]]:
    """Per-expert tensors standing for a fused one, or None if `name` is not fused."""
    prefix, sep, what = name.rpartition("experts.")
    if not sep or what not in ("gate_up_proj", "down_proj"):
      return None
    n = self.cfg.n_routed_experts
    if what == "down_proj":
      return [f"{prefix}experts.{j}.down_proj.weight" for j in range(n)]
    return [f"{prefix}experts.{j}.{p}_proj.weight" for j in range(n) for p in ("gate", "up")]

  def needed(self, name: str) -> Optional[list[str]]:
    """The stored tensors `name` is read from, or None when it cannot be found."""
    if name in self.st:
      return [name]
    parts = self._expert_names(name)
    if parts is not None and all(p in self.st for p in parts):
      return parts
    return None

  def shape(self, name: str) -> tuple[int, ...]:
    """The shape `read(name)` returns, from the file headers alone."""
    if name in self.st:
      return self.st.shape(name)
    prefix, _, what = name.rpartition("experts.")
    n = self.cfg.n_routed_experts
    if what == "down_proj":
      shapes = {self.st.shape(f"{prefix}experts.{j}.down_proj.weight") for j in range(n)}
    else:
      shapes = {self.st.shape(f"{prefix}experts.{j}.{p}_proj.weight")
                for j in range(n) for p in ("gate", "up")}
    if len(shapes) != 1:
      raise ConversionError(f"{prefix}experts.*: the experts' {what} tensors differ in shape "
                            f"({sorted(shapes)})")
    (one,) = shapes
    if what == "down_proj":
      return (n, *one)
    return (self.cfg.num_slots, 2 * one[0], one[1])

  def _plain(self, name: str) -> np.ndarray:
    x = self.st.read(name)
    self.read_names.add(name)
    scale_name = name + "_scale_inv"
    if scale_name in self.st:
      scale = self.st.read(scale_name).astype(np.float32)
      self.read_names.add(scale_name)
      b0, b1 = self.block
      if x.ndim != 2 or scale.shape != (-(-x.shape[0] // b0), -(-x.shape[1] // b1)):
        raise ConversionError(f"{scale_name}: shape {scale.shape} does not tile {name} "
                              f"{x.shape} in {b0}x{b1} blocks (quantization_config."
                              "weight_block_size)")
      full = np.repeat(np.repeat(scale, b0, axis=0), b1, axis=1)[:x.shape[0], :x.shape[1]]
      return x.astype(np.float32) * full
    # bf16 / fp8 (ml_dtypes, numpy kind "V") and f16 / f64 compute in float32 here; the
    # checkpoint's dtype is chosen when writing
    return x.astype(np.float32) if x.dtype.kind in "fV" and x.dtype != np.float32 else x

  def read(self, name: str) -> np.ndarray:
    if name in self.st:
      return self._plain(name)
    cfg = self.cfg
    prefix, _, what = name.rpartition("experts.")
    if what == "down_proj":  # [N, d, I]
      return np.stack([self._plain(f"{prefix}experts.{j}.down_proj.weight")
                       for j in range(cfg.n_routed_experts)])
    rows = [np.concatenate([self._plain(f"{prefix}experts.{j}.gate_proj.weight"),
                            self._plain(f"{prefix}experts.{j}.up_proj.weight")], axis=0)
            for j in range(cfg.n_routed_experts)]
    dead = cfg.num_slots - cfg.n_routed_experts  # fused [N+Z, 2I, d]: zero rows, never read
    rows += [np.zeros_like(rows[0])] * dead
    return np.stack(rows)


def _batches(items, budget: int):
  batch, size = [], 0
  for item in items:
    batch.append(item)
    size += item[1].nbytes
    if size >= budget:
      yield batch
      batch, size = [], 0
  if batch:
    yield batch


def _model_section(cfg: ModelConfig) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def model_config_from_section(section: dict) -> ModelConfig:
  """ModelConfig from the JSON a checkpoint's meta holds (lists back to tuples)."""
  names = {f.name for f in dataclasses.fields(ModelConfig)}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in names}
  return ModelConfig(**values)


def _tokenizer(hf_dir: str, cfg: ModelConfig, marker_map: Optional[dict],
               multiple_of: int) -> tuple[Any, int]:
  """The source's tokenizer.json with our role/tool markers mapped or added
  (data/hf_tokenizer.py), and the vocabulary size the model needs for it (its own when the
  embedding already has room: released embeddings are often padded)."""
  from agentic_jax.data.hf_tokenizer import HFTokenizer  # pylint: disable=import-outside-toplevel
  try:
    tok = HFTokenizer.load(hf_dir, marker_map=marker_map)
  except (ImportError, ValueError) as e:  # ValueError: a marker_map naming no token of it
    raise ConversionError(f"{fs.join(hf_dir, 'tokenizer.json')}: {e}") from None
  need = tok.vocab_size
  if need <= cfg.vocab_size:
    return tok, cfg.vocab_size
  return tok, -(-need // multiple_of) * multiple_of


def _grown(path: str, value: np.ndarray, vocab: int) -> np.ndarray:
  """The embedding [V, d] / untied head [d, V] with rows / columns up to `vocab`, each new one
  the mean of the existing ones: new tokens start at the average embedding and an average
  logit (Hewitt 2021), not at a random point that would disturb the pretrained distribution."""
  axis = {"params/embed_tokens/embedding": 0, "params/lm_head/kernel": 1}.get(path)
  if axis is None or value.shape[axis] >= vocab:
    return value
  extra = list(value.shape)
  extra[axis] = vocab - value.shape[axis]
  mean = value.astype(np.float64).mean(axis=axis, keepdims=True).astype(value.dtype)
  return np.concatenate([value, np.broadcast_to(mean, extra)], axis=axis)


def hf_to_checkpoint(hf_dir: str, ckpt_dir: str, *, param_dtype: str = "float32",
                     batch_bytes: int = 256 << 20, say: Callable[[str], None] = print,
                     marker_map: Optional[dict] = None, vocab_multiple_of: int = 1,
                     mesh: Any = None, **overrides: Any) -> dict:
  """Converts a Hugging Face checkpoint directory (module docstring) into CKPT_DIR; returns a
  report {"model_type", "tensors", "mtp_tensors_kept", "dead_rows_skipped", "seconds", ...}.
  Every name is checked against the mapping tables before anything is written: a missing or
  unexpected tensor, a shape mismatch or an unsupported config raises ConversionError.

  Tokenizer: a source tokenizer.json is loaded through data/hf_tokenizer.HFTokenizer, which maps
  our role and tool markers (and pad/bos/eos) to the checkpoint's own special tokens (from
  tokenizer_config.json, or `marker_map` {our name: their token text}) or adds them as new
  special tokens; when that outgrows the embedding, the model's vocabulary grows with it (new
  rows = the mean row, padded to `vocab_multiple_of`) and the grown tokenizer is saved in
  CKPT_DIR, so every later job uses matching ids.

  `mesh` (a jax Mesh, e.g. of host CPU devices: launch/convert.py --mesh) writes every array
  already sharded as the training mesh lays it out (parallel/rules.py): storage chunks tile the
  device shards, so a restore onto that mesh reads each device's blocks and nothing else."""
  from orbax.checkpoint.experimental.v1 import partial  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  # the MTP tensors load into the module only when asked (num_mtp_layers=D), whatever
  # config.json's num_nextn_predict_layers says; else they are carried under hf_extra
  overrides.setdefault("num_mtp_layers", 0)
  cfg, raw = read_hf_config(hf_dir, param_dtype=param_dtype, **overrides)
  cfg = cfg.replace(scan_layers=False)
  st = st_io.SafetensorsDir(hf_dir)
  quant = raw.get("quantization_config") or {}
  block = tuple(quant.get("weight_block_size") or (128, 128))
  src = _Source(st, cfg, block)
  tok, vocab = None, cfg.vocab_size
  if fs.exists(fs.join(hf_dir, "tokenizer.json")):
    tok, vocab = _tokenizer(hf_dir, cfg, marker_map, vocab_multiple_of)

  # ---- plan: every table entry found, every stored tensor accounted for, shapes checked
  entries = [e for e in mapping.entries(cfg)]
  missing, used = [], set()
  for e in entries:
    parts = src.needed(e.hf)
    if parts is None:
      if e.alias_of is None:
        missing.append(e.hf)
      continue
    used.update(parts)
    used.update(p + "_scale_inv" for p in parts if p + "_scale_inv" in st)
  mtp = [n for n in st.names() if n not in used and _mtp_name(cfg, n)]
  dead = [n for n in st.names() if n not in used and _dead_expert_row(cfg, n)]
  derived = [n for n in st.names() if _DERIVED.match(n)]
  unexpected = [n for n in st.names() if n not in used and n not in set(mtp) | set(dead)
                | set(derived) and np.prod(st.shape(n)) > 0]
  if missing or unexpected:
    raise ConversionError(
        f"{hf_dir}: the tensors do not match its config.json ({raw.get('model_type')}, "
        f"{cfg.num_layers} layers): " + (f"missing: {_names(missing)}. " if missing else "")
        + (f"unexpected: {_names(unexpected)}." if unexpected else ""))
  want = {_SEP.join(k): v for k, v in
          traverse_util.flatten_dict(abstract_variables(cfg)).items()}
  bad = []
  for e in entries:  # shapes through the transforms on zero-stride stand-ins: no data read
    if e.alias_of is not None or src.needed(e.hf) is None:
      continue
    shape = src.shape(e.hf)
    try:
      outs = e.transform.to_ours(cfg, np.broadcast_to(np.zeros((), np.float32), shape))
    except ValueError as exc:
      bad.append(f"{e.hf}: shape {shape} ({exc})")
      continue
    for p, value in zip(e.ours, outs, strict=True):
      if tuple(value.shape) != tuple(want[p].shape):
        bad.append(f"{e.hf}: shape {shape} converts to {p} {tuple(value.shape)}, the config "
                   f"needs {tuple(want[p].shape)}")
  if bad:
    raise ConversionError(f"{hf_dir}: {len(bad)} tensors do not fit its config.json: "
                          + "; ".join(bad[:6]) + ("; ..." if len(bad) > 6 else ""))

  # ---- convert and write
  path = fs.join(ckpt_dir, "checkpoints", str(STEP))
  if fs.exists(path):
    raise ConversionError(f"{path} already exists; convert into a new directory")
  fs.makedirs(fs.join(ckpt_dir, "checkpoints"))
  for leftover in fs.glob(path + ".*"):  # parts of a conversion killed before it finished
    say(f"[convert] removing {leftover}, left by an interrupted conversion")
    fs.rmtree(leftover)

  def produce():
    for e in entries:
      if e.alias_of is not None:
        if e.hf in st and not np.array_equal(src.read(e.hf), src.read(e.alias_of)):
          raise ConversionError(f"{e.hf} should equal {e.alias_of} (tie_word_embeddings) but "
                                "differs from it")
        continue
      for p, value in zip(e.ours, e.transform.to_ours(cfg, src.read(e.hf)), strict=True):
        if tuple(value.shape) != tuple(want[p].shape):
          raise ConversionError(f"{e.hf}: shape {value.shape} converts to {p} "
                                f"{tuple(value.shape)}, the config needs {tuple(want[p].shape)}")
        dtype = np.float32 if p.startswith("router_state") else want[p].dtype
        value = _grown(p, value, vocab)
        yield p, np.ascontiguousarray(value, dtype=dtype)  # one copy: layout and dtype at once
      del value
    for k, name in enumerate(mtp):  # bit for bit, in the stored dtype
      yield f"hf_extra/t{k:05d}", np.array(st.read(name))

  placement: dict[str, Any] = {}
  if mesh is not None:
    import jax  # pylint: disable=import-outside-toplevel
    from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
    specs = parallel.variable_specs(cfg.replace(vocab_size=vocab), mesh)
    placement = {_SEP.join(k): jax.sharding.NamedSharding(mesh, v) for k, v in
                 traverse_util.flatten_dict(specs).items()}  # PartitionSpecs are the leaves

  def placed(items):
    for p, value in items:
      yield p, (jax.device_put(value, placement[p]) if p in placement else value)

  n_written = 0
  try:
    for batch in _batches(placed(produce()), batch_bytes):
      partial.save(path, traverse_util.unflatten_dict(
          {tuple(k.split(_SEP)): v for k, v in batch}))
      n_written += len(batch)
      del batch
    partial.finalize(path)
  except BaseException:
    # nothing half-written stays behind to be mistaken for a checkpoint (orbax keeps the
    # parts in a sibling directory until finalize)
    for leftover in fs.glob(path + "*"):
      fs.rmtree(leftover)
    raise
  meta = {"step": STEP, "config": {"model": _model_section(cfg.replace(vocab_size=vocab))},
          "source": {"hf_dir": hf_dir, "model_type": raw.get("model_type")},
          "hf_extra": mtp, "hf_extra_dtypes": [str(st.dtype(n)) for n in mtp]}
  fs.makedirs(fs.join(path, "meta"))
  fs.write_text(fs.join(path, "meta", "metadata"), json.dumps(meta))
  fs.write_text(fs.join(ckpt_dir, HF_CONFIG_FILE), json.dumps(raw, indent=2))
  copied = [f for f in TOKENIZER_FILES if fs.exists(fs.join(hf_dir, f))]
  for f in copied:
    fs.copy(fs.join(hf_dir, f), fs.join(ckpt_dir, f))
  if tok is not None:
    tok.save(ckpt_dir)  # with the markers it added, and the map of our names to its tokens
  report = {"model_type": raw.get("model_type"), "layer_type": cfg.layer_type,
            "vocab_size": vocab, "vocab_grown_by": vocab - cfg.vocab_size,
            "tokens_added": list(tok.added_tokens) if tok is not None else [],
            "variables": n_written - len(mtp), "source_tensors": len(st.names()),
            "mtp_tensors_kept": len(mtp), "dead_rows_skipped": len(dead),
            "derived_buffers_skipped": len(derived),
            "dequantized_fp8": sum(1 for n in src.read_names if n.endswith("_scale_inv")),
            "tokenizer_files": copied, "seconds": round(time.perf_counter() - t0, 2)}
  say(f"[convert] {hf_dir} -> {ckpt_dir}: {report['variables']} variables from "
      f"{report['source_tensors']} tensors; {len(mtp)} MTP tensors kept, {len(dead)} dead "
      f"zero-expert rows skipped, {report['dequantized_fp8']} FP8 weights dequantised, "
      f"{len(report['tokens_added'])} special tokens added to the tokenizer (vocabulary "
      f"{cfg.vocab_size} -> {vocab}) "
      f"({report['seconds']} s)")
  return report


# ------------------------------------------------------------------------------ load


def checkpoint_step_dir(ckpt_dir: str) -> str:
  """CKPT_DIR/checkpoints/<latest step> of a converted checkpoint or a run's WORKDIR."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = fs.join(ckpt_dir, "checkpoints")
  steps = sorted(ocp.utils.checkpoint_steps(directory)) if fs.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint (expected {directory}/<step>/, as "
                            "launch/convert.py and every training run write)")
  return fs.join(directory, str(steps[-1]))


def read_meta(ckpt_dir: str) -> dict:
  return json.loads(fs.read_text(fs.join(checkpoint_step_dir(ckpt_dir), "meta", "metadata")))


def load_checkpoint(ckpt_dir: str, *, scan_layers: bool = False,
                    **overrides: Any) -> tuple[ModelConfig, dict]:
  """(ModelConfig, variables) of a converted checkpoint or a run's WORKDIR (its latest step),
  as `from_hf` returns them: {"params", "router_state"?} on the default device, in the
  unscanned layout or stacked per layer group with `scan_layers=True`. `overrides` replace
  ModelConfig fields that do not change parameters (moe_dispatch, attention_impl, dtype)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from agentic_jax.models import scan_variables  # pylint: disable=import-outside-toplevel
  step_dir = checkpoint_step_dir(ckpt_dir)
  meta = json.loads(fs.read_text(fs.join(step_dir, "meta", "metadata")))
  saved_cfg = model_config_from_section(meta["config"]["model"])
  cfg = saved_cfg.replace(scan_layers=False, **overrides)
  # the layout on disk is the one the writer used (a run with scan_layers saves stacked layers)
  layout_cfg = cfg.replace(scan_layers=saved_cfg.scan_layers)
  want = abstract_variables(layout_cfg)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {k: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            want[k]) for k in want if want[k]}
  restored = ocp.PyTreeCheckpointer().restore(
      fs.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  variables = {k: restored[k] for k in target}
  if layout_cfg.scan_layers and not scan_layers:
    from agentic_jax.models import unscan_variables  # pylint: disable=import-outside-toplevel
    variables = unscan_variables(layout_cfg, variables)
  cfg = cfg.replace(scan_layers=scan_layers)
  if scan_layers:
    variables = scan_variables(cfg, variables)
  return cfg, variables
