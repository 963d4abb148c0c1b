"""Checkpoints: orbax CheckpointManager (async, keep N) of the train state, the data iterator
state and a JSON `meta` item (step, base rng, config, state fingerprint).

    ckpt = Checkpointer(fs.join(workdir, "checkpoints"), keep=3, async_save=True)
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

A checkpoint that does not fit the config is not damaged. Before restoring a step, its arrays'
shapes and dtypes (orbax metadata, read without loading) are compared with the state the config
builds, and a data iterator that rejects its saved state (a changed data config) is told apart
from one whose state cannot be read. Either mismatch raises CheckpointMismatchError (a
config.ConfigError) naming the differing parameters, and changes nothing on disk.

Only data that cannot be read (an orbax read error, JSON that does not parse, a fingerprint or
step mismatch) counts as damaged. `restore_latest` restores the newest readable step; the newer
damaged ones are then moved aside to DIR/<step>.corrupt-<unix time> (kept for inspection, out of
orbax's way) with a warning. If no step is readable it raises CorruptCheckpointError and moves
nothing: a run never quarantines its last checkpoint, and never starts over silently (a
directory holding only quarantined steps raises too).
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from agentic_jax import fs
from agentic_jax.parallel import distributed
from agentic_jax.train import runtime
from agentic_jax.train.config import ConfigError
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
  """Checkpoint data that cannot be read, or reads back other than it was saved."""


class CheckpointMismatchError(ConfigError):
  """A readable checkpoint that does not fit the state (or data) the config builds."""


# Config sections whose values shape the train state (parameter tree and optimizer state).
_SHAPING_SECTIONS = ("model", "optim")
_MAX_LISTED = 10


def _leaf_name(path: tuple) -> str:
  """A key path as orbax names the leaf in its metadata ("opt_state.0.mu.embed.embedding")."""
  return ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _shapes(tree: Any) -> dict[str, tuple[tuple, str]]:
  return {_leaf_name(p): (tuple(x.shape), str(x.dtype))
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_differences(saved: dict, wanted: dict) -> list[str]:
  """'path: checkpoint <shape> <dtype>, config <shape> <dtype>' for every leaf that differs or
  exists on one side only (arguments: leaf name -> (shape, dtype), as `_shapes` gives)."""
  def show(entry):
    return "absent" if entry is None else f"{entry[0]} {entry[1]}"
  # parameters first: the optimizer moments mirror them, and they are what a reader recognises
  keys = sorted(set(saved) | set(wanted), key=lambda k: (not k.startswith("params."), k))
  return [f"{k}: checkpoint {show(saved.get(k))}, config {show(wanted.get(k))}"
          for k in keys if saved.get(k) != wanted.get(k)]


class _DataMismatch(Exception):
  pass


class _CheckedIterator:
  """Stands in for the data iterator during a restore, to tell a damaged iterator state from one
  written under another data config. Not a grain DatasetIterator, so grain hands it the saved
  text unparsed (the format `save` wrote with the real iterator)."""

  def __init__(self, inner: Any):
    self.inner = inner

  def set_state(self, raw: bytes) -> None:
    try:
      state = json.loads(raw)
    except ValueError as e:  # also UnicodeDecodeError
      raise CorruptCheckpointError(f"data iterator state is not JSON ({e})") from None
    try:
      self.inner.set_state(state)
    except (ValueError, KeyError, TypeError) as e:
      raise _DataMismatch(str(e)) from None

  def start_prefetch(self) -> None:
    if hasattr(self.inner, "start_prefetch"):
      self.inner.start_prefetch()


class Checkpointer:
  """Saves/restores {state, data, meta}; see the module docstring."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = fs.resolve(directory)  # local or gs:// (orbax writes either)
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

  def _step_dir(self, step: int) -> str:
    return fs.join(self.directory, str(step))

  def _check_fits(self, step: int, abstract_state: TrainState,
                  config_json: Optional[dict]) -> None:
    """CheckpointMismatchError if step's saved arrays differ in shape or dtype from
    `abstract_state` (read from orbax metadata; nothing is loaded). A metadata read failure
    propagates as it is: that step is unreadable."""
    from etils import epath  # pylint: disable=import-outside-toplevel  (orbax's path type)
    tree = ocp.StandardCheckpointHandler().metadata(
        epath.Path(fs.join(self._step_dir(step), "state"))).tree
    diff = state_differences(_shapes(tree), _shapes(abstract_state))
    if diff:
      raise self._mismatch(step, f"{len(diff)} of its arrays differ from the state this config "
                           "builds: " + "; ".join(diff[:_MAX_LISTED])
                           + (f"; and {len(diff) - _MAX_LISTED} more" if len(diff) > _MAX_LISTED
                              else ""), config_json, _SHAPING_SECTIONS)

  def _mismatch(self, step: int, what: str, config_json: Optional[dict],
                sections: tuple[str, ...]) -> CheckpointMismatchError:
    """The error for a step that does not fit, led by the changed config keys (from the
    checkpoint's meta) under `sections`, the ones that decide what failed to fit."""
    diff: list[str] = []
    if config_json is not None:
      try:
        saved = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        diff = runtime.config_diff(saved["meta"].get("config", {}), config_json)
      except Exception:  # pylint: disable=broad-except  the key names are a courtesy only
        diff = []
    keys = [d.split(":")[0] for d in diff]
    lead = [f"config.{k}" for k in keys if k.split(".")[0] in sections]
    changed = (f" (config changed since: {'; '.join(diff[:_MAX_LISTED])})" if diff else "")
    return CheckpointMismatchError(
        f"{', '.join(lead[:3]) or 'config'}: checkpoint step {step} in {self.directory} was "
        f"written under another config{changed}: {what}. Nothing on disk was changed: rerun "
        "with the checkpoint's config, or use another --workdir to start afresh")

  def _restore_step(self, step: int, abstract_state: TrainState, data_iterator: Any,
                    config_json: Optional[dict] = None):
    self._check_fits(step, abstract_state, config_json)
    args = {"state": ocp.args.StandardRestore(_with_default_sharding(abstract_state)),
            "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(_CheckedIterator(data_iterator))
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(**args))
    except _DataMismatch as e:
      raise self._mismatch(step, f"the data iterator rejects its saved state ({e})",
                           config_json, ("data", "seed")) from None
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

  def restore_latest(self, abstract_state: TrainState, data_iterator: Any = None, *,
                     config_json: Optional[dict] = None) -> Optional[tuple[TrainState, dict]]:
    """(state, meta) of the newest readable checkpoint, or None if there is none at all (see
    the module docstring for mismatched and damaged steps). `config_json`, the run's config,
    lets a mismatch error name the config keys that differ from the checkpoint's."""
    steps = sorted(self._mgr.all_steps(), reverse=True)
    if not steps:
      self._refuse_only_quarantined()
      return None
    damaged: list[tuple[int, BaseException]] = []
    for step in steps:
      restored, error, mismatch = None, None, None
      try:
        restored = self._restore_step(step, abstract_state, data_iterator, config_json)
      except CheckpointMismatchError as exc:
        mismatch = exc
      except Exception as exc:  # pylint: disable=broad-except  any other failure: unreadable
        error = exc
      # One verdict for all processes: a mismatch anywhere stops every process, a step bad
      # for any of them is bad for every one.
      if distributed.any_process(mismatch is not None):
        raise mismatch or CheckpointMismatchError(
            f"config: checkpoint step {step} in {self.directory} does not fit this config on "
            "another process; nothing on disk was changed")
      if not distributed.any_process(error is not None):
        for bad, exc in damaged:  # only now: a readable step remains
          moved = self._quarantine(bad)
          warnings.warn(f"checkpoint step {bad} in {self.directory} is unreadable "
                        f"({type(exc).__name__}: {str(exc)[:300]}); moved it to {moved} and "
                        f"falling back to step {step}", RuntimeWarning, stacklevel=2)
        return restored
      damaged.append((step, error or CorruptCheckpointError("unreadable on another process")))
    detail = "; ".join(f"step {s}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                       for s, e in damaged)
    raise CorruptCheckpointError(
        f"no readable checkpoint in {self.directory} ({detail}). Nothing was moved: restore the "
        "step directories from a copy, or move them out of the directory to start from step 0")

  def _refuse_only_quarantined(self) -> None:
    """A directory whose every step was moved aside is not a fresh start: say so and stop."""
    aside = sorted(p.rsplit("/", 1)[-1] for p in fs.glob(fs.join(self.directory, "*.corrupt-*")))
    if aside:
      raise CorruptCheckpointError(
          f"{self.directory} holds no checkpoint but {len(aside)} moved aside as unreadable "
          f"({', '.join(aside[:_MAX_LISTED])}): rename one back to its step number to retry it, "
          "or move them out of the directory to start from step 0")

  def _quarantine(self, step: int) -> str:
    """Moves a bad step aside. Multi-process: every process gets here together (the verdict
    is agreed in restore_latest); process 0 moves the directory, the others wait for it."""
    src = self._step_dir(step)
    dst = f"{src}.corrupt-{int(time.time())}"
    if jax.process_index() == 0 and fs.exists(src):
      fs.move(src, dst)
    distributed.barrier(f"checkpoint-quarantine-{step}")
    self._mgr.reload()
    return dst

  # ---------------------------------------------------------------- lifecycle

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()
