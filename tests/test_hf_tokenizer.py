"""HFTokenizer over a checkpoint's tokenizer.json, special ids from the tokenizer in use, and
vocabulary growth (issue 15, item 4). The tokenizers are built here; nothing is downloaded."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

from agentic_jax import models  # noqa: E402
from agentic_jax.convert.vocab import grow_vocab  # noqa: E402
from agentic_jax.data import render as render_lib  # noqa: E402
from agentic_jax.data.hf_tokenizer import AGENTIC_NAME, HFTokenizer  # noqa: E402
from agentic_jax.data.schema import Turn  # noqa: E402
from agentic_jax.data.tokenizer import (MARKERS, ByteTokenizer,  # noqa: E402
                                        SentencePieceTokenizer, Tokenizer, check_vocab_fits,
                                        load_from_dir)
from agentic_jax.rl import agentflow_modules, ra3_estep  # noqa: E402
from agentic_jax.rl import rollout as R  # noqa: E402
from agentic_jax.rl.sampler import Generation, Sampler, policy_turn  # noqa: E402

CORPUS = ["def add(a, b):\n    return a + b\n", "hello world, the calculator says 42",
          "Sub-goal: add the numbers\nTool: calc", "héllo wörld ▁ tabs\tand\nnewlines"]
CHECKPOINT_SPECIALS = ["<|endoftext|>", "<|user|>", "<|im_start|>"]  # ids 0, 1, 2


def _byte_bpe(vocab_size: int = 320):
  """A GPT-2 style byte-level BPE trained on CORPUS, with the specials above."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=CHECKPOINT_SPECIALS, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS * 10, trainer)
  return tok


@pytest.fixture
def ckpt_dir(tmp_path):
  d = tmp_path / "ckpt"
  d.mkdir()
  _byte_bpe().save(str(d / "tokenizer.json"))
  # as transformers writes it: bos a plain string, eos an AddedToken dict, no pad
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True},
       "pad_token": None}))
  return str(d)


def test_markers_added_consecutively_and_present_ones_kept(ckpt_dir):
  base = _byte_bpe()
  n0 = base.get_vocab_size(with_added_tokens=True)
  tok = load_from_dir(ckpt_dir)
  assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
  # <|user|> is the checkpoint's own token: it keeps its id; bos/eos come from the config
  assert tok.special_id("<|user|>") == base.token_to_id("<|user|>") == 1
  assert tok.bos_id == tok.eos_id == 0
  # pad ("<pad>") and every marker but <|user|> were missing: added, in order, consecutive ids
  expected = ["<pad>"] + [m for m in MARKERS if m != "<|user|>"]
  assert tok.added_tokens == expected
  assert [tok.hf_tokenizer.token_to_id(t) for t in expected] == list(range(n0, n0 + len(expected)))
  assert tok.vocab_size == n0 + len(expected)
  assert tok.pad_id == n0 and tok.special_id("<|system|>") == n0 + 1
  with pytest.raises(KeyError):
    tok.special_id("unk")  # the checkpoint has none and it is never added
  # special = our names' ids plus the checkpoint's own specials (<|im_start|>)
  assert tok.special_ids == frozenset({0, 1, 2} | set(range(n0, n0 + len(expected))))


def test_marker_map_uses_existing_tokens(ckpt_dir):
  tok = HFTokenizer.load(ckpt_dir,
                         marker_map={"<|system|>": "<|im_start|>", "pad": "<|endoftext|>"})
  assert tok.special_id("<|system|>") == 2 and tok.pad_id == 0
  assert "<|system|>" not in tok.added_tokens and "<pad>" not in tok.added_tokens
  with pytest.raises(ValueError, match="not a token of the checkpoint's vocabulary"):
    HFTokenizer.load(ckpt_dir, marker_map={"<|system|>": "<|nope|>"})
  with pytest.raises(ValueError, match="unknown special"):
    HFTokenizer.load(ckpt_dir, marker_map={"<|nope|>": "<|im_start|>"})


def test_encode_never_yields_specials_and_round_trips(ckpt_dir):
  tok = load_from_dir(ckpt_dir)
  text = "a <|user|> b <|end_turn|><|endoftext|> <|im_start|>héllo\n    x ▁ <pad>"
  ids = tok.encode(text)
  # like SentencePieceTokenizer: marker text inside content is ordinary text, no bos/eos added
  assert not tok.special_ids.intersection(ids)
  assert ids[0] != tok.bos_id and ids[-1] != tok.eos_id
  assert tok.decode(ids) == text
  for s in CORPUS + ["", " ", "\n\n", "<|think|>x<|end_think|>"]:
    assert tok.decode(tok.encode(s)) == s
  # special ids decode to their token text
  user, end = tok.special_id("<|user|>"), tok.special_id("<|end_turn|>")
  assert (tok.decode([user] + tok.encode("hi") + [end, tok.eos_id])
          == "<|user|>hi<|end_turn|><|endoftext|>")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([tok.vocab_size])


