"""grain input pipeline: shuffled sources, weighted mixture with a stage schedule, per-process
sharding, packing into [B, T] rows, and an exactly resumable (checkpointable) iterator.

    from agentic_jax.data.pipeline import Source, make_batches
    it = make_batches([Source("general", 1.0, rendered_a), Source("calculator", 1.0, rendered_b)],
                      seq_len=512, batch_size=8, seed=0,
                      stages=[{"until_step": 100, "weights": {"general": 1.0}},
                              {"weights": {"general": 1.0, "calculator": 0.5}}])
    batch = next(it)        # dict of numpy [8, 512]: inputs targets weights segment_ids positions
                            #   target_kind source_id (layout: agentic_jax/data/packing.py)
    state = it.get_state()  # JSON-serialisable; orbax: grain.checkpoint.CheckpointSave(it)
    it.set_state(state)     # the following batches are bitwise those of an uninterrupted run
    it.stats.as_dict()      # samples, segments, tokens, padding_fraction, dropped/split counts

`make_batches(sources, *, seq_len, batch_size, seed, stages=None, overlong="split",
process_index=0, process_count=1, pad_id=0, min_chunk=16) -> PackedBatchIterator` (a
`grain.DatasetIterator`; min_chunk is capped at seq_len).
`sources` items are `Source(name, weight, samples)` (or 3-tuples, or mappings with those keys);
`samples` is any sequence of `Rendered` (contract 3: tokens int[L], loss_weights float[L],
mask_kind int[L]).

Semantics
- Source streams. Source i reads sample indices from `source_stream(indices, ...)` =
  `grain.MapDataset.source(indices).shuffle(seed_i).repeat()[process_index::process_count]`:
  a permutation of its samples (all of them, or those that fit under overlong="drop"), drawn
  afresh every epoch (grain uses seed_i + epoch), repeated forever. seed_i =
  source_seed(seed, name), so adding a source leaves the others' orders alone.
- Sharding. Process p takes elements p, p+P, p+2P, ... of every source's global stream: the
  per-process streams are disjoint within an epoch and their union is the single-process stream.
  Each process mixes and packs its own B rows; the global batch is the concatenation over
  processes (B is the per-process batch).
- Mixture. Every slot of batch `step` picks a source at random with probability
  weight / sum(weights) of the stage in force at `step`; the picks use
  `np.random.default_rng([seed, process_index, step])`, a pure function of the step. Weights
  count pieces (a sample or an over-length chunk), not tokens.
- Stages. `stages` is a list of mappings {"until_step": int, "weights": {name: weight}}. Stage k
  covers steps [until_step of stage k-1 (0 for the first), until_step of stage k); the last stage
  may omit until_step and in any case covers every later step. Names missing from a stage's
  "weights" get weight 0; a stage without "weights" uses the sources' own weights, which are
  otherwise only used when `stages` is None. `step` counts batches returned by this iterator
  (with k micro-batches per optimizer step, multiply until_step by k). The switch is exact:
  batch `step` only holds pieces of sources whose weight is > 0 at `step`, because a piece
  that did not fit into the previous batch stays at the head of its source and is not consumed.
- Over-length. A sample longer than seq_len tokens cannot fit a row. overlong="drop" removes it
  from its source when the pipeline is built (stats.dropped_overlong and source_dropped count
  distinct samples, once; a source left empty raises ValueError). overlong="split" cuts it into
  consecutive chunks as it is packed: each chunk fills the free space of the first row that has
  at least min(remaining tokens, min_chunk) free, up to seq_len tokens, so long samples leave
  no padding behind them. Every chunk is its own segment (positions restart; the target
  crossing each cut is lost, as a segment's last token has no target). Samples of <= seq_len
  tokens are never cut. stats.split_overlong / split_chunks count split samples and chunks as
  they are packed (again in every epoch). A sample whose source loses its weight mid-split
  continues where it stopped when that source is next picked.
- Packing. First fit over the B rows of the batch being built (see packing.py); the batch closes
  when the next piece fits no row.
- State. `get_state()` holds the step, each source's cursor (index into its process stream plus
  the token offset inside a sample being split), the stats, and the settings that must match on
  restore (seed, seq_len, overlong, min_chunk, process_index/count, source names and sizes);
  anything else is a pure function of these. A state from another pipeline raises ValueError
  naming the field. Stages, weights and batch_size may change on resume (not bitwise then).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import grain
import numpy as np

from agentic_jax.data.packing import BatchBuilder, Piece
from agentic_jax.data.render import MASK_KINDS

STATE_VERSION = 1
OVERLONG_MODES = ("split", "drop")


class Source(NamedTuple):
  name: str
  weight: float
  samples: Sequence[Any]  # Rendered-like: .tokens, .loss_weights, .mask_kind


@dataclasses.dataclass
class PipelineStats:
  """Counts since the start of the stream (restored with the iterator state)."""
  batches: int = 0
  samples: int = 0           # source samples whose first (or only) piece was packed
  segments: int = 0          # pieces packed (whole samples + chunks of split samples)
  tokens: int = 0            # non-padding positions
  target_tokens: int = 0     # positions with weight > 0
  padding: int = 0           # padding positions
  dropped_overlong: int = 0  # distinct over-length samples removed (overlong="drop")
  split_overlong: int = 0    # over-length samples cut into chunks (overlong="split")
  split_chunks: int = 0      # chunks packed from those samples
  source_samples: dict = dataclasses.field(default_factory=dict)
  source_tokens: dict = dataclasses.field(default_factory=dict)
  source_dropped: dict = dataclasses.field(default_factory=dict)

  @property
  def padding_fraction(self) -> float:
    total = self.tokens + self.padding
    return self.padding / total if total else 0.0

  def as_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["padding_fraction"] = self.padding_fraction
    return d


def _stats_from_dict(d: Mapping[str, Any]) -> PipelineStats:
  fields = {f.name for f in dataclasses.fields(PipelineStats)}
  return PipelineStats(**{k: (dict(v) if isinstance(v, dict) else int(v))
                          for k, v in d.items() if k in fields})


class _Stage(NamedTuple):
  until_step: Optional[int]
  cdf: np.ndarray  # cumulative normalised weights, last entry exactly 1
  weights: tuple[float, ...]


def _items(obj: Any, what: str) -> dict:
  """A plain dict from a Mapping or an ml_collections ConfigDict."""
  if hasattr(obj, "items"):
    return dict(obj.items())
  raise TypeError(f"{what}: expected a mapping, got {type(obj).__name__}")


def _weight(value: Any, what: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{what}: expected a number, got {value!r}")
  w = float(value)
  if not np.isfinite(w) or w < 0:
    raise ValueError(f"{what}: expected a finite weight >= 0, got {value!r}")
  return w


def _make_stage(until: Optional[int], weights: Sequence[float], what: str) -> _Stage:
  total = sum(weights)
  if total <= 0:
    raise ValueError(f"{what}: weights sum to 0; at least one source needs a weight > 0")
  cdf = np.cumsum(np.asarray(weights, np.float64) / total)
  cdf[-1] = 1.0  # rng.random() < 1 always selects some source
  return _Stage(until, cdf, tuple(weights))


def parse_stages(stages: Optional[Iterable[Any]], names: Sequence[str],
                 default_weights: Sequence[float]) -> tuple[_Stage, ...]:
  """Validates a stage schedule (module docstring) into per-stage cumulative weights."""
  if stages is None:
    return (_make_stage(None, list(default_weights), "sources"),)
  stages = list(stages)
  if not stages:
    raise ValueError("stages: expected a non-empty list (or None for the sources' weights)")
  out, prev = [], 0
  for k, stage in enumerate(stages):
    where = f"stages[{k}]"
    stage = _items(stage, where)
    unknown = set(stage) - {"until_step", "weights"}
    if unknown:
      raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected until_step, weights")
    until = stage.get("until_step")
    last = k == len(stages) - 1
    if until is None:
      if not last:
        raise ValueError(f"{where}.until_step: required for every stage but the last")
    else:
      if isinstance(until, bool) or not isinstance(until, (int, np.integer)):
        raise TypeError(f"{where}.until_step: expected an int, got {until!r}")
      if until <= prev:
        raise ValueError(f"{where}.until_step: expected > {prev} (stages must be increasing), "
                         f"got {until}")
      until = prev = int(until)
    if stage.get("weights") is None:
      weights = list(default_weights)
    else:
      given = _items(stage["weights"], f"{where}.weights")
      unknown = set(given) - set(names)
      if unknown:
        raise ValueError(f"{where}.weights: unknown sources {sorted(unknown)}; "
                         f"expected names from {list(names)}")
      weights = [_weight(given.get(n, 0.0), f"{where}.weights.{n}") for n in names]
    out.append(_make_stage(until, weights, f"{where}.weights"))
  return tuple(out)


def _check_sample(sample: Any, name: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens int32, loss_weights float32, mask_kind int32) or ValueError naming the field."""
  where = f"source {name!r} sample {index}"
  arrays = []
  for field in ("tokens", "loss_weights", "mask_kind"):
    if not hasattr(sample, field):
      raise TypeError(f"{where}: {field}: missing; expected a Rendered sample "
                      f"(tokens, loss_weights, mask_kind), got {type(sample).__name__}")
    arrays.append(np.asarray(getattr(sample, field)))
  tokens, lw, mk = arrays
  if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
    raise ValueError(f"{where}: tokens: expected a 1-D integer array, got shape {tokens.shape} "
                     f"dtype {tokens.dtype}")
  if tokens.size == 0:
    raise ValueError(f"{where}: tokens: expected at least 1 token, got 0")
  if tokens.min() < 0 or tokens.max() >= 2**31:
    raise ValueError(f"{where}: tokens: expected ids in [0, 2**31), got range "
                     f"[{tokens.min()}, {tokens.max()}]")
  if lw.shape != tokens.shape or lw.dtype.kind not in "fiu":
    raise ValueError(f"{where}: loss_weights: expected a numeric array of shape {tokens.shape}, "
                     f"got shape {lw.shape} dtype {lw.dtype}")
  if not np.all(np.isfinite(lw)) or lw.min() < 0:
    raise ValueError(f"{where}: loss_weights: expected finite weights >= 0")
  if mk.shape != tokens.shape or mk.dtype.kind not in "iu":
    raise ValueError(f"{where}: mask_kind: expected an integer array of shape {tokens.shape}, "
                     f"got shape {mk.shape} dtype {mk.dtype}")
  if mk.min() < 0 or mk.max() >= len(MASK_KINDS):
    raise ValueError(f"{where}: mask_kind: expected indices into MASK_KINDS in "
                     f"[0, {len(MASK_KINDS)}), got range [{mk.min()}, {mk.max()}]")
  return tokens.astype(np.int32), lw.astype(np.float32), mk.astype(np.int32)


