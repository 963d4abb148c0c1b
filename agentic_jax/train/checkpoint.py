"""Checkpoints: orbax CheckpointManager (async, keep N) of the train state, the data iterator
state and a JSON `meta` item (step, base rng, config, state fingerprint).

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=3, async_save=True)
    restored = ckpt.restore_latest(abstract_state, data_iterator)   # None if there is none
    ckpt.save(state, data_iterator, config_json)
    ckpt.close()                                                    # waits for async writes

Layout: DIR/<step>/{state (orbax PyTree), data (grain iterator JSON), meta (JSON)}; step =
TrainState.step (optimizer steps completed), so a run resumed from <step> runs step+1 next.

Corruption. Orbax does not detect every damaged file: a flipped byte inside an array chunk
restores silently as a wrong value (checked with orbax 0.12.8). So `save` stores a
fingerprint of the state - per leaf, sum_i bits_i * (odd multiplier of i) mod 2^32 over
the raw bits, computed on device (works for sharded arrays) - and restore recomputes it.
Multi-process runs: every process calls `save` and `restore_latest` (orbax writes each
process's shards; the JSON meta comes from process 0; the data item keeps one iterator state
per process). Restoring into an abstract state whose leaves carry shardings (train/state.py
with_shardings) places every array straight into that layout.

Any restore error or fingerprint mismatch makes `restore_latest` warn, move the step
directory aside to DIR/<step>.corrupt-<unix time> (kept for inspection, out of orbax's way)
and try the next older step. If every checkpoint is unreadable it raises rather than
silently starting over.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from agentic_jax.parallel import distributed
from agentic_jax.train.state import TrainState

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  elif jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    bits = jax.random.key_data(x).astype(jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32)
  bits = bits.reshape(-1)
  idx = jnp.arange(bits.shape[0], dtype=jnp.uint32)
  mult = (idx * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)) | jnp.uint32(1)  # odd
  return jnp.sum(bits * mult, dtype=jnp.uint32)


def _device_fingerprint_fn(tree: Any) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.stack([_leaf_fingerprint(x) for x in leaves]) if leaves else jnp.zeros((0,), jnp.uint32)


_device_fingerprint = jax.jit(_device_fingerprint_fn)


def _replicated_fingerprint(tree: Any) -> np.ndarray:
  """The device fingerprint of arrays spread over processes: the result is replicated, so
  every process reads the same value from its own devices."""
  mesh = next(x.sharding.mesh for x in jax.tree_util.tree_leaves(tree)
              if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding))
  out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  with jax.set_mesh(mesh):
    fp = jax.jit(_device_fingerprint_fn, out_shardings=out)(tree)
  return np.asarray(fp.addressable_data(0))


def _host_leaf_fingerprint(x: Any) -> np.uint32:
  """The same sum as _leaf_fingerprint, in numpy (uint32 arithmetic wraps in both)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  a = np.asarray(x)
  if a.dtype == np.bool_:
    bits = a.astype(np.uint32)
  else:
    bits = a.view(np.dtype(f"uint{8 * a.dtype.itemsize}")).astype(np.uint32)
  bits = bits.reshape(-1)
  idx = np.arange(bits.shape[0], dtype=np.uint32)
  mult = (idx * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)) | np.uint32(1)
  return np.sum(bits * mult, dtype=np.uint32)


def fingerprint(tree: Any) -> np.ndarray:
  """uint32 [num_leaves]: changes if any bit of any leaf changes (single-bit flips always).

  On host (numpy) when every leaf is fully addressable - no compilation for the common
  single-process case - else jitted on device, where sharded leaves stay sharded (a
  collective in a multi-process run: every process must call it)."""
  leaves = jax.tree_util.tree_leaves(tree)
  if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
    return np.asarray([_host_leaf_fingerprint(x) for x in leaves], np.uint32)
  return _replicated_fingerprint(tree)


