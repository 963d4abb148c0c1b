"""GRPO (DeepSeekMath): group-normalised outcome advantages, seq-mean-token-mean, k3 KL loss term (objectives-spec §2); one row per multi-turn trajectory.

    python launch/train.py --config=configs/grpo.py:tiny --workdir=/tmp/rl [--config.init_from=MIDTRAIN_WORKDIR]

Variants: tiny; youtu_llm and longcat_flash, full size: the model, mesh, rollout batch, lengths,
optimizer and schedule of configs/flow_grpo.py's same-named variants (the pods launch/plan.py
shows them to fit: python launch/plan.py --config=configs/grpo.py:longcat_flash --accelerator=v5p),
started from a mid-training WORKDIR with :VARIANT,init_from=WORKDIR or --config.init_from.
Keys: agentic_jax/rl/config.py (rl_config, shared with configs/flow_grpo.py); the loss,
its presets and options: objectives/rl_losses.py.
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_config
from agentic_jax.train.config import load_config, split_init_from

# the model section comes from the mid-training config beside this file (same model, so a
# mid-trained checkpoint restores into it)
_MIDTRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "midtrain.py")
# the full-size variants' pod settings (mesh, rollout batch, lengths, optim, schedule) are
# configs/flow_grpo.py's same-named variants'
_FLOW_GRPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flow_grpo.py")
_LOSS_KEYS = ("loss", "preset", "loss_options", "batch_mode", "dapo_max_refill_rounds")

VARIANTS = ("tiny", "youtu_llm", "longcat_flash")


def get_config(arg: str = "tiny"):
  """VARIANT[,init_from=CKPT_DIR] (CKPT_DIR: a mid-training WORKDIR or a converted checkpoint,
  whose model and tokenizer the run takes)."""
  arg, init_from = split_init_from(arg)
  if arg not in VARIANTS:
    raise ValueError(f"configs/grpo.py: unknown variant {arg!r}; choose one of {VARIANTS}")
  suffix = f",init_from={init_from}" if init_from else ""
  if arg == "tiny":
    mt = load_config(f"{_MIDTRAIN}:tiny{suffix}")
    c = rl_config("grpo", model=mt.model, tokenizer_vocab=mt.data.tokenizer.vocab_size,
                  variant=arg)
    c.init_from = init_from
  else:
    pod = load_config(f"{_FLOW_GRPO}:{arg}{suffix}")
    c = rl_config("grpo", model=pod.model, tokenizer_vocab=pod.tokenizer.vocab_size, variant=arg)
    c.init_from = init_from
    for section in ("mesh", "optim", "train", "checkpoint"):
      c[section].update(pod[section].to_dict())
    c.rl.update({k: v for k, v in pod.rl.to_dict().items() if k not in _LOSS_KEYS})
  return c
