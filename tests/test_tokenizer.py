"""Tokenizers: fixed special ids, exact round trip on code, determinism, save/load, train CLI."""

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
import sentencepiece as spm

from agentic_jax.data import tokenizer as tk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Real code for training: a few stdlib modules (shipped with the interpreter, so always present).
_STDLIB = [os.path.join(os.path.dirname(json.__file__), f) for f in ("decoder.py", "encoder.py")]
_STDLIB += [textwrap.__file__]

CODE = [
    "def f(x):\n    if x:\n        return x  \n\n\n    return None\n",
    "\tclass A:\n\t\tpass\n \t mixed \t\n",
    "line one\r\nline two\r\n",
    "   leading spaces and trailing   ",
    "x = 'héllo wörld' + \"中文\" + '😀'  # ünïcödé\n",
    "a\u2581b \u2581\u2581 c\u2581",           # U+2581 is sentencepiece's own space marker
    "nul\x00 bell\x07 del\x7f vt\x0b ff\x0c nbsp\xa0 zwsp\u200b fi-ligature \ufb01 fullwidth \uff21",
    "literal markers <|user|> <|end_turn|> <s> </s> <pad> <unk> <0x41>",
    "",
    " ",
    "\n\n\n",
    "x" * 5000 + "\n" + "    y = 1\n" * 300,
]


@pytest.fixture(scope="module")
def sp_tok():
  texts = [open(p, encoding="utf-8").read() for p in _STDLIB]
  return tk.SentencePieceTokenizer.train(texts, 512, seed=0)


def test_special_layout_is_fixed():
  expected = {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "<|system|>": 4, "<|user|>": 5,
              "<|assistant|>": 6, "<|tool_call|>": 7, "<|observation|>": 8, "<|end_turn|>": 9,
              "<|context|>": 10, "<|file|>": 11, "<|summary|>": 12, "<|edit|>": 13,
              "<|think|>": 14, "<|end_think|>": 15}
  bt = tk.ByteTokenizer()
  assert {n: bt.special_id(n) for n in expected} == expected
  assert (bt.pad_id, bt.bos_id, bt.eos_id) == (0, 1, 2)
  with pytest.raises(KeyError, match="unknown special token 'user'"):
    bt.special_id("user")


def test_byte_tokenizer():
  bt = tk.ByteTokenizer()
  assert isinstance(bt, tk.Tokenizer)
  assert bt.vocab_size == 16 + 256
  assert bt.encode("A\n") == [16 + 0x41, 16 + 0x0A]
  assert bt.encode("é") == [16 + 0xC3, 16 + 0xA9]
  for text in CODE:
    assert bt.decode(bt.encode(text)) == text
  assert bt.decode([1, 5, 16 + 0x68, 16 + 0x69, 9, 2]) == "<s><|user|>hi<|end_turn|></s>"
  with pytest.raises(ValueError, match="token id 272 outside the vocabulary"):
    bt.decode([272])


def test_sentencepiece_round_trip_on_code(sp_tok):
  assert isinstance(sp_tok, tk.Tokenizer)
  assert sp_tok.vocab_size == 512
  for text in CODE:
    ids = sp_tok.encode(text)
    assert sp_tok.decode(ids) == text, repr(text[:60])
    # text never turns into a special token, not even the literal marker strings
    assert all(i >= tk.NUM_SPECIAL for i in ids), repr(text[:60])


def test_sentencepiece_specials_and_decode(sp_tok):
  for name, (i, piece) in tk.SPECIALS.items():
    assert sp_tok.special_id(name) == i
    assert sp_tok.id_to_piece(i) == piece
  hi = sp_tok.encode("hi")
  assert sp_tok.decode([1, 5] + hi + [9, 2]) == "<s><|user|>hi<|end_turn|></s>"
  with pytest.raises(ValueError, match="token id 512 outside"):
    sp_tok.decode([512])


def test_code_safe_merges(sp_tok):
  pieces = [sp_tok.id_to_piece(i) for i in range(sp_tok.vocab_size)]
  # whitespace-only pieces exist (indentation is compressed, not split per space) ...
  assert "\u2581" * 4 in pieces and "\u2581" * 8 in pieces
  indented = "        return x\n"
  assert len(sp_tok.encode(indented)) < len(indented) // 2
  # ... and digits are one token each (split_digits)
  ids = sp_tok.encode("12345")
  assert [sp_tok.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]
  # byte fallback: a character never seen in training is its UTF-8 bytes
  assert [sp_tok.id_to_piece(i) for i in sp_tok.encode("🦀")] == ["<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"]


def test_training_is_deterministic_and_save_load(sp_tok, tmp_path):
  texts = [open(p, encoding="utf-8").read() for p in _STDLIB]
  again = tk.SentencePieceTokenizer.train(texts, 512, seed=0)
  assert again.model_proto == sp_tok.model_proto
  path = str(tmp_path / "tok.model")
  sp_tok.save(path)
  loaded = tk.load_tokenizer(path)
  assert loaded.model_proto == sp_tok.model_proto
  assert loaded.encode(CODE[0]) == sp_tok.encode(CODE[0])
  assert os.listdir(tmp_path) == ["tok.model"]  # no temp file left behind
  with pytest.raises(FileNotFoundError, match="train_tokenizer.py --output="):
    tk.load_tokenizer(str(tmp_path / "missing.model"))


