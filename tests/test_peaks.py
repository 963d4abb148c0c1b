"""agentic_jax.train.peaks: the rated-peak lookup and the CPU fallback."""

from __future__ import annotations

import pytest

from agentic_jax.train import peaks

T = 1e12


@pytest.mark.parametrize("kind,name,bf16,f32", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989 * T, 494.5 * T),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756 * T, 378 * T),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5 * T, 417.5 * T),
    ("NVIDIA H200", "H200 SXM", 989 * T, 494.5 * T),
    ("NVIDIA H200 NVL", "H200 NVL", 835.5 * T, 417.5 * T),
    ("NVIDIA GH200 480GB", "GH200", 989 * T, 494.5 * T),
    ("NVIDIA A100-SXM4-80GB", "A100", 312 * T, 156 * T),
    ("NVIDIA A100-PCIE-40GB", "A100", 312 * T, 156 * T),
    # TPUs: f32 at default precision runs one bf16 pass, so f32 maps to the bf16 peak
    ("TPU v4", "TPU v4", 275 * T, 275 * T),
    ("TPU v5 lite", "TPU v5e", 197 * T, 197 * T),
    ("TPU v5e", "TPU v5e", 197 * T, 197 * T),
    ("TPU v5", "TPU v5p", 459 * T, 459 * T),
    ("TPU v5p", "TPU v5p", 459 * T, 459 * T),
    ("TPU v6 lite", "TPU v6e", 918 * T, 918 * T),
    ("TPU v6e", "TPU v6e", 918 * T, 918 * T),
])
def test_lookup(kind, name, bf16, f32):
  peak = peaks.lookup(kind)
  assert peak is not None and peak.name == name
  assert peaks.rated_peak_flops(kind, "bf16") == bf16
  assert peaks.rated_peak_flops(kind, "f32") == f32


@pytest.mark.parametrize("kind", ["cpu", "TFRT_CPU_0", "TPU v4 lite", "NVIDIA GeForce RTX 4090",
                                  "NVIDIA H20"])
def test_unknown_kinds_have_no_rated_peak(kind):
  assert peaks.lookup(kind) is None and peaks.rated_peak_flops(kind) is None


def test_normalise_spellings():
  assert peaks.normalise("  NVIDIA  A100-SXM4_80GB ") == "nvidia a100 sxm4 80gb"


def test_bad_dtype():
  with pytest.raises(ValueError, match="dtype"):
    peaks.rated_peak_flops("TPU v4", "fp8")


def test_denominator_rated_and_cpu_fallback():
  flops, label = peaks.denominator("NVIDIA H100 80GB HBM3", "f32", None)
  assert flops == 494.5 * T and label == "rated peak (H100 SXM TF32)"
  flops, label = peaks.denominator("TPU v5 lite", "f32", None)
  assert flops == 197 * T and label == "rated peak (TPU v5e bf16)"
  with pytest.raises(ValueError, match="no rated peak"):
    peaks.denominator("cpu", "f32", None)
  ceiling = peaks.MatmulCeiling(n=128)
  runs = [ceiling.measure(2) for _ in range(3)]
  assert all(r > 0 for r in runs) and ceiling.best == max(runs)
  flops, label = peaks.denominator("cpu", "f32", ceiling)
  assert flops == max(runs) and label == "best-of-run f32 matmul"
