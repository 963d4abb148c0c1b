"""RA3 (Reasoning as Action Abstractions, arXiv 2509.25810): EM mid-training with latent
rationales, against next-token mid-training from the same base model (issue 13).

    python launch/train.py --config=configs/ra3.py:tiny --workdir=/tmp/ra3
    python launch/train.py --config=configs/ra3.py:tiny --workdir=/tmp/ra3 --config.ra3.c=0.2

Variants:
  tiny           the ScMoE tiny model of configs/midtrain.py on synthetic macro-operation
                 programs (agentic_jax/data/builtin/macro_code.py); both arms, 2-core CPU.
  youtu_llm      full-size presets (the model sections of configs/midtrain.py's variants):
  longcat_flash  their sizes and meshes are what `launch/plan.py` reports; the data section
                 needs a tokenizer file matching the model's vocabulary.

Layout (agentic_jax/rl/ra3.py runs it; WORKDIR/summary.json holds the comparison):
  seed
  ra3_data   the programs: corpus (mid-training data of both arms), base corpus (the base
             model's pretraining, a share of its blocks preceded by a rationale naming the
             operation: the base model knows what a rationale looks like, as an LLM knows
             comments), held-out programs (action NLL) and held-out tasks (pass@1)
  base       a configs/midtrain.py config: the base model's pretraining (its data mix is set by
             the job: the base corpus file)
  mstep      a configs/midtrain.py config: each M-phase (NTP on the round's programs, annotated
             with rationales for the RA3 arm); train.num_steps is per round
  ra3        the EM knobs: c, p_keep, proposals, boundaries, max_rationale_len, rounds,
             estep_steps, temperature, train_rationale, prior_vocab_size, segment, arms
  estep      the E-step's RL update (rl/step.py): rl.loss (the registry's; loss_options.std_norm
             = the group std knob), ppo_epochs, minibatches, old_logp, temperature, optim;
             mesh: the device mesh of the E-phases and the evaluation (data/fsdp/tensor/expert,
             -1 = the remaining devices; may span processes). rl.row_bucket must be a multiple
             of its batch shards (data x fsdp x expert) x rl.minibatches; decode_batch: the
             annotation rows per decoder call (0 = all at once; the same results either way)
  eval       held-out evaluation: pass@1 greedy and sampled in the sandbox, HumanEval pass@1
"""

from __future__ import annotations

import os

import ml_collections

from agentic_jax.rl.config import loss_options_section, rl_config
from agentic_jax.train.config import load_config, model_section_from_checkpoint, split_init_from
from agentic_jax.train.input import mix_source

_DIR = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("tiny", "youtu_llm", "longcat_flash")


