"""grain pipeline: packing layout and invariants, segment isolation in attention, mixture, stages,
process sharding, over-length split/drop counts, determinism and exact resume (also via orbax)."""

import collections
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from agentic_jax.data.packing import BatchBuilder, Piece
from agentic_jax.data.pipeline import Source, make_batches, source_stream
from agentic_jax.data.render import Rendered
from agentic_jax.models.attention import xla_attention
from agentic_jax.models.layers import default_positions
from tests.data_fixtures import KEYS, SRC, assert_batches_equal, make_source, sample, take


def decode(token: int) -> tuple[int, int, int]:
  t = int(token) - 1
  return t // SRC, (t % SRC) // 1000, t % 1000


def segments(batch):
  """(row, start, end) of every packed segment."""
  out = []
  for r, seg in enumerate(batch["segment_ids"]):
    for s in range(1, int(seg.max()) + 1):
      where = np.flatnonzero(seg == s)
      out.append((r, int(where[0]), int(where[-1]) + 1))
  return out


# --- packing ---------------------------------------------------------------------------------

def test_batch_builder_layout_by_hand():
  f32 = lambda *v: np.array(v, np.float32)
  i8 = lambda *v: np.array(v, np.int8)
  i32 = lambda *v: np.array(v, np.int32)
  b = BatchBuilder(batch_size=2, seq_len=8)
  assert b.add(Piece(i32(11, 12, 13), f32(0, 1, .5), i8(9, 6, 7), 0))
  assert b.add(Piece(i32(21, 22, 23, 24), f32(0, 1, 1, 0), i8(9, 4, 4, 9), 1))
  assert b.add(Piece(i32(31, 32, 33, 34, 35, 36), f32(0, 1, 1, 1, 1, 1), i8(9, 0, 0, 0, 0, 9), 0))
  assert b.add(Piece(i32(41, 42), f32(0, .25), i8(9, 3), 2))  # row 0 has 1 free slot: row 1
  assert not b.add(Piece(i32(51, 52), f32(1, 1), i8(1, 1), 0))  # no room anywhere
  assert (b.tokens, b.padding) == (15, 1)
  out = b.finish()
  expected = {
      "inputs": [[11, 12, 13, 21, 22, 23, 24, 0], [31, 32, 33, 34, 35, 36, 41, 42]],
      "targets": [[12, 13, 0, 22, 23, 24, 0, 0], [32, 33, 34, 35, 36, 0, 42, 0]],
      "weights": [[1, .5, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, .25, 0]],
      "target_kind": [[6, 7, -1, 4, 4, 9, -1, -1], [0, 0, 0, 0, 9, -1, 3, -1]],
      "segment_ids": [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 2, 2]],
      "positions": [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 0, 1]],
      "source_id": [[0, 0, 0, 1, 1, 1, 1, -1], [0, 0, 0, 0, 0, 0, 2, 2]],
  }
  dtypes = {"weights": np.float32}
  assert set(out) == set(KEYS)
  for k in KEYS:
    assert out[k].dtype == dtypes.get(k, np.int32), k
    np.testing.assert_array_equal(out[k], np.array(expected[k]), err_msg=k)


LENGTHS_A = [1, 16, 17, 33, 45, 32, 5, 9, 2, 40, 12, 7, 3, 28, 16, 11, 21, 6, 14, 8]
LENGTHS_B = [2, 30, 4, 13, 9, 18, 6, 3, 25, 10, 15, 5]


