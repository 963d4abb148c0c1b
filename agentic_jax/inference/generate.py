"""Token-by-token generation on the compressed-MLA-cache decoder, for streaming and text stops.

    decoder = StreamingDecoder(cfg, variables, [prompt_ids], max_new_tokens=64, eos_id=2)
    for tokens in decoder:            # one int32 [B] array per step
      ...                             # decoder.outputs[i]: row i's tokens so far
      decoder.finish([0])             # stop a row early (e.g. a text stop sequence appeared)

    for piece in stream_text(cfg, variables, tokenizer, prompt_ids, max_new_tokens=64):
      print(piece, end="", flush=True)

The loop runs sampling.prefill once and sampling.decode_step once per new token, drawing each
token with sampling.sample_logits under fold_in(PRNGKey(seed), step): the computation and the
random stream of sampling.generate_arrays, one step at a time, so a streamed decode gives
`sampling.generate`'s tokens for the same prompt, seed and settings (tests/test_generate_eval.py).
The stop rule is generate's with no arm ids: a row finishes at `eos_id` or any of `stop_ids`
(the finishing token is part of its output), or when the caller `finish`es it. Finished rows
keep stepping on token 0 (their results are ignored), as in generate_arrays, until every row
has finished.

Prompts: `plain_prompt` (<s> + the text's tokens) and `chat_prompt` (a user turn followed by
<|assistant|>, rendered by data/render.render_turn exactly as training data and RL rollouts
render turns; the assistant's turn then ends at <|end_turn|>).
"""

from __future__ import annotations

import functools
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax import sampling
from agentic_jax.models import ModelConfig

END_TURN = "<|end_turn|>"
ASSISTANT = "<|assistant|>"


def plain_prompt(tokenizer, text: str) -> list[int]:
  """<s> + the tokens of `text`; without <s> where the checkpoint's vocabulary has none (an
  HFTokenizer appends one to such a vocabulary, listed in its `added_tokens`: a token the model
  never saw, and beyond its embedding unless grown)."""
  bos = tokenizer.bos_id
  added = getattr(tokenizer, "added_tokens", None) or ()
  if bos is None or (added and tokenizer.decode([bos]) in added):
    return list(tokenizer.encode(text))
  return [bos] + list(tokenizer.encode(text))


def chat_prompt(tokenizer, text: str) -> list[int]:
  """<s><|user|>TEXT<|end_turn|><|assistant|>: the context the assistant's turn follows (the
  rendering of data/render.py). KeyError when the tokenizer lacks the chat markers."""
  from agentic_jax.data.render import render_turn  # pylint: disable=import-outside-toplevel
  from agentic_jax.data.schema import Turn  # pylint: disable=import-outside-toplevel
  bos = tokenizer.bos_id
  ids = ([bos] if bos is not None else []) + render_turn(Turn("user", text), tokenizer)
  return ids + [tokenizer.special_id(ASSISTANT)]


def chat_stop_ids(tokenizer) -> tuple[int, ...]:
  """The ids that end an assistant turn: <|end_turn|> (and </s> through eos_id)."""
  return (int(tokenizer.special_id(END_TURN)),)


def vocab_limit(cfg: ModelConfig, tokenizer) -> Optional[int]:
  """The tokenizer's vocabulary size where the model's embedding is larger (released models pad
  it, e.g. to a multiple of 64 or 128): ids past it decode to nothing, so they are never drawn.
  None where every id the model can produce is the tokenizer's."""
  n = int(tokenizer.vocab_size)
  return n if n < cfg.vocab_size else None


@functools.partial(jax.jit, static_argnames=("temperature", "top_p", "limit"))
def _sample(logits: jax.Array, key: jax.Array, step: jax.Array, *, temperature: float,
            top_p: float, limit: Optional[int]) -> jax.Array:
  if limit is not None:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < limit, logits, -jnp.inf)
  # the key generate_arrays' loop draws step `step` with
  tokens, _ = sampling.sample_logits(logits, jax.random.fold_in(key, step), temperature, top_p)
  return tokens


