"""Builds the training data iterator from `config.data` (contracts 2-5 of issue 3).

    inp = build_input(config, workdir, vocab_limit=model_cfg.vocab_size)
    batch = next(inp.iterator)   # dict of numpy [B, T] (agentic_jax.data.packing layout)

Sources (`data.sources`, index = source_id in batches):
  "calculator" / "pyrepo" / "stdlib_edits"   built-in generators (agentic_jax.data.builtin),
                                             data.num_samples[i] samples from seed config.seed
  "NAME=PATH"  /  "NAME=adp:PATH"            a JSONL file in our schema / in ADP, read with
                                             data.on_bad_record (skips counted in the report)
  "synthetic"                                (alone) packed arithmetic sequences of random
                                             tokens: no tokenizer, for benchmarks and tests
Tokenizer: data.tokenizer.path, else WORKDIR/tokenizer.model if a previous run wrote it
(so a resumed run tokenizes identically), else trained on the built-in corpus
(builtin.corpus_texts(seed)) with data.tokenizer.vocab_size ids, and saved there.
The iterator is the pipeline's checkpointable grain iterator (or the synthetic one).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import grain
import numpy as np

SYNTHETIC = "synthetic"
_KINDS_FALLBACK = ("context",)


@dataclasses.dataclass
class Input:
  iterator: Any  # grain.DatasetIterator yielding batches
  source_names: tuple[str, ...]
  kind_names: tuple[str, ...]  # target_kind index -> name
  tokenizer: Any  # None for synthetic data
  report: dict  # what was generated/read/skipped, timings (goes into summary.json)


# ------------------------------------------------------------------ synthetic source


class SyntheticIterator(grain.DatasetIterator):
  """Rows packed with segments of arithmetic token sequences t_i = (a + i*b) mod V.

  Every segment (length 16..T/2, random a, b) is predictable after its first two tokens,
  so a model's loss falls quickly. Batch n is a pure function of (seed, n); the state is n.
  """

  def __init__(self, *, batch_size: int, seq_len: int, vocab_size: int, seed: int):
    super().__init__()
    if vocab_size < 4:
      raise ValueError(f"synthetic data needs vocab_size >= 4, got {vocab_size}")
    self.batch_size, self.seq_len, self.vocab, self.seed = batch_size, seq_len, vocab_size, seed
    self._step = 0

  def get_state(self) -> dict:
    return {"step": self._step, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    if state.get("seed") != self.seed:
      raise ValueError(f"synthetic iterator state has seed {state.get('seed')!r}, expected {self.seed}")
    self._step = int(state["step"])

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self._step])
    self._step += 1
    b, t, v = self.batch_size, self.seq_len, self.vocab
    out = {k: np.zeros((b, t), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    out["weights"] = np.zeros((b, t), np.float32)
    out["target_kind"] = np.full((b, t), -1, np.int32)
    out["source_id"] = np.full((b, t), -1, np.int32)
    for row in range(b):
      pos, seg = 0, 0
      while pos < t:
        n = min(int(rng.integers(16, max(17, t // 2))), t - pos)
        seg += 1
        a, step = rng.integers(1, v), rng.integers(1, v)
        toks = ((a + step * np.arange(n + 1)) % (v - 1) + 1).astype(np.int32)  # ids 1..V-1
        sl = slice(pos, pos + n)
        out["inputs"][row, sl] = toks[:n]
        out["targets"][row, sl] = toks[1:]
        out["targets"][row, pos + n - 1] = 0
        out["weights"][row, sl] = 1.0
        out["weights"][row, pos + n - 1] = 0.0  # the last token has no target in its segment
        out["segment_ids"][row, sl] = seg
        out["positions"][row, sl] = np.arange(n)
        out["target_kind"][row, sl] = 0
        out["target_kind"][row, pos + n - 1] = -1
        out["source_id"][row, sl] = 0
        pos += n
    return out


# ------------------------------------------------------------------ real sources


def _parse_source(spec: str) -> tuple[str, Optional[str], Optional[str]]:
  """"name" -> (name, None, None); "name=path" -> (name, path, "native"); "name=adp:path"."""
  name, sep, rest = spec.partition("=")
  if not sep:
    return spec, None, None
  if rest.startswith("adp:"):
    return name, rest[4:], "adp"
  return name, rest, "native"


def _per_source(data: Any, key: str, n: int) -> tuple:
  values = tuple(data[key])
  if len(values) != n:
    raise ValueError(f"config.data.{key} has {len(values)} entries but config.data.sources has {n}")
  return values


def _load_samples(data: Any, seed: int, report: dict) -> list[tuple[str, list]]:
  names = tuple(data.sources)
  counts = _per_source(data, "num_samples", len(names))
  out = []
  for i, spec in enumerate(names):
    name, path, fmt = _parse_source(spec)
    t0 = time.perf_counter()
    if path is None:
      from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
      samples = builtin.generate(name, seed=seed, num_samples=int(counts[i]))
      report.setdefault("sources", {})[name] = {"generated": len(samples)}
    else:
      from agentic_jax.data.reader import read_samples  # pylint: disable=import-outside-toplevel
      samples, rep = read_samples(path, fmt, data.on_bad_record,
                                  source=name if fmt == "adp" else None)
      report.setdefault("sources", {})[name] = {
          "file": path, "records": rep.records, "kept": rep.kept, "skipped": rep.skipped,
          "skipped_by_field": dict(rep.skipped_by_field), "summary": rep.summary()}
      if rep.skipped:
        print(f"[data] {rep.summary()}", flush=True)
    report["sources"][name]["seconds"] = round(time.perf_counter() - t0, 3)
    if not samples:
      raise ValueError(f"config.data.sources[{i}] ({spec!r}) produced no samples")
    out.append((name, samples))
  return out


def _tokenizer(data: Any, workdir: str, seed: int, report: dict):
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  path = data.tokenizer.path
  if path:
    report["tokenizer"] = {"path": path, "trained": False}
    return tok_lib.load_tokenizer(path)
  saved = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(saved):
    report["tokenizer"] = {"path": saved, "trained": False}
    return tok_lib.load_tokenizer(saved)
  from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  texts = list(builtin.corpus_texts(seed))
  tok = tok_lib.SentencePieceTokenizer.train(texts, int(data.tokenizer.vocab_size), seed=seed)
  os.makedirs(workdir, exist_ok=True)
  tok.save(saved)
  report["tokenizer"] = {"path": saved, "trained": True, "vocab_size": tok.vocab_size,
                         "seconds": round(time.perf_counter() - t0, 3)}
  return tok


def build_input(config: Any, workdir: str, *, vocab_limit: int, process_index: int = 0,
                process_count: int = 1) -> Input:
  """The data iterator for `config.data` (module docstring). `vocab_limit` is the model's
  vocabulary size: a tokenizer with more ids is an error (they would index past the table)."""
  data = config.data
  if data.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={data.batch_size} is not divisible by the "
                     f"{process_count} processes")
  per_process = data.batch_size // process_count
  names = tuple(data.sources)
  report: dict = {}
  if SYNTHETIC in names:
    if names != (SYNTHETIC,):
      raise ValueError(f"config.data.sources: {SYNTHETIC!r} cannot be mixed with other sources")
    it = SyntheticIterator(batch_size=per_process, seq_len=data.seq_len, vocab_size=vocab_limit,
                           seed=config.seed + 7919 * process_index)
    return Input(it, names, _KINDS_FALLBACK, None, {"synthetic": True})

  from agentic_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.render import MASK_KINDS, render  # pylint: disable=import-outside-toplevel
  mix = _per_source(data, "source_weights", len(names))
  loss_w = _per_source(data, "loss_weights", len(names))
  t0 = time.perf_counter()
  loaded = _load_samples(data, config.seed, report)
  tok = _tokenizer(data, workdir, config.seed, report)
  if tok.vocab_size > vocab_limit:
    raise ValueError(f"tokenizer has {tok.vocab_size} ids but config.model.vocab_size is "
                     f"{vocab_limit}; raise the model's vocab_size or lower data.tokenizer.vocab_size")
  t1 = time.perf_counter()
  sources = []
  for (name, samples), weight, lw in zip(loaded, mix, loss_w):
    rendered = [render(s, tok, data.mask_policy, float(lw)) for s in samples]
    sources.append(pipeline.Source(name, float(weight), rendered))
    report["sources"][name]["tokens"] = int(sum(len(r) for r in rendered))
  report["render_seconds"] = round(time.perf_counter() - t1, 3)
  report["data_seconds"] = round(time.perf_counter() - t0, 3)
  stages = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in data.stages] or None
  it = pipeline.make_batches(sources, seq_len=data.seq_len, batch_size=per_process,
                             seed=config.seed, stages=stages, overlong=data.overlong,
                             process_index=process_index, process_count=process_count,
                             pad_id=tok.pad_id)
  return Input(it, tuple(n for n, _ in loaded), tuple(MASK_KINDS), tok, report)


def pipeline_stats(inp: Input) -> dict:
  """The iterator's counts (split/dropped over-length samples, padding...), if it keeps any."""
  stats = getattr(inp.iterator, "stats", None)
  return stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else {}
