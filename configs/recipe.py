"""The tiny end-to-end recipe (the README's main job): mid-training on the embedded agent-native
data (with the calculator_basic episodes), then Flow-GRPO on the calculator environment (basic
level), with a greedy evaluation on held-out tasks before and after RL.

    python launch/train.py --config=configs/recipe.py:tiny --workdir=/tmp/recipe

Layout: config.recipe_data is stage 0 (the mid-training episodes); config.midtrain is a whole configs/midtrain.py:tiny config (run in WORKDIR/midtrain);
the top-level keys are a configs/flow_grpo.py:tiny config (run in WORKDIR/rl with init_from =
WORKDIR/midtrain and model = config.midtrain.model; there is no top-level model section).
Overrides reach either stage: --config.midtrain.train.num_steps=200, --config.rl.group_size=4.
Rerunning resumes stage by stage. Tuned to finish in <= 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import os

import ml_collections

from agentic_jax.rl.config import load_midtrain, rl_config

_DIR = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str = "tiny"):
  if arg != "tiny":
    raise ValueError(f"configs/recipe.py: unknown variant {arg!r}; choose one of ('tiny',)")
  c = rl_config("flow_grpo", "tiny", configs_dir=_DIR, preset="paper")
  c.job = "recipe"
  del c.model  # the RL stage uses config.midtrain.model
  del c.tokenizer  # and the mid-trained tokenizer

  # Stage 0 (agentic_jax/rl/recipe.py): scripted calculator_basic episodes, held-out eval
  # questions removed, 30% with their system prompt and 70% without (it is a constant prefix
  # of ~180 tokens, 3/4 of an episode; the budget goes to the actions).
  d = c.recipe_data = ml_collections.ConfigDict()
  d.seed = 1
  d.num_samples = 8000
  d.with_system_fraction = 0.3
  # Half of the scripted episodes answer from a mental estimate without calling the
  # calculator (always a little off: reward 0), a habit the mid-trained policy copies and
  # Flow-GRPO's outcome reward should unlearn.
  d.no_tool_rate = 0.5

  mt = c.midtrain = load_midtrain(_DIR, "tiny")
  mt.data.sources = ("calculator_basic_sys={data}/calculator_basic_sys.jsonl",
                     "calculator_basic_nosys={data}/calculator_basic_nosys.jsonl")
  mt.data.source_weights = (0.3, 0.7)
  mt.data.loss_weights = (1.0, 1.0)
  mt.data.num_samples = (0, 0)  # used by built-in sources only
  if "eval_num_samples" in mt.data:  # held-out mid-training eval (train/eval.py), if present
    mt.data.eval_num_samples = (16, 16)
    mt.train.eval_every = 0  # the recipe's eval is the RL stage's success rate; saves time
  # SFT-style masking (actions only): copying numbers from the question and the tool output
  # is the skill that gates success; the loss on everything else only dilutes it
  mt.data.mask_policy = "assistant_only"
  mt.data.seq_len = 512  # whole episodes (a basic episode with its prompt is up to ~400 tokens)
  mt.data.batch_size = 2  # many small steps: the copying circuit forms after ~500 updates
  mt.model.max_position_embeddings = 512
  mt.train.num_steps = 800
  mt.train.log_every = 50
  mt.checkpoint.every = 200

  r = c.rl
  r.env_options.level = "basic"
  r.tasks_per_step = 8
  r.group_size = 8
  r.max_turns = 3
  r.max_new_tokens = 32
  r.max_context_tokens = 416
  r.seq_len = 448
  r.eval_tasks = 64
  r.eval_max_turns = 3
  c.train.num_steps = 20
  c.checkpoint.every = 5
  return c
