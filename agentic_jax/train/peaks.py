"""Rated peak FLOP/s per accelerator kind, and a measured matmul ceiling for CPUs, for MFU.

MFU only means something against a fixed denominator: the device's rated dense peak (what
MaxText and the model reports quote), not a matmul timed in the same run, which moves with
the machine's load and with how well XLA tiles one shape. `rated_peak_flops(kind, dtype)`
looks `jax.devices()[0].device_kind` up in PEAKS (loosely: "NVIDIA H100 80GB HBM3",
"TPU v5 lite", ...); CPUs have no rated figure here, so `MatmulCeiling` times an f32
2048^3 `jnp.dot` and callers divide by its best-of-run value (`denominator`), labelled
as such. The same-round matmul stays available as a second, separately labelled ratio.

dtype: "bf16" = bfloat16 matmuls. "f32" = float32 arrays at XLA's default matmul precision:
on NVIDIA Ampere/Hopper that runs on TF32 tensor cores (so the TF32 peak), on TPU as one
bfloat16 pass (so the bf16 peak).

The train loop still divides by config.train.peak_flops (this module changes nothing there);
benchmarks/train_step.py and benchmarks/train_vs_torch.py use it.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from typing import Optional

import jax
import jax.numpy as jnp

T = 1e12


@dataclasses.dataclass(frozen=True)
class RatedPeak:
  name: str
  bf16: float  # dense (no structured sparsity) bfloat16 FLOP/s
  tf32: Optional[float]  # dense TF32 FLOP/s (NVIDIA); None where f32 matmuls run as bf16 (TPU)

  def for_dtype(self, dtype: str) -> float:
    if dtype == "bf16":
      return self.bf16
    if dtype == "f32":
      return self.tf32 if self.tf32 is not None else self.bf16
    raise ValueError(f"dtype must be 'bf16' or 'f32', got {dtype!r}")


# (pattern on the normalised device_kind, peak); the first match wins, so the specific forms
# (PCIe, NVL, "lite") come before the bare chip name.
# Sources (vendors' published per-chip figures; NVIDIA's datasheets quote tensor-core numbers
# "with sparsity", the dense figure is half of that):
#   H100 SXM5: BF16 1,979 / TF32 989 TFLOPS with sparsity -> 989 / 494.5 dense (H100 datasheet).
#   H100 PCIe: 1,513 / 756 with sparsity -> 756 / 378 dense.
#   H100 NVL: 1,671 / 835 with sparsity -> 835.5 / 417.5 dense.
#   H200 SXM: same tensor cores and clocks as H100 SXM (H200 datasheet: 1,979 / 989 sparse);
#   H200 NVL: 1,671 / 835 sparse.  GH200: the H100 SXM figures (GH200 datasheet).
#   A100 (SXM4 and PCIe, 40 and 80 GB): BF16 312, TF32 156 dense (A100 datasheet).
#   TPU v4: 275 bf16 TFLOPS per chip; v5e: 197; v5p: 459; v6e (Trillium): 918 (Cloud TPU docs,
#   "System architecture" pages). JAX names them "TPU v4", "TPU v5 lite", "TPU v5"/"TPU v5p",
#   "TPU v6 lite"/"TPU v6e".
PEAKS: tuple[tuple[str, RatedPeak], ...] = (
    (r"\bgh200\b", RatedPeak("GH200", 989 * T, 494.5 * T)),
    (r"\bh100\b.*\bpcie\b", RatedPeak("H100 PCIe", 756 * T, 378 * T)),
    (r"\bh100\b.*\bnvl\b", RatedPeak("H100 NVL", 835.5 * T, 417.5 * T)),
    (r"\bh100\b", RatedPeak("H100 SXM", 989 * T, 494.5 * T)),
    (r"\bh200\b.*\bnvl\b", RatedPeak("H200 NVL", 835.5 * T, 417.5 * T)),
    (r"\bh200\b", RatedPeak("H200 SXM", 989 * T, 494.5 * T)),
    (r"\ba100\b", RatedPeak("A100", 312 * T, 156 * T)),
    (r"\btpu ?v4\b(?! lite)", RatedPeak("TPU v4", 275 * T, None)),
    (r"\btpu ?v5 ?(lite|e)\b", RatedPeak("TPU v5e", 197 * T, None)),
    (r"\btpu ?v5p?\b", RatedPeak("TPU v5p", 459 * T, None)),
    (r"\btpu ?v6 ?(lite|e)\b", RatedPeak("TPU v6e", 918 * T, None)),
)


def normalise(device_kind: str) -> str:
  """Lower case, '-' and '_' as spaces, runs of spaces squeezed ("NVIDIA A100-SXM4-80GB" ->
  "nvidia a100 sxm4 80gb"), so one pattern covers the spellings drivers report."""
  return re.sub(r"\s+", " ", re.sub(r"[-_]", " ", device_kind.lower())).strip()


def lookup(device_kind: str) -> Optional[RatedPeak]:
  """The rated peak of a device kind, or None (CPUs, unknown chips)."""
  kind = normalise(device_kind)
  for pattern, peak in PEAKS:
    if re.search(pattern, kind):
      return peak
  return None


def rated_peak_flops(device_kind: str, dtype: str = "bf16") -> Optional[float]:
  peak = lookup(device_kind)
  return None if peak is None else peak.for_dtype(dtype)


class MatmulCeiling:
  """A jitted float32 n x n x n `jnp.dot` on the default device; `measure(k)` = FLOP/s of the
  median of k runs (and remembered, so `best` is the best-of-run figure)."""

  def __init__(self, n: int = 2048):
    self.n = n
    self.a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    self.b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    self.f = jax.jit(jnp.dot)
    for _ in range(2):  # compile and first-touch excluded
      self.f(self.a, self.b).block_until_ready()
    self.history: list[float] = []

  def measure(self, k: int = 3) -> float:
    ts = []
    for _ in range(k):
      t0 = time.perf_counter()
      self.f(self.a, self.b).block_until_ready()
      ts.append(time.perf_counter() - t0)
    flops = 2 * self.n ** 3 / statistics.median(ts)
    self.history.append(flops)
    return flops

  @property
  def best(self) -> float:
    return max(self.history) if self.history else self.measure()


def denominator(device_kind: str, dtype: str,
                ceiling: Optional[MatmulCeiling]) -> tuple[float, str]:
  """(FLOP/s, label) MFU divides by: the rated peak where the kind is known, else (CPU, or a
  chip missing from PEAKS) the best-of-run f32 matmul, which `ceiling` must then have measured."""
  peak = lookup(device_kind)
  if peak is not None:
    label = f"rated peak ({peak.name} {'bf16' if dtype == 'bf16' or peak.tf32 is None else 'TF32'})"
    return peak.for_dtype(dtype), label
  if ceiling is None:
    raise ValueError(f"no rated peak for {device_kind!r} and no matmul ceiling to fall back on")
  return ceiling.best, "best-of-run f32 matmul"
