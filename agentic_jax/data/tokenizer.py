"""Tokenizers: the `Tokenizer` protocol, a code-safe sentencepiece BPE and a byte tokenizer.

Special tokens have fixed ids in both implementations here (the same layout, so tests can rely on
them; code that runs with any tokenizer, a checkpoint's `HFTokenizer` included, asks the tokenizer
in use: `special_id(name)`, `special_ids`, never these constants):

  0 <pad>   1 <s> (bos)   2 </s> (eos)   3 <unk> (never produced: byte fallback covers every byte)
  4..15     the role / marker tokens of `MARKERS`, in that order

`encode` never produces a special id from text: the markers are sentencepiece *control* symbols, so
a literal "<|user|>" inside a tool's output is tokenized as ordinary text and data cannot forge a
turn boundary; `render` inserts the special ids itself. `decode` writes special ids as their names.

Code-safe settings (sentencepiece's defaults destroy code, see machine-notes §1): identity
normalisation, no whitespace collapsing, no dummy prefix, whitespace-only pieces allowed, pieces may
span whitespace (so "\\n    " indentation merges), byte fallback (any unicode), digits split one per
token (arithmetic). Exact round trip `decode(encode(s)) == s` for every str without lone surrogates;
the one character sentencepiece cannot round-trip itself, U+2581 ("▁", its internal space marker), is
encoded through its three byte pieces.
"""

from __future__ import annotations

import io
import time
from typing import Callable, Iterable, Optional, Protocol, Sequence, runtime_checkable

import sentencepiece as spm

from agentic_jax import fs

MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool_call|>", "<|observation|>",
           "<|end_turn|>", "<|context|>", "<|file|>", "<|summary|>", "<|edit|>", "<|think|>",
           "<|end_think|>")
# name -> (id, piece); names accepted by `special_id` are "pad", "bos", "eos", "unk" and the markers.
_BASE = (("pad", "<pad>"), ("bos", "<s>"), ("eos", "</s>"), ("unk", "<unk>"))
SPECIALS: dict[str, tuple[int, str]] = {
    **{name: (i, piece) for i, (name, piece) in enumerate(_BASE)},
    **{m: (len(_BASE) + i, m) for i, m in enumerate(MARKERS)}}
NUM_SPECIAL = len(SPECIALS)  # 16: ids below this are special in every tokenizer here
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
_SP_SPACE = "\u2581"


