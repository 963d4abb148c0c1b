"""DAPO: clip-higher 0.2/0.28, token-mean, overlong shaping, dynamic sampling, no KL (objectives-spec §2); one row per multi-turn trajectory.

    python launch/train.py --config=configs/dapo.py:tiny --workdir=/tmp/rl [--config.init_from=MIDTRAIN_WORKDIR]

Variant: tiny. Keys: agentic_jax/rl/config.py (shared with configs/flow_grpo.py).
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_config


def get_config(arg: str = "tiny"):
  return rl_config("dapo", arg, configs_dir=os.path.dirname(os.path.abspath(__file__)))
