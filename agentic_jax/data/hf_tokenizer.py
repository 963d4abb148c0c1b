"""`HFTokenizer`: the `Tokenizer` protocol over a released checkpoint's own `tokenizer.json`.

    tok = HFTokenizer.load("/ckpt")                       # or data.tokenizer.load_from_dir("/ckpt")
    tok = HFTokenizer.load("/ckpt", marker_map={"eos": "<|im_end|>", "<|user|>": "<|im_start|>"})
    tok.added_tokens        # the specials the checkpoint lacked, appended to its vocabulary
    tok.save("/run/tokenizer")                            # load_from_dir gives the same ids back

Our training format needs an id for every name of `data.tokenizer.SPECIALS` but "unk" (pad, bos,
eos and the role / tool markers). Each name resolves to a token text of the checkpoint, in order:
the caller's `marker_map`, then (pad/bos/eos/unk) the checkpoint's `tokenizer_config.json` /
`special_tokens_map.json`, then our own text (e.g. "<|user|>", "</s>"). A text already in the
vocabulary keeps its id; a missing one is ADDED as a new special token (unk excepted: it is never
produced, so a checkpoint without one has no "unk"), so `vocab_size` grows and the model's
embedding must grow with it (`convert.vocab.grow_vocab`).

Like `SentencePieceTokenizer`, `encode` never produces a special id from text: a literal
"<|user|>" (or the checkpoint's "<|im_start|>") inside a tool's output is tokenized as ordinary
text, so data cannot forge a turn boundary; `render` inserts the special ids itself. "Special" is
every id of the names above plus every token the checkpoint itself marks special (`special_ids`).
`decode` writes special ids as their token text and everything else through the checkpoint's
decoder.

The `tokenizers` library is the optional extra `hf`, imported only when an HFTokenizer is built.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from agentic_jax import fs
from agentic_jax.data.tokenizer import HF_TOKENIZER_NAME, SPECIALS

AGENTIC_NAME = "agentic_jax_tokenizer.json"  # our name -> token text map, written by `save`
_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # first one naming it wins
_BASE_NAMES = ("pad", "bos", "eos", "unk")
# The text a name gets when neither the caller nor the checkpoint's config names one.
_DEFAULT_TEXT = {name: piece for name, (_, piece) in SPECIALS.items()}


def _tokenizers_module():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("HFTokenizer needs the `tokenizers` library: "
                      "pip install 'agentic_jax[hf]'") from e
  return tokenizers


def _token_text(value: Any) -> Optional[str]:
  """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None  # null (e.g. Qwen's bos_token) or a shape we do not know: not configured


def read_config_specials(directory: str) -> dict[str, str]:
  """{"bos": text, ...} for the pad/bos/eos/unk tokens the checkpoint's config files name."""
  out: dict[str, str] = {}
  for fname in _CONFIG_FILES:
    path = fs.join(directory, fname)
    if not fs.exists(path):
      continue
    cfg = json.loads(fs.read_text(path))
    for name in _BASE_NAMES:
      text = _token_text(cfg.get(f"{name}_token"))
      if text is not None and name not in out:
        out[name] = text
  return out


