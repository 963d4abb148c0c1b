"""Streaming reads and writes of Hugging Face safetensors checkpoints, one tensor at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} and the raw
little-endian tensor bytes. The `safetensors` package reads it whole or through framework
tensors, but its numpy path knows neither bfloat16 nor float8 (the dtypes released checkpoints
use) and it writes a file from a dict held in memory. So here the header is parsed and every
tensor is read with one seek + read into a numpy array whose dtype comes from ml_dtypes (JAX's
own extended dtypes): converting a 600B-parameter checkpoint holds one tensor at a time, not a
file or the model. Writing streams the same way: the header is computed from shapes first,
then each tensor's bytes are appended as it is produced. Files written here load with
`safetensors.torch.load_file` and transformers' `from_pretrained` (tested).

A checkpoint directory holds `model.safetensors`, or shards `model-0000k-of-0000n.safetensors`
with `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map": {name: file}});
`SafetensorsDir` reads either (and any set of *.safetensors without an index).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Mapping, Optional

import ml_dtypes
import numpy as np

from agentic_jax import fs

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


class SafetensorsError(ValueError):
  """A file that is not a valid safetensors file (one line, naming the file)."""


def _header(f, path: str) -> tuple[dict, int]:
  raw = f.read(8)
  if len(raw) != 8:
    raise SafetensorsError(f"{path}: not a safetensors file (shorter than its 8-byte header size)")
  (n,) = struct.unpack("<Q", raw)
  if n > _MAX_HEADER:
    raise SafetensorsError(f"{path}: not a safetensors file (header size {n} bytes)")
  try:
    header = json.loads(f.read(n))
  except ValueError as e:
    raise SafetensorsError(f"{path}: header is not JSON ({e})") from None
  if not isinstance(header, dict):
    raise SafetensorsError(f"{path}: header is not a JSON object")
  return header, 8 + n


class SafetensorsFile:
  """The tensors of one .safetensors file, read on demand (`read(name)`)."""

  def __init__(self, path: str):
    self.path = path
    with fs.open_file(path, "rb") as f:
      header, self._data_start = _header(f, path)
    self.metadata: dict = header.pop("__metadata__", None) or {}
    self.entries: dict[str, dict] = {}
    for name, e in header.items():
      if not isinstance(e, dict) or e.get("dtype") not in DTYPES:
        raise SafetensorsError(f"{path}: tensor {name!r} has dtype "
                               f"{e.get('dtype') if isinstance(e, dict) else e!r}; "
                               f"supported: {sorted(DTYPES)}")
      begin, end = e["data_offsets"]
      want = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
      if end - begin != want:
        raise SafetensorsError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape "
                               f"{e['shape']} and dtype {e['dtype']} need {want}")
      self.entries[name] = e

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    return DTYPES[self.entries[name]["dtype"]]

  def read(self, name: str) -> np.ndarray:
    """The tensor as a numpy array of its stored dtype (bf16/fp8 as ml_dtypes arrays)."""
    e = self.entries[name]
    begin, end = e["data_offsets"]
    with fs.open_file(self.path, "rb") as f:
      f.seek(self._data_start + begin)
      data = f.read(end - begin)
    if len(data) != end - begin:
      raise SafetensorsError(f"{self.path}: truncated: tensor {name!r} needs bytes "
                             f"{begin}..{end} of the data section")
    return np.frombuffer(data, DTYPES[e["dtype"]]).reshape(e["shape"])


class SafetensorsDir:
  """Every tensor of a checkpoint directory (index or not), by name, read one at a time."""

  def __init__(self, directory: str):
    self.directory = directory
    index = fs.join(directory, INDEX_FILE)
    if fs.exists(index):
      weight_map = json.loads(fs.read_text(index)).get("weight_map")
      if not isinstance(weight_map, dict) or not weight_map:
        raise SafetensorsError(f"{index}: no weight_map")
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(n for n in fs.listdir(directory) if n.endswith(".safetensors"))
      weight_map = None
      if not files:
        raise FileNotFoundError(f"{directory}: no {SINGLE_FILE}, {INDEX_FILE} or other "
                                "*.safetensors file")
    self.files = {n: SafetensorsFile(fs.join(directory, n)) for n in files}
    self._where: dict[str, str] = {}
    for n, f in self.files.items():
      for name in f.entries:
        if name in self._where:
          raise SafetensorsError(f"{directory}: tensor {name!r} is in both {self._where[name]} "
                                 f"and {n}")
        self._where[name] = n
    if weight_map is not None:
      missing = sorted(k for k, v in weight_map.items() if self._where.get(k) != v)
      if missing:
        raise SafetensorsError(f"{index}: {len(missing)} tensors are not where the index says "
                               f"(first: {missing[0]!r})")

  def names(self) -> list[str]:
    return sorted(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def shape(self, name: str) -> tuple[int, ...]:
    return self.files[self._where[name]].shape(name)

  def dtype(self, name: str) -> np.dtype:
    return self.files[self._where[name]].dtype(name)

  def read(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise KeyError(f"{self.directory}: no tensor {name!r}")
    return self.files[self._where[name]].read(name)

  def nbytes(self, name: str) -> int:
    e = self.files[self._where[name]].entries[name]
    return e["data_offsets"][1] - e["data_offsets"][0]


# ---------------------------------------------------------------------------------- writing


def _code(dtype: np.dtype) -> str:
  dtype = np.dtype(dtype)
  if dtype not in _CODES:
    raise ValueError(f"dtype {dtype} has no safetensors code; supported: {sorted(map(str, _CODES))}")
  return _CODES[dtype]


def write_file(path: str, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
               produce: Callable[[str], np.ndarray], metadata: Optional[dict] = None) -> None:
  """Writes one safetensors file of the tensors in `specs` (name -> (shape, dtype)), in that
  order, calling `produce(name)` for each only when its bytes are due: one tensor in memory at
  a time. Remote paths are uploaded whole (objects cannot be appended to), so a local path is
  where the streaming bound holds."""
  offsets, pos = {}, 0
  for name, (shape, dtype) in specs.items():
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    offsets[name] = (pos, pos + n)
    pos += n
  header = {"__metadata__": {str(k): str(v) for k, v in (metadata or {"format": "pt"}).items()}}
  header.update({name: {"dtype": _code(dtype), "shape": [int(s) for s in shape],
                        "data_offsets": list(offsets[name])}
                 for name, (shape, dtype) in specs.items()})
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned, as the format advises
  local = not fs.is_remote(path)
  tmp = f"{path}.tmp{os.getpid()}" if local else None
  f = open(tmp, "wb") if local else fs.open_file(path, "wb")  # pylint: disable=consider-using-with
  try:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, (shape, dtype) in specs.items():
      x = np.ascontiguousarray(produce(name))
      if tuple(x.shape) != tuple(shape) or x.dtype != np.dtype(dtype):
        raise ValueError(f"tensor {name!r}: produced {x.shape} {x.dtype}, declared "
                         f"{tuple(shape)} {np.dtype(dtype)}")
      if x.dtype.byteorder == ">":
        x = x.astype(x.dtype.newbyteorder("<"))
      f.write(x.tobytes())
  finally:
    f.close()
  if local:
    os.replace(tmp, path)


def plan_shards(specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
                max_shard_bytes: int) -> list[list[str]]:
  """Tensor names grouped into shards of at most `max_shard_bytes` each (a tensor larger than
  that gets a shard of its own), in the given order."""
  shards: list[list[str]] = [[]]
  size = 0
  for name, (shape, dtype) in specs.items():
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += n
  return [s for s in shards if s]


def write_dir(directory: str, specs: Mapping[str, tuple[tuple[int, ...], np.dtype]],
              produce: Callable[[str], np.ndarray], *, max_shard_bytes: int = 5 << 30,
              metadata: Optional[dict] = None, on_shard: Optional[Callable[[str], None]] = None
              ) -> list[str]:
  """A checkpoint directory as transformers writes it: one `model.safetensors` when everything
  fits one shard, else `model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`.
  Returns the file names."""
  fs.makedirs(directory)
  shards = plan_shards(specs, max_shard_bytes)
  if len(shards) == 1:
    names = [SINGLE_FILE]
  else:
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  total = 0
  weight_map = {}
  for file, members in zip(names, shards):
    sub = {n: specs[n] for n in members}
    write_file(fs.join(directory, file), sub, produce, metadata)
    for n, (shape, dtype) in sub.items():
      weight_map[n] = file
      total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if on_shard is not None:
      on_shard(file)
  if len(shards) > 1:
    fs.write_text(fs.join(directory, INDEX_FILE), json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2))
  elif fs.exists(fs.join(directory, INDEX_FILE)):  # a stale index would shadow the new file
    fs.remove(fs.join(directory, INDEX_FILE))
  return names

