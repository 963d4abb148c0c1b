"""Trains the code-safe sentencepiece BPE tokenizer and writes its `.model` file.

  python launch/train_tokenizer.py --output=PATH [--vocab_size=1024] [--seed=0] \
      [--input=FILE.jsonl ... [--format=native|adp] [--on_bad_record=raise|skip]]

With --input the text is the rendered text of the samples (turn / span contents and name / path
lines, exactly what `render` tokenizes); without it, the built-in corpus
`agentic_jax.data.builtin.corpus_texts(seed)`.
"""

from absl import app, flags

from agentic_jax import cli
from agentic_jax.data import reader, render, tokenizer
from agentic_jax.data.schema import RecordError

OUTPUT = flags.DEFINE_string("output", None, "Where to write the .model file.", required=True)
VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 1024, "Vocabulary size (> 272).")
SEED = flags.DEFINE_integer("seed", 0, "Seed (built-in corpus and sentencepiece).")
INPUT = flags.DEFINE_multi_string("input", [], "JSONL sample files; default: built-in corpus.")
FORMAT = flags.DEFINE_enum("format", "native", list(reader.FORMATS), "Format of --input files.")
ON_BAD = flags.DEFINE_enum("on_bad_record", "raise", list(reader.ON_BAD_RECORD),
                           "What to do with a malformed record in --input.")


def corpus(inputs: list[str], fmt: str, on_bad: str, seed: int) -> list[str]:
  if not inputs:
    from agentic_jax.data import builtin  # lazy: only this path needs the generators
    return list(builtin.corpus_texts(seed))
  texts: list[str] = []
  for path in inputs:
    samples, report = reader.read_samples(path, fmt, on_bad_record=on_bad)
    print(report.summary())
    for problem in report.problems:
      print(f"  skipped {problem}")
    for s in samples:
      texts.extend(render.sample_texts(s))
  return texts


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    texts = corpus(INPUT.value, FORMAT.value, ON_BAD.value, SEED.value)
    tok = tokenizer.SentencePieceTokenizer.train(texts, VOCAB_SIZE.value, seed=SEED.value)
  except (RecordError, ValueError, OSError) as e:  # bad data / vocab: one clear line, no traceback
    print(f"error: {e}")
    return 1
  tok.save(OUTPUT.value)
  chars = sum(len(t) for t in texts)
  n_tokens = sum(len(tok.encode(t)) for t in texts)
  print(f"wrote {OUTPUT.value}: vocab {tok.vocab_size}, {len(texts)} texts, {chars} chars, "
        f"{chars / max(n_tokens, 1):.2f} chars/token")
  return 0


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
