"""Dr. GRPO: A = R - mean (no std), constant length normaliser (seq-mean-token-sum-norm) (objectives-spec §2); one row per multi-turn trajectory.

    python launch/train.py --config=configs/dr_grpo.py:tiny --workdir=/tmp/rl [--config.init_from=MIDTRAIN_WORKDIR]

Variant: tiny. Keys: agentic_jax/rl/config.py (rl_config, shared with configs/flow_grpo.py); the loss,
its presets and options: objectives/rl_losses.py.
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_config
from agentic_jax.train.config import load_config, split_init_from

# the model section comes from the mid-training config beside this file (same model, so a
# mid-trained checkpoint restores into it)
_MIDTRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "midtrain.py")

VARIANTS = ("tiny",)


def get_config(arg: str = "tiny"):
  """VARIANT[,init_from=CKPT_DIR] (CKPT_DIR: a mid-training WORKDIR or a converted checkpoint,
  whose model and tokenizer the run takes)."""
  arg, init_from = split_init_from(arg)
  if arg not in VARIANTS:
    raise ValueError(f"configs/dr_grpo.py: unknown variant {arg!r}; choose one of {VARIANTS}")
  mt = load_config(f"{_MIDTRAIN}:tiny" + (f",init_from={init_from}" if init_from else ""))
  c = rl_config("dr_grpo", model=mt.model, tokenizer_vocab=mt.data.tokenizer.vocab_size,
                variant=arg)
  c.init_from = init_from
  r = c.rl
  # a fixed L_const independent of the batch: the policy tokens an episode can generate
  r.loss_options.norm_constant = float(r.max_turns * r.max_new_tokens)
  return c