def test_a_special_that_is_an_ordinary_word_is_spelled_out(tmp_path):
  """A WordLevel vocabulary where "</s>" is a plain word: text "</s>" must not yield eos."""
  vocab = {"[UNK]": 0, "</s>": 1, "<": 2, "/": 3, "s": 4, ">": 5, "hi": 6}
  wl = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  wl.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok = HFTokenizer(wl)
  assert tok.eos_id == 1
  assert tok.encode("hi </s>") == [6, 2, 3, 4, 5]


def test_save_then_load_from_dir_gives_the_same_ids(ckpt_dir, tmp_path):
  tok = HFTokenizer.load(ckpt_dir, marker_map={"<|system|>": "<|im_start|>"})
  out = str(tmp_path / "saved")
  tok.save(out)
  again = load_from_dir(out)  # no tokenizer_config.json there: our name map carries bos/eos
  assert isinstance(again, HFTokenizer)
  names = ["pad", "bos", "eos"] + list(MARKERS)
  assert [again.special_id(n) for n in names] == [tok.special_id(n) for n in names]
  assert again.vocab_size == tok.vocab_size and again.added_tokens == tok.added_tokens
  assert again.special_ids == tok.special_ids
  text = "x <|user|> y"
  assert again.encode(text) == tok.encode(text)
  assert json.loads((tmp_path / "saved" / AGENTIC_NAME).read_text())["specials"]["<|system|>"] == \
      "<|im_start|>"


def test_load_from_dir_prefers_sentencepiece_and_names_both_files(tmp_path, ckpt_dir,
                                                                   tokenizer_path):
  with pytest.raises(FileNotFoundError, match="tokenizer.model.*tokenizer.json"):
    load_from_dir(str(tmp_path / "empty"))
  shutil.copy(tokenizer_path, os.path.join(ckpt_dir, "tokenizer.model"))  # beside tokenizer.json
  assert isinstance(load_from_dir(ckpt_dir), SentencePieceTokenizer)


def test_render_and_rollout_use_the_tokenizers_ids(ckpt_dir):
  tok = load_from_dir(ckpt_dir)
  ids = render_lib.render_turn(Turn("user", "hi"), tok)
  assert ids[0] == tok.special_id("<|user|>") and ids[-1] == tok.special_id("<|end_turn|>")
  # the sampler's stop rule is built from the tokenizer: the HF ids, not the fixed layout
  rule = policy_turn(tok)
  end_turn, call = tok.special_id("<|end_turn|>"), tok.special_id("<|tool_call|>")
  assert (rule.eos_id, rule.stop_ids, rule.arm_ids) == (0, (end_turn,), (call,))
  assert end_turn != ByteTokenizer().special_id("<|end_turn|>")
  cfg = models.presets.get("youtu_llm_tiny")
  assert Sampler(cfg, max_new_tokens=4, stop=rule).stop.stop_ids == (end_turn,)
  # a sampler left on the default (fixed-layout) rule is refused for this tokenizer
  with pytest.raises(ValueError, match="stop rule"):
    R.rollout(Sampler(cfg, max_new_tokens=4), None, lambda: None, [], tok, group_size=1, seed=0,
              max_turns=1, max_context_tokens=8)
  # the tool-call action is found by the tokenizer's <|tool_call|>
  resp = np.asarray([call] + tok.encode("calc\ncalc(1 + 2)") + [end_turn], np.int32)
  assert R.tool_call_action(resp, tok) == "calc(1 + 2)"
  # AgentFlow: a module's text drops every special of this tokenizer, and stops at its end_turn
  toks = [tok.special_id("<|assistant|>"), 2] + tok.encode("Tool: calc") + [end_turn, 5]
  assert agentflow_modules.turn_text(toks, tok) == "Tool: calc"
  gen = Generation(np.asarray(toks, np.int32), np.zeros(len(toks), np.float32), False)
  assert agentflow_modules.first_turn(gen, tok).tokens.tolist() == toks[:-1]
  # RA3: a rationale may contain no special of this tokenizer but <|end_think|>
  think, end, banned = ra3_estep.special_ids(tok)
  assert end not in banned and set(banned) == set(tok.special_ids) - {end} and think in banned