class StreamingDecoder:
  """Iterates the new tokens of a batch of prompts one step at a time (module doc).

  StreamingDecoder(cfg, variables, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0,
  seed=0, eos_id=None, stop_ids=(), width=None, cache_len=None, active=None, limit=None).
  `width` pads
  the prompts to at least that many columns and `cache_len` (default: the padded width +
  max_new_tokens) may be larger, so that batches of different prompt lengths share compiled
  shapes (padding never changes a row's result); `active` False marks batch-padding rows,
  finished from the start; `limit` (see `vocab_limit`) keeps ids >= limit from being drawn. Each iteration yields the step's tokens [B] (0 for rows already finished);
  `outputs[i]` holds row i's tokens, `done[i]` whether it finished, `stopped[i]` whether by a
  stop token / eos / `finish` (False: by max_new_tokens)."""

  def __init__(self, cfg: ModelConfig, variables: dict, prompts: Sequence[Sequence[int]], *,
               max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, eos_id: Optional[int] = None, stop_ids: Sequence[int] = (),
               width: Optional[int] = None, cache_len: Optional[int] = None,
               active: Optional[Sequence[bool]] = None, limit: Optional[int] = None):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not (temperature >= 0.0 and 0.0 < top_p <= 1.0):
      raise ValueError(f"need temperature >= 0 and top_p in (0, 1], got {temperature}, {top_p}")
    tokens, lengths = sampling.pad_prompts(prompts)
    if width is not None and width > tokens.shape[1]:  # more left padding: a shared shape
      tokens = np.pad(tokens, ((0, 0), (width - tokens.shape[1], 0)))
    need = tokens.shape[1] + max_new_tokens
    if cache_len is not None and cache_len < need:
      raise ValueError(f"cache_len {cache_len} < the longest prompt + max_new_tokens ({need})")
    self.cfg, self.variables = cfg, variables
    self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
    self._tokens, self._lengths = tokens, lengths
    self._cache_len = need if cache_len is None else int(cache_len)
    self._key = jax.random.key(seed)
    self._stop = np.asarray(sorted({int(i) for i in stop_ids} |
                                   ({int(eos_id)} if eos_id is not None else set())), np.int32)
    batch = len(prompts)
    self.outputs: list[list[int]] = [[] for _ in range(batch)]
    self.done = np.zeros(batch, bool) if active is None else ~np.asarray(active, bool)
    self.stopped = np.zeros(batch, bool)
    self._started = False
    self._limit = None if limit is None else int(limit)

  def finish(self, rows: Sequence[int]) -> None:
    """Marks `rows` finished (stopped by the caller): they emit nothing more."""
    for r in rows:
      self.done[r] = self.stopped[r] = True

  def __iter__(self) -> Iterator[np.ndarray]:
    if self._started:
      raise RuntimeError("a StreamingDecoder decodes once; make a new one to decode again")
    self._started = True
    last, cache = sampling.prefill(self.cfg, self.variables, jnp.asarray(self._tokens),
                                   jnp.asarray(self._lengths), cache_len=self._cache_len)
    lengths = jnp.asarray(self._lengths)
    for step in range(self.max_new_tokens):
      if self.done.all():
        return
      tok = np.asarray(_sample(last, self._key, step, temperature=float(self.temperature),
                               top_p=float(self.top_p), limit=self._limit))
      tok = np.where(self.done, 0, tok).astype(np.int32)
      live = ~self.done
      for i in np.flatnonzero(live):
        self.outputs[i].append(int(tok[i]))
      hit = live & np.isin(tok, self._stop)
      self.done |= hit
      self.stopped |= hit
      yield tok
      if self.done.all() or step + 1 == self.max_new_tokens:
        return  # no step for a token nobody will read
      last, cache = sampling.decode_step(self.cfg, self.variables, jnp.asarray(tok),
                                         lengths + step, cache)


class TextDelta:
  """Turns a growing token list into the text each new token adds. Decoding the whole list
  each time (not token by token) keeps multi-token characters (byte-fallback UTF-8, merged
  pieces) intact; text ending in an incomplete character (U+FFFD) is held back until the
  character completes."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer
    self.text = ""  # what has been handed out so far

  def update(self, ids: Sequence[int], final: bool = False) -> str:
    full = self.tokenizer.decode(list(ids))
    if full.endswith("\ufffd") and not final:
      return ""
    # the decoding of a longer list extends the shorter one's; should a tokenizer rewrite
    # earlier text, only what lies past the common prefix is new
    common = len(self.text) if full.startswith(self.text) else _common_prefix(full, self.text)
    piece = full[common:]
    self.text = full
    return piece


def _common_prefix(a: str, b: str) -> int:
  n = 0
  for x, y in zip(a, b):
    if x != y:
      break
    n += 1
  return n


def stream_text(cfg: ModelConfig, variables: dict, tokenizer, prompt_ids: Sequence[int], *,
                max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                seed: int = 0, stop_ids: Sequence[int] = (),
                result: Optional[dict] = None) -> Iterator[str]:
  """The text of one prompt's continuation, piece by piece as tokens arrive. Generation ends
  at the tokenizer's eos, a token of `stop_ids` (neither is part of the text), or after
  `max_new_tokens`; ids the tokenizer does not have are never drawn (`vocab_limit`). `result`, when given, receives {"tokens": the new ids, the stop token
  included; "stopped": True when a stop token / eos ended it}."""
  eos = tokenizer.eos_id
  ends = {int(i) for i in stop_ids} | ({int(eos)} if eos is not None else set())
  decoder = StreamingDecoder(cfg, variables, [list(prompt_ids)], max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, seed=seed, eos_id=eos,
                             stop_ids=tuple(stop_ids), limit=vocab_limit(cfg, tokenizer))
  delta = TextDelta(tokenizer)
  out = decoder.outputs[0]
  for _ in decoder:
    text_ids = out[:-1] if out and out[-1] in ends else out
    piece = delta.update(text_ids)
    if piece:
      yield piece
  text_ids = out[:-1] if out and out[-1] in ends else out
  piece = delta.update(text_ids, final=True)
  if piece:
    yield piece
  if result is not None:
    result.update(tokens=list(out), stopped=bool(decoder.stopped[0]))
