"""Checkpointer: exact round trip with data iterators, keep-N, async save vs donation,
corrupt-latest fallback with a warning, fingerprint sensitivity; a checkpoint that does not fit
the config (shapes, dtypes, data iterator) is a config error that changes nothing on disk, and
the last readable checkpoint is never moved aside."""

from __future__ import annotations

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agentic_jax.data import pipeline
from agentic_jax.data.render import Rendered
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train.input import SyntheticIterator
from agentic_jax.train.state import TrainState
from tests.train_fixtures import tree_digest


def _state(step: int, scale: float = 1.0, router_state=None) -> TrainState:
  # Random values do not compress, so the array data is the largest file of a checkpoint.
  params = {"dense": {"kernel": jnp.asarray(np.random.default_rng(step).standard_normal((64, 64)),
                                            jnp.float32) * scale},
            "norm": {"weight": jnp.full((4,), 0.5 * scale, jnp.bfloat16)}}
  opt = optax.adam(1e-3).init(params)
  return TrainState(step=jnp.int32(step), params=params, opt_state=opt,
                    router_state={} if router_state is None else router_state,
                    rng=jax.random.fold_in(jax.random.PRNGKey(0), step),
                    nan_skips=jnp.int32(step % 2))


def _abstract(state):
  return jax.eval_shape(lambda: state)


def _synthetic():
  return SyntheticIterator(batch_size=2, seq_len=16, vocab_size=50, seed=1)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


def test_round_trip_state_iterator_and_meta(tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=3, async_save=True)
  it = _synthetic()
  for _ in range(3):
    next(it)
  state = _state(7, router_state={"layers_0": {"mlp": {"router": {"e_score_correction_bias": jnp.ones(6)}}}})
  ck.save(state, it, {"seed": 3, "optim": {"lr": 0.1}})
  expected_next = next(it)
  ck.close()

  ck2 = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=3)
  it2 = _synthetic()
  restored, meta = ck2.restore_latest(_abstract(state), it2)
  _assert_same(restored, state)
  assert isinstance(restored, TrainState)
  assert restored.params["norm"]["weight"].dtype == jnp.bfloat16
  assert meta["step"] == 7 and meta["config"] == {"seed": 3, "optim": {"lr": 0.1}}
  np.testing.assert_array_equal(meta["rng"], np.asarray(state.rng))
  jax.tree.map(np.testing.assert_array_equal, next(it2), expected_next)
  ck2.close()


def _rendered(n: int, seed: int) -> list[Rendered]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    length = int(rng.integers(3, 20))
    out.append(Rendered(rng.integers(16, 100, length).astype(np.int32),
                        np.ones(length, np.float32), np.zeros(length, np.int8), "s"))
  return out


def test_packed_pipeline_iterator_resumes_exactly(tmp_path):
  """The real grain pipeline iterator through our Checkpointer (contract 4)."""
  def make():
    return pipeline.make_batches([pipeline.Source("a", 1.0, _rendered(30, 0)),
                                  pipeline.Source("b", 2.0, _rendered(20, 1))],
                                 seq_len=24, batch_size=3, seed=5)
  it = make()
  for _ in range(4):
    next(it)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=2)
  ck.save(_state(4), it)
  ck.close()
  expected = [next(it) for _ in range(3)]
  it2 = make()
  ckpt_lib.Checkpointer(str(tmp_path / "ck")).restore_latest(_abstract(_state(4)), it2)
  for want in expected:
    jax.tree.map(np.testing.assert_array_equal, next(it2), want)


def test_keep_n_and_existing_step_is_noop(tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=2, async_save=True)
  for s in (1, 2, 3, 4):
    ck.save(_state(s), _synthetic())
  assert ck.save(_state(4, scale=9.0), _synthetic()) == 4  # already saved: not overwritten
  ck.wait()
  assert ck.all_steps() == [3, 4]
  restored, _ = ck.restore_latest(_abstract(_state(4)), _synthetic())
  _assert_same(restored, _state(4))
  ck.close()


def test_async_save_survives_donating_the_state_afterwards(tmp_path):
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ck"), keep=2, async_save=True)
  state = jax.jit(lambda: _state(3))()
  want = jax.device_get(state)
  ck.save(state, None)
  bump = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  for _ in range(3):
    state = bump(state)  # overwrites the donated buffers while the write may be running
  ck.close()
  restored, _ = ckpt_lib.Checkpointer(str(tmp_path / "ck")).restore_latest(_abstract(want))
  _assert_same(restored, want)


