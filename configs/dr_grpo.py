"""Dr. GRPO: A = R - mean (no std), constant length normaliser (seq-mean-token-sum-norm) (objectives-spec §2); one row per multi-turn trajectory.

    python launch/train.py --config=configs/dr_grpo.py:tiny --workdir=/tmp/rl [--config.init_from=MIDTRAIN_WORKDIR]

Variant: tiny. Keys: agentic_jax/rl/config.py (shared with configs/flow_grpo.py).
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_config


def get_config(arg: str = "tiny"):
  return rl_config("dr_grpo", arg, configs_dir=os.path.dirname(os.path.abspath(__file__)))