def test_stream_packing_invariants():
  T = 16
  rng = np.random.default_rng(0)  # enough samples to stay inside the first epoch
  lengths = {0: LENGTHS_A + rng.integers(1, 50, 100).tolist(), 1: LENGTHS_B * 8}
  it = make_batches([make_source("a", 0, lengths[0]), make_source("b", 1, lengths[1])],
                    seq_len=T, batch_size=3, seed=0)
  n_seg = n_tok = n_pad = n_target = 0
  chunks = collections.defaultdict(list)
  for batch in take(it, 25):
    for k in KEYS:
      assert batch[k].shape == (3, T)
    for r in range(3):
      seg = batch["segment_ids"][r]
      used = int(np.count_nonzero(seg))
      assert np.all(seg[:used] > 0) and np.all(seg[used:] == 0)  # padding only at the tail
      pad = slice(used, T)
      np.testing.assert_array_equal(batch["inputs"][r, pad], 0)
      np.testing.assert_array_equal(batch["targets"][r, pad], 0)
      np.testing.assert_array_equal(batch["weights"][r, pad], 0)
      np.testing.assert_array_equal(batch["positions"][r, pad], 0)
      np.testing.assert_array_equal(batch["target_kind"][r, pad], -1)
      np.testing.assert_array_equal(batch["source_id"][r, pad], -1)
      n_pad += T - used
    ids_per_row = collections.defaultdict(list)
    for r, a, e in segments(batch):
      n_seg += 1
      n_tok += e - a
      ids_per_row[r].append(int(batch["segment_ids"][r, a]))
      ids = [decode(t) for t in batch["inputs"][r, a:e]]
      src, i, j0 = ids[0]
      length = lengths[src][i]
      assert ids == [(src, i, j0 + m) for m in range(e - a)]  # one sample, consecutive tokens
      if length <= T:
        assert (j0, e - a) == (0, length)  # a sample that fits is never cut
      else:  # a chunk ends its sample or fills its row, and is >= min(rest, min_chunk=16)
        assert j0 + e - a == length or e == T
        assert e - a >= min(length - j0, 16)
        chunks[src, i].append((j0, e - a))
      np.testing.assert_array_equal(batch["source_id"][r, a:e], src)
      np.testing.assert_array_equal(batch["positions"][r, a:e], np.arange(e - a))
      np.testing.assert_array_equal(batch["targets"][r, a:e - 1], batch["inputs"][r, a + 1:e])
      j_next = np.arange(j0 + 1, j0 + e - a)  # positions of the target tokens
      np.testing.assert_array_equal(batch["weights"][r, a:e - 1], (j_next % 3) / 2)
      np.testing.assert_array_equal(batch["target_kind"][r, a:e - 1], j_next % 10)
      # the segment's last token has no target inside the segment
      assert batch["targets"][r, e - 1] == 0 and batch["weights"][r, e - 1] == 0
      assert batch["target_kind"][r, e - 1] == -1
      n_target += int(np.count_nonzero(batch["weights"][r, a:e] > 0))
    for ids in ids_per_row.values():
      assert ids == list(range(1, len(ids) + 1))  # distinct, 1.. in order
  # chunks of one sample tile it without gaps or overlaps (sorted: rows reorder pieces)
  assert all(c < len(lengths[s]) for s, c in enumerate(it.get_state()["cursors"]))
  for (src, i), parts in chunks.items():
    parts.sort()
    ends = [j + n for j, n in parts]
    assert parts[0][0] == 0 and all(j == end for (j, _), end in zip(parts[1:], ends))
  assert sum(len(p) >= 3 for p in chunks.values()) >= 3
  s = it.stats
  assert (s.batches, s.segments, s.tokens, s.padding, s.target_tokens) == (
      25, n_seg, n_tok, n_pad, n_target)
  assert s.padding_fraction == pytest.approx(n_pad / (25 * 3 * T))
  assert s.split_overlong > 0 and s.dropped_overlong == 0


