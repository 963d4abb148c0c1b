"""Rationale blocks anywhere in an assistant turn (RA3, issue 13): tokens, mask kind, weights.

Every "<|think|>...<|end_think|>" block of an assistant turn renders as [<|think|>] +
encode(inner) + [<|end_think|>], the text around the blocks is encoded piece by piece, and the
block's tokens (markers included) have mask kind "rationale" and weight (the turn's weight under
the policy) x rationale_weight. ByteTokenizer ids as in tests/test_render.py: <|assistant|> 6,
<|end_turn|> 9, <|think|> 14, <|end_think|> 15, byte b -> 16 + b.
"""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from agentic_jax.data import render as rd
from agentic_jax.data import tokenizer as tk
from agentic_jax.data.schema import EnvSample, Turn
from agentic_jax.train import config as config_lib
from agentic_jax.train import input as input_lib
from tests import data_fixtures
from tests.train_fixtures import MIDTRAIN, ROOT

BT = tk.ByteTokenizer()
THINK, END_THINK, ASSISTANT, END_TURN = 14, 15, 6, 9
RATIONALE, ASSISTANT_KIND = rd.KIND_ID["rationale"], rd.KIND_ID["assistant"]


@pytest.fixture(scope="module")
def sp():
  """A small sentencepiece tokenizer: unlike bytes, its pieces could merge across a block's
  boundary if the text were encoded as one string."""
  corpus = ["a = 1\nb = 2\nwhy because x = y\n", "def f(x):\n    return x\n", "ok go now\n"] * 5
  return tk.SentencePieceTokenizer.train(corpus, 300)


def _turn(content, role="assistant", **kw):
  return EnvSample("r", "src", (Turn(role, content, **kw),))


def _inside(r):  # the turn's tokens / kinds / weights between <s> <|ROLE|> and <|end_turn|> </s>
  return r.tokens[2:-2].tolist(), r.mask_kind[2:-2].tolist(), r.loss_weights[2:-2].tolist()


def _old_content_ids(tok, role, content):
  """The rendering before rationale blocks could appear anywhere (only a leading block)."""
  if role == "assistant" and content.startswith("<|think|>"):
    end = content.find("<|end_think|>", len("<|think|>"))
    if end >= 0:
      rest = content[end + len("<|end_think|>"):]
      return ([tok.special_id("<|think|>")] + tok.encode(content[len("<|think|>"):end])
              + [tok.special_id("<|end_think|>")] + tok.encode(rest))
  return tok.encode(content)


def test_kinds_appended_at_the_end():
  assert rd.MASK_KINDS[:10] == ("context", "file", "summary", "edit", "system", "user",
                                "assistant", "tool_call", "observation", "special")
  assert rd.MASK_KINDS[-1] == "rationale" and RATIONALE == 10
  from agentic_jax.objectives import next_token  # pylint: disable=import-outside-toplevel
  assert next_token.DEFAULT_OPTIONS["num_kinds"] == len(rd.MASK_KINDS)


@pytest.mark.parametrize("tok_name", ["bytes", "sentencepiece"])
def test_block_between_code_lines(tok_name, sp):
  tok = BT if tok_name == "bytes" else sp
  r = rd.render(_turn("a = 1\n<|think|>why<|end_think|>b = 2\n"), tok, "all")
  block = [THINK] + tok.encode("why") + [END_THINK]
  want = tok.encode("a = 1\n") + block + tok.encode("b = 2\n")
  tokens, kinds, weights = _inside(r)
  assert r.tokens[:2].tolist() == [tok.bos_id, ASSISTANT]
  assert r.tokens[-2:].tolist() == [END_TURN, tok.eos_id]
  assert tokens == want
  n = len(tok.encode("a = 1\n"))
  assert kinds == [ASSISTANT_KIND] * n + [RATIONALE] * len(block) + [ASSISTANT_KIND] * (
      len(want) - n - len(block))
  assert weights == [1.0] * len(want)
  assert r.mask_kind[1] == r.mask_kind[-2] == ASSISTANT_KIND   # marker and <|end_turn|>
  assert rd.render_turn(Turn("assistant", "a = 1\n<|think|>why<|end_think|>b = 2\n"), tok) == (
      [ASSISTANT] + want + [END_TURN])


def test_bytes_by_hand():
  b = lambda text: [16 + ord(c) for c in text]  # pylint: disable=unnecessary-lambda-assignment
  r = rd.render(_turn("a = 1\n<|think|>why<|end_think|>b = 2\n"), BT, "all")
  assert r.tokens.tolist() == ([1, 6] + b("a = 1\n") + [14] + b("why") + [15] + b("b = 2\n")
                               + [9, 2])


