"""Helpers shared by the data pipeline test modules (test_pipeline, test_data_groups): synthetic
samples whose every token encodes its source, sample index and position."""

import numpy as np

from agentic_jax.data.pipeline import Source
from agentic_jax.data.render import Rendered

KEYS = ("inputs", "targets", "weights", "segment_ids", "positions", "target_kind", "source_id")
SRC = 10**6  # token = 1 + src * SRC + i * 1000 + j: source, sample index and position recoverable


def sample(src: int, i: int, length: int) -> Rendered:
  j = np.arange(length)
  return Rendered(tokens=(1 + src * SRC + i * 1000 + j).astype(np.int32),
                  loss_weights=((j % 3) / 2).astype(np.float32),  # 0, 0.5, 1, 0, ...
                  mask_kind=(j % 10).astype(np.int8), source=f"s{src}")


def make_source(name: str, src: int, lengths) -> Source:
  return Source(name, 1.0, [sample(src, i, n) for i, n in enumerate(lengths)])


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(KEYS) == set(y)
    for k in KEYS:
      assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def builtin_tokenizer_512(directory) -> str:
  """A 512-piece tokenizer trained on 6 samples of each built-in source (seed 0), saved under
  `directory`; the held-out and data-mix tests pin batches produced with exactly this one."""
  from agentic_jax.data import builtin  # pylint: disable=import-outside-toplevel
  from agentic_jax.data import tokenizer as tok_lib  # pylint: disable=import-outside-toplevel
  texts = [builtin.sample_text(s) for name in builtin.SOURCES
           for s in builtin.generate(name, seed=0, num_samples=6)]
  path = str(directory / "tok.model")
  tok_lib.SentencePieceTokenizer.train(texts, 512, seed=0).save(path)
  return path