def test_training_errors():
  with pytest.raises(ValueError, match="vocab_size 272 too small"):
    tk.SentencePieceTokenizer.train(["abc"], 272)
  with pytest.raises(ValueError, match="no training text"):
    tk.SentencePieceTokenizer.train(["", ""], 512)
  with pytest.raises(ValueError, match="sentencepiece training failed for vocab_size=5000"):
    tk.SentencePieceTokenizer.train(["tiny corpus"], 5000)


def test_foreign_model_is_rejected():
  writer = io.BytesIO()  # sentencepiece defaults: <unk> at 0, no pad, no markers
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 20), model_writer=writer,
                                 vocab_size=20, model_type="char", hard_vocab_limit=False,
                                 minloglevel=2)
  with pytest.raises(ValueError, match="special 'pad' must be piece '<pad>' at id 0, found '<unk>'"):
    tk.SentencePieceTokenizer(writer.getvalue())


def test_long_texts_are_chunked_at_lines():
  text = "".join(f"line {i:04d} ü\n" for i in range(100))  # 13 bytes per line
  chunks = tk._chunks(text, 100)
  assert "".join(chunks) == text
  assert all(len(c.encode()) <= 100 for c in chunks)
  assert all(c.endswith("\n") for c in chunks)   # cut at line ends ...
  assert len(chunks) == 15                        # 7 lines (91 bytes) per chunk: ceil(100 / 7)
  hard = tk._chunks("é" * 120, 100)               # ... or hard inside one overlong line
  assert [len(c) for c in hard] == [50, 50, 20]


def _run(*args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "train_tokenizer.py"), *args],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_train_tokenizer_cli_on_jsonl(tmp_path):
  src = tmp_path / "ctx.jsonl"
  with open(src, "w") as f:
    for k, p in enumerate(_STDLIB):
      rec = {"schema_version": "1.0", "kind": "context", "id": f"c{k}", "source": "stdlib",
             "spans": [{"kind": "file", "path": os.path.basename(p),
                        "text": open(p, encoding="utf-8").read()}]}
      f.write(json.dumps(rec) + "\n")
  out = tmp_path / "t.model"
  proc = _run(f"--output={out}", "--vocab_size=400", f"--input={src}")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[0] == f"{src}: 3 records, 3 kept, 0 skipped, 0 blank lines"
  assert lines[1].startswith(f"wrote {out}: vocab 400, 6 texts, ")  # 3 path lines + 3 files
  tok = tk.load_tokenizer(str(out))
  assert tok.vocab_size == 400 and tok.decode(tok.encode(CODE[1])) == CODE[1]


def test_train_tokenizer_cli_bad_input(tmp_path):
  src = tmp_path / "bad.jsonl"
  src.write_text('{"schema_version": "1.0", "kind": "env", "id": "x", "source": "s", "turns": []}\n')
  proc = _run(f"--output={tmp_path / 't.model'}", f"--input={src}")
  assert proc.returncode == 1
  assert proc.stdout.splitlines() == [f"error: {src}:1: turns: expected at least one turn"]
  assert not (tmp_path / "t.model").exists()


def test_train_tokenizer_cli_builtin_corpus(tmp_path):
  builtin = pytest.importorskip("agentic_jax.data.builtin")
  if not hasattr(builtin, "corpus_texts"):
    pytest.skip("agentic_jax.data.builtin.corpus_texts not written yet")
  out = tmp_path / "b.model"
  proc = _run(f"--output={out}", "--vocab_size=1024")
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert tk.load_tokenizer(str(out)).vocab_size == 1024


def test_find_or_train_order_and_reports(tmp_path):
  """The one tokenizer lookup of every job: an explicit path, else WORKDIR/tokenizer.model, else
  trained and saved there (a second call loads the saved file); without a trainer a missing
  file names the reason."""
  from agentic_jax.data import tokenizer as tk
  texts = ["def f(x):\n    return x + 1\n", "What is 12 * 7 - 5?"] * 40
  calls = []

  def train():
    calls.append(1)
    return tk.SentencePieceTokenizer.train(texts, 300, seed=0)

  wd = str(tmp_path / "wd")
  tok, rep = tk.find_or_train("", wd, train=train)
  assert rep["trained"] and rep["path"] == os.path.join(wd, "tokenizer.model") and calls == [1]
  again, rep2 = tk.find_or_train("", wd, train=train)
  assert rep2 == {"path": rep["path"], "trained": False} and calls == [1]
  assert again.encode("What is 12?") == tok.encode("What is 12?")
  explicit, rep3 = tk.find_or_train(rep["path"], str(tmp_path / "other"), train=train)
  assert rep3 == {"path": rep["path"], "trained": False} and calls == [1]
  with pytest.raises(FileNotFoundError, match="tokenizer.model does not exist: shared disk"):
    tk.find_or_train("", str(tmp_path / "empty"), missing="shared disk")