def test_attention_never_crosses_segments():
  it = make_batches([make_source("a", 0, LENGTHS_B)], seq_len=32, batch_size=2, seed=1)
  batch = next(it)
  while batch["segment_ids"][0].max() < 3:  # want several samples in row 0
    batch = next(it)
  seg = jnp.asarray(batch["segment_ids"])
  # the model's default positions (restart at segment changes) agree with the pipeline's
  used = batch["segment_ids"] > 0
  np.testing.assert_array_equal(
      np.asarray(default_positions(jnp.asarray(batch["inputs"]), seg))[used],
      batch["positions"][used])
  B, T, H, D = 2, 32, 2, 4
  kq, kk, kv, kp = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (B, T, H, D))
  k = jax.random.normal(kk, (B, T, H, D))
  v = jax.random.normal(kv, (B, T, H, D))
  idx = jnp.broadcast_to(jnp.arange(T), (B, T))
  out = xla_attention(q, k, v, idx, idx, seg, seg, scale=0.5)
  # change keys and values of segment 2 of row 0 only
  target = np.zeros((B, T), bool)
  target[0] = batch["segment_ids"][0] == 2
  noise = jax.random.normal(kp, (B, T, H, D)) * 10
  m = jnp.asarray(target)[:, :, None, None]
  out2 = xla_attention(q, jnp.where(m, k + noise, k), jnp.where(m, v + noise, v),
                       idx, idx, seg, seg, scale=0.5)
  np.testing.assert_array_equal(np.asarray(out2)[~target], np.asarray(out)[~target])
  assert np.all(np.abs(np.asarray(out2 - out))[target].max(axis=(-1, -2)) > 1e-3)


def split_run(min_chunk, n_batches):
  it = make_batches([make_source("a", 0, [40] * 4)], seq_len=16, batch_size=1, seed=0,
                    min_chunk=min_chunk)
  layout = []  # per batch: (offset in its sample, length) of each segment
  for batch in take(it, n_batches):
    layout.append([(decode(batch["inputs"][0, a])[2], e - a) for _, a, e in segments(batch)])
  keys = ("samples", "split_overlong", "split_chunks", "segments", "tokens", "padding",
          "dropped_overlong")
  s = it.stats.as_dict()
  return layout, {k: s[k] for k in keys}, s["padding_fraction"]


def test_split_counts_by_hand():
  # 40-token samples, rows of 16, one row per batch. min_chunk=16: a fresh sample needs 16 free
  # slots, so each sample takes [0:16] [16:32] [32:40] + 8 padding
  layout, counts, pad = split_run(16, 9)
  assert layout == [[(0, 16)], [(16, 16)], [(32, 8)]] * 3
  assert counts == dict(samples=3, split_overlong=3, split_chunks=9, segments=9, tokens=120,
                        padding=24, dropped_overlong=0)
  assert pad == pytest.approx(24 / 144)
  # min_chunk=4: the next sample's first chunk fills the 8 free slots
  layout, counts, pad = split_run(4, 9)
  assert layout == [[(0, 16)], [(16, 16)], [(32, 8), (0, 8)], [(8, 16)], [(24, 16)],
                    [(0, 16)], [(16, 16)], [(32, 8), (0, 8)], [(8, 16)]]
  assert counts == dict(samples=4, split_overlong=4, split_chunks=11, segments=11, tokens=144,
                        padding=0, dropped_overlong=0)
  assert pad == 0


def test_split_loses_no_token():
  seed, T = 5, 16
  src = make_source("a", 0, LENGTHS_A)
  it = make_batches([src], seq_len=T, batch_size=3, seed=seed)
  packed = collections.Counter()
  for batch in take(it, 30):
    packed.update(batch["inputs"][batch["segment_ids"] > 0].tolist())
  state = it.get_state()
  consumed, offset = state["cursors"][0], state["offsets"][0]
  assert consumed > len(LENGTHS_A)  # crossed an epoch
  stream = source_stream(len(LENGTHS_A), seed, "a")
  expected = collections.Counter()
  for k in range(consumed):
    expected.update(src.samples[stream[k]].tokens.tolist())
  expected.update(src.samples[stream[consumed]].tokens[:offset].tolist())
  assert packed == expected


