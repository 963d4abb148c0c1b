"""The shared builder of the RL configs (configs/flow_grpo.py, grpo.py, dapo.py, dr_grpo.py,
recipe.py) and their check. The library never reads configs/: a config file passes the model
section (and the tokenizer's vocabulary size) of its mid-training config:

    mt = load_config("configs/midtrain.py:tiny")          # in configs/grpo.py: its sibling
    config = rl_config("grpo", model=mt.model, tokenizer_vocab=mt.data.tokenizer.vocab_size)

`rl_variant` is the whole builder of the configs that train another loss on flow_grpo's runs
(configs/grpo.py, dapo.py, dr_grpo.py); each passes the paths of its sibling config files.

Sections (the locked ConfigDict rejects a misspelt key, e.g. config.rl.group_sise):
  job="rl", variant, seed, init_from ("" = fresh params from seed; else a mid-training WORKDIR:
  its tokenizer.model and latest checkpoint's params/router_state)
  model      the given model section (the mid-training config's, so a mid-trained checkpoint
             restores into it; with init_from it must equal that run's); None = no model and
             tokenizer sections (the recipe's RL stage takes mid-training's)
  tokenizer  path ("" = WORKDIR/tokenizer.model if present, else trained on the built-in
             corpus; ignored with init_from, which brings its own), vocab_size
  rl         the RL knobs (RL_KEYS below); rl.loss one of the registered losses
             (objectives/rl_registry.py: its LossSpec gives rl.preset's and rl.batch_mode's
             starting values), rl.loss_options (every option of every registered loss as a typed
             placeholder: None = the loss/preset default), rl.env one of the registered
             environments (agentic_jax/envs/), rl.env_options (every option of every
             registered env as a typed placeholder: None = the env's default), rl.env_workers
             (environment steps of a round run this many at a time, rl/env_pool.py), rl.agentflow
  optim      AdamW + schedule as mid-training (train/optim.py); schedule counts RL steps
  train      num_steps (RL steps), log_every, nan_policy, progress
  checkpoint every, keep, async_save;   mesh  data/fsdp/tensor/expert

`check_rl_config` checks every value and builds the typed objective once (`objective`): the loss
options dataclass of objectives/rl_registry.py; errors name the config key
(config.rl.loss_options.clip_eps_low: ...). Library code downstream takes that objective.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import ml_collections
from ml_collections import config_dict

from agentic_jax.objectives import rl as rl_obj
from agentic_jax.objectives import rl_registry
from agentic_jax.rl import env_pool
from agentic_jax.train import config as config_lib

MODES = ("plain", "agentflow")
BATCH_MODES = rl_registry.BATCH_MODES


def losses() -> tuple[str, ...]:
  """The registered RL losses (config.rl.loss's choices)."""
  return tuple(rl_registry.registered_losses())


def loss_options_section() -> ml_collections.ConfigDict:
  """Every option of every registered loss as a typed placeholder (None = unset)."""
  s = ml_collections.ConfigDict()
  for key, (tp, _) in rl_registry.config_option_types().items():
    s[key] = config_dict.placeholder(tp)
  return s


def env_options_section() -> ml_collections.ConfigDict:
  """Every option of every registered environment (agentic_jax/envs/) as a typed placeholder
  (None = the chosen environment's default)."""
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  s = ml_collections.ConfigDict()
  for key, tp in envs.config_option_types().items():
    s[key] = config_dict.placeholder(tp)
  return s


def env_options(config: Any):
  """The typed options (the env's EnvOptions dataclass) of config.rl.env from
  config.rl.env_options (None entries = the env's defaults); ConfigError naming
  config.rl.env or config.rl.env_options.<option> (also one the env does not have)."""
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  config_lib.check_choice(config, "rl.env", envs.env_names())
  section = config.rl.env_options
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  try:
    return envs.make_options(config.rl.env, values)
  except envs.OptionError as e:
    raise config_lib.ConfigError(str(e)) from None


def loss_options(config: Any) -> dict:
  """The options set in config.rl.loss_options (None entries dropped)."""
  section = config.rl.loss_options
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  return {k: v for k, v in values.items() if v is not None}


def objective(config: Any) -> rl_obj.RLObjective:
  """The typed RL objective of config.rl (loss, preset, loss_options), built once; ConfigError
  (a ValueError) naming the config key: config.rl.loss, config.rl.preset or
  config.rl.loss_options.<option>."""
  ConfigError = config_lib.ConfigError  # pylint: disable=invalid-name
  config_lib.check_choice(config, "rl.loss", losses())
  rl = config.rl
  spec = rl_registry.get_spec(rl.loss)
  preset = rl.preset or None
  if preset is not None and preset not in spec.presets:
    raise ConfigError(f"config.rl.preset: unknown preset {preset!r} of loss {rl.loss!r}; known: "
                      f"{sorted(spec.presets)}")
  options = loss_options(config)
  own = {f for f in spec.options.__dataclass_fields__}
  other = sorted(set(options) - own)
  if other:
    raise ConfigError(f"config.rl.loss_options.{other[0]}: not an option of loss {rl.loss!r} "
                      f"(leave it None); its options: {sorted(own)}")
  try:
    return rl_obj.rl_loss(rl.loss, preset, **options)
  except rl_registry.OptionError as e:
    raise ConfigError(f"config.rl.loss_options.{e.key}: {e.detail}"
                      + (f" (preset {preset!r})" if preset else "")) from None


def rl_config(loss: str, *, model: Optional[Any], tokenizer_vocab: Optional[int] = None,
              preset: Optional[str] = None, variant: str = "tiny") -> ml_collections.ConfigDict:
  """The RL config of registered `loss` with the `model` section (a copy is stored), preset
  `preset` (default: the loss's default preset) and batch mode from its registration; the
  numbers are the tiny scale's (a config file changes what its variant needs)."""
  spec = rl_registry.get_spec(loss)
  if preset is not None and preset not in spec.presets:
    raise ValueError(f"rl config: unknown preset {preset!r} of loss {loss!r}; known: "
                     f"{sorted(spec.presets)}")
  if model is not None and tokenizer_vocab is None:
    raise ValueError("rl config: tokenizer_vocab is required with a model section")
  c = ml_collections.ConfigDict()
  c.job = "rl"
  c.variant = variant
  c.seed = 0
  c.init_from = ""
  if model is not None:
    c.model = copy.deepcopy(model) if isinstance(model, ml_collections.ConfigDict) else (
        ml_collections.ConfigDict(dict(model)))
    c.model.unlock()
    t = c.tokenizer = ml_collections.ConfigDict()
    t.path = ""
    t.vocab_size = int(tokenizer_vocab)

  r = c.rl = ml_collections.ConfigDict()
  r.loss = loss
  r.preset = preset or spec.default_preset
  r.loss_options = loss_options_section()
  r.mode = "plain"  # "plain": multi-turn episodes (rollout); "agentflow": planner/executor/...
  r.batch_mode = spec.batch_mode  # "turn" | "trajectory" rows
  r.env = "calculator"
  # every option of every registered env (agentic_jax/envs/); None = the chosen env's default
  # (an option the chosen env does not have must stay None), e.g. calculator level "basic";
  # allow_unisolated None = False: never run model-written code without the sandbox unless set
  r.env_options = env_options_section()
  # environment steps (tool calls, sandboxed code runs) of a round's rows run at most this many
  # at a time in a thread pool (rl/env_pool.py; 1 = one after the other); episodes are the same
  r.env_workers = env_pool.DEFAULT_WORKERS
  a = r.agentflow = ml_collections.ConfigDict()
  a.analyzer = "scripted"  # query analysis once per trajectory: "scripted" | "reference"
  a.executor = "scripted"  # "scripted" | "reference" (the frozen reference model)
  a.verifier = "scripted"
  a.generator = "scripted"
  r.group_size = 8  # G rollouts per task
  r.tasks_per_step = 8  # Q tasks per RL step
  r.train_tasks = 4096  # size of the training task pool (cycled)
  r.max_turns = 4
  r.max_new_tokens = 32  # per policy turn
  r.max_context_tokens = 416  # an episode stops (token_budget) when its context would exceed this
  # Packed forward-row width (step.pack_batch): every transcript / turn row must fit, so
  # seq_len >= max_context_tokens + max_new_tokens; several short ones share a row.
  r.seq_len = 448
  r.row_bucket = 4  # forward rows padded to a multiple of this (few shapes to compile)
  r.sample_bucket = 4  # sample slots per forward row padded to a multiple of this
  r.temperature = 1.0
  r.top_p = 1.0
  r.ppo_epochs = 1
  r.minibatches = 2
  # DAPO dynamic sampling (loss option dynamic_sampling): extra rollout rounds of tasks_per_step
  # tasks that may refill the batch with informative groups (rl/refill.py); 0 = only drop
  r.dapo_max_refill_rounds = 0
  r.old_logp = "sampler"  # "sampler" | "recompute"
  r.old_logp_tolerance = 1e-3  # warn when sampler and recomputed log-probs differ by more
  r.eval_tasks = 64  # held-out tasks for the success rate before/after
  r.eval_temperature = 0.0  # 0 = greedy (one episode per task); > 0 = sampled at this temperature
  r.eval_samples = 1  # episodes per task when sampled (a fixed seed, the same before and after)
  r.eval_every = 0  # also every k steps (0 = only before the first and after the last step)
  r.eval_max_turns = 4
  # rollout inspection (rl/rollout_log.py): WORKDIR/rollouts/step_N.jsonl every k RL steps
  # (0 = never) with at most this many episodes per step (0 = all)
  r.save_rollouts_every = 1
  r.save_rollouts_episodes = 64

  p = c.optim = ml_collections.ConfigDict()
  p.lr = 1e-4
  p.schedule = "wsd"
  p.warmup_steps = 0
  p.decay_fraction = 0.0
  p.min_lr_ratio = 1.0
  p.weight_decay = 0.0
  p.b1 = 0.9
  p.b2 = 0.99
  p.eps = 1e-8
  p.clip_norm = 1.0
  p.grad_accum = 1  # unused by RL (minibatches play that role); kept for the shared optimizer

  tr = c.train = ml_collections.ConfigDict()
  tr.num_steps = 20
  tr.log_every = 1
  tr.nan_policy = "skip"
  tr.progress = True
  tr.step_timeout_s = 600.0  # an RL update stuck this long ends the run (train/watchdog.py); 0 = off

  k = c.checkpoint = ml_collections.ConfigDict()
  k.every = 10
  k.keep = 2
  k.async_save = False  # RL checkpoints are small; synchronous saves keep SIGTERM exits simple

  h = c.mesh = ml_collections.ConfigDict()
  h.data = -1
  h.fsdp = 1
  h.tensor = 1
  h.expert = 1

  return c


# the rl keys a loss owns: rl_variant's full-size variants keep them and take every other rl key
# of configs/flow_grpo.py's same-named variant
LOSS_KEYS = ("loss", "preset", "loss_options", "batch_mode", "dapo_max_refill_rounds")
# the sections a full-size variant takes from that variant whole (its pod settings)
POD_SECTIONS = ("mesh", "optim", "train", "checkpoint")


def rl_variant(loss: str, arg: str, *, config_name: str, variants: Sequence[str],
               midtrain_path: str, flow_grpo_path: str) -> ml_collections.ConfigDict:
  """The config of `loss` (its default preset and batch mode) for `arg`
  ("VARIANT[,init_from=CKPT_DIR]", VARIANT one of `variants`). "tiny" takes the model section
  of `midtrain_path`:tiny (so a mid-trained checkpoint restores into it) and rl_config's tiny
  numbers; a full-size VARIANT takes `flow_grpo_path`:VARIANT's model, tokenizer, pod sections
  (POD_SECTIONS: mesh, optim, schedule, checkpointing) and every rl key but the loss's own
  (LOSS_KEYS: rollout batch, lengths, buckets, eval), the settings launch/plan.py shows to fit.

  Why one function: configs/grpo.py, dapo.py and dr_grpo.py differ only in their loss and its
  options, and must stay comparable with configs/flow_grpo.py run for run; the library never
  reads configs/ itself, so a config file passes its siblings' paths. init_from reaches the
  loaded config (its model becomes the checkpoint's) and is set on the result. An unknown
  VARIANT is a ValueError naming `config_name` (the calling file, e.g. "configs/grpo.py")."""
  variant, init_from = config_lib.split_init_from(arg)
  if variant not in variants:
    raise ValueError(f"{config_name}: unknown variant {variant!r}; choose one of {tuple(variants)}")
  suffix = f",init_from={init_from}" if init_from else ""
  if variant == "tiny":
    mt = config_lib.load_config(f"{midtrain_path}:tiny{suffix}")
    c = rl_config(loss, model=mt.model, tokenizer_vocab=mt.data.tokenizer.vocab_size,
                  variant=variant)
    c.init_from = init_from
    return c
  pod = config_lib.load_config(f"{flow_grpo_path}:{variant}{suffix}")
  c = rl_config(loss, model=pod.model, tokenizer_vocab=pod.tokenizer.vocab_size, variant=variant)
  c.init_from = init_from
  for section in POD_SECTIONS:
    c[section].update(pod[section].to_dict())
  c.rl.update({k: v for k, v in pod.rl.to_dict().items() if k not in LOSS_KEYS})
  return c


RL_KEYS = ("loss", "preset", "loss_options", "mode", "batch_mode", "env", "env_options",
           "agentflow", "env_workers", "group_size", "tasks_per_step", "train_tasks", "max_turns",
           "max_new_tokens", "max_context_tokens", "seq_len", "row_bucket", "sample_bucket",
           "temperature", "top_p", "ppo_epochs", "minibatches", "dapo_max_refill_rounds",
           "old_logp", "old_logp_tolerance", "eval_tasks", "eval_every", "eval_max_turns",
           "eval_temperature", "eval_samples", "save_rollouts_every", "save_rollouts_episodes")


def check_rl_config(config: Any, *, num_devices: Optional[int] = None) -> rl_obj.RLObjective:
  """Every value of an RL config before the RL loop spends time; ConfigError (a ValueError)
  naming config.KEY. `num_devices` (default: all devices) is what config.mesh must fill.
  Returns the typed objective (`objective(config)`) the step factories take."""
  config_lib.validate_common(config, num_devices=num_devices)
  ConfigError = config_lib.ConfigError  # pylint: disable=invalid-name
  rl = config.rl
  missing = [k for k in RL_KEYS if k not in rl]
  if missing:
    raise ConfigError(f"config.rl.{missing[0]}: required key is missing")
  if "tokenizer" in config:  # the recipe's RL stage takes mid-training's
    config_lib.check_int(config, "tokenizer.vocab_size")
  if not isinstance(config.init_from, str):
    raise ConfigError(f"config.init_from: expected a path or '', got {config.init_from!r}")
  choices = {"loss": losses(), "mode": MODES, "batch_mode": BATCH_MODES,
             "old_logp": ("sampler", "recompute")}
  for key, allowed in choices.items():
    config_lib.check_choice(config, f"rl.{key}", allowed)
  from agentic_jax.rl import agentflow  # pylint: disable=import-outside-toplevel
  env_options(config)  # config.rl.env and every set config.rl.env_options value
  for key in ("analyzer", "executor", "verifier", "generator"):
    config_lib.check_choice(config, f"rl.agentflow.{key}", agentflow.MODULES)
  positive = ("env_workers",
              "group_size", "tasks_per_step", "train_tasks", "max_turns", "max_new_tokens",
              "max_context_tokens", "seq_len", "row_bucket", "sample_bucket", "ppo_epochs",
              "minibatches", "eval_max_turns", "eval_samples")
  for key in positive:
    config_lib.check_int(config, f"rl.{key}")
  for key in ("eval_tasks", "eval_every", "dapo_max_refill_rounds", "save_rollouts_every",
              "save_rollouts_episodes"):  # 0 = off / all
    config_lib.check_int(config, f"rl.{key}", 0)
  config_lib.check_number(config, "rl.eval_temperature", 0.0)  # 0 = greedy
  config_lib.check_number(config, "rl.temperature", 0.0)
  config_lib.check_number(config, "rl.top_p", 0.0, 1.0, low_open=True)
  config_lib.check_number(config, "rl.old_logp_tolerance", 0.0)
  if rl.eval_temperature == 0 and rl.eval_samples != 1:
    raise ConfigError(f"config.rl.eval_samples={rl.eval_samples} needs config.rl.eval_temperature "
                      "> 0: greedy episodes are deterministic, so one per task is the measure")
  if rl.row_bucket % rl.minibatches:
    raise ConfigError(f"config.rl.row_bucket={rl.row_bucket} must be a multiple of "
                      f"config.rl.minibatches={rl.minibatches} (forward rows split into equal "
                      "minibatches)")
  if rl.top_p < 1:
    raise ConfigError("config.rl.top_p < 1 is not supported for training: the sampler's "
                      "log-probs are of the untruncated distribution, so PPO ratios would be "
                      "biased")
  if rl.max_context_tokens + rl.max_new_tokens > rl.seq_len:
    raise ConfigError(f"config.rl.seq_len={rl.seq_len} < config.rl.max_context_tokens + "
                      f"config.rl.max_new_tokens = {rl.max_context_tokens + rl.max_new_tokens}: "
                      "an episode's transcript might not fit a packed row")
  if rl.mode == "agentflow" and rl.batch_mode != "turn":
    raise ConfigError("config.rl.mode='agentflow' needs config.rl.batch_mode='turn' (its planner "
                      "turns have separate prompts; no single transcript exists)")
  if num_devices is None:
    import jax  # pylint: disable=import-outside-toplevel
    num_devices = jax.device_count()
  shards = config_lib.batch_shards(config, num_devices)
  if rl.row_bucket % (shards * rl.minibatches):
    raise ConfigError(f"config.rl.row_bucket={rl.row_bucket} must be a multiple of the {shards} "
                      f"batch shards of config.mesh x config.rl.minibatches={rl.minibatches}")
  obj = objective(config)
  if rl.dapo_max_refill_rounds and not obj.options.dynamic_sampling:
    raise ConfigError(f"config.rl.dapo_max_refill_rounds={rl.dapo_max_refill_rounds} needs "
                      "config.rl.loss_options.dynamic_sampling (on for the dapo loss's 'paper' "
                      "preset; off in 'grpo_tcr'): without it no group is dropped and none refilled; "
                      "set it to 0")
  return obj
