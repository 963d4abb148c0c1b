"""The mid-training run loop: build data and model, resume, train, checkpoint, report.

    result = run(config, workdir)        # rerunning with the same workdir resumes

What is mid-training's own lives here (data, mesh, sharded state, the compiled step, held-out
eval, the summary's loss/MFU keys and its printout); everything around the step (stop flag,
resume + config diff, checkpoint cadence, NaN policy, statuses, summary.json, metrics writer,
plot) is the shared runner, train/runner.py, which rl/loop.py uses too. A new job = a step
function + the runner (see runner.py's docstring), not a copy of this file.

Order of a run: mesh (config.mesh over all devices of all processes) -> data (generation,
tokenizer, rendering; each process loads only its rows of every global batch) -> state
(restored from the latest readable checkpoint in WORKDIR/checkpoints, else started from
config.init_from's params, else initialised from config.seed, in every case directly in its
sharded layout) -> the step jitted with explicit
shardings and donation, compiled ahead of time (timed apart from training) -> steps until
train.num_steps, with held-out evaluation every train.eval_every steps and at the end ->
final checkpoint, summary.json, loss.png, a printed summary.

Sharding (agentic_jax.parallel): params, router biases and optimizer moments are laid out by
the logical-axis rules table (config.sharding_rules if present, else "default"); batches
are split over data x fsdp x expert. One device is the 1x1x1x1 mesh: same code path.

Multi-process (launch/train.py after jax.distributed.initialize): every process runs this
same function. Data: process p feeds its contiguous block of global rows
(parallel.data_shard) and the global batch is assembled with
jax.make_array_from_process_local_data. Decisions are identical everywhere: the step's
metrics are global (replicated), a stop signal seen by any process stops all of them at the
same step (parallel.any_process), and every process calls the checkpoint save/restore
(orbax coordinates the writes). Only process 0 prints and writes metrics.jsonl,
TensorBoard events, summary.json and loss.png. WORKDIR must be shared by the processes
(checkpoints; process 0 trains the tokenizer there unless data.tokenizer.path is set).

Stuck steps: a step, evaluation, stop-signal exchange or checkpoint write that has not
finished train.step_timeout_s seconds after it began (a collective that never completes:
a peer process died or stalled) ends the process with a message naming the step and the
mesh, exit status 3 (train/watchdog.py); so does a SIGTERM that finds a step stuck.

Stopping early:
  * SIGTERM (preemption) or SIGINT: the current step finishes, a checkpoint is written,
    the run returns status "preempted" (launch/train.py exits 0); rerunning resumes.
  * `stop_after_steps=k` (tests, debugging): the same after k steps of this invocation,
    status "stopped".
  * Non-finite loss or gradient: the step itself skipped the update (step.py). With
    train.nan_policy="skip" training goes on (skips counted in metrics and summary); with
    "halt" the loop stops at once WITHOUT saving, so the newest checkpoint is the last good
    state, and returns status "halted" (launch/train.py exits 1). A run in which EVERY step
    of this invocation was skipped applied no update: it returns status "all_skipped"
    (launch/train.py exits 1), not "completed".

Starting from another run (config.init_from, train/init_from.py): when WORKDIR has no
checkpoint yet, the state is a fresh one (step 0, new optimizer state, step rng from
config.seed) holding the params and router biases of init_from's latest checkpoint, read
straight into the sharded layout; summary.json's "init_from" says which ({"path", "step"}; null
for a run from config.seed), and so does every checkpoint's meta, so a resumed run still reports
it. With data.tokenizer.path "" the run adopts init_from's tokenizer.model (copied into WORKDIR,
where resumes find it): the parameters only make sense with the tokenizer they were trained
with. Once WORKDIR has a checkpoint the run resumes from it and init_from is ignored (said once).

Before anything is built, config.validate checks every value and raises config.ConfigError
naming the key; a checkpoint that does not fit the config raises one too (checkpoint.py), and
so do init_from parameters whose shapes differ from config.model's (init_from.py).
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any, Callable, Optional

import jax
import numpy as np

from agentic_jax import fs, models, objectives, parallel
from agentic_jax.parallel import distributed
from agentic_jax.train import checkpoint as ckpt_lib
from agentic_jax.train import config as config_lib
from agentic_jax.train import eval as eval_lib
from agentic_jax.train import flops as flops_lib
from agentic_jax.train import init_from as init_from_lib
from agentic_jax.train import input as input_lib
from agentic_jax.train import metrics as metrics_lib
from agentic_jax.train import optim as optim_lib
from agentic_jax.train import runner
from agentic_jax.train import state as state_lib
from agentic_jax.train import step as step_lib
from agentic_jax.train import watchdog as watchdog_lib

NAN_POLICIES = config_lib.NAN_POLICIES


def _say(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def _config_json(config: Any) -> dict:
  return json.loads(config.to_json_best_effort())


def run(config: Any, workdir: str, *, stop_after_steps: Optional[int] = None,
        handle_signals: bool = True) -> dict:
  """Trains per `config` in `workdir`; returns the summary plus per-step `losses`."""
  t_start = time.perf_counter()
  # from the start: a signal during setup stops before step 1
  with runner.stop_flag(handle_signals) as stop:
    return _run(config, workdir, stop, t_start, stop_after_steps)


def _eval_settings(config: Any) -> tuple[int, int]:
  """(train.eval_every, train.eval_batches); 0 / absent eval_every = no evaluation."""
  every = int(config.train.get("eval_every", 0) or 0)
  batches = int(config.train.get("eval_batches", 0) or 0)
  if every < 0:
    raise ValueError(f"config.train.eval_every must be >= 0 (0 = no evaluation), got {every}")
  if every and batches < 1:
    raise ValueError(f"config.train.eval_batches must be >= 1 when train.eval_every > 0, "
                     f"got {batches}")
  return every, batches if every else 0


def _evaluate(eval_fn: Callable, eval_data: list, inp: input_lib.Input, state: Any) -> dict:
  return eval_lib.evaluate(eval_fn, state.params, state.router_state, eval_data,
                           inp.kind_names, inp.source_names)


def _run(config: Any, workdir: str, stop: runner.StopFlag, t_start: float,
         stop_after_steps: Optional[int]) -> dict:
  config_lib.validate(config)  # every value, before any data, state or compilation
  eval_every, eval_batches = _eval_settings(config)
  primary = jax.process_index() == 0
  workdir = fs.resolve(workdir)
  fs.makedirs(workdir)
  model_cfg = config_lib.model_config(config.model)
  num_steps = int(config.train.num_steps)
  # Validate the rest of the config before spending time on data.
  tx = optim_lib.make_optimizer(config.optim)
  optim_lib.schedule_from_config(config)
  step_lib.make_bias_update(model_cfg, config.moe)
  objectives.get_loss(config.objective.name)

  # ---- mesh and this process's rows of every global batch
  rules = parallel.get_rules(config.get("sharding_rules", "default"))
  mesh = parallel.make_mesh(config.mesh)
  global_rows = int(config.data.batch_size)
  batch_sh = parallel.batch_sharding(mesh, rules, batch_size=global_rows)
  shard = distributed.data_shard(batch_sh, global_rows)

  def to_global(local: dict) -> dict:
    return distributed.host_local_batch_to_global(local, batch_sh, global_rows)

  # ---- data
  # Decided before the data (the tokenizer depends on it): a WORKDIR without a checkpoint
  # starts from config.init_from when one is set.
  init_from = config.get("init_from", "")
  start_from_init = bool(init_from) and not init_from_lib.checkpoint_steps(workdir)
  if (start_from_init and primary and not input_lib.is_synthetic(config.data)
      and not config.data.tokenizer.path):  # the others wait at the tokenizer barrier below
    _say(f"[init] tokenizer {init_from_lib.adopt_tokenizer(init_from, workdir)} "
         f"(init_from's, whose ids its parameters were trained on)")
  tok_info: dict = {}
  if jax.process_count() > 1:  # one tokenizer for all: process 0 trains it, the rest load it
    if primary:
      tok_info = input_lib.ensure_tokenizer(config, workdir)
    distributed.barrier("agentic_jax-tokenizer")
  inp = input_lib.build_input(config, workdir, vocab_limit=model_cfg.vocab_size,
                              process_index=shard.index, process_count=shard.count,
                              eval_batches=eval_batches, may_train_tokenizer=primary)
  if tok_info.get("trained"):  # trained just above, loaded by build_input: report the training
    inp.report["tokenizer"] = tok_info
  t_data = time.perf_counter() - t_start
  _say(f"[data] sources {list(inp.source_names)} ready in {t_data:.1f}s "
       f"({json.dumps(inp.report.get('tokenizer', {}))})")
  if jax.process_count() > 1 or mesh.size > 1:
    _say(f"[mesh] {dict(zip(mesh.axis_names, mesh.axis_sizes))} over {jax.process_count()} "
         f"process(es); process 0 feeds rows [{shard.start}:{shard.stop}) of {global_rows}")

  # ---- state, created or restored in its sharded layout
  step_fn = step_lib.make_train_step(model_cfg, config, num_kinds=len(inp.kind_names),
                                     num_sources=len(inp.source_names))
  ckpt = ckpt_lib.Checkpointer(fs.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                               async_save=config.checkpoint.async_save)
  abstract = state_lib.abstract_state(model_cfg, tx, config.seed)
  state_sh = state_lib.state_shardings(abstract, model_cfg, mesh, rules)
  config_json = _config_json(config)
  resumed = runner.resume(ckpt, state_lib.with_shardings(abstract, state_sh), config_json,
                          data_iterator=inp.iterator, say=_say)
  if resumed is not None:
    state, start = resumed.state, resumed.step
    init_record = resumed.meta.get("init_from")  # where this run's params first came from
    if init_from:
      _say(f"[init] WORKDIR has checkpoint step {start}: resumed from it, config.init_from "
           f"({init_from}) is ignored")
  elif init_from:  # no checkpoint in WORKDIR
    loaded = init_from_lib.load(init_from, model_cfg, config.model.to_dict(), say=_say,
                                shardings={"params": state_sh.params,
                                           "router_state": state_sh.router_state})
    # Same shardings as init_sharded_state and a restore: the step compiles to one program.
    state = init_from_lib.fresh_state(loaded.variables, model_cfg, tx, config.seed, state_sh)
    start = 0
    init_record = init_from_lib.summary_entry(init_from, loaded.step)
    _say(f"[init] params and router state from {init_record['path']} checkpoint step "
         f"{loaded.step}; optimizer state fresh, step 0")
  else:
    # Created with the same shardings a restore gives, so a fresh and a resumed run compile
    # the step to the same program.
    state = state_lib.init_sharded_state(model_cfg, tx, config.seed, state_sh)
    start = 0
    init_record = None
  n_params = models.count_params(model_cfg)
  fm = flops_lib.flop_model(model_cfg)
  _say(f"[model] {config.model.preset}-style {model_cfg.layer_type}: {n_params:,} params, "
       f"{fm.dense_matmul_params + fm.expert_params:,} in matmuls")

  result: dict[str, Any] = {"status": "completed", "start_step": start, "losses": [],
                            "init_from": init_record}
  if start >= num_steps:
    _say(f"[train] nothing to do: checkpoint step {start} >= train.num_steps {num_steps}")
    ckpt.close()
    result.update(status="completed", final_step=start)
    return result

  # ---- compile (timed apart from the steps)
  batch = to_global(next(inp.iterator))
  t0 = time.perf_counter()
  train_fn = step_lib.jit_train_step(step_fn, mesh=mesh, state_shardings=state_sh,
                                     batch_sharding=batch_sh, rules=rules)
  compiled = train_fn.lower(state, batch).compile()
  t_compile = time.perf_counter() - t0
  _say(f"[train] step compiled in {t_compile:.1f}s; steps {start + 1}..{num_steps}, "
       f"batch {config.data.batch_size}x{config.data.seq_len}")
  evaluator: Optional[Callable[[Any], dict]] = None
  if eval_every:
    eval_fn = eval_lib.jit_eval_step(
        eval_lib.make_eval_step(model_cfg, num_kinds=len(inp.kind_names),
                                num_sources=len(inp.source_names)),
        mesh=mesh, params_shardings=state_sh.params, router_shardings=state_sh.router_state,
        batch_sharding=batch_sh, rules=rules)
    eval_data = [to_global(b) for b in inp.eval_batches]  # on device once, reused every eval
    evaluator = functools.partial(_evaluate, eval_fn, eval_data, inp)

  logger = metrics_lib.MetricsLogger(
      workdir, kind_names=inp.kind_names, source_names=inp.source_names, flop_model=fm,
      seq_len=config.data.seq_len, peak_flops=config.train.peak_flops, num_steps=num_steps,
      log_every=config.train.log_every, start_step=start, progress=config.train.progress,
      write=primary, wandb=runner.wandb_settings(config))
  run_ = runner.Run(start, num_steps, config.checkpoint.every, config.train.nan_policy,
                    stop_after_steps, tag="train", say=_say)
  last_eval: Optional[dict] = None
  t_eval = 0.0
  t_loop = time.perf_counter()
  run_.stop_in_setup(distributed.any_process(stop.signal is not None), stop.signal)
  # Every section that waits on devices (and so on the other processes' collectives) is
  # watched: stuck past train.step_timeout_s, the process ends with a message naming it.
  dog = watchdog_lib.Watchdog(
      float(config.train.get("step_timeout_s", 0) or 0),
      f"mesh {dict(zip(mesh.axis_names, mesh.axis_sizes))} over {jax.process_count()} "
      f"process(es) (this is process {jax.process_index()})",
      note=lambda: watchdog_lib.checkpoint_note(ckpt.directory))
  try:
    while run_.running():
      t0 = time.perf_counter()
      if batch is None:
        batch = to_global(next(inp.iterator))
      with dog.watch(f"step {run_.step + 1}"):
        state, m = compiled(state, batch)
        batch = None
        m = jax.device_get(m)  # replicated: every process reads the global values
      run_.step += 1
      step = run_.step
      seconds = time.perf_counter() - t0
      result["losses"].append((step, np.float32(m["loss"])))
      skipped = bool(int(m["skipped"]))
      halt = runner.nan_action(skipped, config.train.nan_policy) == "halt"
      extra = None
      if evaluator is not None and not halt and (step % eval_every == 0 or step == num_steps):
        t1 = time.perf_counter()
        with dog.watch(f"the evaluation after step {step}"):
          extra = evaluator(state)
        last_eval = {"eval_step": step, **extra}
        t_eval += time.perf_counter() - t1
      logger.step(step, m, seconds, extra)
      if halt:
        logger.flush()
      if run_.on_update(skipped):  # nan_policy=halt: stop WITHOUT saving
        break
      # The same verdict on every process: a signal that reached any of them stops all.
      with dog.watch(f"the stop-signal exchange after step {step}"):
        signalled = distributed.any_process(stop.signal is not None)
      stopping = run_.stop_status(signalled)
      if run_.checkpoint_due(stopping):
        with dog.watch(f"the checkpoint of step {step}"):
          ckpt.save(state, inp.iterator, config_json, extra={"init_from": init_record})
      if stopping:
        run_.stopped(stopping, (stop.signal or "signal on another process") if signalled
                     else "stop_after_steps")
  finally:
    logger.close()
    with dog.watch("the final checkpoint write"):
      ckpt.close()
    dog.close()
  t_train = time.perf_counter() - t_loop - t_eval
  run_.finish(lr=config.optim.lr)

  recs = logger.records
  losses = [r["loss"] for r in recs if r.get("loss") is not None]
  summary = runner.summary(
      run_, nan_skips=int(jax.device_get(state.nan_skips)),
      seconds={"data": t_data, "compile": t_compile, "train": t_train, "eval": t_eval,
               "total": time.perf_counter() - t_start},
      checkpointer=ckpt, writer=logger.writer,
      first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
      final_record=recs[-1] if recs else None,
      eval_loss=last_eval["eval_loss"] if last_eval else None, eval=last_eval,
      tokens_per_s=logger.total_tokens / logger.total_seconds if logger.total_seconds else None,
      mfu=(logger.total_flops / logger.total_seconds / config.train.peak_flops
           if logger.total_seconds else None),
      peak_flops=config.train.peak_flops, params=n_params,
      mesh={"sizes": dict(zip(mesh.axis_names, mesh.axis_sizes)),
            "processes": jax.process_count(), "devices": mesh.size},
      data=inp.report, pipeline=input_lib.pipeline_stats(inp), init_from=init_record)
  if primary:
    png = metrics_lib.plot_losses(workdir, title=f"midtrain {config.get('variant', '')} "
                                  f"({config.model.preset})")
    summary["outputs"]["loss_png"] = png
    summary["outputs"]["summary"] = runner.write_summary(workdir, summary)
  else:
    summary["outputs"]["loss_png"] = summary["outputs"]["summary"] = None
  summary["seconds"]["total"] = round(time.perf_counter() - t_start, 2)
  if primary:
    _print_summary(summary)
  result.update(summary)
  return result


def _print_summary(s: dict) -> None:
  def f(x, spec):
    return "n/a" if x is None else format(x, spec)
  lines = [
      f"== {s['status']}: steps {s['start_step']}->{s['final_step']} of {s['num_steps']}"
      f" | loss {f(s['first_loss'], '.4f')} -> {f(s['final_loss'], '.4f')}"
      f" | {f(s['tokens_per_s'], ',.0f')} tokens/s | MFU {f(s['mfu'] and 100 * s['mfu'], '.1f')}%"
      f" of {s['peak_flops']:.3g} FLOP/s | NaN skips {s['nan_skips']}",
      f"   time: data {s['seconds']['data']}s, compile {s['seconds']['compile']}s, "
      f"train {s['seconds']['train']}s, total {s['seconds']['total']}s",
      _eval_line(s),
      (f"   init: params from {s['init_from']['path']} step {s['init_from']['step']}"
       if s.get("init_from") else ""),
      _data_line(s),
      f"   outputs: {s['outputs']['summary']}, {s['outputs']['metrics']}, "
      f"{s['outputs']['loss_png']}, {s['outputs']['tensorboard']}/, {s['checkpoints']['directory']}/",
  ]
  _say("\n".join(line for line in lines if line))


def _eval_line(s: dict) -> str:
  ev = s.get("eval")
  if not ev:
    return ""
  kinds = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in ev.items()
                    if k.startswith("eval_loss/kind/"))
  return (f"   eval (step {ev['eval_step']}, {ev['eval_batches']} held-out batches): loss "
          f"{ev['eval_loss']:.4f}, accuracy {ev['eval_accuracy']:.3f}" + (f"; {kinds}" if kinds else ""))


def _data_line(s: dict) -> str:
  """Anything the data path skipped, split or dropped (never silent)."""
  parts = []
  for name, rep in s["data"].get("sources", {}).items():
    if rep.get("skipped"):
      parts.append(f"{name}: {rep['skipped']} bad records skipped")
  pipe = s.get("pipeline", {})
  if pipe.get("split_overlong"):
    parts.append(f"{pipe['split_overlong']} over-length samples split into {pipe['split_chunks']} chunks")
  if pipe.get("dropped_overlong"):
    parts.append(f"{pipe['dropped_overlong']} over-length samples dropped")
  if pipe.get("batches"):
    parts.append(f"padding {100 * pipe.get('padding_fraction', 0):.1f}%")
  return "   data: " + "; ".join(parts) if parts else ""
