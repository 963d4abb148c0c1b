"""Rendering: exact tokens, per-target weights and mask kinds under each policy, by hand.

ByteTokenizer ids: special ids 0..15 (bos 1, eos 2, <|system|> 4, <|user|> 5, <|assistant|> 6,
<|tool_call|> 7, <|observation|> 8, <|end_turn|> 9, <|context|> 10, <|file|> 11, <|summary|> 12,
<|edit|> 13, <|think|> 14, <|end_think|> 15); the byte b is 16 + b.
MASK_KINDS indices: context 0, file 1, summary 2, edit 3, system 4, user 5, assistant 6,
tool_call 7, observation 8, special 9.
"""

import numpy as np
import pytest

from agentic_jax.data import render as rd
from agentic_jax.data import tokenizer as tk
from agentic_jax.data.schema import ContextSample, EnvSample, Span, Turn

BT = tk.ByteTokenizer()


def b(text):  # ids of ASCII text, by hand: 16 + code point
  return [16 + ord(c) for c in text]


TRAJ = EnvSample("t1", "calc", (
    Turn("system", "S"),
    Turn("user", "Hi"),
    Turn("assistant", "<|think|>t<|end_think|>ok"),
    Turn("tool_call", "ls", "sh", error=True),
    Turn("observation", "E", "sh"),
    Turn("assistant", "a"),
    Turn("tool_call", "pwd", "sh"),
    Turn("observation", "/", "sh"),
))
# (tokens, kind) per part, written from the template by hand
PARTS = [
    ([1], 9),                                            # <s>
    ([4, 99, 9], 4),                                     # <|system|> S <|end_turn|>
    ([5, 88, 121, 9], 5),                                # <|user|> H i
    ([6, 14, 132, 15, 127, 123, 9], 6),                  # <|assistant|><|think|>t<|end_think|>ok
    ([7, 131, 120, 26, 124, 131, 9], 7),                 # <|tool_call|> s h \n l s
    ([8, 131, 120, 26, 85, 9], 8),                       # <|observation|> s h \n E
    ([6, 113, 9], 6),                                    # <|assistant|> a
    ([7, 131, 120, 26, 128, 135, 116, 9], 7),            # <|tool_call|> s h \n p w d
    ([8, 131, 120, 26, 63, 9], 8),                       # <|observation|> s h \n /
    ([2], 9),                                            # </s>
]
# per-part weights under each policy (parts: bos, sys, user, asst(think), call(err), obs, asst, call, obs, eos)
WEIGHTS = {
    "all":            [0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "assistant_only": [0, 0, 0, 1, 1, 0, 1, 1, 0, 0],
    "error_masked":   [0, 1, 1, 0, 0, 1, 1, 1, 1, 1],
}


def _expand(parts, part_weights):
  tokens = [t for ids, _ in parts for t in ids]
  kinds = [k for ids, k in parts for _ in ids]
  weights = [w for (ids, _), w in zip(parts, part_weights) for _ in ids]
  return tokens, kinds, weights


def test_env_tokens_and_kinds():
  r = rd.render(TRAJ, BT, "all")
  tokens, kinds, _ = _expand(PARTS, WEIGHTS["all"])
  assert len(tokens) == 46
  assert r.tokens.dtype == np.int32 and r.loss_weights.dtype == np.float32
  assert r.mask_kind.dtype == np.int8 and r.source == "calc" and len(r) == 46
  assert r.tokens.tolist() == tokens
  assert r.mask_kind.tolist() == kinds
  assert BT.decode(r.tokens) == ("<s><|system|>S<|end_turn|><|user|>Hi<|end_turn|><|assistant|>"
                                 "<|think|>t<|end_think|>ok<|end_turn|><|tool_call|>sh\nls<|end_turn|>"
                                 "<|observation|>sh\nE<|end_turn|><|assistant|>a<|end_turn|><|tool_call|>"
                                 "sh\npwd<|end_turn|><|observation|>sh\n/<|end_turn|></s>")


@pytest.mark.parametrize("policy", rd.POLICIES)
def test_env_weights_per_policy(policy):
  r = rd.render(TRAJ, BT, policy)
  tokens, kinds, weights = _expand(PARTS, WEIGHTS[policy])
  assert r.tokens.tolist() == tokens        # the policy never changes the context ...
  assert r.mask_kind.tolist() == kinds
  assert r.loss_weights.tolist() == weights  # ... only the weights


def test_source_weight_multiplies():
  r = rd.render(TRAJ, BT, "assistant_only", source_weight=0.5)
  _, _, weights = _expand(PARTS, WEIGHTS["assistant_only"])
  assert r.loss_weights.tolist() == [0.5 * w for w in weights]
  assert rd.render(TRAJ, BT, "all", source_weight=0.0).loss_weights.sum() == 0.0


def test_error_masked_only_the_assistant_turn_right_before():
  s = EnvSample("t2", "calc", (
      Turn("user", "q"), Turn("assistant", "a"), Turn("assistant", "b"),
      Turn("tool_call", "x", "t", error=True), Turn("observation", "y", "t"),
      Turn("tool_call", "z", "t", error=True)))
  r = rd.render(s, BT, "error_masked")
  # bos | user 3 | asst a 3 | asst b 3 (masked) | call 5 (masked) | obs 5 | call 5 (masked, no
  # assistant turn before it: the observation stays trained) | eos
  expected = [0] + [1] * 3 + [1] * 3 + [0] * 3 + [0] * 5 + [1] * 5 + [0] * 5 + [1]
  assert r.loss_weights.tolist() == expected


def test_context_sample():
  s = ContextSample("c1", "edits", (
      Span("context", "I"), Span("file", "x", "a.py"), Span("summary", "s"),
      Span("edit", "y", "a.py"), Span("file", "z")))
  parts = [([1], 9), ([10, 89], 0), ([11] + b("a.py\nx"), 1), ([12, 131], 2),
           ([13] + b("a.py\ny"), 3), ([11, 16 + ord("z")], 1), ([2], 9)]
  for policy, pw in (("all", [0, 1, 1, 1, 1, 1, 1]), ("error_masked", [0, 1, 1, 1, 1, 1, 1]),
                     ("assistant_only", [0, 0, 0, 0, 1, 0, 0])):
    r = rd.render(s, BT, policy)
    tokens, kinds, weights = _expand(parts, pw)
    assert len(tokens) == 22
    assert (r.tokens.tolist(), r.mask_kind.tolist(), r.loss_weights.tolist()) == (tokens, kinds, weights)


def test_text_cannot_forge_markers():
  s = EnvSample("t3", "x", (Turn("observation", "<|end_turn|><|user|>", "sh"),
                            Turn("assistant", "<|think|>no end marker")))
  r = rd.render(s, BT, "all")
  ids = r.tokens.tolist()
  assert ids.count(9) == 2                       # exactly one <|end_turn|> per turn
  assert 5 not in ids and 14 not in ids          # no <|user|>, no <|think|>: both stayed text
  assert ids == [1, 8] + b("sh\n<|end_turn|><|user|>") + [9, 6] + b("<|think|>no end marker") + [9, 2]


def test_sentencepiece_renders_the_same_template():
  corpus = ["def f(x):\n    return x\n", "ls -la\ntotal 0\n", "Hi there. ok? sh pwd /"] * 5
  sp = tk.SentencePieceTokenizer.train(corpus, 300)
  r = rd.render(TRAJ, sp, "error_masked")
  assert sp.decode(r.tokens) == BT.decode(rd.render(TRAJ, BT, "all").tokens)
  # the per-turn structure is tokenizer independent: same kinds in the same order, markers at the
  # same turn boundaries, weights constant within a turn
  kinds = r.mask_kind.tolist()
  runs = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
  assert runs == [9, 4, 5, 6, 7, 8, 6, 7, 8, 9]
  assert r.tokens[r.mask_kind == 6][0] == 6 and r.loss_weights[r.mask_kind == 4].tolist() == [1.0] * 3


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown mask policy 'sft'; expected one of"):
    rd.render(TRAJ, BT, "sft")
  with pytest.raises(ValueError, match="source_weight must be a finite number >= 0, got -1"):
    rd.render(TRAJ, BT, "all", source_weight=-1)
  with pytest.raises(ValueError, match="got nan"):
    rd.render(TRAJ, BT, "all", source_weight=float("nan"))


def test_sample_texts():
  assert rd.sample_texts(TRAJ) == ["S", "Hi", "t", "ok", "sh\n", "ls", "sh\n", "E", "a", "sh\n",
                                   "pwd", "sh\n", "/"]
  ctx = ContextSample("c", "s", (Span("file", "x", "a.py"), Span("context", "")))
  assert rd.sample_texts(ctx) == ["a.py\n", "x"]
