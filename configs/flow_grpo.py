"""Flow-GRPO (AgentFlow) RL configs: one row per policy turn, the trajectory's outcome advantage
broadcast to every turn (objectives-spec §1).

    python launch/train.py --config=configs/flow_grpo.py:tiny --workdir=/tmp/rl \
        [--config.init_from=MIDTRAIN_WORKDIR] [--config.rl.preset=code]

Variants: tiny (preset "paper": trajectory-level group statistics, (1/G)(1/T_i)(1/|a|)
weighting) and tiny_code (preset "code": the released code's turn-sample statistics,
token-mean, clip 0.2/0.3, dual clip 3). Keys: agentic_jax/rl/config.py.
"""

from __future__ import annotations

import os

from agentic_jax.rl.config import rl_config
from agentic_jax.train.config import load_config, split_init_from

# the model section comes from the mid-training config beside this file (same model, so a
# mid-trained checkpoint restores into it)
_MIDTRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "midtrain.py")

_PRESETS = {"tiny": "paper", "tiny_code": "code"}


def get_config(arg: str = "tiny"):
  """VARIANT[,init_from=CKPT_DIR] (CKPT_DIR: a mid-training WORKDIR or a converted checkpoint,
  whose model and tokenizer the run takes)."""
  arg, init_from = split_init_from(arg)
  if arg not in _PRESETS:
    raise ValueError(f"configs/flow_grpo.py: unknown variant {arg!r}; choose one of {tuple(_PRESETS)}")
  mt = load_config(f"{_MIDTRAIN}:tiny" + (f",init_from={init_from}" if init_from else ""))
  c = rl_config("flow_grpo", model=mt.model, tokenizer_vocab=mt.data.tokenizer.vocab_size,
                preset=_PRESETS[arg], variant=arg)
  c.init_from = init_from
  return c