def test_drop_counts_and_order():
  # every 3rd sample is 20 tokens (> T=16): dropped once, when the pipeline is built; the others
  # fill a row exactly, so batch k holds the k-th element of the stream over the kept samples
  seed, N = 2, 30
  lengths = [20 if i % 3 == 0 else 16 for i in range(N)]
  it = make_batches([make_source("a", 0, lengths), make_source("b", 1, [16, 17, 40])],
                    seq_len=16, batch_size=1, seed=seed, overlong="drop",
                    stages=[{"weights": {"a": 1.0}}])
  s = it.stats
  assert (s.dropped_overlong, s.source_dropped) == (12, {"a": 10, "b": 2})
  kept = [i for i in range(N) if i % 3]
  stream = source_stream(kept, seed, "a")
  for k in range(25):  # 20 kept samples per epoch: crosses into the second epoch
    batch = next(it)
    assert int(np.count_nonzero(batch["segment_ids"])) == 16
    assert decode(batch["inputs"][0, 0])[1] == stream[k]
  assert (s.samples, s.dropped_overlong, s.split_overlong, s.split_chunks) == (25, 12, 0, 0)
  assert sorted(stream[k] for k in range(20)) == kept


def test_drop_everything_raises():
  with pytest.raises(ValueError, match=r"sources\[0\] \(a\): every sample is longer than "
                                       r"seq_len=16"):
    make_batches([make_source("a", 0, [20, 30])], seq_len=16, batch_size=1, seed=0,
                 overlong="drop")


# --- determinism, mixture, stages, sharding ---------------------------------------------------

def two_sources():
  return [make_source("a", 0, LENGTHS_A), make_source("b", 1, LENGTHS_B)]


def test_same_seed_same_stream_other_seed_differs():
  a = take(make_batches(two_sources(), seq_len=16, batch_size=2, seed=3), 10)
  b = take(make_batches(two_sources(), seq_len=16, batch_size=2, seed=3), 10)
  c = take(make_batches(two_sources(), seq_len=16, batch_size=2, seed=4), 10)
  assert_batches_equal(a, b)
  assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


def test_mixture_proportions():
  # 8-token samples, rows of 32: exactly 4 per row, 16 pieces per batch, no rejected picks
  srcs = [Source(n, w, [sample(s, i, 8) for i in range(300)])
          for s, (n, w) in enumerate([("a", 1.0), ("b", 2.0), ("c", 1.0)])]
  it = make_batches(srcs, seq_len=32, batch_size=4, seed=0)
  counts = collections.Counter()
  for batch in take(it, 200):
    for r, a, _ in segments(batch):
      counts[int(batch["source_id"][r, a])] += 1
  total = 200 * 16
  assert sum(counts.values()) == total == it.stats.samples
  assert it.stats.source_samples == {"a": counts[0], "b": counts[1], "c": counts[2]}
  # std of each fraction ~ 0.008; 0.03 is ~4 sigma
  for sid, want in ((0, .25), (1, .5), (2, .25)):
    assert abs(counts[sid] / total - want) < 0.03, (sid, counts)


def test_stage_schedule_switches_at_until_step():
  srcs = [make_source(n, s, LENGTHS_B) for s, n in enumerate("abc")]
  stages = [{"until_step": 3, "weights": {"a": 1.0}},
            {"until_step": 6, "weights": {"b": 1.0}},
            {"weights": {"a": 1.0, "c": 3.0}}]
  it = make_batches(srcs, seq_len=16, batch_size=2, seed=0, stages=stages)
  assert [it.stage_index(s) for s in (0, 2, 3, 5, 6, 10**6)] == [0, 0, 1, 1, 2, 2]
  seen = []
  for step in range(14):
    assert it.step == step
    ids = set(next(it)["source_id"].ravel().tolist()) - {-1}
    seen.append(ids)
  assert all(s == {0} for s in seen[:3])
  assert all(s == {1} for s in seen[3:6])
  assert all(s <= {0, 2} for s in seen[6:]) and set().union(*seen[6:]) == {0, 2}
  # a stage without "weights" uses the sources' own weights
  it = make_batches(srcs, seq_len=16, batch_size=2, seed=0,
                    stages=[{"until_step": 1, "weights": {"c": 1.0}}, {}])
  assert set(next(it)["source_id"].ravel().tolist()) - {-1} == {2}
  later = set().union(*(set(b["source_id"].ravel().tolist()) for b in take(it, 20)))
  assert later - {-1} == {0, 1, 2}


