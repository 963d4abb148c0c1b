"""Reading TensorBoard event files back in tests (test_runner, test_loop).

`read_events(tb_dir)` returns the `Event` protos of every event file in a directory, oldest file
first. With the `tensorboard` package installed it reads them with TensorBoard's own loader
(LegacyEventFileLoader: the events as written, without the data_compat migration that turns
scalars into tensors). Without it (the test venv: tensorboard is no dependency) the
TFRecord framing (length, masked CRC32C of the length, data, masked CRC32C of the data) is split
here, both CRCs checked with tensorboardX's own masked_crc32c, and every record is decoded by
tensorboardX's generated protobuf class (`tensorboardX.proto.event_pb2.Event`): no field of an
event is decoded by hand. (tensorboardX 2.6 has no reader of its own.)
"""

from __future__ import annotations

import os
import struct
from typing import Any


def _read_file(path: str) -> list[Any]:
  # pylint: disable=import-outside-toplevel
  try:
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
  except ImportError:
    pass
  else:
    return list(LegacyEventFileLoader(path).Load())
  from tensorboardX.proto.event_pb2 import Event
  from tensorboardX.record_writer import masked_crc32c
  with open(path, "rb") as f:
    blob = f.read()
  out, pos = [], 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
    data = blob[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
    assert header_crc == masked_crc32c(header) and data_crc == masked_crc32c(data), (
        f"{path}: damaged record at byte {pos}")
    out.append(Event.FromString(data))
    pos += 16 + length
  return out


def read_events(tb_dir: str) -> list[Any]:
  """Every event of every events.out.tfevents.* file in `tb_dir`, file by file (oldest first:
  the names start with the creation time)."""
  files = sorted(f for f in os.listdir(tb_dir) if f.startswith("events.out.tfevents."))
  return [e for f in files for e in _read_file(os.path.join(tb_dir, f))]


def scalars(events: list[Any]) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value), ...] of the scalar (simple_value) summaries, in file order."""
  out: dict[str, list[tuple[int, float]]] = {}
  for e in events:
    for v in e.summary.value:
      if v.WhichOneof("value") == "simple_value":
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out