def _save_two(directory, config_json=None) -> None:
  ck = ckpt_lib.Checkpointer(directory, keep=3, async_save=False)
  ck.save(_state(2), _synthetic(), config_json)
  ck.save(_state(4, scale=2.0), _synthetic(), config_json)
  ck.close()


def _flip_byte_in_largest_state_file(step_dir: str) -> str:
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**"), recursive=True)
           if os.path.isfile(f)]
  target = max(files, key=os.path.getsize)
  data = bytearray(open(target, "rb").read())
  data[len(data) // 2] ^= 0x40
  open(target, "wb").write(bytes(data))
  return target


@pytest.mark.parametrize("damage", ["flip_byte", "delete_state", "truncate_meta", "garble_data"])
def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path, damage):
  directory = str(tmp_path / "ck")
  _save_two(directory)
  latest = os.path.join(directory, "4")
  if damage == "flip_byte":
    _flip_byte_in_largest_state_file(latest)
  elif damage == "delete_state":
    shutil.rmtree(os.path.join(latest, "state"))
  elif damage == "garble_data":  # the iterator's JSON state, unparseable: damage, not a mismatch
    for f in glob.glob(os.path.join(latest, "data", "*.json")):
      open(f, "w").write('{"seed": 1, "st')
  else:
    for f in glob.glob(os.path.join(latest, "meta", "*")):
      open(f, "w").close()
  ck = ckpt_lib.Checkpointer(directory, keep=3)
  # A flipped byte inside array data restores without an orbax error (orbax 0.12.8); only
  # the stored fingerprint reveals it.
  cause = "fingerprint mismatch" if damage == "flip_byte" else ""
  with pytest.warns(RuntimeWarning,
                    match=rf"checkpoint step 4 .* unreadable .*{cause}.*falling back to step 2"):
    restored, meta = ck.restore_latest(_abstract(_state(2)), _synthetic())
  _assert_same(restored, _state(2))
  assert meta["step"] == 2
  # The damaged step is moved aside (kept for inspection) and no longer listed.
  assert ck.all_steps() == [2]
  assert glob.glob(os.path.join(directory, "4.corrupt-*"))
  ck.close()


def test_all_checkpoints_corrupt_raises_and_moves_nothing(tmp_path):
  directory = str(tmp_path / "ck")
  _save_two(directory)
  for step in ("2", "4"):
    shutil.rmtree(os.path.join(directory, step, "state"))
  before = tree_digest(directory)
  for _ in range(2):  # and again: the next run stops the same way instead of starting over
    ck = ckpt_lib.Checkpointer(directory)
    with pytest.raises(ckpt_lib.CorruptCheckpointError,
                       match=r"no readable checkpoint .*step 4: .*step 2: .*Nothing was moved"):
      ck.restore_latest(_abstract(_state(2)), _synthetic())
    assert tree_digest(directory) == before and ck.all_steps() == [2, 4]
  assert ckpt_lib.Checkpointer(str(tmp_path / "empty")).restore_latest(_abstract(_state(2))) is None


def test_directory_of_only_quarantined_steps_does_not_start_over(tmp_path):
  """What an older version left behind after moving every step aside: not a fresh start."""
  directory = str(tmp_path / "ck")
  _save_two(directory)
  for step in ("2", "4"):
    os.replace(os.path.join(directory, step), os.path.join(directory, f"{step}.corrupt-17"))
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match=r"2.corrupt-17, 4.corrupt-17.*rename"):
    ckpt_lib.Checkpointer(directory).restore_latest(_abstract(_state(2)))
  os.replace(os.path.join(directory, "4.corrupt-17"), os.path.join(directory, "4"))  # as told
  restored, meta = ckpt_lib.Checkpointer(directory).restore_latest(_abstract(_state(4)))
  assert meta["step"] == 4
  _assert_same(restored, _state(4, scale=2.0))


def _reshaped(state: TrainState, kernel_shape=None, norm_dtype=None):
  """The abstract state of `state` with params.dense.kernel / params.norm.weight changed, as a
  config with another model size / dtype would build it."""
  def change(path, x):
    name = jax.tree_util.keystr(path)
    if kernel_shape and name.endswith("['dense']['kernel']"):
      return jax.ShapeDtypeStruct(kernel_shape, x.dtype)
    if norm_dtype and name.endswith("['norm']['weight']"):
      return jax.ShapeDtypeStruct(x.shape, norm_dtype)
    return x
  return jax.tree_util.tree_map_with_path(change, _abstract(state))


