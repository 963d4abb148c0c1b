"""Dr. GRPO: A = R - mean (no std), constant length normaliser (seq-mean-token-sum-norm) (objectives-spec §2); one row per multi-turn trajectory.

    python launch/train.py --config=configs/dr_grpo.py:tiny --workdir=/tmp/rl [--config.init_from=MIDTRAIN_WORKDIR]

Variants: tiny; youtu_llm and longcat_flash, full size: the model, mesh, rollout batch, lengths,
optimizer and schedule of configs/flow_grpo.py's same-named variants (the pods launch/plan.py
shows them to fit: python launch/plan.py --config=configs/dr_grpo.py:longcat_flash --accelerator=v5p),
started from a mid-training WORKDIR with :VARIANT,init_from=WORKDIR or --config.init_from.
Keys: agentic_jax/rl/config.py (rl_variant builds every variant, as rl_config does
configs/flow_grpo.py's); the loss, its presets and options: objectives/rl_losses.py.
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_variant

# siblings rl_variant loads: the tiny model (midtrain.py) and the full-size pods (flow_grpo.py)
_DIR = os.path.dirname(os.path.abspath(__file__))
_MIDTRAIN, _FLOW_GRPO = os.path.join(_DIR, "midtrain.py"), os.path.join(_DIR, "flow_grpo.py")

VARIANTS = ("tiny", "youtu_llm", "longcat_flash")


def _loss_options(r) -> None:
  """dr_grpo's options at the variant's scale (r: config.rl)."""
  # a fixed L_const independent of the batch: the policy tokens an episode can generate
  r.loss_options.norm_constant = float(r.max_turns * r.max_new_tokens)


def get_config(arg: str = "tiny"):
  """VARIANT[,init_from=CKPT_DIR] (CKPT_DIR: a mid-training WORKDIR or a converted checkpoint,
  whose model and tokenizer the run takes)."""
  c = rl_variant("dr_grpo", arg, config_name="configs/dr_grpo.py", variants=VARIANTS,
                 midtrain_path=_MIDTRAIN, flow_grpo_path=_FLOW_GRPO)
  _loss_options(c.rl)
  return c