def _length(source: Source, index: int) -> int:
  sample = source.samples[index]
  if not hasattr(sample, "tokens"):
    raise TypeError(f"source {source.name!r} sample {index}: tokens: missing; expected a Rendered "
                    f"sample, got {type(sample).__name__}")
  return len(sample.tokens)


def source_seed(seed: int, name: str) -> int:
  """The 32-bit shuffle seed of source `name`: stable across runs and source-list edits."""
  return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def source_stream(indices: Union[int, Sequence[int]], seed: int, name: str,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """Sample indices read by one process from one source: endless, reshuffled every epoch.

  `indices` are the readable sample indices (an int n means range(n)). Element k is global
  element process_index + k * process_count of `source(indices).shuffle(source_seed(seed,
  name)).repeat()`. (grain's index_shuffle costs ~25 ms per epoch of a small source, ~5 us per
  element of a large one.)
  """
  ds = (grain.MapDataset.range(indices) if isinstance(indices, (int, np.integer))
        else grain.MapDataset.source(list(indices)))
  ds = ds.shuffle(seed=source_seed(seed, name)).repeat()
  return ds[process_index::process_count]


class PackedBatchIterator(grain.DatasetIterator):
  """Packed [B, T] batches from a weighted, staged mixture of sources (module docstring)."""

  def __init__(self, sources: Sequence[Any], *, seq_len: int, batch_size: int, seed: int,
               stages: Optional[Iterable[Any]] = None, overlong: str = "split",
               process_index: int = 0, process_count: int = 1, pad_id: int = 0,
               min_chunk: int = 16):
    super().__init__()
    for key, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1),
                            ("seed", seed, 0), ("process_count", process_count, 1),
                            ("pad_id", pad_id, 0), ("min_chunk", min_chunk, 1)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{key}: expected an int >= {low}, got {value!r}")
    if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
      raise ValueError(f"process_index: expected an int in [0, {process_count}), "
                       f"got {process_index!r}")
    if overlong not in OVERLONG_MODES:
      raise ValueError(f"overlong: expected one of {OVERLONG_MODES}, got {overlong!r}")
    sources = [Source(**s) if isinstance(s, Mapping) else Source(*s) for s in sources]
    if not sources:
      raise ValueError("sources: expected at least one source")
    names = [s.name for s in sources]
    for i, s in enumerate(sources):
      if not isinstance(s.name, str) or not s.name:
        raise ValueError(f"sources[{i}].name: expected a non-empty str, got {s.name!r}")
      if s.name in names[:i]:
        raise ValueError(f"sources[{i}].name: duplicate source name {s.name!r}")
    default = [_weight(s.weight, f"sources[{i}].weight ({s.name})") for i, s in enumerate(sources)]
    self._stages = parse_stages(stages, names, default)
    self._sources = sources
    self._names = names
    self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
    self.overlong, self.pad_id = overlong, int(pad_id)
    self.min_chunk = min(int(min_chunk), self.seq_len)
    self.process_index, self.process_count = int(process_index), int(process_count)

    stats = PipelineStats()
    self._streams = []  # per-process index streams: random access, so a cursor is the state
    for i, s in enumerate(sources):
      keep: Union[int, list[int]] = len(s.samples)  # readable samples: all, or those that fit
      if overlong == "drop":
        keep = [j for j in range(len(s.samples)) if _length(s, j) <= self.seq_len]
        stats.source_dropped[s.name] = len(s.samples) - len(keep)
        stats.dropped_overlong += len(s.samples) - len(keep)
      count = keep if isinstance(keep, int) else len(keep)
      if count == 0 and any(st.weights[i] > 0 for st in self._stages):
        reason = (f"every sample is longer than seq_len={self.seq_len}, so overlong='drop' "
                  "leaves nothing to read" if len(s.samples) else "no samples")
        raise ValueError(f"sources[{i}] ({s.name}): {reason}, but its weight is > 0")
      self._streams.append(source_stream(keep, self.seed, s.name, self.process_index,
                                         self.process_count) if count else None)
    self._reset(step=0, cursors=[0] * len(sources), offsets=[0] * len(sources), stats=stats)

  # --- state -------------------------------------------------------------------------------

  def _reset(self, step: int, cursors: list[int], offsets: list[int],
             stats: PipelineStats) -> None:
    self._step, self._cursors, self._offsets, self._counts = step, cursors, offsets, stats
    self._head: list[Optional[tuple[int, tuple]]] = [None] * len(self._sources)  # read cache

  def _fingerprint(self) -> dict[str, Any]:
    return {"seed": self.seed, "seq_len": self.seq_len, "overlong": self.overlong,
            "min_chunk": self.min_chunk,
            "process_index": self.process_index, "process_count": self.process_count,
            "sources": list(self._names), "source_sizes": [len(s.samples) for s in self._sources]}

  def get_state(self) -> dict[str, Any]:
    return {"version": STATE_VERSION, "step": self._step, "cursors": list(self._cursors),
            "offsets": list(self._offsets), "stats": dataclasses.asdict(self._counts),
            "config": self._fingerprint()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if state.get("version") != STATE_VERSION:
      raise ValueError(f"state.version: expected {STATE_VERSION}, got {state.get('version')!r}")
    theirs, ours = dict(state.get("config", {})), self._fingerprint()
    for key, value in ours.items():
      if theirs.get(key) != value:
        raise ValueError(f"state.config.{key}: the state was saved with {theirs.get(key)!r} but "
                         f"this pipeline has {value!r}; resuming would not reproduce the stream")
    n = len(self._sources)
    cursors, offsets = list(state["cursors"]), list(state["offsets"])
    if len(cursors) != n or len(offsets) != n:
      raise ValueError(f"state.cursors/offsets: expected {n} entries each")
    self._reset(int(state["step"]), [int(c) for c in cursors], [int(o) for o in offsets],
                _stats_from_dict(state["stats"]))

  # --- reading -----------------------------------------------------------------------------

  @property
  def step(self) -> int:
    """Index of the next batch (= batches returned so far)."""
    return self._step

  @property
  def stats(self) -> PipelineStats:
    return self._counts

  def stage_index(self, step: int) -> int:
    for k, stage in enumerate(self._stages):
      if stage.until_step is None or step < stage.until_step:
        return k
    return len(self._stages) - 1

  def _sample(self, src: int) -> tuple:
    """(tokens, loss_weights, mask_kind) at the cursor of source `src`, validated on read."""
    cursor = self._cursors[src]
    head = self._head[src]
    if head is None or head[0] != cursor:
      index = int(self._streams[src][cursor])
      source = self._sources[src]
      head = (cursor, _check_sample(source.samples[index], source.name, index))
      self._head[src] = head
    return head[1]

  def _peek(self, src: int) -> tuple[Piece, bool]:
    """The rest of the next sample of `src` and whether it may be cut (it is over-length)."""
    tokens, lw, mk = self._sample(src)
    start = self._offsets[src]
    piece = Piece(tokens[start:], lw[start:], mk[start:], src)
    return piece, len(tokens) > self.seq_len

  def _consume(self, src: int, piece: Piece, n: int, overlong: bool) -> None:
    """Accounts for the first `n` tokens of `piece` having been packed."""
    start, end = self._offsets[src], self._offsets[src] + n
    name, c = self._names[src], self._counts
    if start == 0:
      c.samples += 1
      c.source_samples[name] = c.source_samples.get(name, 0) + 1
      c.split_overlong += int(overlong)
    c.split_chunks += int(overlong)
    c.segments += 1
    c.tokens += n
    c.target_tokens += int(np.count_nonzero(piece.loss_weights[1:n] > 0))
    c.source_tokens[name] = c.source_tokens.get(name, 0) + n
    if n < len(piece.tokens):  # more chunks of this sample follow
      self._offsets[src] = end
    else:
      self._offsets[src] = 0
      self._cursors[src] += 1

  def __next__(self) -> dict[str, np.ndarray]:
    self._assert_not_closed()
    stage = self._stages[self.stage_index(self._step)]
    rng = np.random.default_rng([self.seed, self.process_index, self._step])
    builder = BatchBuilder(self.batch_size, self.seq_len, self.pad_id)
    while builder.padding > 0:
      src = int(np.searchsorted(stage.cdf, rng.random(), side="right"))
      piece, overlong = self._peek(src)
      n = builder.add(piece, self.min_chunk if overlong else None)
      if n == 0:
        break  # the piece stays at the head of its source for the next batch
      self._consume(src, piece, n, overlong)
    self._counts.batches += 1
    self._counts.padding += builder.padding
    self._step += 1
    return builder.finish()

  def __str__(self) -> str:
    return (f"PackedBatchIterator(sources={self._names}, seq_len={self.seq_len}, "
            f"batch_size={self.batch_size}, process={self.process_index}/{self.process_count})")


def make_batches(sources: Sequence[Any], *, seq_len: int, batch_size: int, seed: int,
                 stages: Optional[Iterable[Any]] = None, overlong: str = "split",
                 process_index: int = 0, process_count: int = 1, pad_id: int = 0,
                 min_chunk: int = 16) -> PackedBatchIterator:
  """An endless, checkpointable iterator of packed batches (see the module docstring)."""
  return PackedBatchIterator(sources, seq_len=seq_len, batch_size=batch_size, seed=seed,
                             stages=stages, overlong=overlong, process_index=process_index,
                             process_count=process_count, pad_id=pad_id, min_chunk=min_chunk)