def test_two_blocks(sp):
  content = "x\n<|think|>one<|end_think|>y\n<|think|>two<|end_think|>z"
  for tok in (BT, sp):
    r = rd.render(_turn(content), tok, "all")
    b1 = [THINK] + tok.encode("one") + [END_THINK]
    b2 = [THINK] + tok.encode("two") + [END_THINK]
    x, y, z = tok.encode("x\n"), tok.encode("y\n"), tok.encode("z")
    tokens, kinds, _ = _inside(r)
    assert tokens == x + b1 + y + b2 + z
    a, t = ASSISTANT_KIND, RATIONALE
    assert kinds == [a] * len(x) + [t] * len(b1) + [a] * len(y) + [t] * len(b2) + [a] * len(z)
    assert rd.sample_texts(_turn(content)) == ["x\n", "one", "y\n", "two", "z"]
  # back to back, and an empty block: markers only
  tokens, kinds, _ = _inside(rd.render(_turn("<|think|>p<|end_think|><|think|><|end_think|>"),
                                       BT, "all"))
  assert tokens == [THINK] + BT.encode("p") + [END_THINK, THINK, END_THINK]
  assert kinds == [RATIONALE] * 5


@pytest.mark.parametrize("content,blocks", [
    ("a <|think|>no end", []),                                    # unclosed: text
    ("a <|end_think|> b", []),                                    # stray end: text
    ("<|end_think|>a<|think|>w<|end_think|>b", ["w"]),            # stray end before a block
    ("a<|think|>w<|end_think|>b<|end_think|>c", ["w"]),           # stray end after a block
    ("<|think|>p<|think|>q<|end_think|>r", ["p<|think|>q"]),      # nested: text of the block
    ("<|think|>w<|end_think|>b<|think|>unclosed", ["w"]),         # closed, then unclosed
])
def test_markers_that_stay_text(content, blocks):
  r = rd.render(_turn(content), BT, "all")
  tokens, kinds, _ = _inside(r)
  assert tokens.count(THINK) == tokens.count(END_THINK) == len(blocks)
  assert BT.decode(tokens) == content   # the text round-trips, markers as text or as ids
  # reference: cut by hand at the blocks, each piece encoded on its own
  want, rest = [], content
  for inner in blocks:
    block = f"<|think|>{inner}<|end_think|>"
    at = rest.index(block)
    want += BT.encode(rest[:at]) + [THINK] + BT.encode(inner) + [END_THINK]
    rest = rest[at + len(block):]
  assert tokens == want + BT.encode(rest)
  assert kinds.count(RATIONALE) == sum(len(BT.encode(x)) + 2 for x in blocks)


def test_leading_block_unchanged(sp):
  """A turn starting with one block gives exactly the tokens of the old rendering."""
  contents = ["<|think|>why<|end_think|>rest of it", "<|think|>why<|end_think|>",
              "<|think|><|end_think|>x", "<|think|>a = 1\n<|end_think|>def f(x):\n    return x\n",
              "<|think|>no end", "plain"]
  for tok in (BT, sp):
    for content in contents:
      got = rd.render_turn(Turn("assistant", content), tok)
      assert got == [ASSISTANT] + _old_content_ids(tok, "assistant", content) + [END_TURN]
  assert rd.sample_texts(_turn("<|think|>t<|end_think|>ok")) == ["t", "ok"]


def test_other_roles_keep_markers_as_text():
  for role in ("user", "system", "tool_call", "observation"):
    name = None if role in ("user", "system") else "sh"
    r = rd.render(_turn("<|think|>x<|end_think|>", role, name=name), BT, "all")
    assert THINK not in r.tokens.tolist() and END_THINK not in r.tokens.tolist()
    assert RATIONALE not in r.mask_kind.tolist()
    assert BT.decode(r.tokens).endswith("<|think|>x<|end_think|><|end_turn|></s>")
    assert rd.sample_texts(_turn("<|think|>x<|end_think|>", role)) == ["<|think|>x<|end_think|>"]


