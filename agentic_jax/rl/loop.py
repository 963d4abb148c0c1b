"""The RL loop: rollouts on the current policy, the jitted RL update, checkpoints, metrics, eval.

    result = run(config, workdir)        # config: configs/flow_grpo.py:tiny etc.; rerun resumes

What is RL's own lives here (initial and reference variables, rollouts, refill, packing, the
before/after eval, the summary's RL keys); the stop flag, resume + config diff, checkpoint
cadence, NaN policy, statuses, summary.json, metrics writer and plot are the shared runner,
train/runner.py (as in train/loop.py). A new job = a step function + the runner.

Order of a run: tokenizer + initial variables (config.init_from: a mid-training WORKDIR's
tokenizer.model and the params/router_state of its latest checkpoint, read by
train/init_from.py, the loader mid-training uses too; "" = fresh from
config.seed with a tokenizer from config.tokenizer) -> frozen reference variables (a copy of the
initial ones) -> train state (restored from WORKDIR/checkpoints, else fresh) -> eval on
config.rl.eval_tasks held-out tasks ("before"; greedy, or rl.eval_samples episodes per task at
rl.eval_temperature) -> per RL step s = 1..train.num_steps:
  tasks  the next tasks_per_step tasks of the seeded training pool (cycled), so step s's tasks
         depend only on s
  rollout  config.rl.mode "plain" (rollout.rollout) or "agentflow" (agentflow.run_agentflow),
         group_size episodes per task, sampling seed = rollout_seed(config.seed, s)
  refill  with DAPO dynamic sampling (objective option dynamic_sampling): groups whose rewards
         are all equal are dropped and up to config.rl.dapo_max_refill_rounds extra rounds of
         tasks_per_step tasks (refill.refill_tasks(pool, seed, s, r), sampling seed
         rollout_seed(config.seed, s, r)) refill the batch to tasks_per_step groups (rl/refill.py;
         metrics dapo_fill, dapo_refill_rounds, ...). The episode metrics (reward_mean,
         success_rate, ...) stay those of round 0, the step's own tasks.
  batch  rollout.policy_batch(mode=config.rl.batch_mode, rows padded to a multiple of
         config.rl.row_bucket, rows longer than config.rl.seq_len dropped with their whole
         trajectory and COUNTED: dropped_rows / dropped_trajectories in metrics), packed with
         whole groups per minibatch when the objective's minibatch_split is "groups")
  update  step.make_rl_step (ppo_epochs x minibatches AdamW updates), jitted, state donated
-> the same eval ("after") -> summary.json.

Everything random is a function of (config.seed, s) or of the state (TrainState.rng folded with
the step), so a run stopped after step k and resumed equals an uninterrupted one bitwise on CPU.
Checkpoints (every checkpoint.every steps, at the end, at SIGTERM/SIGINT or stop_after_steps)
hold the train state; their meta holds the before-eval and the init_from checkpoint step and
params fingerprint (the reference params are reloaded from there, not saved: they are the
initial params). MoE router biases stay frozen (see step.py).

WORKDIR: metrics.jsonl (one record per RL step), summary.json (success_rate_before /
success_rate_after ...), rollouts/step_N.jsonl (the step's sampled episodes: prompt, turns,
tool calls, observations, rewards; rl/rollout_log.py, every config.rl.save_rollouts_every
steps), tb/ (TensorBoard scalars, and each step's first sampled episodes as text:
rollout_text), rl.png (reward / success / KL curves), checkpoints/, tokenizer.model (when
trained here).

Across processes (jax.distributed, config.mesh spanning them): every process runs this loop;
each takes a contiguous share of the step's tasks (parallel.process_share), steps only its own
rows' environments and decodes them in collective Sampler calls over the sharded policy (the
global batch is the one a single process would decode: same padding, same random numbers); the
episodes are then gathered (parallel.allgather_objects), so every process packs the same batch
and feeds its own devices' rows of it to the sharded update. Decisions (refill, stop, save) are
taken on identical data or exchanged (any_process), so the processes never diverge; only
process 0 prints and writes files (metrics, rollouts, summary); checkpoints are orbax's
collective save. The rollout random numbers are a function of (seed, step) for every process,
so there is no per-process RNG state to save: a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax import envs as envs_lib
from agentic_jax import fs, models, parallel
from agentic_jax.rl import config as rl_config_lib
from agentic_jax.rl import refill as refill_lib
from agentic_jax.rl import rollout as rollout_lib
from agentic_jax.rl import rollout_log
from agentic_jax.rl import step as step_lib
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import init_from as init_from_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import runner
from agentic_jax.train import state as state_lib
from agentic_jax.train import watchdog as watchdog_lib

PLOT_FILE = "rl.png"


def _say(msg: str) -> None:
  if jax.process_index() == 0:  # every process runs the loop; one prints
    print(msg, flush=True)


def rollout_seed(seed: int, step: int, round_: int = 0) -> int:
  """The sampling seed of RL step `step` (1-based) and refill round `round_` (0 = the step's
  own rollouts): a function of (seed, step, round) only."""
  return int((np.uint64(seed) * np.uint64(1_000_003) + np.uint64(step) * np.uint64(7919)
              + np.uint64(round_) * np.uint64(15_485_863)) % np.uint64(2**31 - 1))


# ------------------------------------------------------------------ initial variables

def _tokenizer(config: Any, workdir: str):
  from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  if config.init_from:
    # a mid-training run writes the tokenizer it trained into its WORKDIR; one that was given
    # a tokenizer file (data.tokenizer.path) does not: then config.tokenizer.path names it
    # ...or a converted checkpoint holds the tokenizer.json it came with (its markers mapped)
    theirs = init_from_lib.tokenizer_file(config.init_from)
    if theirs is not None:
      return tok_lib.load_from_dir(config.init_from), theirs
    if not config.tokenizer.path:
      raise FileNotFoundError(f"config.init_from={config.init_from!r} has no tokenizer.model "
                              "(nor tokenizer.json) and "
                              "config.tokenizer.path is empty: set it to the tokenizer that "
                              "mid-training used (its data.tokenizer.path)")
  tok, report = tok_lib.find_or_train(
      config.tokenizer.path, workdir,
      train=lambda: tok_lib.SentencePieceTokenizer.train(
          builtin.corpus_texts(config.seed, sources=builtin.ALL_SOURCES),
          int(config.tokenizer.vocab_size), seed=config.seed))
  return tok, (f"trained -> {report['path']}" if report["trained"] else report["path"])


def _fresh_variables(model_cfg, seed: int, shardings=None) -> dict:
  """The params a fresh TrainState would hold (state.init_state's key schedule), created in
  their final layout (`shardings`: the mesh's variable shardings; None = one device)."""
  init = lambda: models.init_variables(  # noqa: E731
      model_cfg, jax.random.fold_in(jax.random.PRNGKey(seed), 0))
  if shardings is None:
    return jax.jit(init)()
  out = {k: shardings[k] for k in jax.eval_shape(init)}
  return jax.jit(init, out_shardings=out)()


def _new_state(variables: dict, tx, seed: int, shardings=None) -> state_lib.TrainState:
  """Step 0 on `variables`, committed (to one device, or to the mesh layout `shardings`) like
  a restored state, so both compile the step identically. Built by one jit with those output
  shardings: valid across processes, where device_put of host values is not."""
  def build(params, router_state):
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
        router_state=router_state, rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
        nan_skips=jnp.zeros((), jnp.int32))
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.jit(build, out_shardings=shardings or one)(variables["params"],
                                                        variables.get("router_state", {}))


class _Placement:
  """Where the state, variables and batches live: one device, or config.mesh (params /
  optimizer moments split by the logical-axis rules, batch rows over the data axes; the
  rollout decoder runs on the same sharded params, colocated with training). The mesh may
  span processes (jax.distributed): every process then holds the same host batch and fills
  its own devices' shards from it."""

  def __init__(self, config, model_cfg, abstract):
    self.mesh = parallel.make_mesh(config.mesh)
    self.sharded = self.mesh.devices.size > 1
    if not self.sharded:
      return
    shards = parallel.batch_shards(self.mesh)
    if config.rl.row_bucket % (shards * config.rl.minibatches):
      raise ValueError(f"config.rl.row_bucket={config.rl.row_bucket} must be a multiple of the "
                       f"{shards} batch shards x config.rl.minibatches={config.rl.minibatches}")
    self.state = state_lib.state_shardings(abstract, model_cfg, self.mesh)
    self.variables = parallel.variable_shardings(model_cfg, self.mesh)
    self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  def target(self, abstract):
    return state_lib.with_shardings(abstract, self.state) if self.sharded else abstract

  def put_variables(self, variables):
    """Host or one-device variables in the mesh layout (one process; the loop creates or
    restores its variables in place instead, which also works across processes)."""
    if not self.sharded:
      return variables
    return jax.device_put(variables, {k: self.variables[k] for k in variables})

  def put_batch(self, packed):
    if not self.sharded:
      return packed
    if jax.process_count() == 1:
      return parallel.shard_batch(packed, self.mesh)
    return {k: parallel.global_from_host(
        v, parallel.batch_sharding(self.mesh, ndim=np.ndim(v), batch_size=np.shape(v)[0]))
        for k, v in packed.items()}

  def jit(self, step_fn, ref_variables, packed):
    if not self.sharded:
      return step_lib.jit_rl_step(step_fn)
    batch = {k: parallel.batch_sharding(self.mesh, ndim=np.ndim(v)) for k, v in packed.items()}
    ref = {k: self.variables[k] for k in ref_variables}
    return parallel.jit_sharded(step_fn, self.mesh, in_shardings=(self.state, ref, batch),
                                out_shardings=(self.state, self.replicated), donate_argnums=(0,))


# ------------------------------------------------------------------ episodes

def shared_episodes(run_share, tasks: list) -> list:
  """`run_share(tasks_share, first_group) -> episodes` on this process's contiguous share of
  `tasks` (parallel.process_share), then every process's episodes gathered in process order:
  the list one process running all of `tasks` returns, on every process. Each process steps
  only the environments of its own rows; the decoder calls inside are collectives over the
  sharded policy (rl/sampler.py). One process: run_share(tasks, 0)."""
  if jax.process_count() == 1:
    return run_share(tasks, 0)
  start, stop = parallel.process_share(len(tasks))
  mine = run_share(tasks[start:stop], start)
  return [e for part in parallel.allgather_objects(mine) for e in part]


def _episodes(config, sampler, variables, ref_variables, make_env, tasks, tok, seed, *,
              group_size=None, max_turns=None):
  rl = config.rl
  group_size = rl.group_size if group_size is None else group_size
  max_turns = rl.max_turns if max_turns is None else max_turns
  if rl.mode == "agentflow":
    from agentic_jax.rl import agentflow  # pylint: disable=import-outside-toplevel
    a = rl.agentflow
    return shared_episodes(lambda share, first: agentflow.run_agentflow(
        sampler, variables, make_env, share, tok, group_size=group_size, seed=seed,
        max_turns=max_turns, executor=a.executor, verifier=a.verifier, generator=a.generator,
        analyzer=a.analyzer, reference_variables=ref_variables,
        max_context_tokens=rl.max_context_tokens, first_group=first,
        env_workers=rl.env_workers), list(tasks))
  return shared_episodes(lambda share, first: rollout_lib.rollout(
      sampler, variables, make_env, share, tok, group_size=group_size, seed=seed,
      max_turns=max_turns, max_context_tokens=rl.max_context_tokens, first_group=first,
      env_workers=rl.env_workers), list(tasks))


def make_batch(config, episodes, tokenizer=None) -> tuple[dict, dict]:
  """The packed batch of `episodes` (step.pack_batch) and its counts. Plain mode: one sequence
  per episode (its transcript), samples per turn (batch_mode "turn") or per episode
  ("trajectory"); AgentFlow: one sequence and sample per planner turn. Episodes longer than
  config.rl.seq_len are dropped whole and counted (dropped_rows, dropped_trajectories).
  `tokenizer` gives the ids a finished turn ends with (None: our own tokenizers' fixed layout,
  step.pack_batch's default; the loop passes the tokenizer it runs with)."""
  rl = config.rl
  by_turn = rl.batch_mode == "turn"
  stats: dict = {}
  batch = rollout_lib.policy_batch(episodes, seq_len=rl.seq_len,
                                   mode="trajectory" if rl.mode == "plain" else "turn",
                                   on_overlong="drop", stats=stats)
  sample_len = rl.max_new_tokens * (1 if by_turn or rl.mode != "plain" else rl.max_turns)
  whole = step_lib.objective_from_config(config).options["minibatch_split"] == "groups"
  packed, pstats = step_lib.pack_batch(
      batch, seq_len=rl.seq_len, sample_by="turn" if by_turn and rl.mode == "plain" else "row",
      sample_len=sample_len, row_bucket=rl.row_bucket, sample_bucket=rl.sample_bucket,
      minibatches=rl.minibatches, whole_groups=whole,
      **({} if tokenizer is None else {"stop_ids": rollout_lib.turn_end_ids(tokenizer)}))
  step_lib.check_packed(packed, minibatches=rl.minibatches, whole_groups=whole)
  pstats["packing_efficiency"] = pstats["tokens"] / max(pstats["token_slots"], 1)
  return packed, {"dropped_rows": stats["dropped_rows"],
                  "dropped_trajectories": stats["dropped_trajectories"], **pstats}


ROLLOUT_TEXT_EPISODES = 2  # sampled episodes shown per RL step in TensorBoard's Text tab


def rollout_text(episodes, limit: int = ROLLOUT_TEXT_EPISODES, max_chars: int = 2000) -> str:
  """The first `limit` episodes as markdown for a TensorBoard text summary: task, reward,
  success, stop reason, then each turn's role, sampled text and the environment's answer
  (each cut to `max_chars` characters), in fences so the text shows as written."""
  def cut(text: str) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + " [...]"

  parts = []
  for e in episodes[:limit]:
    parts.append(f"**{e.task_id}** (group {e.group_id}, trajectory {e.traj_id}): reward "
                 f"{e.reward:g}, success {bool(e.success)}, stopped by {e.stop_reason}")
    for k, t in enumerate(e.turns):
      parts.append(f"turn {k} ({t.role}{'' if t.trainable else ', frozen'}):\n```\n"
                   f"{cut(t.text)}\n```")
      if t.observation:
        parts.append(f"observation:\n```\n{cut(t.observation)}\n```")
  return "\n\n".join(parts)


def _episode_metrics(episodes) -> dict:
  n = max(len(episodes), 1)
  trainable = [t for e in episodes for t in e.turns if t.trainable]
  out = {"reward_mean": sum(e.reward for e in episodes) / n,
         "success_rate": sum(bool(e.success) for e in episodes) / n,
         "turns_per_episode": sum(len(e.turns) for e in episodes) / n,
         "tokens_generated": int(sum(len(t.response) for e in episodes for t in e.turns)),
         "truncated_turns": int(sum(bool(t.truncated) for t in trainable)),
         "tool_errors_per_episode": sum(e.info.get("tool_errors", 0) for e in episodes) / n}
  for e in episodes:
    key = f"stop/{e.stop_reason}"
    out[key] = out.get(key, 0) + 1
  return out


EVAL_SEED = 7_777_777  # eval rollouts' sampling seed: the same before and after RL (paired)


def evaluate(config, sampler, variables, make_env, tasks, tok, ref_variables=None) -> dict:
  """Success rate on `tasks` in config.rl.mode (plain episodes or the AgentFlow system with its
  configured modules): greedy with config.rl.eval_temperature 0 (one episode per task), else
  config.rl.eval_samples sampled episodes per task at that temperature (fixed seed, so "before"
  and "after" draw the same random numbers). `sampler` has the eval temperature already.
  A sampled evaluation also reports greedy decoding (one episode per task) under "greedy":
  RL can move the sampled policy toward what greedy decoding already does without changing
  greedy's choices, so both are needed to read a gain."""
  out = _evaluate(config, sampler, variables, make_env, tasks, tok, ref_variables,
                  greedy=config.rl.eval_temperature == 0)
  if tasks and config.rl.eval_temperature != 0:
    greedy_sampler = sampler.replace(batch_bucket=len(tasks)).greedy()
    out["greedy"] = _evaluate(config, greedy_sampler, variables, make_env, tasks, tok,
                              ref_variables, greedy=True)
  return out


def _evaluate(config, sampler, variables, make_env, tasks, tok, ref_variables, *,
              greedy: bool) -> dict:
  rl = config.rl
  if not tasks:
    return {"success_rate": None, "reward_mean": None, "turns_mean": None, "tasks": 0}
  t0 = time.perf_counter()
  samples = 1 if greedy else rl.eval_samples
  eps = _episodes(config, sampler.greedy() if greedy and rl.mode == "plain" else sampler,
                  variables, ref_variables, make_env, tasks, tok, EVAL_SEED, group_size=samples,
                  max_turns=rl.eval_max_turns)
  n = max(len(eps), 1)
  return {"success_rate": sum(bool(e.success) for e in eps) / n,
          "reward_mean": sum(e.reward for e in eps) / n,
          "turns_mean": sum(len(e.turns) for e in eps) / n, "tasks": len(tasks),
          "episodes": len(eps), "temperature": 0.0 if greedy else float(rl.eval_temperature),
          "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------ run

def run(config: Any, workdir: str, *, stop_after_steps: Optional[int] = None,
        handle_signals: bool = True) -> dict:
  """RL per `config` in `workdir`; returns the summary (status completed | stopped | preempted
  | halted | all_skipped: every update of this invocation was non-finite)."""
  t_start = time.perf_counter()
  with runner.stop_flag(handle_signals) as stop:
    return _run(config, workdir, stop, t_start, stop_after_steps)


def _run(config, workdir, stop, t_start, stop_after_steps):
  rl_config_lib.check_rl_config(config)  # every value, before anything is built or compiled
  rl = config.rl
  workdir = fs.resolve(workdir)
  fs.makedirs(workdir)
  model_cfg = config_lib.model_config(config.model)
  num_steps = int(config.train.num_steps)
  tx = optim_lib.make_optimizer(config.optim)
  objective = step_lib.objective_from_config(config)
  step_fn = step_lib.make_rl_step(model_cfg, config, objective)
  with config_lib.config_errors("config.rl.env_options"):  # typed options, checked per env
    make_env, make_tasks = envs_lib.make_env_factory(rl.env, rl_config_lib.env_options(config))

  primary = jax.process_index() == 0
  if jax.process_count() > 1:  # one tokenizer for all: process 0 finds or trains it first
    if primary:
      tok, tok_source = _tokenizer(config, workdir)
    parallel.barrier("agentic_jax-rl-tokenizer")
    if not primary:
      tok, tok_source = _tokenizer(config, workdir)
  else:
    tok, tok_source = _tokenizer(config, workdir)
  if tok.vocab_size > model_cfg.vocab_size:
    raise config_lib.ConfigError(f"config.model.vocab_size: {model_cfg.vocab_size} is smaller "
                                 f"than the tokenizer's {tok.vocab_size} ids ({tok_source})")
  ckpt = ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save)
  config_json = json.loads(config.to_json_best_effort())
  abstract = state_lib.abstract_state(model_cfg, tx, config.seed)  # the same tree as _new_state
  place = _Placement(config, model_cfg, abstract)
  resumed = runner.resume(ckpt, place.target(abstract), config_json, say=_say)
  meta = resumed.meta if resumed is not None else {}
  init = meta.get("init", {})
  if config.init_from:
    # the shared loader (train/init_from.py, also mid-training's): params and router biases of
    # the checkpoint this run started from (its step on a resume: the reference is reloaded)
    init_vars, init_step, _ = init_from_lib.load(
        config.init_from, model_cfg, config.model.to_dict(), init.get("step"), say=_say,
        shardings=place.variables if place.sharded else None)
  else:
    init_vars, init_step = _fresh_variables(
        model_cfg, config.seed, place.variables if place.sharded else None), None
  fp = [int(x) for x in ckpt_lib.fingerprint(init_vars)]
  if init and init.get("fingerprint") != fp:
    raise ValueError(f"the reference params reloaded from {config.init_from or 'config.seed'} "
                     "differ from those this run started with (its checkpoint meta fingerprint)")
  init = {"from": config.init_from or f"seed {config.seed}", "step": init_step, "fingerprint": fp}
  # a copy: the state's params are donated to the step, the reference must survive
  ref_vars = jax.tree.map(jnp.copy, init_vars)
  if resumed is not None:
    state, start = resumed.state, resumed.step
  else:
    state, start = _new_state(init_vars, tx, config.seed, place.state if place.sharded else None), 0
  _say(f"[rl] {rl.loss}/{rl.preset} on {rl.env} ({rl.mode}, {rl.batch_mode} rows), "
       f"{models.count_params(model_cfg):,} params from {init['from']}"
       f"{'' if init_step is None else f' step {init_step}'}; tokenizer {tok_source}")

  pool = make_tasks(config.seed, rl.train_tasks, split="train")
  eval_tasks = make_tasks(config.seed, rl.eval_tasks, split="eval") if rl.eval_tasks else []
  n_rows = rl.tasks_per_step * rl.group_size
  sampler = rollout_lib.Sampler(model_cfg, max_new_tokens=rl.max_new_tokens,
                                temperature=rl.temperature, top_p=rl.top_p, batch_bucket=n_rows,
                                stop=rollout_lib.policy_turn(tok),
                                mesh=place.mesh if place.sharded else None)
  n_eval = len(eval_tasks) * (1 if rl.eval_temperature == 0 else rl.eval_samples)
  eval_sampler = sampler.replace(temperature=rl.eval_temperature, batch_bucket=max(n_eval, 1))
  variables = lambda s: step_lib.variables_of(s.params, s.router_state)  # noqa: E731

  before = meta.get("eval_before")
  if before is None:
    before = evaluate(config, eval_sampler, variables(state), make_env, eval_tasks, tok, ref_vars)
    _say(f"[eval] before RL: success rate {before['success_rate']} on {before['tasks']} "
         f"held-out tasks, greedy {_greedy_rate(before)} ({before.get('seconds')}s)")
  extra = {"init": init, "eval_before": before}

  postfix = _progress_postfix(num_steps, config.train.log_every) if config.train.progress else None
  writer = runner.MetricsWriter(workdir, start, write=primary, stream=sys.stdout,
                                progress=postfix, num_steps=num_steps, desc="rl",
                                wandb=runner.wandb_settings(config))
  run_ = runner.Run(start, num_steps, config.checkpoint.every, config.train.nan_policy,
                    stop_after_steps, tag="rl", say=_say)
  jitted = None  # compiled at the first batch (its key set fixes the batch shardings)
  totals = {"rollout_s": 0.0, "train_s": 0.0, "dropped_rows": 0, "dropped_trajectories": 0}
  run_.stop_in_setup(parallel.any_process(stop.signal is not None), stop.signal)
  # The update (the only part that waits on device collectives) is watched like a
  # mid-training step: stuck past train.step_timeout_s, the process ends naming it (exit 3).
  dog = watchdog_lib.Watchdog(
      float(config.train.get("step_timeout_s", 0) or 0),
      f"mesh {dict(place.mesh.shape) if place.sharded else '(one device)'} over "
      f"{jax.process_count()} process(es) (this is process {jax.process_index()})",
      note=lambda: watchdog_lib.checkpoint_note(ckpt.directory))
  try:
    while run_.running():
      step = run_.step
      t0 = time.perf_counter()
      q = rl.tasks_per_step
      tasks = [pool[(step * q + i) % len(pool)] for i in range(q)]
      episodes = _episodes(config, sampler, variables(state), ref_vars, make_env, tasks, tok,
                           rollout_seed(config.seed, step + 1))
      first, refill_stats = episodes, {}
      if objective.options["dynamic_sampling"]:
        def more(r, s=step + 1, now=state):  # refill round r: tasks and seed of (seed, s, r)
          return _episodes(config, sampler, variables(now), ref_vars, make_env,
                           refill_lib.refill_tasks(pool, config.seed, s, r, q), tok,
                           rollout_seed(config.seed, s, r))
        episodes, refill_stats = refill_lib.refill(first, more, target_groups=q,
                                                   max_rounds=rl.dapo_max_refill_rounds)
      packed, stats = make_batch(config, episodes, tok)
      t1 = time.perf_counter()
      if jitted is None:
        jitted = place.jit(step_fn, ref_vars, packed)
      with dog.watch(f"the update of RL step {step + 1}"):
        state, m = jitted(state, ref_vars, place.put_batch(packed))
        m = {k: np.asarray(v).item() for k, v in jax.device_get(m).items()}
      t2 = time.perf_counter()
      run_.step = step = step + 1
      rec = {"step": step, **_episode_metrics(first), **m, **stats, **refill_stats,
             "rollout_s": t1 - t0, "train_s": t2 - t1}
      for k in totals:
        totals[k] += rec[k]
      if stats["dropped_rows"]:
        run_.warn_once("drop", f"[rl] step {step}: {stats['dropped_trajectories']} trajectories "
                               f"longer than config.rl.seq_len={rl.seq_len} dropped (counted in "
                               f"metrics: dropped_rows)")
      if m["old_logp_diff_max"] > rl.old_logp_tolerance:
        run_.warn_once("logp", f"[rl] step {step}: sampler and recomputed old log-probs differ by "
                               f"up to {m['old_logp_diff_max']:.2e} (mean "
                               f"{m['old_logp_diff_mean']:.2e}) > config.rl.old_logp_tolerance="
                               f"{rl.old_logp_tolerance}")
      if rl.eval_every and step % rl.eval_every == 0 and step < num_steps:
        ev = evaluate(config, eval_sampler, variables(state), make_env, eval_tasks, tok, ref_vars)
        rec["eval_success_rate"] = ev["success_rate"]
      writer.write(rec)
      writer.text("rollouts", rollout_text(first), step)  # what the policy sampled this step
      if primary and rl.save_rollouts_every and step % rl.save_rollouts_every == 0:
        rollout_log.write_step(workdir, step, first, tok, limit=rl.save_rollouts_episodes)
      # halt on any non-finite update; a step counts as skipped when it applied none (one
      # without tokens skips nothing)
      if run_.on_update(m["skipped"] > 0, no_update=m["skipped"] > 0 and m["updates"] == 0):
        break
      # the same verdict on every process: a signal that reached any of them stops all
      signalled = parallel.any_process(stop.signal is not None)
      stopping = run_.stop_status(signalled)
      if run_.checkpoint_due(stopping):
        ckpt.save(state, None, config_json, extra)
      if stopping:
        run_.stopped(stopping, (stop.signal or "signal on another process") if signalled
                     else "stop_after_steps")
  finally:
    writer.close()
    ckpt.close()
    dog.close()

  run_.finish(lr=config.optim.lr)
  after = None
  if run_.status == "completed":
    after = evaluate(config, eval_sampler, variables(state), make_env, eval_tasks, tok, ref_vars)
    _say(f"[eval] after RL: success rate {after['success_rate']} (before "
         f"{before['success_rate']}), greedy {_greedy_rate(after)} (before {_greedy_rate(before)})")
  # the whole run's records (a resumed run's first reward is still step 1's)
  recs = runner.read_jsonl(writer.path) if fs.exists(writer.path) else []
  summary = runner.summary(
      run_, nan_skips=int(jax.device_get(state.nan_skips)),
      seconds={"rollout": totals["rollout_s"], "train": totals["train_s"],
               "total": time.perf_counter() - t_start},
      checkpointer=ckpt, writer=writer,
      job="rl", loss=rl.loss, preset=rl.preset, objective_options=dict(objective.options),
      env=rl.env, mode=rl.mode, init=init,
      success_rate_before=before["success_rate"],
      success_rate_after=after["success_rate"] if after else None,
      greedy_success_rate_before=_greedy_rate(before),
      greedy_success_rate_after=_greedy_rate(after),
      eval_before=before, eval_after=after,
      train_reward_first=recs[0]["reward_mean"] if recs else None,
      train_reward_last=recs[-1]["reward_mean"] if recs else None,
      dropped_rows=totals["dropped_rows"], dropped_trajectories=totals["dropped_trajectories"])
  if primary:  # every process computed the same summary; one writes it
    summary["outputs"]["plot"] = runner.plot_metrics(
        workdir, [("", ("reward_mean", "success_rate", "eval_success_rate")),
                  ("", ("kl", "entropy", "clip_frac"))], PLOT_FILE, xlabel="RL step")
    summary["outputs"]["summary"] = runner.write_summary(workdir, summary)
  _say(f"== {summary['status']}: RL steps {start}->{run_.step} of {num_steps} | success rate "
       f"{before['success_rate']} -> {summary['success_rate_after']} | rollout "
       f"{summary['seconds']['rollout']}s, train {summary['seconds']['train']}s, total "
       f"{summary['seconds']['total']}s")
  return summary


def _greedy_rate(result: Optional[dict]) -> Optional[float]:
  """The greedy success rate of an evaluation (itself when it was greedy)."""
  if not result:
    return None
  if result.get("temperature") == 0.0:
    return result.get("success_rate")
  return (result.get("greedy") or {}).get("success_rate")


def _progress_postfix(num_steps: int, log_every: int):
  """The RL progress bar's numbers for a record (reward, success, KL, entropy, clip fraction,
  turns, rollout and train seconds: what the hand-drawn line showed), every log_every steps and
  at the last step; None in between (the bar moves, the numbers stay)."""
  every = max(1, log_every)

  def postfix(rec: dict) -> Optional[dict]:
    if rec["step"] % every and rec["step"] != num_steps:
      return None
    f = lambda k, spec=".3f": "n/a" if rec.get(k) is None else format(rec[k], spec)  # noqa: E731
    return {"reward": f("reward_mean"), "success": f("success_rate"), "kl": f("kl", ".4f"),
            "entropy": f("entropy"), "clip": f("clip_frac"),
            "turns": f("turns_per_episode", ".2f"), "rollout": f"{f('rollout_s', '.1f')}s",
            "train": f"{f('train_s', '.1f')}s"}
  return postfix