def _midtrain(variant: str) -> ml_collections.ConfigDict:
  c = load_config(os.path.join(_DIR, "midtrain.py") + f":{variant}")
  c.unlock()
  # the job sets the mix to its own files ("{data}" = WORKDIR/data) and the tokenizer it trains
  c.data.mix = ml_collections.ConfigDict({"programs": mix_source("jsonl", path="{data}/x.jsonl")})
  c.data.mask_policy = "all"
  return c


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  """VARIANT[,init_from=DIR]: with init_from (a trained WORKDIR or a converted checkpoint) the
  base stage is skipped and both model sections are that checkpoint's model."""
  arg, init_from = split_init_from(arg)
  if arg not in VARIANTS:
    raise ValueError(f"configs/ra3.py: unknown variant {arg!r}; choose one of {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.job = "ra3"
  c.variant = arg
  c.seed = 0
  # "" = train the base model (config.base) first; else the WORKDIR of a trained or converted
  # model (its latest checkpoint and its tokenizer.model or tokenizer.json), and the base stage
  # is skipped (configs/ra3.py:tiny,init_from=DIR also takes the model sections from it)
  c.init_from = ""

  d = c.ra3_data = ml_collections.ConfigDict()
  d.seed = 0  # the programs' generator seed (corpus; base corpus = seed + 1, held out = + 2)
  d.num_programs = 768  # mid-training corpus, split over the rounds
  d.num_base_programs = 2048
  d.base_rationale_rate = 0.3  # share of the base corpus' blocks preceded by a rationale
  d.num_heldout = 64  # held-out programs (eval split compositions) for action NLL (0: none)
  d.min_ops = 2
  d.max_ops = 3
  # the tokenizer the job trains on the programs' lines (the synthetic programs' text supports
  # fewer than ~560 pieces; the tiny model's vocabulary is set to match)
  d.vocab_size = 448

  c.base = _midtrain("tiny" if arg == "tiny" else arg)
  c.mstep = _midtrain("tiny" if arg == "tiny" else arg)

  r = c.ra3 = ml_collections.ConfigDict()
  r.arms = ("ra3", "ntp")  # ntp = the same schedule with c = inf (no E-step, no rationale)
  r.c = 0.05  # cost of a new rationale (nats); inf = next-token training exactly
  r.p_keep = 0.9  # prior keep probability α (the bound's KL; metrics)
  r.prior_vocab_size = ml_collections.config_dict.placeholder(int)  # None: Bernoulli part only
  r.proposals = 4  # G annotations per program = proposals per boundary
  r.boundaries = 0  # decision points per program (0 = every action start)
  r.max_rationale_len = 6  # tokens between <|think|> and <|end_think|>
  r.temperature = 1.0  # E-step sampling temperature
  r.rounds = 3  # EM rounds: E-phase then M-phase, each on the next slice of the corpus
  r.estep_steps = 4  # RL updates per E-phase (the round's programs split among them)
  r.train_rationale = True  # M-step trains the rationale tokens too (False: actions only)
  r.segment = "lines"  # action boundaries: "lines" | "blocks" (data/segment.py)
  r.annotation = "best"  # M-step data: the best of the G annotations ("best") per program

  e = c.estep = ml_collections.ConfigDict()
  rl = e.rl = ml_collections.ConfigDict()
  rl.loss = "grpo"
  rl.preset = "deepseekmath"
  rl.loss_options = loss_options_section()
  rl.loss_options.std_norm = False  # A = R - mean(R): rewards are nats (objectives/ra3.py)
  rl.loss_options.kl_coef = 0.0  # no KL to the scorer: the cost c is the bound's KL term
  rl.ppo_epochs = 1
  rl.minibatches = 2
  rl.old_logp = "sampler"
  rl.temperature = 1.0  # must equal ra3.temperature (the sampler's log-probs)
  rl.seq_len = 256  # packed forward rows (an annotated program must fit)
  rl.row_bucket = 4
  rl.sample_bucket = 4
  # annotation rows per decoder call in the E-step (0 = all proposals x programs of the step
  # in one call); every device decodes every row, so its MLA cache holds this many rows
  e.decode_batch = 0
  # AdamW + schedule as the RL jobs (rl/config.py): constant lr, no decay, b2 0.99
  e.optim = rl_config("grpo", model=None).optim
  e.optim.lr = 3e-4
  # the E-phases' and the evaluation's mesh (the M-phases use config.mstep.mesh): the same
  # defaults as the M-phases' (set both to move the whole job to another layout)
  e.mesh = ml_collections.ConfigDict(c.mstep.mesh.to_dict())

  v = c.eval = ml_collections.ConfigDict()
  v.tasks = 64  # held-out macro tasks (unseen op compositions), checked in the sandbox
  v.samples = 2  # sampled completions per task (pass@1 sampled = their mean)
  v.temperature = 1.0
  v.max_new_tokens = 160
  v.humaneval = True  # HumanEval pass@1 (greedy) on the problems whose prompt fits the context
  v.timeout_s = 5.0
  v.allow_unisolated = False  # never run model-written code without the sandbox unless set

  if arg == "tiny":
    for m in (c.base, c.mstep):
      if not init_from:  # else the checkpoint's tokenizer and embedding
        m.model.vocab_size = d.vocab_size
      m.data.seq_len = 256
      m.data.batch_size = 8
      m.train.eval_every = 0
      m.train.log_every = 20
      m.checkpoint.every = 100
    c.base.train.num_steps = 600
    c.base.optim.lr = 3e-3
    c.mstep.train.num_steps = 100  # per round: 3 rounds x 100 steps x 8 x 256 tokens per arm
    c.mstep.optim.lr = 1e-3
    c.mstep.optim.warmup_steps = 5
  else:
    d.num_programs = 200_000
    d.vocab_size = c.base.model.vocab_size
    c.base.train.num_steps = 2000
    c.mstep.train.num_steps = 2000
    r.rounds = 4
    r.estep_steps = 50
    r.boundaries = 16
    r.max_rationale_len = 24
    r.proposals = 8
    e.rl.seq_len = c.mstep.data.seq_len
    e.rl.minibatches = 8
    # 1,000 programs x 8 proposals = 8,000 rows per E-step: padded to 8,192, which splits into
    # 8 minibatches over up to 1,024 batch shards (config.estep.mesh is fsdp=-1, as mstep's)
    e.rl.row_bucket = 8192
    # the decode cache of one row at seq_len 4096 + rationale room is ~170 MB (youtu_llm) to
    # ~290 MB (longcat_flash), on every device: the 8,000 rows decode 64 at a time
    e.decode_batch = 64
    v.max_new_tokens = 512
  if init_from:
    c.init_from = init_from
    for m in (c.base, c.mstep):
      m.model = model_section_from_checkpoint(init_from, like=m.model)
  return c