SAMPLE = EnvSample("w", "src", (
    Turn("user", "q"),
    Turn("assistant", "a<|think|>r<|end_think|>b"),
    Turn("assistant", "<|think|>s<|end_think|>c", weight=0.0),
    Turn("assistant", "<|think|>f<|end_think|>g"),
    Turn("tool_call", "x", "sh", error=True),
))
# <s> | <|user|> q <|end_turn|> | <|assistant|> a [<|think|> r <|end_think|>] b <|end_turn|> |
# <|assistant|> [<|think|> s <|end_think|>] c <|end_turn|> | the failed step's rationale turn,
# same shape | <|tool_call|> sh \n x <|end_turn|> | </s>
# (part sizes, is rationale, turn index or None)
PARTS = [(1, False, None), (3, False, 0), (2, False, 1), (3, True, 1), (2, False, 1),
         (1, False, 2), (3, True, 2), (2, False, 2), (1, False, 3), (3, True, 3), (2, False, 3),
         (6, False, 4), (1, False, None)]
# the turns' weights under each policy (turn 2 has weight 0; turns 3, 4 are a failed step)
TURN_WEIGHTS = {"all": [1, 1, 0, 1, 1], "assistant_only": [0, 1, 0, 1, 1],
                "error_masked": [0, 1, 0, 0, 0], "all_error_masked": [1, 1, 0, 0, 0]}


@pytest.mark.parametrize("policy", rd.POLICIES)
@pytest.mark.parametrize("rationale_weight", [1.0, 0.5, 0.0])
def test_rationale_weight(policy, rationale_weight):
  r = rd.render(SAMPLE, BT, policy, rationale_weight=rationale_weight)
  eos = 0.0 if policy in ("assistant_only", "error_masked") else 1.0
  want_w, want_kind = [], []
  for size, block, turn in PARTS:
    if turn is None:
      w, kind = (0.0, "special") if not want_w else (eos, "special")
    else:
      w = float(TURN_WEIGHTS[policy][turn]) * (rationale_weight if block else 1.0)
      kind = "rationale" if block else SAMPLE.turns[turn].role
    want_w += [w] * size
    want_kind += [rd.KIND_ID[kind]] * size
  assert r.loss_weights.tolist() == want_w
  assert r.mask_kind.tolist() == want_kind
  # the tokens never depend on the weights
  assert r.tokens.tolist() == rd.render(SAMPLE, BT, "all").tokens.tolist()


def test_rationale_weight_with_source_weight():
  r = rd.render(_turn("a<|think|>r<|end_think|>b"), BT, "assistant_only", source_weight=0.5,
                rationale_weight=0.5)
  assert r.loss_weights.tolist() == [0.0] + [0.5] * 2 + [0.25] * 3 + [0.5] * 2 + [0.0]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", None])
def test_bad_rationale_weight(bad):
  with pytest.raises(ValueError, match="rationale_weight must be a finite number >= 0, got"):
    rd.render(SAMPLE, BT, "all", rationale_weight=bad)


# ------------------------------------------------------------------ config and input


def test_config_default_and_validation():
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  assert config.data.rationale_weight == 1.0
  config_lib.validate_midtrain(config, num_devices=1, num_processes=1)
  config.unlock()
  for bad in (-1, -0.5, float("nan"), float("inf")):  # the config is type safe: floats only
    config.data.rationale_weight = bad
    with pytest.raises(config_lib.ConfigError) as info:
      config_lib.validate_midtrain(config, num_devices=1, num_processes=1)
    assert str(info.value).startswith("config.data.rationale_weight: expected a finite number"), bad
  config.data.rationale_weight = 0
  config_lib.validate_midtrain(config, num_devices=1, num_processes=1)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  return data_fixtures.builtin_tokenizer_512(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("rationale_weight", [1.0, 0.0])
def test_build_input_passes_the_weight(rationale_weight, tokenizer_path, tmp_path):
  """The ADP file's reasoning_content becomes a rationale block; config.data.rationale_weight
  reaches its targets' weights in the training batches."""
  config = config_lib.load_config(f"{MIDTRAIN}:tiny")
  config.unlock()
  config.data.tokenizer.path = tokenizer_path
  config.data.mix = ml_collections.ConfigDict(
      {"agent": input_lib.mix_source("adp", path=f"{ROOT}/tests/data/adp_good.jsonl")})
  config.data.rationale_weight = rationale_weight
  config.lock()
  inp = input_lib.build_input(config, str(tmp_path), vocab_limit=1024, eval_batches=0)
  assert inp.kind_names == rd.MASK_KINDS
  batch = next(inp.iterator)
  rationale = batch["target_kind"] == RATIONALE
  assert rationale.any()
  assert np.all(batch["weights"][rationale] == rationale_weight)
  assert batch["weights"][batch["target_kind"] == ASSISTANT_KIND].max() == 1.0
