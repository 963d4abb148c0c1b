"""Agentic mid-training configs (daVinci-Dev style: loss on every token of agent-native data).

    python launch/train.py --config=configs/midtrain.py:tiny --workdir=/tmp/mt
    python launch/train.py --config=configs/midtrain.py:tiny --workdir=/tmp/mt --config.optim.lr=3e-4

Variants (the part after ":"):
  tiny           LongCat-style ScMoE model (~2M params) on the built-in data; runs to the end on a
                 2-core CPU in a few minutes (the README's main job).
  longcat_flash  full-size presets with accelerator numerics (bf16 compute, scanned + remat layers,
  deepseek_v3    chunked attention, dropless MoE). Their data section expects a tokenizer file
  youtu_llm      matching the model's vocabulary (data.tokenizer.path) - e.g. a converted
                 checkpoint's; the built-in corpus is far too small to train a 128k vocabulary.

Sections: seed, model (preset + every ModelConfig field), data, objective, moe, optim, train,
checkpoint, mesh. The config is locked by launch/train.py: overriding a key that does not exist
fails with the closest existing name.
"""

from __future__ import annotations

import ml_collections

from agentic_jax.train.config import model_section

VARIANTS = ("tiny", "longcat_flash", "deepseek_v3", "youtu_llm")
BUILTIN_SOURCES = ("calculator", "pyrepo", "stdlib_edits")


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- data (agentic_jax.train.input)
  d = c.data = ml_collections.ConfigDict()
  # Source names: a built-in generator (agentic_jax.data.builtin), "NAME=PATH.jsonl" (our schema)
  # or "NAME=adp:PATH.jsonl" (Agent Data Protocol), or the single source "synthetic" (random
  # tokens; benchmarks). source_id in batches indexes this tuple.
  d.sources = BUILTIN_SOURCES
  d.source_weights = (1.0, 1.0, 1.0)  # mixture: probability of drawing from each source
  d.loss_weights = (1.0, 1.0, 1.0)  # per-source multiplier of the token loss weights
  d.num_samples = (512, 256, 512)  # samples generated per built-in source
  # Held-out eval samples per source (agentic_jax.train.input): built-in sources generate them
  # from seed + 1000003; a file source gives up its LAST n records (removed from training).
  # Eval samples whose tokens equal a training sample's are dropped and counted.
  d.eval_num_samples = (64, 32, 64)
  d.seq_len = 256
  d.batch_size = 8  # global rows per optimizer step (split over processes, then micro-batches)
  # The global batch is this many independently packed groups of batch_size/pack_groups rows;
  # it never depends on the number of processes (agentic_jax.data.groups). A multiple of the
  # process count avoids packing rows twice on multi-process jobs.
  d.pack_groups = 1
  # "all" | "assistant_only" | "error_masked" (KAT-Coder: agent actions only, failed calls and
  # their rationale 0) | "all_error_masked" (all, failed calls 0); see agentic_jax.data.render
  d.mask_policy = "all"
  d.on_bad_record = "raise"  # JSONL sources: "raise" | "skip" (skips counted and reported)
  d.overlong = "split"  # "split" | "drop" (counted)
  # Stage schedule: () = the source_weights throughout; else a tuple of dicts
  # {"until_step": int (all but the last), "weights": {source name: weight}}.
  d.stages = ()
  t = d.tokenizer = ml_collections.ConfigDict()
  t.path = ""  # a sentencepiece .model; "" = train one on the built-in corpus into WORKDIR
  t.vocab_size = 1024  # for a trained tokenizer

  # --- objective (agentic_jax.objectives registry) and MoE balance
  o = c.objective = ml_collections.ConfigDict()
  o.name = "next_token"
  o.balance_loss = "sequence"  # "none" | "sequence" (DeepSeek-V3) | "device" (LongCat-Flash)
  o.balance_alpha = 1e-4
  o.balance_groups = 1  # expert groups for balance_loss="device"
  o.z_loss = 1e-4  # router z-loss coefficient
  m = c.moe = ml_collections.ConfigDict()
  m.bias_update = "longcat"  # "none" | "longcat" (proportional) | "deepseek" (sign)
  m.bias_rate = 1e-3
  m.target_ffn_per_token = 1.0  # K_e: FFN experts per token the LongCat controller aims at

  # --- optimizer (agentic_jax.train.optim)
  p = c.optim = ml_collections.ConfigDict()
  p.lr = 3e-3
  p.schedule = "wsd"  # "wsd" | "cosine"
  p.warmup_steps = 10
  p.decay_fraction = 0.2  # wsd: share of num_steps in the final linear decay
  p.min_lr_ratio = 0.1
  p.weight_decay = 0.1
  p.b1 = 0.9
  p.b2 = 0.95
  p.eps = 1e-8
  p.clip_norm = 1.0
  p.grad_accum = 1  # micro-batches per optimizer step

  # --- loop
  r = c.train = ml_collections.ConfigDict()
  r.num_steps = 240
  r.log_every = 10
  r.nan_policy = "skip"  # "skip": skip the update and count it | "halt": stop, keep last good ckpt
  r.peak_flops = 300e9  # FLOP/s that MFU is measured against (here: XLA f32 matmul on 2 cores)
  r.progress = True  # progress bar on stderr
  r.eval_every = 80  # held-out eval every n steps and at the end (0 = never); train/eval.py
  r.eval_batches = 4  # global batches of the fixed held-out set per evaluation
  # A step (or eval / checkpoint write) still waiting on its collectives after this many
  # seconds ends the run with a message naming the step and mesh (train/watchdog.py); 0 = off.
  r.step_timeout_s = 600.0

  k = c.checkpoint = ml_collections.ConfigDict()
  k.every = 80
  k.keep = 3
  k.async_save = True

  # Device mesh sizes (-1 = all remaining devices); used by the sharded step (next issue).
  h = c.mesh = ml_collections.ConfigDict()
  h.data = -1
  h.fsdp = 1
  h.tensor = 1
  h.expert = 1
  return c


