"""Mid-training: pure train step, optimizer, checkpoints, metrics, data input, run loop.

    from agentic_jax.train import config as config_lib, loop
    config = config_lib.load_config("configs/midtrain.py:tiny")
    result = loop.run(config, "/tmp/run")          # or: python launch/train.py ...

Modules (imports flow launch -> loop -> the rest -> objectives, data, models):
  state       TrainState (step, params, opt_state, router_state, rng, nan_skips)
  optim       AdamW chain, "wsd" / "cosine" schedules, weight-decay mask
  step        make_train_step(model_cfg, config, ...) -> pure train_step(state, batch)
  flops       model FLOPs per step for MFU (activated experts only)
  peaks       rated peak FLOP/s per accelerator kind, the CPU matmul ceiling (MFU denominators)
  checkpoint  Checkpointer: orbax async keep-N of {state, data iterator, meta}, corrupt fallback,
              config mismatches named (a ConfigError, nothing on disk changed)
  input       build_input(config, workdir, ...): the data mix (config.data.mix, source_specs)
  runner      what every run loop shares (also rl/loop.py): stop flag, resume + config diff,
              checkpoint cadence, NaN policy, summary.json, MetricsWriter (metrics.jsonl,
              TensorBoard via tensorboardX, tqdm progress bar, optional wandb), plot_metrics; a
              new job = a step function + the runner
  progress    the run loops' progress bar (tqdm.auto; one line per record off a terminal)
  runtime     re-exports StopFlag and config_diff from runner (older import path)
  eval        make_eval_step / evaluate: held-out loss on a fixed eval set (data seed + 1000003)
  metrics     mid-training's records (window means, tokens/s, MFU) and progress-bar numbers,
              written by runner.MetricsWriter; loss.png
  config      model_section / model_config / load_config / validate (ConfigError naming the key)
  init_from   a run's first state from another run's latest checkpoint (config.init_from)
  loop        run(config, workdir): resume, SIGTERM, NaN policy, final summary
"""
