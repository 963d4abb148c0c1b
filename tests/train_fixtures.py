"""Small training configs shared by the train/checkpoint/loop tests (compile in seconds)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any, Iterator, Mapping

import jax

from agentic_jax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIDTRAIN = os.path.join(ROOT, "configs", "midtrain.py")

# A 1-layer LongCat-style ScMoE model: 4 FFN experts + 2 zero experts, top-2.
SMALL_MODEL = dict(vocab_size=128, hidden_size=32, num_layers=1, num_attention_heads=2,
                   q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8,
                   v_head_dim=8, intermediate_size=64, n_routed_experts=4, zero_expert_num=2,
                   num_experts_per_tok=2, moe_intermediate_size=16, max_position_embeddings=64,
                   moe_dispatch="dropless", dropless_block_size=16)


def small_config(**sections):
  """configs/midtrain.py:tiny shrunk: synthetic data (batch 4 x 32), the model above, 6
  steps, a record and a checkpoint every 2 steps, no progress bar. `sections` override
  dotted keys, e.g. small_config(**{"optim.grad_accum": 2})."""
  config = config_lib.load_config(MIDTRAIN + ":tiny")
  config.unlock()
  for k, v in SMALL_MODEL.items():
    config.model[k] = v
  config.data.synthetic = True
  config.data.batch_size, config.data.seq_len = 4, 32
  config.train.num_steps, config.train.log_every, config.train.progress = 6, 2, False
  config.optim.warmup_steps = 2
  config.checkpoint.every = 2
  set_dotted(config, sections)
  config.lock()
  return config


def set_dotted(config: Any, overrides: Mapping[str, Any]) -> None:
  """config["a.b.c"] = value for every dotted key of `overrides` (the config must be unlocked
  where a key is new)."""
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value


@contextlib.contextmanager
def persistent_compile_cache(cache_dir: str) -> Iterator[str]:
  """JAX's persistent compilation cache in `cache_dir` for the duration (module fixtures): runs
  that rebuild the same jitted graphs (resumed runs, repeated setups) load them from disk. Only
  speed is at stake: if the private reset hook is missing, everything still compiles."""
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  try:
    from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
  except ImportError:
    compilation_cache = None
  for n, v in zip(names, (cache_dir, 0.0, 0)):
    jax.config.update(n, v)
  if compilation_cache is not None:
    compilation_cache.reset_cache()
  try:
    yield cache_dir
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    if compilation_cache is not None:
      compilation_cache.reset_cache()


def tree_digest(directory: str) -> dict:
  """{relative path: sha256} of every file under `directory` (what 'nothing changed' means)."""
  out = {}
  for root, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "rb") as fh:
        out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
  return out