def _tiny(c: ml_collections.ConfigDict) -> None:
  c.model = model_section(
      "longcat_flash_tiny", vocab_size=1024, hidden_size=128, num_layers=2,
      num_attention_heads=4, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32,
      qk_rope_head_dim=16, v_head_dim=32, intermediate_size=256, n_routed_experts=8,
      zero_expert_num=4, num_experts_per_tok=2, moe_intermediate_size=64,
      max_position_embeddings=256, moe_dispatch="dropless", dropless_backend="blocked",
      dropless_block_size=128, attention_impl="xla")
  c.moe.target_ffn_per_token = 1.5
  # A few hundred steps need a fast controller: at 0.1 the FFN experts per token settle at
  # the 1.5 target by step ~100 (at 1e-3 they stay near 1.0, the router's own preference).
  c.moe.bias_rate = 0.1


def _full(c: ml_collections.ConfigDict, preset: str) -> None:
  c.model = model_section(preset)
  c.data.seq_len = 4096
  c.data.batch_size = 1024
  c.data.pack_groups = 64  # 16 rows each; 64, 32, ... processes pack only their own rows
  c.data.num_samples = (20000, 20000, 20000)
  c.data.tokenizer.vocab_size = c.model.vocab_size
  c.optim.lr = 8e-5  # daVinci-Dev mid-training peak lr
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 500
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_accum = 1
  c.train.num_steps = 10000
  c.train.log_every = 10
  c.train.peak_flops = 989e12  # H100 SXM dense bf16
  c.checkpoint.every = 500
  c.train.eval_every = 500
  c.train.eval_batches = 1
  c.data.eval_num_samples = (500, 500, 500)
  c.mesh.data = 1
  c.mesh.fsdp = -1
  if preset == "longcat_flash":
    c.moe.bias_update = "longcat"
    c.moe.target_ffn_per_token = 8.0  # LongCat-Flash: ~8 of 12 slots go to FFN experts
    c.objective.balance_loss = "device"
    c.objective.balance_groups = 8
    c.mesh.expert = 8
  elif preset == "deepseek_v3":
    c.moe.bias_update = "deepseek"
    c.moe.target_ffn_per_token = 8.0
    c.objective.balance_alpha = 1e-4
    c.objective.z_loss = 0.0
    c.mesh.expert = 8
  else:  # dense
    c.moe.bias_update = "none"
    c.objective.balance_loss = "none"
    c.objective.z_loss = 0.0


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"configs/midtrain.py: unknown variant {arg!r}; choose one of {VARIANTS}")
  c = _base()
  c.variant = arg
  if arg == "tiny":
    _tiny(c)
  else:
    _full(c, arg)
  return c