@pytest.mark.parametrize("change,expected", [
    ({"kernel_shape": (64, 32)},
     r"params\.dense\.kernel: checkpoint \(64, 64\) float32, config \(64, 32\) float32"),
    ({"norm_dtype": jnp.float32},
     r"params\.norm\.weight: checkpoint \(4,\) bfloat16, config \(4,\) float32"),
])
def test_shape_or_dtype_mismatch_is_a_config_error_and_changes_nothing(tmp_path, change, expected):
  directory = str(tmp_path / "ck")
  _save_two(directory, {"model": {"hidden_size": 16}, "train": {"num_steps": 6}})
  before = tree_digest(directory)
  ck = ckpt_lib.Checkpointer(directory)
  config_now = {"model": {"hidden_size": 32}, "train": {"num_steps": 9}}
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=expected) as info:
    ck.restore_latest(_reshaped(_state(4), **change), _synthetic(), config_json=config_now)
  msg = str(info.value)
  # a config error (launch/train.py: exit 2) led by the changed key that shapes the state
  assert isinstance(info.value, config_lib.ConfigError)
  assert msg.startswith("config.model.hidden_size: checkpoint step 4") and "\n" not in msg
  assert "model.hidden_size: 16 -> 32" in msg and "train.num_steps: 6 -> 9" in msg
  # the optimizer moments mirror the parameter: 3 arrays differ, the parameter listed first
  assert "3 of its arrays differ" in msg and msg.index("params.") < msg.index("opt_state.")
  assert tree_digest(directory) == before and ck.all_steps() == [2, 4]
  # the right config still resumes from the newest step
  restored, meta = ckpt_lib.Checkpointer(directory).restore_latest(_abstract(_state(4)),
                                                                   _synthetic())
  assert meta["step"] == 4
  _assert_same(restored, _state(4, scale=2.0))


def test_mismatch_behind_a_damaged_step_moves_nothing_either(tmp_path):
  directory = str(tmp_path / "ck")
  _save_two(directory)
  shutil.rmtree(os.path.join(directory, "4", "state"))  # newest damaged, older one mismatched
  before = tree_digest(directory)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="checkpoint step 2"):
    ckpt_lib.Checkpointer(directory).restore_latest(_reshaped(_state(2), kernel_shape=(8, 8)))
  assert tree_digest(directory) == before


def test_data_iterator_that_rejects_its_state_is_a_mismatch_not_damage(tmp_path):
  directory = str(tmp_path / "ck")
  _save_two(directory, {"seed": 1})
  before = tree_digest(directory)
  other_seed = SyntheticIterator(batch_size=2, seq_len=16, vocab_size=50, seed=2)
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"^config\.seed: .*data iterator rejects its saved state .*seed 1"):
    ckpt_lib.Checkpointer(directory).restore_latest(_abstract(_state(4)), other_seed,
                                                    config_json={"seed": 2})
  assert tree_digest(directory) == before


def test_fingerprint_sees_every_single_bit_flip():
  x = jnp.asarray(np.random.default_rng(0).standard_normal(257), jnp.float32)
  base = int(ckpt_lib.fingerprint({"x": x})[0])
  bits = np.asarray(x).view(np.uint32)
  for pos, bit in ((0, 0), (100, 31), (256, 17), (5, 22)):
    flipped = bits.copy()
    flipped[pos] ^= np.uint32(1 << bit)
    assert int(ckpt_lib.fingerprint({"x": jnp.asarray(flipped.view(np.float32))})[0]) != base
  # Swapping two elements (same multiset of values) is detected too.
  swapped = np.asarray(x).copy()
  swapped[[1, 2]] = swapped[[2, 1]]
  assert int(ckpt_lib.fingerprint({"x": jnp.asarray(swapped)})[0]) != base


def test_host_and_device_fingerprints_agree():
  tree = {"f": jnp.linspace(-3, 3, 1000), "b": jnp.ones((3, 5), jnp.bfloat16),
          "i": jnp.arange(7, dtype=jnp.int32), "k": jax.random.PRNGKey(4), "s": jnp.float32(2.5)}
  np.testing.assert_array_equal(ckpt_lib.fingerprint(tree),
                                np.asarray(ckpt_lib._device_fingerprint(tree)))
