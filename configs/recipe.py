"""The tiny end-to-end recipe (the README's main job): mid-training on scripted calculator agent
episodes (basic level, nothing planted), then Flow-GRPO (preset "paper") on the calculator
environment, with an evaluation on 64 held-out tasks before and after RL (4 sampled episodes per
task, and greedy decoding).

    python launch/train.py --config=configs/recipe.py:tiny --workdir=/tmp/recipe        # plain
    python launch/train.py --config=configs/recipe.py:agentflow --workdir=/tmp/recipe_af

Variants: tiny (plain multi-turn tool use) and agentflow (in-the-flow: the trained planner
writes sub-goal + tool, the scripted executor / verifier / generator do the rest; mid-training
adds one planner sample per action to the plain episodes, rl/agentflow_data.py).
Layout: config.recipe_data is stage 0 (the mid-training episodes); config.midtrain is a whole
configs/midtrain.py:tiny config (run in WORKDIR/midtrain);
the top-level keys are a configs/flow_grpo.py:tiny config (run in WORKDIR/rl with init_from =
WORKDIR/midtrain and model = config.midtrain.model; there is no top-level model section).
Overrides reach either stage: --config.midtrain.train.num_steps=200, --config.rl.group_size=4.
Rerunning resumes stage by stage. Tuned to finish in <= 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import os

import ml_collections

from agentic_jax.rl.config import rl_config
from agentic_jax.train.config import load_config

_DIR = os.path.dirname(os.path.abspath(__file__))


VARIANTS = ("tiny", "agentflow")


def get_config(arg: str = "tiny"):
  if arg not in VARIANTS:
    raise ValueError(f"configs/recipe.py: unknown variant {arg!r}; choose one of {VARIANTS}")
  midtrain = load_config(os.path.join(_DIR, "midtrain.py") + ":tiny")  # configs/midtrain.py
  midtrain.unlock()
  c = rl_config("flow_grpo", model=midtrain.model,
                tokenizer_vocab=midtrain.data.tokenizer.vocab_size, preset="paper")
  c.job = "recipe"
  c.variant = arg
  del c.model  # the RL stage uses config.midtrain.model
  del c.tokenizer  # and the mid-trained tokenizer

  # Stage 0 (agentic_jax/rl/recipe.py): scripted calculator episodes of the basic level (one-
  # and two-step arithmetic and short word problems, one-line system prompt) with the held-out
  # eval questions removed. Nothing RL improves on is planted: every demonstration uses the
  # tool and reaches the right answer (no slips, no answers without the calculator); 20% show
  # a failing call and its correction, a skill rather than a flaw, and the one that teaches a
  # tiny model to copy numbers. Harder levels were tried and left no room at this scale: on
  # "multistep" (3-4 steps) or "mixed" (half basic, half multistep) data the tiny model does
  # not learn to copy numbers in 2,000-4,000 steps (greedy 0.03-0.05 before RL, no RL signal).
  d = c.recipe_data = ml_collections.ConfigDict()
  d.seed = 1
  d.num_samples = 8000
  d.level = "basic"  # calculator level: "basic" | "multistep" | "mixed" | "word"
  d.format = "agentflow" if arg == "agentflow" else "plain"  # plain episodes | + planner samples
  d.no_tool_rate = 0.0  # share answering from a mental estimate without the calculator (reward 0)
  d.slip_rate = 0.0  # share with an unnoticed mistake (reward 0)
  d.error_rate = 0.2  # share with one failing call, then corrected

  mt = c.midtrain = midtrain
  # the mix: stage 0's file ("{data}" = WORKDIR/data), its last 64 episodes held out
  mt.data.mix = ml_collections.ConfigDict({"calculator": {
      "kind": "jsonl", "path": "{data}/episodes.jsonl", "weight": 1.0, "loss_weight": 1.0,
      "eval_num_samples": 64}})
  mt.train.eval_every = 0  # the recipe's eval is the RL stage's success rate; saves time
  # SFT-style masking (actions only): copying numbers from the question and the tool output
  # is the skill that gates success; the loss on everything else only dilutes it
  mt.data.mask_policy = "assistant_only"
  mt.data.seq_len = 256  # plain episodes of the basic level fit
  if arg == "agentflow":
    # a planner sample is the planner's whole context (query, analysis, memory, step count:
    # ~200-350 tokens with the 1,024-piece tokenizer) and its plan
    mt.model.max_position_embeddings = 384  # RoPE: no parameters change
    mt.data.seq_len = 384
  mt.data.batch_size = 4
  # copying numbers into calls forms late and abruptly: after 2,000 steps the same recipe
  # reached greedy 0.08, 0.16 or 0.69 depending on the data's composition; 3,000 steps
  mt.train.num_steps = 3000
  mt.train.log_every = 50
  mt.checkpoint.every = 500

  r = c.rl
  r.env_options.level = d.level
  r.mode = "agentflow" if arg == "agentflow" else "plain"
  r.tasks_per_step = 8
  r.group_size = 8
  r.max_turns = 4  # two calculator steps, a corrected call and the answer
  r.max_new_tokens = 32
  r.max_context_tokens = 224
  r.seq_len = 256
  if arg == "agentflow":
    # one packed row per planner turn (its whole context): 4 groups keep an update near the
    # plain variant's cost
    r.tasks_per_step = 4
    # a plan (free text, "Sub-goal: ...", "Tool: NAME") runs past 32 tokens of the built-in
    # tokenizer: at 32 most plans were cut before their Tool line (0 of 64 solved)
    r.max_new_tokens = 64
    r.max_context_tokens = 320
    r.seq_len = 384
  r.eval_tasks = 64
  r.eval_max_turns = 4
  # coarse buckets of the packed batch (36-48 forward rows of 256 tokens, <= 8 turns per row):
  # few compiled update shapes (each ~9 s on 2 cores)
  r.row_bucket = 16
  r.sample_bucket = 8
  # success rate = the policy's own: 4 episodes per held-out task sampled at the rollout
  # temperature with a fixed seed (the same draws before and after RL), and greedy
  r.eval_temperature = 1.0
  r.eval_samples = 4
  c.optim.lr = 3e-4  # 1e-3 drifted (KL 0.4 to the reference) and lost copying accuracy
  c.train.num_steps = 30
  c.checkpoint.every = 10
  return c
