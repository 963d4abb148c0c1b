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

The data mix (`data.mix`): one entry per source, NAME -> its fields, turned into `SourceSpec`s
by `source_specs(config.data)` - the one place they are read and validated (ConfigError naming
the key, e.g. "config.data.mix.calculator.weight: expected a finite number >= 0, got -1").
source_id in batches indexes the names in sorted order. Write an entry with `mix_source(kind,
**fields)`, which fills in every field of the kind, so each can be overridden on the command line
(--config.data.mix.calculator.num_samples=100):
  kind              a built-in generator (agentic_jax.data.builtin.registered(): calculator,
                    calculator_basic, pyrepo, stdlib_edits, or one added with
                    builtin.register_source), "jsonl" (a JSONL / JSON-array file in our schema)
                    or "adp" (Agent Data Protocol); files are read with data.on_bad_record
                    (skips counted in the report)
  path              file kinds: the file
  num_samples       built-in kinds: samples generated from seed config.seed
  weight            mixture: probability of drawing from the source (relative to the others)
  loss_weight       multiplier of the source's token loss weights
  eval_num_samples  held-out eval samples (below); 0 = none
`data.stages` name -> weight dicts refer to these names. `data.synthetic=True` replaces the mix
with packed arithmetic sequences of random tokens (no tokenizer; benchmarks and tests), source
name "synthetic". The old parallel tuples (data.sources, source_weights, loss_weights,
num_samples, eval_num_samples) are rejected with a message naming their data.mix field.
Tokenizer: data.tokenizer.path, else WORKDIR/tokenizer.model if a previous run wrote it
(so a resumed run tokenizes identically), else trained on the built-in corpus
(builtin.corpus_texts(seed)) with data.tokenizer.vocab_size ids, and saved there.
The iterator is the pipeline's checkpointable grain iterator (or the synthetic one).

Held-out eval data (`eval_batches` > 0), never overlapping the training samples:
  built-in sources  eval_num_samples samples generated from seed config.seed +
                    EVAL_SEED_OFFSET (training uses config.seed);
  file sources      the LAST eval_num_samples records of the file, which are removed from
                    training whenever eval_num_samples > 0 (eval on or off, so the training
                    data never depends on train.eval_every);
  synthetic         rows drawn from a separate random stream (stream 1; training is stream 0).
Any eval sample whose rendered tokens equal a training sample's is dropped and counted
(report["eval"]["sources"][name]["dropped_overlap"]). The eval batches are packed by their own
pipeline (seed config.seed + EVAL_SEED_OFFSET, the training mixture weights, no stages) and
taken once, so evaluating never advances or perturbs the training iterator.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Mapping, Optional

import grain
import ml_collections
import numpy as np

from agentic_jax.data import builtin
from agentic_jax.train.config import ConfigError

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


# ------------------------------------------------------------------ the data mix

FILE_KINDS = {"jsonl": "native", "adp": "adp"}  # file kind -> agentic_jax.data.reader format
_FIELD_DEFAULTS = {"weight": 1.0, "loss_weight": 1.0, "eval_num_samples": 0}
# the keys the mix replaced -> where their values went
MOVED_KEYS = {"sources": "config.data.mix (one entry per source: NAME -> kind, path or "
                         "num_samples, weight, loss_weight, eval_num_samples)",
              "source_weights": "config.data.mix.NAME.weight",
              "loss_weights": "config.data.mix.NAME.loss_weight",
              "num_samples": "config.data.mix.NAME.num_samples",
              "eval_num_samples": "config.data.mix.NAME.eval_num_samples"}


def moved_key_message(key: str) -> str:
  hint = " (random-token data: config.data.synthetic=True)" if key == "sources" else ""
  return f"config.data.{key} was replaced by {MOVED_KEYS[key]}{hint}; see configs/midtrain.py"


