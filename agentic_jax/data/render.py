"""Rendering a sample to tokens, loss weights and mask kinds under a mask policy.

Template (special tokens are inserted by id, never tokenized from text; `[x]` = only if present):

  every sample     <s> ... </s>
  env turn         <|ROLE|> [name "\\n"] content <|end_turn|>
                   ROLE in system, user, assistant, tool_call, observation; e.g.
                   <|tool_call|>bash\\nls -la<|end_turn|>   <|observation|>bash\\ntotal 0\\n<|end_turn|>
  rationale        an assistant turn whose content starts with the text "<|think|>" and contains
                   "<|end_think|>" renders that leading block with the <|think|>/<|end_think|> tokens:
                   <|assistant|><|think|>why<|end_think|>rest<|end_turn|>
  context span     <|KIND|> [path "\\n"] text      KIND in context, file, summary, edit (no end marker:
                   the next span's marker or </s> closes it), e.g. <|file|>pkg/mod.py\\ndef f(): ...

The name line and the content are tokenized separately, so "name\\n" is a stable prefix.

`loss_weights[i]` is the weight of token i as a prediction target; `mask_kind[i]` indexes MASK_KINDS:
the role / span kind of the turn or span the token belongs to (its marker, name/path line, content
and <|end_turn|> included), "special" for <s> and </s>. Policies:

  all             every token 1 (daVinci-Dev mid-training: files, observations, tool output too)
  assistant_only  assistant and tool_call turn tokens 1, all else 0 (SFT convention); in a context
                  sample the edit spans are the agent's actions and get 1
  error_masked    like all, but a tool_call turn with error=True and the assistant turn right before
                  it (its rationale) get 0; they stay in the context (KAT-Coder / ROME)

<s> always has weight 0 (nothing predicts it); </s> has 1 under all / error_masked and 0 under
assistant_only. Every weight is then multiplied by `source_weight`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from agentic_jax.data.schema import ContextSample, EnvSample, Sample, Turn
from agentic_jax.data.tokenizer import Tokenizer

MASK_KINDS = ("context", "file", "summary", "edit", "system", "user", "assistant", "tool_call",
              "observation", "special")
KIND_ID = {k: i for i, k in enumerate(MASK_KINDS)}
POLICIES = ("all", "assistant_only", "error_masked")
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


def _turn_weights(sample: EnvSample, policy: str) -> list[float]:
  turns = sample.turns
  if policy == "all":
    return [1.0] * len(turns)
  if policy == "assistant_only":
    return [1.0 if t.role in _ACTION_ROLES else 0.0 for t in turns]
  weights = [1.0] * len(turns)
  for k, t in enumerate(turns):
    if t.role == "tool_call" and t.error:
      weights[k] = 0.0
      if k > 0 and turns[k - 1].role == "assistant":
        weights[k - 1] = 0.0
  return weights


def _content_ids(tok: Tokenizer, role: str, content: str) -> list[int]:
  if role == "assistant" and content.startswith(THINK):
    end = content.find(END_THINK, len(THINK))
    if end >= 0:
      return ([tok.special_id(THINK)] + tok.encode(content[len(THINK):end])
              + [tok.special_id(END_THINK)] + tok.encode(content[end + len(END_THINK):]))
  return tok.encode(content)


def render_turn(turn: Turn, tokenizer: Tokenizer) -> list[int]:
  """Token ids of one env turn exactly as `render` writes it inside a sample:
  <|ROLE|> [name "\\n"] content <|end_turn|> (the RL rollout appends observations with this)."""
  ids = [tokenizer.special_id(f"<|{turn.role}|>")]
  if turn.name is not None:
    ids += tokenizer.encode(turn.name + "\n")
  ids += _content_ids(tokenizer, turn.role, turn.content)
  ids.append(tokenizer.special_id(END_TURN))
  return ids


def render(sample: Sample, tokenizer: Tokenizer, policy: str,
           source_weight: float = 1.0) -> Rendered:
  """Tokens, per-target loss weights and mask kinds of one sample (template in the module doc)."""
  if policy not in POLICIES:
    raise ValueError(f"unknown mask policy {policy!r}; expected one of {list(POLICIES)}")
  if not (isinstance(source_weight, numbers.Real) and math.isfinite(source_weight)
          and source_weight >= 0):
    raise ValueError(f"source_weight must be a finite number >= 0, got {source_weight!r}")
  tok = tokenizer
  b = _Builder()
  b.add([tok.bos_id], "special", 0.0)
  if isinstance(sample, EnvSample):
    for turn, w in zip(sample.turns, _turn_weights(sample, policy)):
      b.add(render_turn(turn, tok), turn.role, w)
  elif isinstance(sample, ContextSample):
    for span in sample.spans:
      w = 1.0 if policy != "assistant_only" or span.kind == "edit" else 0.0
      ids = [tok.special_id(f"<|{span.kind}|>")]
      if span.path is not None:
        ids += tok.encode(span.path + "\n")
      ids += tok.encode(span.text)
      b.add(ids, span.kind, w)
  else:
    raise TypeError(f"expected a ContextSample or EnvSample, got {type(sample).__name__}")
  b.add([tok.eos_id], "special", 0.0 if policy == "assistant_only" else 1.0)
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
      content = t.content
      if t.role == "assistant" and content.startswith(THINK) and END_THINK in content[len(THINK):]:
        end = content.find(END_THINK, len(THINK))
        out += [content[len(THINK):end], content[end + len(END_THINK):]]
      else:
        out.append(content)
  else:
    for s in sample.spans:
      if s.path is not None:
        out.append(s.path + "\n")
      out.append(s.text)
  return [t for t in out if t]
