"""Rendering a sample to tokens, loss weights and mask kinds under a mask policy.

Template (special tokens are inserted by id, never tokenized from text; `[x]` = only if present):

  every sample     <s> ... </s>
  env turn         <|ROLE|> [name "\\n"] content <|end_turn|>
                   ROLE in system, user, assistant, tool_call, observation; e.g.
                   <|tool_call|>bash\\nls -la<|end_turn|>   <|observation|>bash\\ntotal 0\\n<|end_turn|>
  rationale        every block "<|think|>" inner "<|end_think|>" ANYWHERE in an assistant turn's
                   content renders with the <|think|>/<|end_think|> tokens, e.g. (RA3: latent
                   rationales interleaved between code lines)
                   <|assistant|>a = 1\\n<|think|>why<|end_think|>b = 2\\n<|end_turn|>
                   The text pieces before, between and after the blocks are tokenized separately.
                   A block opens at the first "<|think|>" and closes at the first "<|end_think|>"
                   after it: a "<|think|>" inside a block is text of the block, a "<|think|>"
                   with no "<|end_think|>" after it and an "<|end_think|>" outside a block stay
                   plain text. Only assistant turns have blocks (the markers are text in others).
  context span     <|KIND|> [path "\\n"] text      KIND in context, file, summary, edit (no end marker:
                   the next span's marker or </s> closes it), e.g. <|file|>pkg/mod.py\\ndef f(): ...

The name line and the content are tokenized separately, so "name\\n" is a stable prefix.

`loss_weights[i]` is the weight of token i as a prediction target; `mask_kind[i]` indexes MASK_KINDS:
the role / span kind of the turn or span the token belongs to (its marker, name/path line, content
and <|end_turn|> included), "special" for <s> and </s>, and "rationale" for the tokens of a
rationale block (<|think|>, the inner text and <|end_think|>; the rest of the turn stays
"assistant"). "rationale" is the last kind, appended after the others so that the indices of the
older kinds (stored in batches as target_kind, pinned by tests) did not move.

Action tokens are the tokens the agent writes: assistant turns (its text and rationale) and
tool_call turns; in a context sample, the edit spans. A failed step is a tool_call turn with
error=True (the schema's failed-call flag: set by the environment for built-in episodes, by
`adp.observation_failed` on import) together with the assistant turn right before it, which is
that call's rationale. Policies:

  all               every token 1 (daVinci-Dev mid-training: files, observations, tool output too)
  assistant_only    action tokens 1, all else 0 (SFT convention)
  error_masked      KAT-Coder error-masked SFT: action tokens 1, all else 0, and failed steps 0;
                    the failed steps stay in the context
  all_error_masked  like all, but failed steps 0 (error_masked before issue 11): mid-training on
                    observations, error text included, without imitating the failed calls

Why error_masked trains assistant text and calls but nothing else, and zeroes the rationale with
the failed call (objectives-spec §6, KAT-Coder entry: "turns whose tool call errored get zero
loss but stay in the context ... same mechanics as the ROME formula"; KAT's details there are
second-hand). ROME's SFT loss is L = -(sum_k m_k |c_k|)^-1 sum_k m_k log pi(c_k | s_k) with
m_k = 1[turn k has no runtime error]: only the agent's completion c_k of each turn is a target,
the state s_k (system, user, observations) only conditions it. STeP weights a step as the pair
(thought_i, action_i), so a failed step's rationale goes with its call. The training loss
sum(w * CE) / sum(w) over a batch gives ROME's normalisation. The assistant turn after a failure
(its reflection and fix) keeps weight 1.

A turn's own `weight` (schema; default 1) multiplies what the policy gives its tokens, so a
turn with weight 0 is context only under every policy.

A rationale block's tokens get what the policy and the turn's weight give the turn, times
`rationale_weight` (default 1: trained exactly like the rest of the turn). RA3's M-step trains on
trajectories with the E-step's rationales interleaved; whether the model also learns to WRITE the
rationales (weight 1), only conditions on them (0) or something in between is a config choice
(config.data.rationale_weight), so the weight is separate from the turn's. The kind is separate
too, so the loss on rationale tokens is reported on its own (loss/kind/rationale).

<s> always has weight 0 (nothing predicts it); </s> has 1 under all / all_error_masked and 0
under assistant_only / error_masked (the agent does not write it). Every weight is then
multiplied by `source_weight`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import numpy as np

from agentic_jax.data.schema import ContextSample, EnvSample, Sample, Turn
from agentic_jax.data.tokenizer import Tokenizer

# New kinds go at the END: the indices are stored in batches (target_kind) and named in metrics.
MASK_KINDS = ("context", "file", "summary", "edit", "system", "user", "assistant", "tool_call",
              "observation", "special", "rationale")
KIND_ID = {k: i for i, k in enumerate(MASK_KINDS)}
POLICIES = ("all", "assistant_only", "error_masked", "all_error_masked")
_ACTIONS_ONLY = ("assistant_only", "error_masked")      # non-action tokens get 0
_FAILED_MASKED = ("error_masked", "all_error_masked")   # failed steps get 0
THINK, END_THINK, END_TURN = "<|think|>", "<|end_think|>", "<|end_turn|>"
_ACTION_ROLES = ("assistant", "tool_call")


@dataclasses.dataclass(frozen=True)
class Rendered:
  tokens: np.ndarray        # int32 [L]
  loss_weights: np.ndarray  # float32 [L], weight of token i as a target
  mask_kind: np.ndarray     # int8 [L], index into MASK_KINDS
  source: str

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


class _Builder:
  def __init__(self):
    self.tokens: list[int] = []
    self.kinds: list[int] = []
    self.weights: list[float] = []

  def add(self, ids, kind: str, weight: float):
    self.tokens.extend(ids)
    self.kinds.extend([KIND_ID[kind]] * len(ids))
    self.weights.extend([weight] * len(ids))


def failed_step_turns(turns: Sequence[Turn]) -> frozenset[int]:
  """Indices of the turns of failed steps: each tool_call turn with error=True and the assistant
  turn right before it (its rationale); an assistant turn further back is a separate step."""
  calls = [k for k, t in enumerate(turns) if t.role == "tool_call" and t.error]
  rationales = [k - 1 for k in calls if k > 0 and turns[k - 1].role == "assistant"]
  return frozenset(calls + rationales)


def _turn_weights(sample: EnvSample, policy: str) -> list[float]:
  failed = failed_step_turns(sample.turns) if policy in _FAILED_MASKED else frozenset()
  actions_only = policy in _ACTIONS_ONLY
  return [0.0 if k in failed or (actions_only and t.role not in _ACTION_ROLES) else t.weight
          for k, t in enumerate(sample.turns)]


def _rationale_pieces(role: str, content: str) -> list[tuple[str, bool]]:
  """`content` cut into (text, is_rationale_block_inner) pieces in order (module doc: a block
  opens at the first <|think|>, closes at the first <|end_think|> after it). Empty text pieces
  between blocks are kept; they encode to nothing. Non-assistant turns are one text piece."""
  if role != "assistant":
    return [(content, False)]
  pieces: list[tuple[str, bool]] = []
  pos = 0
  while True:
    start = content.find(THINK, pos)
    if start < 0:
      break
    end = content.find(END_THINK, start + len(THINK))
    if end < 0:  # unclosed: no later <|think|> can be closed either, the rest is text
      break
    pieces.append((content[pos:start], False))
    pieces.append((content[start + len(THINK):end], True))
    pos = end + len(END_THINK)
  pieces.append((content[pos:], False))
  return pieces


def _content_parts(tok: Tokenizer, role: str, content: str) -> list[tuple[list[int], bool]]:
  """(ids, is_rationale) runs of a turn's content; a block's run includes both marker ids."""
  parts: list[tuple[list[int], bool]] = []
  for text, block in _rationale_pieces(role, content):
    if block:
      parts.append(([tok.special_id(THINK)] + tok.encode(text) + [tok.special_id(END_THINK)], True))
    elif text:  # skipping "" changes nothing (encode("") is []), it only avoids empty runs
      parts.append((tok.encode(text), False))
  return parts


def _turn_parts(turn: Turn, tok: Tokenizer) -> list[tuple[list[int], bool]]:
  """(ids, is_rationale) runs of <|ROLE|> [name "\\n"] content <|end_turn|>."""
  head = [tok.special_id(f"<|{turn.role}|>")]
  if turn.name is not None:
    head += tok.encode(turn.name + "\n")
  return ([(head, False)] + _content_parts(tok, turn.role, turn.content)
          + [([tok.special_id(END_TURN)], False)])


def render_turn(turn: Turn, tokenizer: Tokenizer) -> list[int]:
  """Token ids of one env turn exactly as `render` writes it inside a sample:
  <|ROLE|> [name "\\n"] content <|end_turn|> (the RL rollout appends observations with this)."""
  return [i for ids, _ in _turn_parts(turn, tokenizer) for i in ids]


def _check_weight(name: str, value: float) -> None:
  if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def render(sample: Sample, tokenizer: Tokenizer, policy: str,
           source_weight: float = 1.0, rationale_weight: float = 1.0) -> Rendered:
  """Tokens, per-target loss weights and mask kinds of one sample (template in the module doc).

  `rationale_weight` scales the tokens of rationale blocks on top of the turn's weight (so a
  failed step's rationale, or a weight-0 turn's, stays 0 whatever it is); `source_weight` scales
  every token."""
  if policy not in POLICIES:
    raise ValueError(f"unknown mask policy {policy!r}; expected one of {list(POLICIES)}")
  _check_weight("source_weight", source_weight)
  _check_weight("rationale_weight", rationale_weight)
  tok = tokenizer
  b = _Builder()
  b.add([tok.bos_id], "special", 0.0)
  if isinstance(sample, EnvSample):
    for turn, w in zip(sample.turns, _turn_weights(sample, policy)):
      for ids, block in _turn_parts(turn, tok):
        if block:
          b.add(ids, "rationale", w * float(rationale_weight))
        else:
          b.add(ids, turn.role, w)
  elif isinstance(sample, ContextSample):
    for span in sample.spans:
      w = 1.0 if policy not in _ACTIONS_ONLY or span.kind == "edit" else 0.0
      ids = [tok.special_id(f"<|{span.kind}|>")]
      if span.path is not None:
        ids += tok.encode(span.path + "\n")
      ids += tok.encode(span.text)
      b.add(ids, span.kind, w)
  else:
    raise TypeError(f"expected a ContextSample or EnvSample, got {type(sample).__name__}")
  b.add([tok.eos_id], "special", 0.0 if policy in _ACTIONS_ONLY else 1.0)
  weights = np.asarray(b.weights, np.float32) * np.float32(source_weight)
  return Rendered(np.asarray(b.tokens, np.int32), weights, np.asarray(b.kinds, np.int8),
                  sample.source)


def sample_texts(sample: Sample) -> list[str]:
  """The plain-text pieces `render` tokenizes (name/path lines and contents), for tokenizer training."""
  out: list[str] = []
  if isinstance(sample, EnvSample):
    for t in sample.turns:
      if t.name is not None:
        out.append(t.name + "\n")
      out += [text for text, _ in _rationale_pieces(t.role, t.content)]
  else:
    for s in sample.spans:
      if s.path is not None:
        out.append(s.path + "\n")
      out.append(s.text)
  return [t for t in out if t]