class HFTokenizer:
  """A `tokenizers.Tokenizer` with our special names resolved (module docstring).

  `marker_map` maps our names (a marker such as "<|user|>", or "pad"/"bos"/"eos"/"unk") to the
  text of a token that must already be in the checkpoint's vocabulary; `config_specials` are the
  checkpoint config's pad/bos/eos/unk texts (`read_config_specials`), used where `marker_map`
  names nothing. `tokenizer` is modified in place (tokens added, special tokens in text split
  as text); `hf_tokenizer` returns it.
  """

  def __init__(self, tokenizer: Any, *, marker_map: Optional[Mapping[str, str]] = None,
               config_specials: Optional[Mapping[str, str]] = None,
               added_tokens: Sequence[str] = ()):
    tokenizers = _tokenizers_module()
    if not isinstance(tokenizer, tokenizers.Tokenizer):
      raise TypeError(f"HFTokenizer: expected a tokenizers.Tokenizer, got "
                      f"{type(tokenizer).__name__}")
    marker_map = dict(marker_map or {})
    unknown = sorted(set(marker_map) - set(SPECIALS))
    if unknown:
      raise ValueError(f"HFTokenizer: marker_map names unknown special(s) {unknown}; known: "
                       f"{sorted(SPECIALS)}")
    for name, text in marker_map.items():
      if tokenizer.token_to_id(text) is None:
        raise ValueError(f"HFTokenizer: marker_map maps {name!r} to {text!r}, which is not a token "
                         f"of the checkpoint's vocabulary")
    self._tok = tokenizer
    # Special tokens in text are split like any other text (our rule: data never yields a special
    # id); the post-check in `encode` covers specials that the model itself could still produce.
    self._tok.encode_special_tokens = True
    texts: dict[str, str] = {}
    for name in SPECIALS:
      text = marker_map.get(name) or (config_specials or {}).get(name) or _DEFAULT_TEXT[name]
      if name == "unk" and tokenizer.token_to_id(text) is None:
        continue  # never produced by our code: not worth a new embedding row
      texts[name] = text
    missing = [t for t in dict.fromkeys(texts.values()) if tokenizer.token_to_id(t) is None]
    if missing:
      # one call, in SPECIALS order, so the new tokens get consecutive ids after the vocabulary
      tokenizer.add_special_tokens(missing)
    self._texts = texts
    self._ids = {name: int(tokenizer.token_to_id(text)) for name, text in texts.items()}
    self.added_tokens: list[str] = list(added_tokens) + missing
    self._vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    checkpoint_specials = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    self._special_ids = frozenset(set(self._ids.values()) | checkpoint_specials)
    # A special id's text, for decode and for re-encoding it when the model produces it from text.
    self._special_text = {i: tokenizer.decode([i], skip_special_tokens=False)
                          for i in self._special_ids}

  @classmethod
  def load(cls, directory: str, *, marker_map: Optional[Mapping[str, str]] = None
           ) -> "HFTokenizer":
    """DIRECTORY/tokenizer.json (local or remote) with its config files, or a directory written
    by `save` (its saved name map, then `marker_map` on top)."""
    tokenizers = _tokenizers_module()
    path = fs.join(directory, HF_TOKENIZER_NAME)
    if not fs.exists(path):
      raise FileNotFoundError(f"{path} not found")
    tok = tokenizers.Tokenizer.from_str(fs.read_text(path))
    saved_path, saved, added = fs.join(directory, AGENTIC_NAME), {}, []
    if fs.exists(saved_path):
      meta = json.loads(fs.read_text(saved_path))
      saved, added = dict(meta["specials"]), list(meta.get("added_tokens", []))
    return cls(tok, marker_map={**saved, **(marker_map or {})},
               config_specials=read_config_specials(directory), added_tokens=added)

  def save(self, directory: str) -> None:
    """Writes DIRECTORY/tokenizer.json (with the added tokens) and our name map, so that
    `load` / `load_from_dir` of DIRECTORY gives the same ids."""
    fs.makedirs(directory)
    fs.write_text(fs.join(directory, HF_TOKENIZER_NAME), self._tok.to_str())
    meta = {"specials": self._texts, "added_tokens": self.added_tokens}
    fs.write_text(fs.join(directory, AGENTIC_NAME), json.dumps(meta, indent=1, sort_keys=True))

  @property
  def hf_tokenizer(self) -> Any:
    """The underlying `tokenizers.Tokenizer` (added tokens included)."""
    return self._tok

  @property
  def vocab_size(self) -> int:
    """Largest id + 1 (the embedding rows the ids need), the added tokens included."""
    return self._vocab_size

  @property
  def special_ids(self) -> frozenset[int]:
    return self._special_ids

  def special_id(self, name: str) -> int:
    if name not in self._ids:
      raise KeyError(f"unknown special token {name!r}; known: {sorted(self._ids)}")
    return self._ids[name]

  def special_texts(self) -> dict[str, str]:
    """Our name -> the token text it resolved to in this vocabulary."""
    return dict(self._texts)

  @property
  def pad_id(self) -> int:
    return self._ids["pad"]

  @property
  def bos_id(self) -> int:
    return self._ids["bos"]

  @property
  def eos_id(self) -> int:
    return self._ids["eos"]

  def _encode_raw(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; never bos/eos and never a special id (module docstring)."""
    ids = self._encode_raw(text)
    if not self._special_ids.intersection(ids):
      return ids
    # The model itself produced a special id (its text is an ordinary vocabulary entry, e.g. a
    # WordLevel word or a BPE merge): spell that token's text one character at a time instead.
    out: list[int] = []
    for i in ids:
      if i not in self._special_ids:
        out.append(i)
        continue
      for ch in self._special_text[i]:
        part = self._encode_raw(ch)
        if self._special_ids.intersection(part):
          raise ValueError(f"HFTokenizer.encode: the character {ch!r} only encodes to a special "
                           f"token in this vocabulary")
        out.extend(part)
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`: special ids as their token text, runs of other ids through the
    checkpoint's decoder."""
    out, run = [], []
    for i in ids:
      i = int(i)
      if not 0 <= i < self._vocab_size:
        raise ValueError(f"token id {i} outside the vocabulary [0, {self._vocab_size})")
      if i in self._special_ids:
        out.append(self._tok.decode(run, skip_special_tokens=False) if run else "")
        run = []
        out.append(self._special_text[i])
      else:
        run.append(i)
    out.append(self._tok.decode(run, skip_special_tokens=False) if run else "")
    return "".join(out)
