"""Rendering: exact tokens, per-target weights and mask kinds under each policy, by hand.

ByteTokenizer ids: special ids 0..15 (bos 1, eos 2, <|system|> 4, <|user|> 5, <|assistant|> 6,
<|tool_call|> 7, <|observation|> 8, <|end_turn|> 9, <|context|> 10, <|file|> 11, <|summary|> 12,
<|edit|> 13, <|think|> 14, <|end_think|> 15); the byte b is 16 + b.
MASK_KINDS indices: context 0, file 1, summary 2, edit 3, system 4, user 5, assistant 6,
tool_call 7, observation 8, special 9, rationale 10 (a think block's tokens: a per-token kind list
in PARTS below). Rationale blocks anywhere in a turn: tests/test_render_rationale.py.
"""

import random

import numpy as np
import pytest

from agentic_jax.data import render as rd
from agentic_jax.data import tokenizer as tk
from agentic_jax.data.builtin import agent, calculator
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
    # <|assistant|> <|think|>t<|end_think|> (kind rationale) ok <|end_turn|>
    ([6, 14, 132, 15, 127, 123, 9], [6, 10, 10, 10, 6, 6, 6]),
    ([7, 131, 120, 26, 124, 131, 9], 7),                 # <|tool_call|> s h \n l s
    ([8, 131, 120, 26, 85, 9], 8),                       # <|observation|> s h \n E
    ([6, 113, 9], 6),                                    # <|assistant|> a
    ([7, 131, 120, 26, 128, 135, 116, 9], 7),            # <|tool_call|> s h \n p w d
    ([8, 131, 120, 26, 63, 9], 8),                       # <|observation|> s h \n /
    ([2], 9),                                            # </s>
]
# per-part weights under each policy (parts: bos, sys, user, asst(think), call(err), obs, asst, call, obs, eos)
WEIGHTS = {
    "all":              [0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "assistant_only":   [0, 0, 0, 1, 1, 0, 1, 1, 0, 0],
    "error_masked":     [0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
    "all_error_masked": [0, 1, 1, 0, 0, 1, 1, 1, 1, 1],
}


def _expand(parts, part_weights):
  tokens = [t for ids, _ in parts for t in ids]
  kinds = [k for ids, kind in parts
           for k in (kind if isinstance(kind, list) else [kind] * len(ids))]
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
  assert rd.failed_step_turns(s.turns) == {2, 3, 5}
  # bos | user 3 | asst a 3 | asst b 3 (masked) | call 5 (masked) | obs 5 | call 5 (masked, no
  # assistant turn before it: the observation is not part of the step) | eos
  expected = {
      "error_masked":     [0] + [0] * 3 + [1] * 3 + [0] * 3 + [0] * 5 + [0] * 5 + [0] * 5 + [0],
      "all_error_masked": [0] + [1] * 3 + [1] * 3 + [0] * 3 + [0] * 5 + [1] * 5 + [0] * 5 + [1],
  }
  for policy, weights in expected.items():
    assert rd.render(s, BT, policy).loss_weights.tolist() == weights, policy


# A calculator-style episode built by hand: a failed call with its rationale (think block), the
# error observation, the reflection and the fixed call, then a call with no rationale before it.
KAT = EnvSample("k1", "calc", (
    Turn("system", "Use calc."),
    Turn("user", "6/0+1?"),
    Turn("assistant", "<|think|>div<|end_think|>go"),
    Turn("tool_call", "calc(6/0)", "calc", error=True),
    Turn("observation", "error: division by zero", "calc"),
    Turn("assistant", "Fix it."),
    Turn("tool_call", "calc(6/2)", "calc"),
    Turn("observation", "3", "calc"),
    Turn("tool_call", "answer(4)", "answer"),
    Turn("observation", "correct", "answer"),
))
KAT_PARTS = [
    ([1], 9),                                            # <s>
    ([4] + b("Use calc.") + [9], 4),                     # system
    ([5] + b("6/0+1?") + [9], 5),                        # user
    # rationale of the failed call: the think block has kind rationale, "go" assistant
    ([6, 14] + b("div") + [15] + b("go") + [9], [6] + [10] * 5 + [6] * 3),
    ([7] + b("calc\ncalc(6/0)") + [9], 7),               # failed call (error=True)
    ([8] + b("calc\nerror: division by zero") + [9], 8), # the error text
    ([6] + b("Fix it.") + [9], 6),                       # reflection after the failure
    ([7] + b("calc\ncalc(6/2)") + [9], 7),               # fixed call
    ([8] + b("calc\n3") + [9], 8),
    ([7] + b("answer\nanswer(4)") + [9], 7),             # call with no rationale
    ([8] + b("answer\ncorrect") + [9], 8),
    ([2], 9),                                            # </s>
]
#                    bos sys usr rat ERR err fix call obs ans obs eos
KAT_WEIGHTS = {
    "error_masked":     [0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0],   # actions only, failed step 0
    "all_error_masked": [0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1],   # everything but the failed step
    "assistant_only":   [0, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 0],
    "all":              [0] + [1] * 11,
}


@pytest.mark.parametrize("policy", rd.POLICIES)
def test_error_masked_weights_on_a_hand_built_trajectory(policy):
  r = rd.render(KAT, BT, policy)
  tokens, kinds, weights = _expand(KAT_PARTS, KAT_WEIGHTS[policy])
  assert r.tokens.tolist() == tokens and r.mask_kind.tolist() == kinds
  assert r.loss_weights.tolist() == weights


def test_error_masked_is_the_kat_form():
  """KAT-Coder error-masked SFT: only the agent's actions are targets, a failed step (call and
  rationale) has weight 0 but stays in the context; the reflection after it is trained."""
  r = rd.render(KAT, BT, "error_masked")
  w, kind = r.loss_weights, r.mask_kind
  for name in ("system", "user", "observation", "special"):
    assert not w[kind == rd.KIND_ID[name]].any(), name        # none of these is ever a target
  ids = r.tokens.tolist()
  err = b("error: division by zero")
  at = next(i for i in range(len(ids)) if ids[i:i + len(err)] == err)
  assert w[at:at + len(err)].tolist() == [0.0] * len(err)   # the error text: in context, weight 0
  failed = b("calc(6/0)")
  at = next(i for i in range(len(ids)) if ids[i:i + len(failed)] == failed)
  assert w[at:at + len(failed)].tolist() == [0.0] * len(failed)
  # versus assistant_only, exactly the failed step's tokens (rationale + call, markers included)
  only = rd.render(KAT, BT, "assistant_only").loss_weights
  sizes = [len(ids) for ids, _ in KAT_PARTS]
  step = range(sum(sizes[:3]), sum(sizes[:5]))
  assert np.flatnonzero(only != w).tolist() == list(step)
  assert w.sum() == sum(sizes[6:8]) + sizes[9] == 9 + 16 + 18   # "Fix it." | calc(6/2) | answer(4)


def test_error_masked_on_a_builtin_episode():
  """The failed-call flag the calculator environment sets reaches the weights: the planted
  failing call and its thought get 0, the "The call failed: ..." reflection is trained."""
  problem = calculator.make_problem(0, 0, "basic")
  policy = agent.calculator_policy(problem, random.Random(0), error_step=0)
  ep = agent.run_episode(calculator.CalculatorEnv(level="basic"), problem.task, policy,
                         sample_id="e0", source="calculator_basic")
  errs = [k for k, t in enumerate(ep.turns) if t.error]
  assert len(errs) == 1 and ep.turns[errs[0] - 1].role == "assistant"
  assert ep.turns[errs[0] + 2].content.startswith("The call failed: ")
  r = rd.render(ep, BT, "error_masked")
  per_turn, at = [], 1
  for t in ep.turns:
    n = len(rd.render_turn(t, BT))
    assert len(set(r.loss_weights[at:at + n].tolist())) == 1   # constant within a turn
    per_turn.append(float(r.loss_weights[at]))
    at += n
  expected = [0.0 if t.role not in ("assistant", "tool_call") or k in (errs[0] - 1, errs[0])
              else 1.0 for k, t in enumerate(ep.turns)]
  assert per_turn == expected and r.loss_weights[0] == r.loss_weights[-1] == 0.0


def test_context_sample():
  s = ContextSample("c1", "edits", (
      Span("context", "I"), Span("file", "x", "a.py"), Span("summary", "s"),
      Span("edit", "y", "a.py"), Span("file", "z")))
  parts = [([1], 9), ([10, 89], 0), ([11] + b("a.py\nx"), 1), ([12, 131], 2),
           ([13] + b("a.py\ny"), 3), ([11, 16 + ord("z")], 1), ([2], 9)]
  for policy, pw in (("all", [0, 1, 1, 1, 1, 1, 1]), ("all_error_masked", [0, 1, 1, 1, 1, 1, 1]),
                     ("assistant_only", [0, 0, 0, 0, 1, 0, 0]),
                     ("error_masked", [0, 0, 0, 0, 1, 0, 0])):  # edits are the actions
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
  assert runs == [9, 4, 5, 6, 10, 6, 7, 8, 6, 7, 8, 9]   # the think block is its own run
  assert r.tokens[r.mask_kind == 6][0] == 6
  starts = [i for i in range(len(kinds)) if i == 0 or kinds[i - 1] != kinds[i]] + [len(kinds)]
  run_weights = [r.loss_weights[a:z].tolist() for a, z in zip(starts, starts[1:])]
  turn_weights = WEIGHTS["error_masked"]
  turn_weights = turn_weights[:4] + [turn_weights[3]] * 2 + turn_weights[4:]  # 3 runs, 1 turn
  assert run_weights == [[w] * (z - a) for w, a, z in zip(turn_weights, starts, starts[1:])]


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


@pytest.mark.parametrize("policy", rd.POLICIES)
def test_turn_weight_multiplies_every_policy(policy):
  """A turn's schema weight scales what the policy gives its tokens: weight 0 = context only."""
  sample = EnvSample("w", "calc", (Turn("user", "q"), Turn("assistant", "a", weight=0.0),
                                   Turn("tool_call", "x", "sh", weight=0.5),
                                   Turn("observation", "o", "sh", weight=2.0)))
  r = rd.render(sample, BT, policy)
  # <s> | <|user|> q <|end_turn|> | <|assistant|> a <|end_turn|> | <|tool_call|> sh \n x <|end_turn|>
  # | <|observation|> sh \n o <|end_turn|> | </s>: 1 + 3 + 3 + 6 + 6 + 1 tokens
  actions_only = policy in ("assistant_only", "error_masked")
  expected = ([0.0] + [0.0 if actions_only else 1.0] * 3 + [0.0] * 3 + [0.5] * 6
              + [0.0 if actions_only else 2.0] * 6 + [0.0 if actions_only else 1.0])
  assert r.loss_weights.tolist() == expected


def test_turn_weight_in_records():
  from agentic_jax.data import schema
  s = EnvSample("w", "calc", (Turn("user", "q", weight=0.0), Turn("assistant", "a")))
  rec = schema.to_record(s)
  assert rec["turns"] == [{"role": "user", "content": "q", "weight": 0.0},
                          {"role": "assistant", "content": "a"}]
  assert schema.parse_record(rec) == s
  for bad, why in ((-1, "expected a finite number >= 0"), (True, "expected a number"),
                   ("1", "expected a number"), (float("inf"), "finite"),
                   (None, "expected a finite number >= 0")):
    rec["turns"][1]["weight"] = bad
    with pytest.raises(schema.RecordError, match=r"f:3: turns\[1\]\.weight: .*" + why):
      schema.parse_record(rec, file="f", line=3)
