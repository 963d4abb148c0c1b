"""Builds the training data iterator and the held-out eval batches from `config.data`.

    inp = build_input(config, workdir, vocab_limit=model_cfg.vocab_size, eval_batches=4)
    batch = next(inp.iterator)   # dict of numpy [B, T] (agentic_jax.data.packing layout)
    inp.eval_batches             # list of 4 such batches, fixed for the run

Multi-process: `process_index`/`process_count` number the distinct row blocks of the global
batch (parallel.data_shard); each process gets batch_size / process_count rows. The global
batch does not depend on the process count: it is `data.pack_groups` (default 1) packing
groups of batch_size / pack_groups rows (agentic_jax.data.groups), and a process builds only
the groups its rows fall in. Set pack_groups to a multiple of the process count on large
jobs so that no process packs rows it does not feed.

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

Held-out eval data (`eval_batches` > 0), never overlapping the training samples:
  built-in sources  data.eval_num_samples[i] samples generated from seed config.seed +
                    EVAL_SEED_OFFSET (training uses config.seed);
  file sources      the LAST data.eval_num_samples[i] records of the file, which are removed
                    from training whenever data.eval_num_samples is set (eval on or off, so the
                    training data never depends on train.eval_every);
  synthetic         rows drawn from a separate random stream (stream 1; training is stream 0).
Any eval sample whose rendered tokens equal a training sample's is dropped and counted
(report["eval"]["sources"][name]["dropped_overlap"]). The eval batches are packed by their own
pipeline (seed config.seed + EVAL_SEED_OFFSET, the training mixture weights, no stages) and
taken once, so evaluating never advances or perturbs the training iterator.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import grain
import numpy as np

SYNTHETIC = "synthetic"
EVAL_SEED_OFFSET = 1_000_003
_KINDS_FALLBACK = ("context",)


@dataclasses.dataclass
class Input:
  iterator: Any  # grain.DatasetIterator yielding batches
  source_names: tuple[str, ...]
  kind_names: tuple[str, ...]  # target_kind index -> name
  tokenizer: Any  # None for synthetic data
  report: dict  # what was generated/read/skipped, timings (goes into summary.json)
  eval_batches: list = dataclasses.field(default_factory=list)  # held-out, this process's rows


# ------------------------------------------------------------------ synthetic source


class SyntheticIterator(grain.DatasetIterator):
  """Rows packed with segments of arithmetic token sequences t_i = (a + i*b) mod V.

  Every segment (length 16..T/2, random a, b) is predictable after its first two tokens,
  so a model's loss falls quickly. Row r of batch n is a pure function of (seed, stream, n,
  row_offset + r): a process feeding global rows [row_offset, row_offset + batch_size) makes
  exactly those rows of the one-process batch, so the global batch does not depend on the
  number of processes. The state is n.
  """

  def __init__(self, *, batch_size: int, seq_len: int, vocab_size: int, seed: int,
               row_offset: int = 0, stream: int = 0):
    super().__init__()
    if vocab_size < 4:
      raise ValueError(f"synthetic data needs vocab_size >= 4, got {vocab_size}")
    if min(seed, row_offset, stream) < 0:
      raise ValueError(f"synthetic data: seed, row_offset, stream must be >= 0, got "
                       f"{seed}, {row_offset}, {stream}")
    self.batch_size, self.seq_len, self.vocab, self.seed = batch_size, seq_len, vocab_size, seed
    self.row_offset, self.stream = row_offset, stream
    self._step = 0

  def get_state(self) -> dict:
    return {"step": self._step, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    if state.get("seed") != self.seed:
      raise ValueError(f"synthetic iterator state has seed {state.get('seed')!r}, expected {self.seed}")
    self._step = int(state["step"])

  def __next__(self) -> dict[str, np.ndarray]:
    step = self._step
    self._step += 1
    b, t, v = self.batch_size, self.seq_len, self.vocab
    out = {k: np.zeros((b, t), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
    out["weights"] = np.zeros((b, t), np.float32)
    out["target_kind"] = np.full((b, t), -1, np.int32)
    out["source_id"] = np.full((b, t), -1, np.int32)
    for row in range(b):
      rng = np.random.default_rng([self.seed, self.stream, step, self.row_offset + row])
      pos, seg = 0, 0
      while pos < t:
        n = min(int(rng.integers(16, max(17, t // 2))), t - pos)
        seg += 1
        a, inc = rng.integers(1, v), rng.integers(1, v)
        toks = ((a + inc * np.arange(n + 1)) % (v - 1) + 1).astype(np.int32)  # ids 1..V-1
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


def _eval_counts(data: Any, n: int) -> Optional[tuple]:
  """data.eval_num_samples per source (ints >= 0), or None when the key is absent."""
  if "eval_num_samples" not in data:
    return None
  counts = _per_source(data, "eval_num_samples", n)
  for i, c in enumerate(counts):
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
      raise ValueError(f"config.data.eval_num_samples[{i}]: expected an int >= 0, got {c!r}")
  return counts


def _load_samples(data: Any, seed: int, report: dict, *,
                  with_eval: bool) -> list[tuple[str, list, list]]:
  """[(name, training samples, held-out samples)] per source (module docstring); held-out
  built-in samples are only generated when `with_eval`."""
  names = tuple(data.sources)
  counts = _per_source(data, "num_samples", len(names))
  eval_counts = _eval_counts(data, len(names)) or (0,) * len(names)
  out = []
  for i, spec in enumerate(names):
    name, path, fmt = _parse_source(spec)
    t0 = time.perf_counter()
    held: list = []
    if path is None:
      from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
      samples = builtin.generate(name, seed=seed, num_samples=int(counts[i]))
      report.setdefault("sources", {})[name] = {"generated": len(samples)}
      if with_eval and eval_counts[i]:
        held = builtin.generate(name, seed=seed + EVAL_SEED_OFFSET, num_samples=int(eval_counts[i]))
    else:
      from agentic_jax.data.reader import read_samples  # pylint: disable=import-outside-toplevel
      samples, rep = read_samples(path, fmt, data.on_bad_record,
                                  source=name if fmt == "adp" else None)
      report.setdefault("sources", {})[name] = {
          "file": path, "records": rep.records, "kept": rep.kept, "skipped": rep.skipped,
          "skipped_by_field": dict(rep.skipped_by_field), "summary": rep.summary()}
      if rep.skipped:
        print(f"[data] {rep.summary()}", flush=True)
      if eval_counts[i]:  # the held-out tail leaves training whether or not eval runs
        if eval_counts[i] >= len(samples):
          raise ValueError(f"config.data.eval_num_samples[{i}]={eval_counts[i]} holds out all "
                           f"{len(samples)} samples of {spec!r}; nothing would be left to train on")
        samples, held = samples[:-eval_counts[i]], samples[-eval_counts[i]:]
        report["sources"][name]["held_out_for_eval"] = len(held)
    report["sources"][name]["seconds"] = round(time.perf_counter() - t0, 3)
    if not samples:
      raise ValueError(f"config.data.sources[{i}] ({spec!r}) produced no samples")
    out.append((name, samples, held))
  return out


def _train_tokenizer(data: Any, seed: int):
  from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  texts = list(builtin.corpus_texts(seed))
  return tok_lib.SentencePieceTokenizer.train(texts, int(data.tokenizer.vocab_size), seed=seed)


def ensure_tokenizer(config: Any, workdir: str) -> dict:
  """Makes sure the tokenizer file `build_input` will load exists (training and saving it to
  WORKDIR/tokenizer.model if needed); returns {"path", "trained"[, "seconds"]} ({} for
  synthetic data). A multi-process run calls this on process 0 only, then a barrier, so
  that every process loads the same file instead of training its own."""
  data = config.data
  if SYNTHETIC in tuple(data.sources):
    return {}
  if data.tokenizer.path:
    return {"path": data.tokenizer.path, "trained": False}
  saved = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(saved):
    return {"path": saved, "trained": False}
  t0 = time.perf_counter()
  tok = _train_tokenizer(data, config.seed)
  os.makedirs(workdir, exist_ok=True)
  tok.save(saved)
  return {"path": saved, "trained": True, "seconds": round(time.perf_counter() - t0, 3)}


def _tokenizer(data: Any, workdir: str, seed: int, report: dict, *, may_train: bool):
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  path = data.tokenizer.path
  if path:
    report["tokenizer"] = {"path": path, "trained": False}
    return tok_lib.load_tokenizer(path)
  saved = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(saved):
    report["tokenizer"] = {"path": saved, "trained": False}
    return tok_lib.load_tokenizer(saved)
  if not may_train:
    raise FileNotFoundError(
        f"{saved} does not exist on this process: process 0 trains the tokenizer there, so "
        "WORKDIR must be a filesystem shared by all processes; otherwise set "
        "config.data.tokenizer.path to a tokenizer file every process can read")
  t0 = time.perf_counter()
  tok = _train_tokenizer(data, seed)
  os.makedirs(workdir, exist_ok=True)
  tok.save(saved)
  report["tokenizer"] = {"path": saved, "trained": True, "vocab_size": tok.vocab_size,
                         "seconds": round(time.perf_counter() - t0, 3)}
  return tok


def _take(it: Any, n: int) -> list:
  return [next(it) for _ in range(n)]


def build_input(config: Any, workdir: str, *, vocab_limit: int, process_index: int = 0,
                process_count: int = 1, eval_batches: int = 0,
                may_train_tokenizer: bool = True) -> Input:
  """The data iterator for `config.data` and `eval_batches` held-out batches (module
  docstring). `vocab_limit` is the model's vocabulary size: a tokenizer with more ids is an
  error (they would index past the table). `may_train_tokenizer=False` (processes other
  than 0) makes a missing WORKDIR/tokenizer.model an error instead of training one."""
  data = config.data
  if data.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={data.batch_size} is not divisible by the "
                     f"{process_count} processes")
  if eval_batches < 0:
    raise ValueError(f"eval_batches must be >= 0, got {eval_batches}")
  per_process = data.batch_size // process_count
  names = tuple(data.sources)
  report: dict = {}
  if SYNTHETIC in names:
    if names != (SYNTHETIC,):
      raise ValueError(f"config.data.sources: {SYNTHETIC!r} cannot be mixed with other sources")

    def synthetic(stream: int) -> SyntheticIterator:
      return SyntheticIterator(batch_size=per_process, seq_len=data.seq_len, vocab_size=vocab_limit,
                               seed=config.seed, row_offset=process_index * per_process,
                               stream=stream)
    held = _take(synthetic(1), eval_batches)
    report = {"synthetic": True}
    if eval_batches:
      report["eval"] = {"batches": eval_batches, "stream": 1}
    return Input(synthetic(0), names, _KINDS_FALLBACK, None, report, held)

  from agentic_jax.data import groups as groups_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.render import MASK_KINDS, render  # pylint: disable=import-outside-toplevel
  mix = _per_source(data, "source_weights", len(names))
  loss_w = _per_source(data, "loss_weights", len(names))
  t0 = time.perf_counter()
  loaded = _load_samples(data, config.seed, report, with_eval=eval_batches > 0)
  tok = _tokenizer(data, workdir, config.seed, report, may_train=may_train_tokenizer)
  if tok.vocab_size > vocab_limit:
    raise ValueError(f"tokenizer has {tok.vocab_size} ids but config.model.vocab_size is "
                     f"{vocab_limit}; raise the model's vocab_size or lower data.tokenizer.vocab_size")
  t1 = time.perf_counter()
  sources, eval_sources = [], []
  eval_report: dict = {"batches": eval_batches, "seed": config.seed + EVAL_SEED_OFFSET, "sources": {}}
  for (name, samples, held), weight, lw in zip(loaded, mix, loss_w):
    rendered = [render(s, tok, data.mask_policy, float(lw)) for s in samples]
    sources.append(pipeline.Source(name, float(weight), rendered))
    report["sources"][name]["tokens"] = int(sum(len(r) for r in rendered))
    if eval_batches:
      kept, dropped = _without_overlap([render(s, tok, data.mask_policy, float(lw)) for s in held],
                                       rendered)
      eval_sources.append(pipeline.Source(name, float(weight) if kept else 0.0, kept))
      eval_report["sources"][name] = {"samples": len(kept), "dropped_overlap": dropped}
  report["render_seconds"] = round(time.perf_counter() - t1, 3)
  stages = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in data.stages] or None
  groups = groups_lib.check_groups(data.batch_size, data.get("pack_groups", 1))
  rows = dict(batch_size=data.batch_size, groups=groups, row_start=process_index * per_process,
              row_stop=(process_index + 1) * per_process)

  def packed(srcs, seed, stages=None):
    return groups_lib.row_block(
        lambda g: pipeline.make_batches(
            srcs, seq_len=data.seq_len, batch_size=data.batch_size // groups, seed=seed,
            stages=stages, overlong=data.overlong, process_index=g, process_count=groups,
            pad_id=tok.pad_id), **rows)

  it = packed(sources, config.seed, stages)
  held_batches: list = []
  if eval_batches:
    if not any(s.samples and s.weight > 0 for s in eval_sources):
      raise ValueError("no held-out eval samples: set config.data.eval_num_samples (> 0 for a "
                       "source with weight > 0) or train.eval_every=0")
    eval_it = packed(eval_sources, config.seed + EVAL_SEED_OFFSET)
    held_batches = _take(eval_it, eval_batches)
    eval_report["pipeline"] = eval_it.stats.as_dict()
    report["eval"] = eval_report
  report["data_seconds"] = round(time.perf_counter() - t0, 3)
  return Input(it, tuple(n for n, _, _ in loaded), tuple(MASK_KINDS), tok, report, held_batches)


def _without_overlap(held: list, train: list) -> tuple[list, int]:
  """`held` minus every sample whose token sequence equals a training sample's (and minus
  repeats within `held`), and how many were dropped."""
  seen = {r.tokens.astype(np.int32).tobytes() for r in train}
  kept = []
  for r in held:
    key = r.tokens.astype(np.int32).tobytes()
    if key not in seen:
      kept.append(r)
      seen.add(key)
  return kept, len(held) - len(kept)


def pipeline_stats(inp: Input) -> dict:
  """The iterator's counts (split/dropped over-length samples, padding...), if it keeps any."""
  stats = getattr(inp.iterator, "stats", None)
  return stats.as_dict() if stats is not None and hasattr(stats, "as_dict") else {}
