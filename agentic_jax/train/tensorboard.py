"""A dependency-free TensorBoard event-file writer for scalar summaries.

flax.metrics.tensorboard needs TensorFlow, which this project does not install; the
`tensorboard` pip package can READ event files without TensorFlow but its writers live in
TF / torch. The format is small, so it is written here directly:

  file   WORKDIR/tb/events.out.tfevents.<unix time>.<host>  (TFRecord framing)
  record uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
         masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2^32)
  data   an `Event` protobuf, hand-encoded:
           Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
                     Summary summary = 5; }
           Summary { repeated Value value = 1; }
           Value   { string tag = 1; float simple_value = 2; }
The first event carries file_version "brain.Event:2", as TensorBoard expects. Open with
`tensorboard --logdir WORKDIR/tb` (pip install tensorboard; no TensorFlow needed).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping

_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1  # Castagnoli polynomial, reflected
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _field(number: int, wire: int) -> bytes:
  return _varint((number << 3) | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, file_version: str = "",
                 scalars: Mapping[str, float] | None = None) -> bytes:
  out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(int(step))
  if file_version:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5) + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    out += _bytes_field(5, summary)
  return out


def frame(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data
          + struct.pack("<I", masked_crc32c(data)))


def read_records(path: str) -> list[bytes]:
  """The data of every record, checking both CRCs (ValueError on a damaged record)."""
  out = []
  with open(path, "rb") as f:
    blob = f.read()
  pos = 0
  while pos < len(blob):
    header = blob[pos:pos + 8]
    if len(header) < 8 or struct.unpack("<I", blob[pos + 8:pos + 12])[0] != masked_crc32c(header):
      raise ValueError(f"{path}: bad record header at byte {pos}")
    (n,) = struct.unpack("<Q", header)
    data = blob[pos + 12:pos + 12 + n]
    if len(data) < n or struct.unpack("<I", blob[pos + 12 + n:pos + 16 + n])[0] != masked_crc32c(data):
      raise ValueError(f"{path}: bad record data at byte {pos}")
    out.append(data)
    pos += 16 + n
  return out


class EventWriter:
  """Appends scalar events to a new event file in `logdir`; flushes after every write."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
    self._f = open(self.path, "ab")
    self._f.write(frame(encode_event(now, 0, file_version="brain.Event:2")))
    self._f.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    finite = {k: float(v) for k, v in values.items()}
    if finite:
      self._f.write(frame(encode_event(time.time(), step, scalars=finite)))
      self._f.flush()

  def close(self) -> None:
    if not self._f.closed:
      self._f.close()