def test_stages_from_ml_collections():
  import ml_collections
  cfg = ml_collections.ConfigDict({"stages": [{"until_step": 2, "weights": {"b": 1.0}},
                                              {"until_step": None, "weights": {"a": 1.0}}]})
  it = make_batches(two_sources(), seq_len=16, batch_size=1, seed=0, stages=cfg.stages)
  ids = [set(b["source_id"].ravel().tolist()) - {-1} for b in take(it, 4)]
  assert ids == [{1}, {1}, {0}, {0}]


@pytest.mark.parametrize("stages, match", [
    ([{"until_step": 5, "weights": {"a": 1}}, {"until_step": 5, "weights": {"b": 1}}],
     r"stages\[1\]\.until_step: expected > 5"),
    ([{"weights": {"a": 1}}, {"weights": {"b": 1}}], r"stages\[0\]\.until_step: required"),
    ([{"until_step": 5, "weights": {"z": 1}}, {}],
     r"stages\[0\]\.weights: unknown sources \['z'\]"),
    ([{"until_step": 5, "wieghts": {"a": 1}}, {}], r"stages\[0\]: unknown keys \['wieghts'\]"),
    ([{"weights": {"a": 0.0}}], r"stages\[0\]\.weights: weights sum to 0"),
    ([{"weights": {"a": -1.0}}], r"stages\[0\]\.weights\.a: expected a finite weight >= 0"),
])
def test_bad_stages_raise(stages, match):
  with pytest.raises((ValueError, TypeError), match=match):
    make_batches(two_sources(), seq_len=16, batch_size=1, seed=0, stages=stages)


