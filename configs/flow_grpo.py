"""Flow-GRPO (AgentFlow) RL configs: one row per policy turn, the trajectory's outcome advantage
broadcast to every turn (objectives-spec §1).

    python launch/train.py --config=configs/flow_grpo.py:tiny --workdir=/tmp/rl \
        [--config.init_from=MIDTRAIN_WORKDIR] [--config.rl.preset=code]
    python launch/plan.py --config=configs/flow_grpo.py:longcat_flash --accelerator=v5p

Variants: tiny (preset "paper": trajectory-level group statistics, (1/G)(1/T_i)(1/|a|)
weighting) and tiny_code (preset "code": the released code's turn-sample statistics,
token-mean, clip 0.2/0.3, dual clip 3). Keys: agentic_jax/rl/config.py.

Full-size variants (preset "paper"; the model section is configs/midtrain.py's same-named
variant, compute fields aside, so its mid-training WORKDIR restores into it; start from one with
`:VARIANT,init_from=WORKDIR` or --config.init_from=WORKDIR, which also brings the tokenizer):
  youtu_llm      Youtu-LLM 2B on one host of 8 H100s (80 GiB): mesh fsdp 8; 8 tasks x 8
                 rollouts, 8 turns of up to 1024 new tokens in a context of up to 7168 (rows of
                 8192 tokens)
  longcat_flash  LongCat-Flash 560B on 512 devices: mesh fsdp 8 x tensor 8 x expert 8, the
                 expert-parallel MoE exchange (capacity factor 8 = the expert axis: no slot
                 dropped, as the decoder runs it); a TPU v5p-1024 slice (95 GiB) or 64 hosts of
                 8 H100s; 8 tasks x 8 rollouts (one per batch shard), 8 turns of up to 512 new
                 tokens in a context of up to 3584 (rows of 4096)
Both: lr 1e-6 (AgentFlow, DAPO and GRPO-TCR all use it), eval on as many tasks as one rollout
batch. The batches are what launch/plan.py shows to fit: rl/sampler.py splits the decoder's
rows over the batch shards (the prefill applies the output head to the last position only)
and rl/step.py computes the reference log-probs one minibatch's rows at a time; on
LongCat-Flash the update of the 64 rows (one minibatch) is the peak. configs/grpo.py, dapo.py
and dr_grpo.py take these variants' pod settings.
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_config
from agentic_jax.train.config import load_config, split_init_from

# the model section comes from the mid-training config beside this file (same model, so a
# mid-trained checkpoint restores into it)
_MIDTRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "midtrain.py")

_PRESETS = {"tiny": "paper", "tiny_code": "code", "youtu_llm": "paper", "longcat_flash": "paper"}
FULL = ("youtu_llm", "longcat_flash")

# the pod of each full-size variant: mesh (data, fsdp, tensor, expert), rollout batch, lengths
_POD = {
    "youtu_llm": dict(mesh=(1, 8, 1, 1), tasks_per_step=8, group_size=8, max_new_tokens=1024,
                      max_context_tokens=7168, minibatches=4, model={}),
    "longcat_flash": dict(mesh=(1, 8, 8, 8), tasks_per_step=8, group_size=8, max_new_tokens=512,
                          max_context_tokens=3584, minibatches=1,
                          model=dict(moe_dispatch="expert_parallel", capacity_factor=8.0)),
}


def _full_size(c, variant: str) -> None:
  pod = _POD[variant]
  for axis, size in zip(("data", "fsdp", "tensor", "expert"), pod["mesh"]):
    c.mesh[axis] = size
  for key, value in pod["model"].items():  # compute fields: a mid-trained checkpoint restores
    c.model[key] = value
  r = c.rl
  for key in ("tasks_per_step", "group_size", "max_new_tokens", "max_context_tokens",
              "minibatches"):
    r[key] = pod[key]
  r.max_turns = r.eval_max_turns = 8
  r.seq_len = r.max_context_tokens + r.max_new_tokens  # every transcript fits a row
  data, fsdp, _, expert = pod["mesh"]
  # the packed rows are padded to a multiple of the batch shards x minibatches (one row per
  # device per minibatch at least)
  r.row_bucket = data * fsdp * expert * r.minibatches
  r.sample_bucket = 8  # up to max_turns turn samples share a transcript row
  r.train_tasks = 100_000
  # the greedy eval decodes all its tasks at once: no more rows than a rollout batch
  r.eval_tasks = r.tasks_per_step * r.group_size
  r.eval_every = 50
  c.optim.lr = 1e-6
  c.train.num_steps = 500
  c.train.progress = False
  c.checkpoint.every = 25
  c.checkpoint.keep = 3


def get_config(arg: str = "tiny"):
  """VARIANT[,init_from=CKPT_DIR] (CKPT_DIR: a mid-training WORKDIR or a converted checkpoint,
  whose model and tokenizer the run takes)."""
  arg, init_from = split_init_from(arg)
  if arg not in _PRESETS:
    raise ValueError(f"configs/flow_grpo.py: unknown variant {arg!r}; choose one of {tuple(_PRESETS)}")
  mt = load_config(f"{_MIDTRAIN}:{arg if arg in FULL else 'tiny'}"
                   + (f",init_from={init_from}" if init_from else ""))
  c = rl_config("flow_grpo", model=mt.model, tokenizer_vocab=mt.data.tokenizer.vocab_size,
                preset=_PRESETS[arg], variant=arg)
  c.init_from = init_from
  if arg in FULL:
    _full_size(c, arg)
  return c