class DataSection(ml_collections.ConfigDict):
  """The `data` section of a config: a ConfigDict whose errors for the keys the mix replaced
  (MOVED_KEYS) name their config.data.mix field - on the command line the locked config rejects
  --config.data.sources=... with that message - and which refuses to gain such a key."""

  def _generate_did_you_mean_message(self, request, message=""):  # ml_collections' error hook
    if request in MOVED_KEYS:
      return moved_key_message(request)
    return super()._generate_did_you_mean_message(request, message)

  def __setitem__(self, key, value):
    if key in MOVED_KEYS:
      raise KeyError(moved_key_message(key))
    super().__setitem__(key, value)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One validated entry of config.data.mix (module docstring)."""
  name: str
  kind: str  # a builtin.registered() kind or a FILE_KINDS key
  weight: float = 1.0
  loss_weight: float = 1.0
  eval_num_samples: int = 0
  num_samples: int = 0  # built-in kinds
  path: str = ""  # file kinds

  @property
  def is_file(self) -> bool:
    return self.kind in FILE_KINDS


def source_kinds() -> tuple[str, ...]:
  return builtin.registered() + tuple(FILE_KINDS)


def _kind_fields(kind: str) -> tuple[str, ...]:
  return ("kind", "path" if kind in FILE_KINDS else "num_samples", "weight", "loss_weight",
          "eval_num_samples")


def mix_source(kind: str, **fields: Any) -> ml_collections.ConfigDict:
  """A config.data.mix entry of `kind` holding every field of that kind (defaults: weight 1.0,
  loss_weight 1.0, eval_num_samples 0; `path` or `num_samples` is required), e.g.
  mix_source("calculator", num_samples=512) or mix_source("jsonl", path="data/episodes.jsonl")."""
  if kind not in source_kinds():
    raise ValueError(f"mix_source: unknown kind {kind!r}; expected one of {list(source_kinds())}")
  names = _kind_fields(kind)
  unknown = sorted(set(fields) - set(names))
  if unknown:
    raise ValueError(f"mix_source({kind!r}): unknown fields {unknown}; expected {list(names[1:])}")
  entry = {"kind": kind, **_FIELD_DEFAULTS, **fields}
  for key in ("weight", "loss_weight"):  # floats, so that an override may be fractional
    if isinstance(entry[key], int) and not isinstance(entry[key], bool):
      entry[key] = float(entry[key])
  if names[1] not in entry:
    raise ValueError(f"mix_source({kind!r}): {names[1]} is required")
  return ml_collections.ConfigDict({k: entry[k] for k in names})


def _mix_number(fields: Mapping[str, Any], key: str, where: str) -> float:
  v = fields.get(key, _FIELD_DEFAULTS[key])
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
    raise ConfigError(f"{where}.{key}: expected a finite number >= 0, got {v!r}")
  return float(v)


def _mix_count(fields: Mapping[str, Any], key: str, where: str, low: int) -> int:
  if key not in fields and key not in _FIELD_DEFAULTS:
    raise ConfigError(f"{where}.{key}: required for a {fields.get('kind')!r} source")
  v = fields.get(key, _FIELD_DEFAULTS.get(key))
  if isinstance(v, bool) or not isinstance(v, int) or v < low:
    raise ConfigError(f"{where}.{key}: expected an int >= {low}, got {v!r}")
  return v


def _source_spec(name: Any, entry: Any) -> SourceSpec:
  where = f"config.data.mix.{name}"
  if not isinstance(name, str) or not name:
    raise ConfigError(f"config.data.mix: expected non-empty source names, got {name!r}")
  if not hasattr(entry, "items"):
    raise ConfigError(f"{where}: expected a mapping of source fields (mix_source(kind, ...)), "
                      f"got {entry!r}")
  fields = dict(entry.items())
  kind = fields.get("kind")
  if kind not in source_kinds():
    raise ConfigError(f"{where}.kind: expected one of {list(source_kinds())}, got {kind!r}")
  allowed = _kind_fields(kind)
  for key in fields:
    if key not in allowed:
      raise ConfigError(f"{where}.{key}: not a field of a {kind!r} source; expected fields "
                        f"{list(allowed)}")
  common = dict(name=name, kind=kind, weight=_mix_number(fields, "weight", where),
                loss_weight=_mix_number(fields, "loss_weight", where),
                eval_num_samples=_mix_count(fields, "eval_num_samples", where, 0))
  if kind in FILE_KINDS:
    path = fields.get("path")
    if not isinstance(path, str) or not path:
      raise ConfigError(f"{where}.path: expected the path of a {kind!r} file, got {path!r}")
    return SourceSpec(path=path, **common)
  return SourceSpec(num_samples=_mix_count(fields, "num_samples", where, 1), **common)


def source_specs(data: Any) -> tuple[SourceSpec, ...]:
  """config.data.mix as validated SourceSpecs in source_id order (sorted names); ConfigError
  naming the first bad key, or an old-style key (MOVED_KEYS) still in `data`."""
  for key in MOVED_KEYS:
    if key in data:
      raise ConfigError(moved_key_message(key))
  mix = data.get("mix")
  if not hasattr(mix, "items") or not len(mix):
    raise ConfigError("config.data.mix: expected one or more sources (NAME -> "
                      f"mix_source(kind, ...)), got {mix!r}")
  specs = tuple(_source_spec(name, mix[name]) for name in sorted(mix.keys()))
  if not sum(s.weight for s in specs) > 0:
    raise ConfigError("config.data.mix: expected a positive total weight, got "
                      f"{ {s.name: s.weight for s in specs} }")
  return specs


def is_synthetic(data: Any) -> bool:
  return bool(data.get("synthetic", False))


# ------------------------------------------------------------------ real sources


def _load_samples(specs: tuple[SourceSpec, ...], data: Any, seed: int, report: dict, *,
                  with_eval: bool) -> list[tuple[str, list, list]]:
  """[(name, training samples, held-out samples)] per source (module docstring); held-out
  built-in samples are only generated when `with_eval`."""
  out = []
  for spec in specs:
    name, n_eval = spec.name, spec.eval_num_samples
    t0 = time.perf_counter()
    held: list = []
    if not spec.is_file:
      samples = builtin.generate(spec.kind, seed=seed, num_samples=spec.num_samples)
      report.setdefault("sources", {})[name] = {"generated": len(samples)}
      if with_eval and n_eval:
        held = builtin.generate(spec.kind, seed=seed + EVAL_SEED_OFFSET, num_samples=n_eval)
    else:
      from agentic_jax.data.reader import read_samples  # pylint: disable=import-outside-toplevel
      fmt = FILE_KINDS[spec.kind]
      samples, rep = read_samples(spec.path, fmt, data.on_bad_record,
                                  source=name if fmt == "adp" else None)
      report.setdefault("sources", {})[name] = {
          "file": spec.path, "records": rep.records, "kept": rep.kept, "skipped": rep.skipped,
          "skipped_by_field": dict(rep.skipped_by_field), "summary": rep.summary()}
      if rep.skipped:
        print(f"[data] {rep.summary()}", flush=True)
      if n_eval:  # the held-out tail leaves training whether or not eval runs
        if n_eval >= len(samples):
          raise ValueError(f"config.data.mix.{name}.eval_num_samples={n_eval} holds out all "
                           f"{len(samples)} samples of {spec.path!r}; nothing would be left to "
                           "train on")
        samples, held = samples[:-n_eval], samples[-n_eval:]
        report["sources"][name]["held_out_for_eval"] = len(held)
    report["sources"][name]["seconds"] = round(time.perf_counter() - t0, 3)
    if not samples:
      raise ValueError(f"config.data.mix.{name} ({spec.kind} {spec.path or spec.num_samples}) "
                       "produced no samples")
    out.append((name, samples, held))
  return out


def _train_tokenizer(data: Any, seed: int):
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  texts = list(builtin.corpus_texts(seed))
  return tok_lib.SentencePieceTokenizer.train(texts, int(data.tokenizer.vocab_size), seed=seed)


def ensure_tokenizer(config: Any, workdir: str) -> dict:
  """Makes sure the tokenizer file `build_input` will load exists (training and saving it to
  WORKDIR/tokenizer.model if needed); returns {"path", "trained"[, "seconds"]} ({} for
  synthetic data). A multi-process run calls this on process 0 only, then a barrier, so
  that every process loads the same file instead of training its own."""
  data = config.data
  if is_synthetic(data):
    return {}
  _, report = _tokenizer(data, workdir, config.seed, may_train=True)
  return report


def _tokenizer(data: Any, workdir: str, seed: int, *, may_train: bool):
  """(tokenizer, report): data.tokenizer.path, else WORKDIR's, else trained on the built-in
  corpus (data/tokenizer.py find_or_train, the one lookup every job uses)."""
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  return tok_lib.find_or_train(
      data.tokenizer.path, workdir, train=(lambda: _train_tokenizer(data, seed)) if may_train
      else None,
      missing="process 0 trains the tokenizer there, so WORKDIR must be a filesystem shared by "
              "all processes; otherwise set config.data.tokenizer.path to a tokenizer file every "
              "process can read")


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
  specs = source_specs(data)
  report: dict = {}
  if is_synthetic(data):

    def synthetic(stream: int) -> SyntheticIterator:
      return SyntheticIterator(batch_size=per_process, seq_len=data.seq_len, vocab_size=vocab_limit,
                               seed=config.seed, row_offset=process_index * per_process,
                               stream=stream)
    held = _take(synthetic(1), eval_batches)
    report = {"synthetic": True}
    if eval_batches:
      report["eval"] = {"batches": eval_batches, "stream": 1}
    return Input(synthetic(0), (SYNTHETIC,), _KINDS_FALLBACK, None, report, held)

  from agentic_jax.data import groups as groups_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.render import MASK_KINDS, render  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  loaded = _load_samples(specs, data, config.seed, report, with_eval=eval_batches > 0)
  tok, report["tokenizer"] = _tokenizer(data, workdir, config.seed, may_train=may_train_tokenizer)
  if tok.vocab_size > vocab_limit:  # a user's config, not a bug: one line, before compiling
    raise ConfigError(f"config.model.vocab_size: {vocab_limit} is smaller than the tokenizer's "
                      f"{tok.vocab_size} ids ({report['tokenizer'].get('path') or 'trained'}); "
                      "raise it, or lower config.data.tokenizer.vocab_size")
  t1 = time.perf_counter()
  sources, eval_sources = [], []
  eval_report: dict = {"batches": eval_batches, "seed": config.seed + EVAL_SEED_OFFSET, "sources": {}}
  rw = data.get("rationale_weight", 1.0)  # configs written before the key: the old weighting

  def render_all(samples, loss_weight):
    return [render(s, tok, data.mask_policy, loss_weight, rationale_weight=rw) for s in samples]

  for (name, samples, held), spec in zip(loaded, specs):
    weight, lw = spec.weight, spec.loss_weight
    rendered = render_all(samples, lw)
    sources.append(pipeline.Source(name, weight, rendered))
    report["sources"][name]["tokens"] = int(sum(len(r) for r in rendered))
    if eval_batches:
      kept, dropped = _without_overlap(render_all(held, lw), rendered)
      eval_sources.append(pipeline.Source(name, weight if kept else 0.0, kept))
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
      raise ValueError("no held-out eval samples: set config.data.mix.NAME.eval_num_samples (> 0 "
                       "for a source with weight > 0) or train.eval_every=0")
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
