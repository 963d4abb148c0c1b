"""Generate text from a trained or converted checkpoint, streamed to stdout as it is produced.

    python launch/generate.py --workdir=/tmp/midtrain --prompt="def fib(n):" --temperature=0
    python launch/generate.py --ckpt=/ckpts/longcat --chat --prompt="What is 2 + 3?"

--workdir (a training run's WORKDIR) and --ckpt (a converted checkpoint directory) name the same
layout, checkpoints/<step>/{state, meta} beside the model's own tokenizer (tokenizer.model or
tokenizer.json); give exactly one. The latest checkpoint is used unless --step says otherwise.
--chat wraps the prompt as a user turn and generates the assistant's turn, which ends at
<|end_turn|>; otherwise the model continues <s> + the prompt until </s>. Either way at most
--max_new_tokens tokens. --temperature=0 is greedy decoding; otherwise softmax(logits / T)
within the --top_p nucleus, seeded by --seed (the same command gives the same text).

Only the generated text goes to stdout (the end marker not included, then a newline); a line of
statistics goes to stderr. Exit status 2, with one `error: ...` line and nothing compiled, for
a bad flag, a directory without a checkpoint or tokenizer, or a prompt that does not fit.
"""

from __future__ import annotations

import math
import os
import sys
import time

from absl import app, flags, logging

from agentic_jax import cli

_CKPT = flags.DEFINE_string("ckpt", None, "Converted checkpoint directory (agentic_jax.convert).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's WORKDIR.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
_PROMPT = flags.DEFINE_string("prompt", None, "The prompt text.")
_CHAT = flags.DEFINE_bool("chat", False, "Prompt as a user turn; generate the assistant turn.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.7, "Sampling temperature; 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 0.95, "Nucleus mass in (0, 1]; 1 = the full distribution.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 256, "Most tokens to generate.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", os.path.join("~", ".cache", "agentic_jax", "xla"),
    "Persistent XLA compilation cache ('' disables; JAX_COMPILATION_CACHE_DIR takes precedence).")






def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if (_CKPT.value is None) == (_WORKDIR.value is None):
    cli.fail("give exactly one of --ckpt=DIR or --workdir=DIR")
  if _PROMPT.value is None:
    cli.fail("--prompt is required")
  if not (math.isfinite(_TEMPERATURE.value) and _TEMPERATURE.value >= 0):
    cli.fail(f"--temperature must be a finite number >= 0, got {_TEMPERATURE.value}")
  if not 0 < _TOP_P.value <= 1:
    cli.fail(f"--top_p must be in (0, 1], got {_TOP_P.value}")
  if _MAX_NEW.value < 1:
    cli.fail(f"--max_new_tokens must be >= 1, got {_MAX_NEW.value}")
  path = _CKPT.value if _CKPT.value is not None else _WORKDIR.value
  flag = "--ckpt" if _CKPT.value is not None else "--workdir"
  import jax  # pylint: disable=import-outside-toplevel  after flag parsing (fast --help)
  from agentic_jax.inference import generate, loading  # pylint: disable=import-outside-toplevel
  if _COMPILE_CACHE.value and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILE_CACHE.value))
  try:
    info = loading.checkpoint_info(path, _STEP.value)
    tokenizer = loading.load_tokenizer(info.path)
  except loading.LoadError as e:
    cli.fail(f"{flag}={e}")
  try:
    if _CHAT.value:
      prompt = generate.chat_prompt(tokenizer, _PROMPT.value)
      stop_ids = generate.chat_stop_ids(tokenizer)
    else:
      prompt, stop_ids = generate.plain_prompt(tokenizer, _PROMPT.value), ()
  except KeyError as e:  # a tokenizer without our chat markers
    cli.fail(f"--chat needs the chat markers of agentic_jax's rendering; this tokenizer lacks {e}")
  if not prompt:
    cli.fail("--prompt is empty and the tokenizer has no <s> to start from")
  try:
    loading.check_ids(info.config, tokenizer, prompt)
  except loading.LoadError as e:
    cli.fail(f"{flag}={info.path}: {e}")
  limit = info.config.max_position_embeddings
  if len(prompt) + _MAX_NEW.value > limit:
    cli.fail(f"the prompt ({len(prompt)} tokens) + --max_new_tokens={_MAX_NEW.value} exceed the "
          f"model's max_position_embeddings={limit}")
  variables = loading.load_variables(info)
  result: dict = {}
  t0 = time.perf_counter()
  for piece in generate.stream_text(info.config, variables, tokenizer, prompt,
                                    max_new_tokens=_MAX_NEW.value,
                                    temperature=_TEMPERATURE.value, top_p=_TOP_P.value,
                                    seed=_SEED.value, stop_ids=stop_ids, result=result):
    sys.stdout.write(piece)
    sys.stdout.flush()
  sys.stdout.write("\n")
  sys.stdout.flush()
  seconds = time.perf_counter() - t0
  n = len(result.get("tokens", []))
  why = "end of turn" if _CHAT.value else "end of text"
  sys.stderr.write(f"[generate] step {info.step}: {n} new tokens in {seconds:.2f} s (compile "
                   f"included); stopped by {why if result.get('stopped') else 'max_new_tokens'}\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
