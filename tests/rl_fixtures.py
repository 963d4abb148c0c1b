"""Helpers shared by the RL test modules (test_rl_step, test_rl_loop, test_rl_minibatch_weights):
small RL configs, hand-built policy batches on T = 8 positions, and float64 numpy references
computed from the model's own logits."""

from __future__ import annotations

import os

import jax
import numpy as np

from agentic_jax import models
from agentic_jax.rl import step as step_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import state as state_lib
from tests.train_fixtures import ROOT, SMALL_MODEL, set_dotted

T = 8
VOCAB = SMALL_MODEL["vocab_size"]


def rl_test_config(loss="grpo", variant="tiny", **over):
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"{loss}.py") + f":{variant}")
  config.unlock()
  for k, v in SMALL_MODEL.items():
    config.model[k] = v
  # dense layers: the RL math does not depend on the layer type, and they compile twice as fast
  # (tests/test_rl_loop.py runs the MoE model through the same step)
  config.model.layer_type = "dense"
  config.rl.ppo_epochs, config.rl.minibatches = 1, 1
  config.optim.lr = 1e-3
  set_dotted(config, over)
  config.lock()
  return config


def make_batch(rows, seed=0):
  """rows: list of dicts (group, traj, turn, reward, mask list[T], seg list[T], valid)."""
  rng = np.random.default_rng(seed)
  n = len(rows)
  b = {"inputs": rng.integers(3, VOCAB, (n, T)).astype(np.int32),
       "targets": rng.integers(3, VOCAB, (n, T)).astype(np.int32)}
  b["segment_ids"] = np.array([r.get("seg", [1] * T) for r in rows], np.int32)
  b["positions"] = np.where(b["segment_ids"] > 0, np.arange(T)[None, :], 0).astype(np.int32)
  b["mask"] = np.array([r["mask"] for r in rows], np.float32)
  b["old_logp"] = np.zeros((n, T), np.float32)
  b["group_id"] = np.array([r["group"] for r in rows], np.int32)
  b["traj_id"] = np.array([r["traj"] for r in rows], np.int32)
  b["turn_index"] = np.array([r.get("turn", 0) for r in rows], np.int32)
  b["rewards"] = np.array([r["reward"] for r in rows], np.float32)
  b["truncated"] = np.zeros(n, bool)
  b["sample_mask"] = np.array([r.get("valid", True) for r in rows], bool)
  b["response_len"] = b["mask"].sum(1).astype(np.int32)
  return b


def pack(b, sample_by="row", row_bucket=1):
  packed, _ = step_lib.pack_batch(b, seq_len=T, sample_by=sample_by, sample_len=T,
                                  row_bucket=row_bucket)
  return packed


def small_rl_config(tokenizer_path, loss="flow_grpo", variant="tiny", **over):
  """configs/<loss>.py:<variant> shrunk for the RL loop tests: the small model with a 400-piece
  vocabulary (conftest's `tokenizer_path`), 2 tasks x 2 rollouts of up to 2 turns, 4 steps."""
  config = config_lib.load_config(os.path.join(ROOT, "configs", f"{loss}.py") + f":{variant}")
  config.unlock()
  for k, v in {**SMALL_MODEL, "vocab_size": 400}.items():
    config.model[k] = v
  config.tokenizer.path = tokenizer_path
  r = config.rl
  r.tasks_per_step, r.group_size, r.max_turns, r.eval_max_turns = 2, 2, 2, 2
  r.max_new_tokens, r.max_context_tokens, r.seq_len = 12, 308, 320
  r.row_bucket, r.sample_bucket, r.minibatches, r.eval_tasks = 4, 2, 2, 4
  config.train.num_steps, config.train.progress = 4, False
  config.checkpoint.every = 100
  config.optim.lr = 1e-3
  set_dotted(config, over)
  config.lock()
  return config


def setup(config, seed=0):
  model_cfg = config_lib.model_config(config.model)
  tx = optim_lib.make_optimizer(config.optim)
  state = state_lib.init_state(model_cfg, tx, seed)
  ref = models.init_variables(model_cfg, jax.random.PRNGKey(seed + 100))  # differs: KL > 0
  return model_cfg, state, ref


_FORWARD: dict = {}


def np_logp(model_cfg, variables, b, temperature=1.0):
  """float64 log_softmax at the targets, from the model's logits (one jitted forward per cfg)."""
  if model_cfg not in _FORWARD:
    _FORWARD[model_cfg] = jax.jit(models.build(model_cfg).apply)
  logits = np.asarray(_FORWARD[model_cfg](variables, b["inputs"], b["segment_ids"],
                                          b["positions"]), np.float64) / temperature
  m = logits.max(-1, keepdims=True)
  logz = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
  return np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0] - logz


def np_k3(logp, ref):
  x = np.clip(logp - ref, -20, 20)
  return np.clip(np.exp(-x) + x - 1, -10, 10)


# Flow-GRPO paper case (test_rl_step's `flow`; test_rl_loop's two-device check): three
# groups, multi-turn trajectories, an all-correct group (dropped) and a padding row.
M3 = [0, 0, 1, 1, 1, 0, 0, 0]
FLOW_ROWS = [dict(group=0, traj=0, turn=0, reward=1.0, mask=[0, 0, 1, 1, 0, 0, 0, 0]),
             dict(group=0, traj=0, turn=1, reward=1.0, mask=[0, 0, 0, 0, 1, 1, 1, 0]),
             dict(group=0, traj=1, turn=0, reward=0.0, mask=M3),
             dict(group=1, traj=0, turn=0, reward=0.5, mask=M3, seg=[1] * 6 + [0, 0]),
             dict(group=1, traj=1, turn=0, reward=0.0, mask=[0, 1, 1, 0, 0, 1, 1, 0]),  # 3,4: obs.
             dict(group=2, traj=0, turn=0, reward=1.0, mask=M3),  # group 2: all correct, dropped
             dict(group=2, traj=1, turn=0, reward=1.0, mask=M3),
             dict(group=1, traj=2, turn=0, reward=0.0, mask=M3, valid=False)]  # padding row