@runtime_checkable
class Tokenizer(Protocol):
  """What the data pipeline needs from a tokenizer (a converted checkpoint's own can implement it)."""

  @property
  def vocab_size(self) -> int: ...

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; no bos/eos or other special token is added or produced."""

  def decode(self, ids: Sequence[int]) -> str: ...

  def special_id(self, name: str) -> int:
    """Id of "bos", "eos", "pad" or a marker such as "<|user|>"; KeyError for unknown names."""

  @property
  def special_ids(self) -> frozenset[int]:
    """Every special id of this tokenizer (never produced by `encode`): code that must tell a
    role / control token from text asks this, never a fixed id range."""

  @property
  def pad_id(self) -> int: ...

  @property
  def bos_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...


class _SpecialsMixin:
  """special_id / pad_id / bos_id / eos_id from the fixed layout above."""

  def special_id(self, name: str) -> int:
    if name not in SPECIALS:
      raise KeyError(f"unknown special token {name!r}; known: {sorted(SPECIALS)}")
    return SPECIALS[name][0]

  @property
  def special_ids(self) -> frozenset[int]:
    return _FIXED_SPECIAL_IDS

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID


_PIECE_OF_ID = {i: piece for i, piece in SPECIALS.values()}
_FIXED_SPECIAL_IDS = frozenset(_PIECE_OF_ID)


class ByteTokenizer(_SpecialsMixin):
  """UTF-8 bytes + the 16 specials: byte b has id NUM_SPECIAL + b (vocab 272). For tests."""

  @property
  def vocab_size(self) -> int:
    return NUM_SPECIAL + 256

  def encode(self, text: str) -> list[int]:
    return [NUM_SPECIAL + b for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    out, buf = [], bytearray()
    for i in ids:
      i = int(i)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
      if i < NUM_SPECIAL:
        out.append(buf.decode("utf-8", errors="replace"))
        buf = bytearray()
        out.append(_PIECE_OF_ID[i])
      else:
        buf.append(i - NUM_SPECIAL)
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)


class SentencePieceTokenizer(_SpecialsMixin):
  """BPE sentencepiece model with the code-safe settings and fixed special ids."""

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    for name, (i, piece) in SPECIALS.items():  # a model from elsewhere must share the layout
      got = self._sp.id_to_piece(i) if i < self._sp.get_piece_size() else None
      if got != piece:
        raise ValueError(f"sentencepiece model: special {name!r} must be piece {piece!r} at id {i}, "
                         f"found {got!r}; train it with SentencePieceTokenizer.train")
    self._space_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SP_SPACE.encode("utf-8")]
    if any(self._sp.id_to_piece(i) != f"<0x{b:02X}>"
           for i, b in zip(self._space_bytes, _SP_SPACE.encode("utf-8"))):
      raise ValueError("sentencepiece model has no byte-fallback pieces; train it with byte_fallback")

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, *, seed: int = 0,
            split_digits: bool = True, max_sentence_bytes: int = 1 << 16) -> "SentencePieceTokenizer":
    """Trains a BPE model on `texts`; same texts, vocab_size and seed give the same model bytes.

    Texts longer than `max_sentence_bytes` (UTF-8) are cut at line boundaries into several
    sentences (sentencepiece would silently skip them otherwise); a single longer line is cut hard.
    """
    if vocab_size < NUM_SPECIAL + 256 + 1:
      raise ValueError(f"vocab_size {vocab_size} too small: needs > {NUM_SPECIAL + 256} "
                       f"({NUM_SPECIAL} specials + 256 byte pieces)")
    sentences = [s for t in texts for s in _chunks(t, max_sentence_bytes) if s]
    if not sentences:
      raise ValueError("no training text (every text was empty)")
    # sentencepiece's global RNG (used when it samples sentences) is pinned; the input order is
    # the caller's, kept as given, and training runs on one thread, so the model bytes are stable.
    spm.set_random_generator_seed(seed)
    writer = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences), model_writer=writer, model_type="bpe",
          vocab_size=vocab_size, normalization_rule_name="identity", remove_extra_whitespaces=False,
          split_by_whitespace=False, allow_whitespace_only_pieces=True, byte_fallback=True,
          add_dummy_prefix=False, split_digits=split_digits, character_coverage=1.0,
          pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID, pad_piece="<pad>",
          bos_piece="<s>", eos_piece="</s>", unk_piece="<unk>", control_symbols=list(MARKERS),
          max_sentence_length=max_sentence_bytes + 16, input_sentence_size=0,
          shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size too high": the corpus cannot fill the vocab
      raise ValueError(f"sentencepiece training failed for vocab_size={vocab_size} on "
                       f"{len(sentences)} sentences: {e}") from e
    return cls(writer.getvalue())

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    return cls(fs.read_bytes(path))

  def save(self, path: str) -> None:
    """Writes the `.model` file (atomically: a crash never leaves a truncated model)."""
    fs.write_bytes(path, self._proto)

  @property
  def model_proto(self) -> bytes:
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    if _SP_SPACE not in text:
      return self._sp.encode(text)
    ids: list[int] = []
    for k, part in enumerate(text.split(_SP_SPACE)):
      if k:
        ids.extend(self._space_bytes)
      if part:
        ids.extend(self._sp.encode(part))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    out, run = [], []
    n = self.vocab_size
    for i in ids:
      i = int(i)
      if not 0 <= i < n:
        raise ValueError(f"token id {i} outside the vocabulary [0, {n})")
      if i < NUM_SPECIAL:
        out.append(self._sp.decode(run))
        run = []
        out.append(_PIECE_OF_ID[i])
      else:
        run.append(i)
    out.append(self._sp.decode(run))
    return "".join(out)

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


def _chunks(text: str, max_bytes: int) -> list[str]:
  """Splits `text` at line ends into pieces of at most `max_bytes` UTF-8 bytes (lines kept whole
  where they fit, so newline+indentation pairs stay together for merges)."""
  if len(text.encode("utf-8")) <= max_bytes:
    return [text]
  out, cur, size = [], [], 0
  for line in text.splitlines(keepends=True):
    b = len(line.encode("utf-8"))
    if size + b > max_bytes and cur:
      out.append("".join(cur))
      cur, size = [], 0
    while b > max_bytes:  # one overlong line: cut by characters
      cut, acc = 0, 0
      for ch in line:
        cb = len(ch.encode("utf-8"))
        if acc + cb > max_bytes:
          break
        acc += cb
        cut += 1
      out.append(line[:cut])
      line = line[cut:]
      b = len(line.encode("utf-8"))
    if line:
      cur.append(line)
      size += b
  if cur:
    out.append("".join(cur))
  return out


def load_tokenizer(path: str) -> SentencePieceTokenizer:
  """Loads a `.model` file written by `SentencePieceTokenizer.save` / launch/train_tokenizer.py."""
  if not fs.exists(path):
    raise FileNotFoundError(f"tokenizer model {path!r} not found; create it with "
                            f"`python launch/train_tokenizer.py --output={path}`")
  return SentencePieceTokenizer.load(path)


SAVED_NAME = "tokenizer.model"  # where a run that trains its tokenizer keeps it, in its WORKDIR


def find_or_train(path: str, workdir: str, *,
                  train: Optional[Callable[[], "SentencePieceTokenizer"]] = None,
                  missing: str = "") -> tuple["Tokenizer", dict]:
  """The one way every job finds its tokenizer: `path` if given (a `.model` file, or a
  checkpoint's tokenizer.json / its directory), else WORKDIR/tokenizer.model or WORKDIR's
  tokenizer.json (adopted from a converted checkpoint) if it exists, else `train()` saved there (a run resumed later loads that file). Returns
  (tokenizer, report {"path", "trained"[, "vocab_size", "seconds"]}). With `train` None a
  missing file is a FileNotFoundError saying `missing` (e.g. why this process may not train)."""
  if path:
    if path.endswith(HF_TOKENIZER_NAME) or fs.isdir(path):  # a checkpoint's own tokenizer
      directory = path.rsplit("/", 1)[0] if path.endswith(HF_TOKENIZER_NAME) else path
      return load_from_dir(directory), {"path": path, "trained": False}
    return load_tokenizer(path), {"path": path, "trained": False}
  saved = fs.join(workdir, SAVED_NAME)
  if fs.exists(saved):
    return load_tokenizer(saved), {"path": saved, "trained": False}
  if fs.exists(fs.join(workdir, HF_TOKENIZER_NAME)):  # adopted from a converted checkpoint
    return load_from_dir(workdir), {"path": fs.join(workdir, HF_TOKENIZER_NAME), "trained": False}
  if train is None:
    raise FileNotFoundError(f"{saved} does not exist" + (f": {missing}" if missing else ""))
  t0 = time.perf_counter()
  tok = train()
  fs.makedirs(workdir)
  tok.save(saved)
  return tok, {"path": saved, "trained": True, "vocab_size": tok.vocab_size,
               "seconds": round(time.perf_counter() - t0, 3)}


SP_MODEL_NAME = "tokenizer.model"  # our sentencepiece model inside a checkpoint/tokenizer directory
HF_TOKENIZER_NAME = "tokenizer.json"  # a Hugging Face checkpoint's own tokenizer


def load_from_dir(directory: str) -> Tokenizer:
  """The tokenizer kept in `directory` (local or remote): `tokenizer.model` (ours, sentencepiece)
  wins over `tokenizer.json` (a released checkpoint's, through `HFTokenizer`); neither is a
  FileNotFoundError naming both."""
  sp_path = fs.join(directory, SP_MODEL_NAME)
  if fs.exists(sp_path):
    return load_tokenizer(sp_path)
  if fs.exists(fs.join(directory, HF_TOKENIZER_NAME)):
    # Imported here: the `tokenizers` library is an optional extra, needed only for this branch.
    from agentic_jax.data.hf_tokenizer import HFTokenizer
    return HFTokenizer.load(directory)
  raise FileNotFoundError(f"no tokenizer in {directory!r}: neither {SP_MODEL_NAME} nor "
                          f"{HF_TOKENIZER_NAME} exists there")


def check_vocab_fits(tokenizer: Tokenizer, cfg) -> None:
  """ValueError unless every id of `tokenizer` has a row in the embedding of `cfg` (a
  ModelConfig: its `vocab_size`); a checkpoint's embedding may be larger (padded), never smaller."""
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"tokenizer vocabulary ({tokenizer.vocab_size} ids) does not fit the model's "
                     f"embedding (vocab_size {cfg.vocab_size}); grow it with agentic_jax.convert."
                     f"vocab.grow_vocab(cfg, variables, {tokenizer.vocab_size})")
