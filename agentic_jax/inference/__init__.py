"""Inference on trained or converted checkpoints: loading, streaming generation, HumanEval.

    from agentic_jax.inference import loading, generate, humaneval
    cfg, variables, tokenizer = loading.load_model("/tmp/midtrain")     # WORKDIR or CKPT_DIR
    for piece in generate.stream_text(cfg, variables, tokenizer,
                                      generate.chat_prompt(tokenizer, "Hi"), max_new_tokens=64,
                                      stop_ids=generate.chat_stop_ids(tokenizer)):
      print(piece, end="", flush=True)
    summary = humaneval.evaluate(cfg, variables, tokenizer, humaneval.load_tasks("humaneval"),
                                 samples=10, temperature=0.8, out_path="he.jsonl")

The command line tools are launch/generate.py and launch/eval.py. Decoding runs on
agentic_jax/sampling.py's prefill / decode_step (the compressed MLA cache).
"""