def test_fixed_layout_tokenizers_keep_their_special_ids():
  bt = ByteTokenizer()
  assert bt.special_ids == frozenset(range(16))
  rule = policy_turn(bt)
  assert (rule.eos_id, rule.stop_ids, rule.arm_ids) == (2, (9,), (7,))  # = StopRule()


@pytest.mark.parametrize("scan,tied", [(False, False), (True, False), (False, True)])
def test_grow_vocab(scan, tied):
  cfg = models.presets.get("youtu_llm_tiny", scan_layers=scan, tie_word_embeddings=tied)
  variables = models.init_variables(cfg, jax.random.key(0))
  v0 = cfg.vocab_size
  new_cfg, grown = grow_vocab(cfg, variables, v0 + 5, multiple_of=8)
  assert new_cfg.vocab_size == v0 + 8  # rounded up to a multiple of 8
  emb0 = variables["params"]["embed_tokens"]["embedding"]
  emb = grown["params"]["embed_tokens"]["embedding"]
  assert emb.shape == (v0 + 8, emb0.shape[1]) and emb.dtype == emb0.dtype
  np.testing.assert_array_equal(emb[:v0], emb0)
  np.testing.assert_allclose(emb[v0:], np.broadcast_to(emb0.mean(0), (8, emb0.shape[1])), rtol=1e-6)
  if tied:
    assert "lm_head" not in grown["params"]
  else:
    k0, k = variables["params"]["lm_head"]["kernel"], grown["params"]["lm_head"]["kernel"]
    assert k.shape == (k0.shape[0], v0 + 8)
    np.testing.assert_array_equal(k[:, :v0], k0)
    np.testing.assert_allclose(
        k[:, v0:], np.broadcast_to(k0.mean(1, keepdims=True), (k0.shape[0], 8)), rtol=1e-6)
  # everything else is untouched, and the grown model still applies, new ids included
  def rest(v):
    return {k: x for k, x in v["params"].items() if k not in ("embed_tokens", "lm_head")}
  jax.tree.map(np.testing.assert_array_equal, rest(variables), rest(grown))
  tokens = jnp.asarray([[1, 5, v0, v0 + 7]], jnp.int32)
  logits = models.build(new_cfg).apply(grown, tokens)
  assert logits.shape == (1, 4, v0 + 8) and bool(jnp.isfinite(logits).all())
  if not tied:  # mean head columns: each new token's logit is the mean of the old ones'
    old = models.build(cfg).apply(variables, tokens[:, :2])
    np.testing.assert_allclose(logits[0, :2, v0], old[0].mean(-1), rtol=1e-4, atol=1e-5)
  # already large enough: unchanged
  assert grow_vocab(cfg, variables, v0 - 1) == (cfg, variables)


def test_grow_vocab_noise_and_errors():
  cfg = models.presets.get("youtu_llm_tiny")
  variables = models.init_variables(cfg, jax.random.key(0))
  _, a = grow_vocab(cfg, variables, cfg.vocab_size + 2, noise_scale=0.01, seed=1)
  _, b = grow_vocab(cfg, variables, cfg.vocab_size + 2, noise_scale=0.01, seed=1)
  new = a["params"]["embed_tokens"]["embedding"][cfg.vocab_size:]
  np.testing.assert_array_equal(new, b["params"]["embed_tokens"]["embedding"][cfg.vocab_size:])
  assert not np.allclose(new[0], new[1])  # noise makes the new rows distinct
  with pytest.raises(ValueError, match="rows but cfg.vocab_size"):
    grow_vocab(cfg.replace(vocab_size=cfg.vocab_size + 1), variables, 1000)


def test_check_vocab_fits(ckpt_dir):
  tok = load_from_dir(ckpt_dir)
  cfg = models.presets.get("youtu_llm_tiny", vocab_size=256)
  assert tok.vocab_size > 256
  with pytest.raises(ValueError) as err:
    check_vocab_fits(tok, cfg)
  msg = str(err.value)
  assert "\n" not in msg and str(tok.vocab_size) in msg and "256" in msg
  variables = models.init_variables(cfg, jax.random.key(0))
  grown_cfg, _ = grow_vocab(cfg, variables, tok.vocab_size, multiple_of=64)
  check_vocab_fits(tok, grown_cfg)  # fits now
  check_vocab_fits(ByteTokenizer(), cfg.replace(vocab_size=272))