def test_source_streams_shard_disjoint_and_union():
  P, seed = 3, 7
  for name, n in (("a", 30), ("b", 21)):
    single = [int(x) for x in source_stream(n, seed, name)[:4 * n]]
    assert sorted(single[:n]) == list(range(n))  # each epoch is a permutation
    assert single[:n] != single[n:2 * n]         # reshuffled every epoch
    shards = [[int(x) for x in source_stream(n, seed, name, p, P)[:4 * n // P]] for p in range(P)]
    for p in range(P):
      assert shards[p] == single[p::P]  # interleaving the shards gives the single stream
    first = [set(s[:n // P]) for s in shards]
    assert set().union(*first) == set(range(n)) and sum(map(len, first)) == n  # disjoint


def test_processes_pack_disjoint_shards():
  P, seed = 3, 7
  lengths = {"a": [5 + i % 16 for i in range(120)], "b": [3 + i % 11 for i in range(120)]}
  srcs = [make_source(n, s, lengths[n]) for s, n in enumerate(("a", "b"))]
  packed = []
  for p in range(P):
    it = make_batches(srcs, seq_len=32, batch_size=2, seed=seed, process_index=p,
                      process_count=P)
    got = {0: collections.Counter(), 1: collections.Counter()}
    for batch in take(it, 6):
      for r, a, _ in segments(batch):
        s, i, _ = decode(batch["inputs"][r, a])
        got[s][i] += 1
    cursors = it.get_state()["cursors"]
    for s, name in enumerate(("a", "b")):
      n = len(lengths[name])
      assert 0 < cursors[s] <= n // P  # still inside the first epoch of this shard
      stream = source_stream(n, seed, name, p, P)
      assert got[s] == collections.Counter(int(stream[k]) for k in range(cursors[s]))
    packed.append(got)
  for s in (0, 1):
    for p in range(P):
      for q in range(p + 1, P):
        assert not set(packed[p][s]) & set(packed[q][s])


# --- checkpointable state ----------------------------------------------------------------------

def resume_sources():
  return [make_source("a", 0, [3, 40, 7, 21, 12]), make_source("b", 1, [9, 5, 14, 2]),
          make_source("c", 2, [30, 6, 11])]


RESUME_STAGES = [{"until_step": 7, "weights": {"a": 1.0, "b": 1.0}},
                 {"weights": {"b": 1.0, "c": 2.0}}]


def resume_iter():
  return make_batches(resume_sources(), seq_len=16, batch_size=2, seed=11, stages=RESUME_STAGES)


def test_resume_is_bitwise_exact_across_stage_and_epoch():
  K = 16
  ref_it = resume_iter()
  ref = take(ref_it, K)
  final = ref_it.get_state()
  assert any(c > n for c, n in zip(final["cursors"], final["config"]["source_sizes"]))  # epochs
  it = resume_iter()
  states = []
  for _ in range(K):
    states.append(json.loads(json.dumps(it.get_state())))  # as a checkpoint would store it
    next(it)
  assert any(any(s["offsets"]) for s in states)  # some states sit inside a split sample
  for k, state in enumerate(states):
    restored = resume_iter()
    take(restored, 3)  # a used iterator: set_state must discard what it had read
    restored.set_state(state)
    assert restored.step == k
    assert_batches_equal(take(restored, K - k), ref[k:])
    assert restored.stats.as_dict() == ref_it.stats.as_dict()


def test_orbax_checkpoint_round_trip(tmp_path):
  ref = take(resume_iter(), 12)
  it = resume_iter()
  take(it, 5)
  mgr = ocp.CheckpointManager(tmp_path / "ckpt",
                              options=ocp.CheckpointManagerOptions(max_to_keep=2))
  mgr.save(5, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointSave(it)))
  mgr.wait_until_finished()
  assert_batches_equal(take(it, 7), ref[5:])  # saving did not disturb the live iterator
  fresh = resume_iter()
  restored = mgr.restore(5, args=ocp.args.Composite(ds=grain.checkpoint.CheckpointRestore(fresh)))
  mgr.close()
  assert restored["ds"] is fresh and fresh.step == 5
  assert_batches_equal(take(fresh, 7), ref[5:])


def test_state_from_another_pipeline_raises():
  state = resume_iter().get_state()
  other = make_batches(resume_sources(), seq_len=16, batch_size=2, seed=12, stages=RESUME_STAGES)
  with pytest.raises(ValueError, match=r"state\.config\.seed: the state was saved with 11"):
    other.set_state(state)


# --- bad input ---------------------------------------------------------------------------------

def test_bad_sample_names_source_index_and_field():
  good = sample(0, 0, 5)
  bad = Rendered(good.tokens, good.loss_weights[:4], good.mask_kind, "a")
  it = make_batches([Source("a", 1.0, [good, bad])], seq_len=16, batch_size=4, seed=0)
  with pytest.raises(ValueError, match=r"source 'a' sample 1: loss_weights: expected a numeric "
                                       r"array of shape \(5,\), got shape \(4,\)"):
    take(it, 3)
  with pytest.raises(ValueError, match="overlong: expected one of"):
    make_batches([Source("a", 1.0, [good])], seq_len=16, batch_size=1, seed=0, overlong="trim")
  with pytest.raises(ValueError, match=r"sources\[1\]\.name: duplicate source name 'a'"):
    make_batches([Source("a", 1.0, [good])] * 2, seq_len=16, batch_size=1, seed=0)
  with pytest.raises(ValueError, match=r"sources\[1\] \(b\): no samples, but its weight is > 0"):
    make_batches([Source("a", 1.0, [good]), Source("b", 0.5, [])], seq_len=16, batch_size=1,
                 seed=0)
  with pytest.raises(ValueError, match=r"process_index: expected an int in \[0, 2\)"):
    make_batches([Source("a", 1.0, [good])], seq_len=16, batch_size=1, seed=0,
                 process_index=2, process_count=2)
