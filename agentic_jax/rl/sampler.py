"""Batched sampling of policy turns on the cached decoder, with bucketed shapes.

    sampler = Sampler(model_cfg, max_new_tokens=64, temperature=1.0)
    gens = sampler.generate(variables, [context_a, context_b], seed=3)   # list[Generation]

Contexts (1-D int32 token arrays, each starting with <s>) are left-padded to a width rounded up
to a multiple of `prompt_bucket`, and the batch is padded to a multiple of `batch_bucket` with
dummy rows that are finished from the start (they emit nothing and never keep the decode loop
running). The jitted decoder (`sampling.generate_arrays`) therefore compiles once per
(width bucket, batch bucket) pair; pass batch_bucket = the largest batch to get one batch shape.

A policy turn ends at the <|end_turn|> that closes a <|tool_call|> turn, at </s>, or after
`max_new_tokens` tokens (then `Generation.truncated` is True); `StopRule` states that rule, with
the ids of the tokenizer in use: `policy_turn(tokenizer)` (a released checkpoint's tokenizer has
its own ids). The defaults (`StopRule()`, `POLICY_TURN`, `END_TURN_ID`, `TOOL_CALL_ID`) are the
fixed layout of our own tokenizers (`SentencePieceTokenizer`, `ByteTokenizer`), for tests.

On a mesh (`Sampler(..., mesh=mesh)`: the RL loop's, whose sharded policy params the decoder
runs on) the decoder's inputs are placed replicated over the mesh, so one process with 8
devices and 2 processes x 4 devices compile the same program, and the decoder is traced under
the training's logical-axis rules (parallel.DEFAULT_RULES; `split_rows=True`, the default):
its rows are split over the batch axes (data x fsdp x expert) like the training batch, so
each device prefills and decodes B / shards rows and holds that share of the compressed cache
(the padded batch is rounded up to a multiple of the shards). Without the rules GSPMD lays
the decoder out from the params alone and may keep every row on every device (with FSDP
params it split the latent dim of the cache instead). The tokens and log-probs do not change
with the layout (threefry draws are partitionable). Across processes
(jax.process_count() > 1) `generate` is a collective: each process passes ITS OWN contexts
(its share of the rows), the contexts of all processes are gathered in process order and
decoded as one global batch (the same batch, padding and random numbers as one process with
every row), and each process gets back the generations of its own rows. Every process must
then make the same sequence of `generate` calls, with an empty list when it has no rows left:
loops over rounds ask `any_rows(sampler, rows)` (true on every process when any has rows).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from agentic_jax import parallel, sampling
from agentic_jax.data.tokenizer import EOS_ID, SPECIALS, Tokenizer
from agentic_jax.models import ModelConfig

# The fixed layout of our own tokenizers only (module doc): code given a tokenizer asks it.
END_TURN_ID = SPECIALS["<|end_turn|>"][0]
TOOL_CALL_ID = SPECIALS["<|tool_call|>"][0]
Seed = Union[int, jax.Array]


@dataclasses.dataclass(frozen=True)
class StopRule:
  """A row finishes at `eos_id`, or at a token of `stop_ids` once a token of `arm_ids` was
  emitted (no arm_ids: every stop id counts). The finishing token is part of the output."""
  eos_id: Optional[int] = EOS_ID
  stop_ids: tuple[int, ...] = (END_TURN_ID,)
  arm_ids: tuple[int, ...] = (TOOL_CALL_ID,)

  def __post_init__(self):
    sampling.check_stop_rule(tuple(self.stop_ids), tuple(self.arm_ids))

  def finished(self, tokens: Sequence[int]) -> bool:
    """Whether `tokens` (one row's output) ends with a token that finishes the row."""
    armed = not self.arm_ids
    for i, t in enumerate(tokens):
      t = int(t)
      if t == self.eos_id or (armed and t in self.stop_ids):
        return i == len(tokens) - 1
      armed = armed or t in self.arm_ids
    return False


POLICY_TURN = StopRule()  # <|tool_call|> ... <|end_turn|>, or </s> (fixed layout)


def policy_turn(tokenizer: Tokenizer) -> StopRule:
  """A policy turn of `tokenizer`'s ids: <|tool_call|> ... <|end_turn|>, or </s>."""
  return StopRule(eos_id=tokenizer.eos_id, stop_ids=(tokenizer.special_id("<|end_turn|>"),),
                  arm_ids=(tokenizer.special_id("<|tool_call|>"),))


def module_turn(tokenizer: Tokenizer) -> StopRule:
  """A turn that ends at its first <|end_turn|> or </s> (AgentFlow modules, RA3 evaluation)."""
  return StopRule(eos_id=tokenizer.eos_id, stop_ids=(tokenizer.special_id("<|end_turn|>"),),
                  arm_ids=())


def turn_end_ids(tokenizer: Tokenizer) -> tuple[int, int]:
  """(<|end_turn|>, </s>) of `tokenizer`: the tokens a finished turn ends with."""
  return tokenizer.special_id("<|end_turn|>"), tokenizer.eos_id


@dataclasses.dataclass
class Generation:
  tokens: np.ndarray     # int32 [n]: sampled tokens, the stop token included
  logprobs: np.ndarray   # float32 [n]: log-softmax(logits / temperature) at each chosen token
  truncated: bool        # stopped by max_new_tokens, not by the stop rule


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"Sampler: {name} must be an int >= {minimum}, got {value!r}")
  return int(value)


