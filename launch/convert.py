r"""Converts checkpoints between Hugging Face directories and agentic_jax (orbax), streamed.

    python launch/convert.py --from_hf=HF_DIR --to=CKPT_DIR [--dtype=bfloat16] [--mesh=fsdp:8]
    python launch/convert.py --from_ckpt=CKPT_DIR|WORKDIR --to_hf=HF_DIR [--dtype=bfloat16] \
        [--max_shard_size=5GB]

HF_DIR holds config.json and *.safetensors (one file or shards with an index; per-expert or
fused expert tensors; DeepSeek-V3's FP8 weights are dequantised). CKPT_DIR then starts
mid-training, RL or RA3 with --config.init_from=CKPT_DIR, and launch/generate.py /
launch/eval.py read it. Export writes config.json, sharded safetensors with an index and the
tokenizer files: transformers' from_pretrained loads it offline. Paths may be gs://.
Library: agentic_jax/convert/checkpoint.py.
"""

from __future__ import annotations

import re

from absl import app, flags, logging

from agentic_jax import cli

_FROM_HF = flags.DEFINE_string("from_hf", None, "Hugging Face checkpoint directory to import.")
_TO = flags.DEFINE_string("to", None, "Output checkpoint directory (with --from_hf).")
_FROM_CKPT = flags.DEFINE_string("from_ckpt", None, "Converted checkpoint or run WORKDIR to "
                                 "export (its latest step).")
_TO_HF = flags.DEFINE_string("to_hf", None, "Output Hugging Face directory (with --from_ckpt).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "Import: the parameters' dtype in the checkpoint (and the model's "
                           "param_dtype). Export: the safetensors dtype.")
_SHARD = flags.DEFINE_string("max_shard_size", "5GB", "Export: largest safetensors shard "
                             "(e.g. 500MB, 5GB).")
_MESH = flags.DEFINE_string("mesh", "", "Import: write every array sharded for this training "
                            "mesh, e.g. fsdp:8,expert:4 (storage chunks tile the device shards; "
                            "built from host CPU devices, so any size works on any machine).")
_MARKERS = flags.DEFINE_string(
    "marker_map", "", "Import: JSON {our marker: the checkpoint's token text}, e.g. "
    "'{\"<|end_turn|>\": \"<|im_end|>\"}', to reuse its chat tokens for our roles; markers "
    "not named (nor found in its tokenizer) are added as new special tokens.")
_BATCH = flags.DEFINE_integer("batch_mb", 256, "Import: tensors handed to orbax per write "
                              "(MiB); with the largest tensor, this bounds host memory.",
                              lower_bound=1)




def _bytes(text: str) -> int:
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
  if not m:
    raise ValueError(f"--max_shard_size={text!r}: expected a size such as 500MB or 5GB")
  return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2)])


def _cpu_mesh(spec: str):
  """A mesh of that many host CPU devices (conversion runs in host memory, whatever the
  accelerators), with the mesh axes the training configs use."""
  import os  # pylint: disable=import-outside-toplevel
  from agentic_jax.parallel import mesh as mesh_lib  # pylint: disable=import-outside-toplevel
  try:
    sizes = mesh_lib.parse_mesh_spec(spec)
  except ValueError as e:
    cli.fail(e)
  unknown = set(sizes) - set(mesh_lib.MESH_AXES)
  if unknown or any(v < 1 for v in sizes.values()):
    cli.fail(f"--mesh={spec}: axes are {list(mesh_lib.MESH_AXES)} with sizes >= 1")
  n = 1
  for v in sizes.values():
    n *= v
  # before the CPU backend starts: enough host devices for the mesh
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={n}")
  import jax  # pylint: disable=import-outside-toplevel
  shape = tuple(sizes.get(a, 1) for a in mesh_lib.MESH_AXES)
  return jax.make_mesh(shape, mesh_lib.MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=jax.devices("cpu")[:n])


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:  # library INFO logs (orbax, jax) only on request
    logging.set_verbosity(logging.WARNING)
  importing = _FROM_HF.value is not None or _TO.value is not None
  exporting = _FROM_CKPT.value is not None or _TO_HF.value is not None
  if importing == exporting:
    cli.fail("give either --from_hf=HF_DIR --to=CKPT_DIR or --from_ckpt=CKPT_DIR --to_hf=HF_DIR")
  if importing and not (_FROM_HF.value and _TO.value):
    cli.fail("--from_hf and --to go together")
  if exporting and not (_FROM_CKPT.value and _TO_HF.value):
    cli.fail("--from_ckpt and --to_hf go together")
  try:
    shard = _bytes(_SHARD.value)
  except ValueError as e:
    cli.fail(e)
  mesh = None
  if _MESH.value:
    if not importing:
      cli.fail("--mesh applies to --from_hf (the layout the checkpoint is written in)")
    mesh = _cpu_mesh(_MESH.value)
  marker_map = None
  if _MARKERS.value:
    import json  # pylint: disable=import-outside-toplevel
    try:
      marker_map = json.loads(_MARKERS.value)
    except ValueError as e:
      cli.fail(f"--marker_map: not JSON ({e})")
    if not isinstance(marker_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in marker_map.items()):
      cli.fail("--marker_map: expected a JSON object of strings {our marker: their token}")
  from agentic_jax import convert  # pylint: disable=import-outside-toplevel  (fast --help)
  from agentic_jax.convert import safetensors_io  # pylint: disable=import-outside-toplevel
  try:
    if importing:
      convert.hf_to_checkpoint(_FROM_HF.value, _TO.value, param_dtype=_DTYPE.value,
                               batch_bytes=_BATCH.value << 20, mesh=mesh,
                               marker_map=marker_map)
    else:
      convert.checkpoint_to_hf(_FROM_CKPT.value, _TO_HF.value, dtype=_DTYPE.value,
                               max_shard_bytes=shard)
  except (convert.ConversionError, safetensors_io.SafetensorsError, FileNotFoundError) as e:
    cli.fail(e)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
