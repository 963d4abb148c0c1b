"""Packing groups (agentic_jax.data.groups): the global batch is the same whatever the number
of processes feeding it, each process gets exactly its rows, and a resumed row block continues
bitwise. Also through train/input.py with the built-in data, as a multi-process run uses it."""

import numpy as np
import pytest

from agentic_jax.data import groups as groups_lib
from agentic_jax.data.pipeline import make_batches
from tests.data_fixtures import KEYS, assert_batches_equal, make_source, take

B, T, SEED = 8, 32, 5


def _sources():
  return [make_source("a", 0, [5 + (7 * i) % 29 for i in range(90)]),
          make_source("b", 1, [3 + (5 * i) % 40 for i in range(70)])]  # some over-length


def _block(groups, processes, p):
  srcs = _sources()
  per = B // processes
  return groups_lib.row_block(
      lambda g: make_batches(srcs, seq_len=T, batch_size=B // groups, seed=SEED,
                             process_index=g, process_count=groups),
      batch_size=B, groups=groups, row_start=p * per, row_stop=(p + 1) * per)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_global_batch_does_not_depend_on_process_count(groups):
  single = take(_block(groups, 1, 0), 5)
  assert all(b["inputs"].shape == (B, T) for b in single)
  for processes in (2, 4, 8):
    blocks = [take(_block(groups, processes, p), 5) for p in range(processes)]
    joined = [{k: np.concatenate([blk[s][k] for blk in blocks]) for k in KEYS}
              for s in range(5)]
    assert_batches_equal(joined, single)


def test_groups_change_the_batch_but_each_group_is_its_own_pipeline():
  """Two groups = the rows of two pipelines reading alternate stream elements (the definition
  in the module docstring, checked against make_batches directly)."""
  srcs = _sources()
  got = take(_block(2, 1, 0), 3)
  halves = [take(make_batches(srcs, seq_len=T, batch_size=B // 2, seed=SEED, process_index=g,
                              process_count=2), 3) for g in range(2)]
  for s in range(3):
    for k in KEYS:
      np.testing.assert_array_equal(got[s][k], np.concatenate([halves[0][s][k], halves[1][s][k]]))
  one_group = take(_block(1, 1, 0), 3)
  assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(got, one_group))


def test_row_block_resumes_bitwise_and_rejects_a_foreign_state():
  it = _block(1, 4, 1)  # rows 2..3 of a single group: a RowBlockIterator
  assert isinstance(it, groups_lib.RowBlockIterator)
  take(it, 2)
  state = it.get_state()
  rest = take(it, 3)
  fresh = _block(1, 4, 1)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), rest)
  assert fresh.stats.batches == 5
  other = _block(2, 4, 1)  # another pack_groups: refused, naming it
  with pytest.raises(ValueError, match="pack_groups=1"):
    other.set_state(state)


def test_one_whole_group_keeps_the_pipeline_iterator():
  it = _block(2, 2, 1)  # process 1 of 2 feeds exactly group 1
  assert not isinstance(it, groups_lib.RowBlockIterator)
  assert it.get_state()["config"]["process_index"] == 1


def test_stats_sum_the_groups():
  it = _block(4, 1, 0)
  take(it, 3)
  assert it.stats.batches == 4 * 3  # four group pipelines, three batches each
  tokens = sum(int(np.count_nonzero(b["segment_ids"])) for b in take(_block(4, 1, 0), 3))
  assert it.stats.tokens == tokens


@pytest.mark.parametrize("groups, message", [(0, ">= 1"), (3, "does not divide"),
                                             (True, ">= 1"), (2.0, ">= 1")])
def test_bad_pack_groups_names_the_key(groups, message):
  with pytest.raises(ValueError, match=f"config.data.pack_groups.*{message}"):
    groups_lib.check_groups(B, groups)


def test_build_input_rows_equal_the_single_process_batch(tmp_path):
  """train/input.py with the built-in sources: process p of 2 (and of 4) gets exactly its rows
  of the one-process batch, train and held-out eval alike."""
  from agentic_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import input as input_lib  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = config_lib.load_config(os.path.join(root, "configs", "midtrain.py") + ":tiny")
  config.unlock()
  for name, n in {"calculator": 64, "pyrepo": 32, "stdlib_edits": 64}.items():
    config.data.mix[name].num_samples, config.data.mix[name].eval_num_samples = n, n // 4
  config.data.seq_len = 64
  config.lock()
  one = input_lib.build_input(config, str(tmp_path), vocab_limit=1024, eval_batches=2)
  ref = take(one.iterator, 3)
  for count in (2, 4):
    parts = [input_lib.build_input(config, str(tmp_path), vocab_limit=1024, eval_batches=2,
                                   process_index=p, process_count=count) for p in range(count)]
    for s, batches in enumerate(zip(*(take(p.iterator, 3) for p in parts))):
      for k in KEYS:
        np.testing.assert_array_equal(np.concatenate([b[k] for b in batches]), ref[s][k])
    for s in range(2):
      for k in KEYS:
        np.testing.assert_array_equal(
            np.concatenate([p.eval_batches[s][k] for p in parts]), one.eval_batches[s][k])