def _with_default_sharding(abstract: Any) -> Any:
  """Leaves without a sharding restore onto the default device, as arrays made by jit are
  (orbax's own default is a NamedSharding over an empty mesh, which compiles the step to a
  different program). Leaves that carry a sharding (a sharded run) keep it."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def fill(x):
    if isinstance(x, jax.ShapeDtypeStruct) and getattr(x, "sharding", None) is None:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
    return x
  return jax.tree.map(fill, abstract)


class CorruptCheckpointError(RuntimeError):
  pass


class Checkpointer:
  """Saves/restores {state, data, meta}; see the module docstring."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_names=("state", "data", "meta"))

  # ---------------------------------------------------------------- save

  def save(self, state: TrainState, data_iterator: Any, config_json: Optional[dict] = None,
           extra: Optional[dict] = None) -> int:
    """Saves at step int(state.step) (no-op if that step is already saved). Async saves
    return after the arrays are copied; call `wait` or `close` before exiting."""
    step = int(jax.device_get(state.step))
    if step in self._mgr.all_steps():
      return step
    meta = {"step": step, "rng": np.asarray(jax.device_get(state.rng)).tolist(),
            "fingerprint": fingerprint(state).tolist(),
            "saved_at": time.time(), "config": config_json or {}, **(extra or {})}
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._mgr.save(step, args=ocp.args.Composite(**args), force=True)
    return step

  # ---------------------------------------------------------------- restore

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def _restore_step(self, step: int, abstract_state: TrainState, data_iterator: Any):
    args = {"state": ocp.args.StandardRestore(_with_default_sharding(abstract_state)),
            "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    out = self._mgr.restore(step, args=ocp.args.Composite(**args))
    state, meta = out["state"], out["meta"]
    if not isinstance(state, TrainState):  # orbax may hand back a plain dict tree
      state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_state),
                                           jax.tree_util.tree_leaves(state))
    got = fingerprint(state).tolist()
    if got != meta.get("fingerprint"):
      bad = [i for i, (a, b) in enumerate(zip(got, meta.get("fingerprint", []))) if a != b]
      raise CorruptCheckpointError(f"state fingerprint mismatch in {len(bad) or 'all'} leaves "
                                   f"(first leaf index {bad[:1]})")
    if int(jax.device_get(state.step)) != step:
      raise CorruptCheckpointError(f"directory {step} holds state.step={int(state.step)}")
    return state, meta

  def restore_latest(self, abstract_state: TrainState,
                     data_iterator: Any = None) -> Optional[tuple[TrainState, dict]]:
    """(state, meta) of the newest readable checkpoint, or None if there is none at all."""
    steps = sorted(self._mgr.all_steps(), reverse=True)
    if not steps:
      return None
    errors = []
    for step in steps:
      try:
        restored, e = self._restore_step(step, abstract_state, data_iterator), None
      except Exception as exc:  # pylint: disable=broad-except  any failure means unreadable
        restored, e = None, exc
      # One verdict for all processes: a step bad for any of them is bad for every one.
      if not distributed.any_process(e is not None):
        return restored
      if e is None:
        e = CorruptCheckpointError("unreadable on another process")
      moved = self._quarantine(step)
      msg = (f"checkpoint step {step} in {self.directory} is unreadable "
             f"({type(e).__name__}: {str(e)[:300]}); moved it to {moved} and "
             f"falling back to the previous checkpoint")
      warnings.warn(msg, RuntimeWarning, stacklevel=2)
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
    raise CorruptCheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))

  def _quarantine(self, step: int) -> str:
    """Moves a bad step aside. Multi-process: every process gets here together (the verdict
    is agreed in restore_latest); process 0 moves the directory, the others wait for it."""
    src = os.path.join(self.directory, str(step))
    dst = f"{src}.corrupt-{int(time.time())}"
    if jax.process_index() == 0 and os.path.exists(src):
      os.replace(src, dst)
    distributed.barrier(f"checkpoint-quarantine-{step}")
    self._mgr.reload()
    return dst

  # ---------------------------------------------------------------- lifecycle

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()