class Sampler:
  """Sampler(model_cfg, *, max_new_tokens, temperature=1.0, top_p=1.0, stop=POLICY_TURN,
  prompt_bucket=64, batch_bucket=8, mesh=None, split_rows=True). temperature 0 = greedy. `stop`
  holds token ids: build it from the tokenizer in use (`policy_turn(tokenizer)`); the default
  is our tokenizers' layout. `mesh`: the mesh the variables are sharded over (module doc; None
  = one device); `split_rows`: on it, split the decoder's rows over the batch axes."""

  def __init__(self, model_cfg: ModelConfig, *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, stop: StopRule = POLICY_TURN, prompt_bucket: int = 64,
               batch_bucket: int = 8, mesh: Optional[jax.sharding.Mesh] = None,
               split_rows: bool = True):
    if not isinstance(model_cfg, ModelConfig):
      raise TypeError(f"Sampler: model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(stop, StopRule):
      raise TypeError(f"Sampler: stop must be a StopRule, got {type(stop).__name__}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
      raise ValueError(f"Sampler: temperature must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
      raise ValueError(f"Sampler: top_p must be in (0, 1], got {top_p!r}")
    self.model_cfg = model_cfg
    self.max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    self.temperature = float(temperature)
    self.top_p = float(top_p)
    self.stop = stop
    self.prompt_bucket = _check_int("prompt_bucket", prompt_bucket, 1)
    self.batch_bucket = _check_int("batch_bucket", batch_bucket, 1)
    self.mesh = mesh
    self.split_rows = bool(split_rows)
    # the rules' pairs for this mesh (static args of the jitted decoder), and the row multiple
    self.logical_rules: tuple = ()
    self._row_multiple = 1
    if mesh is not None and self.split_rows:
      sizes = parallel.axis_sizes(mesh)
      self.logical_rules = tuple(parallel.flax_rules(parallel.DEFAULT_RULES, sizes))
      self._row_multiple = parallel.batch_shards(sizes)
    self.collective = jax.process_count() > 1  # generate() gathers every process's rows
    self.shapes_used: set[tuple[int, int]] = set()  # (batch, width) of every decoder call

  def replace(self, **changes) -> "Sampler":
    kw = dict(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
              stop=self.stop, prompt_bucket=self.prompt_bucket, batch_bucket=self.batch_bucket,
              mesh=self.mesh, split_rows=self.split_rows)
    kw.update(changes)
    return Sampler(self.model_cfg, **kw)

  def greedy(self) -> "Sampler":
    return self if self.temperature == 0.0 else self.replace(temperature=0.0)

  def padded_shape(self, lengths: Sequence[int]) -> tuple[int, int]:
    """(batch, width) the decoder runs for contexts of these lengths."""
    n, longest = len(lengths), max(lengths)
    batch = -(-n // self.batch_bucket) * self.batch_bucket
    return (-(-batch // self._row_multiple) * self._row_multiple,
            -(-longest // self.prompt_bucket) * self.prompt_bucket)

  def generate(self, variables: dict, contexts: Sequence[np.ndarray], seed: Seed) -> list[Generation]:
    """One Generation per context. Deterministic given `seed` (an int or a jax PRNG key) and the
    contexts in their order: step i of the decode loop draws with fold_in(key, i). Across
    processes a collective over this process's contexts (module doc)."""
    if len(contexts) == 0 and not self.collective:
      return []
    rows = []
    for i, c in enumerate(contexts):
      c = np.asarray(c)
      if c.ndim != 1 or c.size == 0 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"Sampler.generate: contexts[{i}] must be a non-empty 1-D int array, got "
                         f"shape {c.shape} dtype {c.dtype}")
      rows.append(c.astype(np.int32))
    if not self.collective:
      return self._generate(variables, rows, seed)
    # every process's rows, in process order: the batch one process would decode
    parts = parallel.allgather_objects(rows)
    start = sum(len(p) for p in parts[:jax.process_index()])
    everyone = [c for p in parts for c in p]
    if not everyone:
      return []
    return self._generate(variables, everyone, seed)[start:start + len(rows)]

  def any_rows(self, count: int) -> bool:
    """True when this process (count > 0) or, across processes, any process has rows: whether
    a round of `generate` calls must run (a collective when collective)."""
    return parallel.any_process(count > 0) if self.collective else count > 0

  def _generate(self, variables: dict, rows: list, seed: Seed) -> list[Generation]:
    lengths = [len(c) for c in rows]
    batch, width = self.padded_shape(lengths)
    self.shapes_used.add((batch, width))
    tokens = np.zeros((batch, width), np.int32)
    lens = np.ones((batch,), np.int32)  # dummy rows: one token (id 0), inactive
    for i, c in enumerate(rows):
      tokens[i, width - len(c):] = c
      lens[i] = len(c)
    active = np.arange(batch) < len(rows)
    key = jax.random.key(int(seed)) if isinstance(seed, (int, np.integer)) else seed
    if self.mesh is None:
      args = (jnp.asarray(tokens), jnp.asarray(lens), key, jnp.asarray(active))
    else:  # replicated over the mesh: a global array on every process (module doc)
      put = lambda x: parallel.replicated_array(x, self.mesh)  # noqa: E731
      if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(put(np.asarray(jax.random.key_data(key))),
                                       impl=jax.random.key_impl(key))
      else:  # a raw uint32 key (jax.random.PRNGKey)
        key = put(np.asarray(key))
      args = (put(tokens), put(lens), key, put(active))
    out, logp, num = sampling.generate_arrays(
        self.model_cfg, variables, args[0], args[1], args[2],
        max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
        eos_id=self.stop.eos_id, stop_ids=tuple(self.stop.stop_ids),
        arm_ids=tuple(self.stop.arm_ids), active=args[3], logical_rules=self.logical_rules)
    out, logp, num = (parallel.fetch(x) for x in (out, logp, num))
    gens = []
    for i in range(len(rows)):
      toks = out[i, :num[i]].astype(np.int32)
      gens.append(Generation(toks, logp[i, :num[i]].astype(np.float32),
                             truncated=not self.stop.finished(toks)))
    return gens


def any_rows(sampler, rows: Sequence) -> bool:
  """Whether a round over `rows` must run: `sampler.any_rows(len(rows))` for a Sampler (a
  collective across processes), else bool(rows) (scripted test samplers)."""
  f = getattr(sampler, "any_rows", None)
  return f(len(rows)) if f is not None else bool(rows)
