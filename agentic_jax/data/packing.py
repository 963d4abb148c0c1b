"""First-fit packing of rendered token pieces into [batch, seq_len] rows (contract 4).

A *piece* is one whole rendered sample, or one chunk of an over-length sample, with its
source index. A piece of L tokens occupies L consecutive positions of one row:

  inputs[i]      = tokens[i]
  targets[i]     = tokens[i + 1]          (i < L - 1);  pad_id at i = L - 1
  weights[i]     = loss_weights[i + 1]    (i < L - 1);  0 at i = L - 1 (no target inside it)
  target_kind[i] = mask_kind[i + 1]       (i < L - 1);  -1 at i = L - 1
  segment_ids[i] = 1 + pieces already in the row;  positions[i] = i;  source_id[i] = source

Padding positions hold inputs = targets = pad_id, weights 0, segment_ids 0, positions 0,
target_kind -1, source_id -1. `loss_weights[j]` is the weight of token j as a prediction target
(contract 3), hence the shift by one.

Algorithm (`BatchBuilder.add`): first fit over the rows of the batch being built, in row
order. A whole piece (`min_split=None`) goes into the lowest row with free space >= L. A
splittable piece (the rest of an over-length sample, `min_split=m`) goes into the lowest row
with free space >= min(L, m) and takes as many of its leading tokens as that row holds; the
caller offers the remaining tokens again as the next piece. If no row qualifies the batch is
complete and nothing is written (the caller keeps the piece for the next batch), so a row is
only left with padding when the next piece cannot go anywhere.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

BATCH_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions", "target_kind",
              "source_id")


class Piece(NamedTuple):
  """Tokens to place contiguously in one row (tokens, loss_weights, mask_kind of equal length)."""
  tokens: np.ndarray        # int32 [L]
  loss_weights: np.ndarray  # float32 [L], weight of token j as a target
  mask_kind: np.ndarray     # int8/int32 [L], MASK_KINDS index of token j
  source_id: int


class BatchBuilder:
  """Accumulates pieces into one batch of `batch_size` rows of `seq_len` positions."""

  def __init__(self, batch_size: int, seq_len: int, pad_id: int = 0):
    if batch_size < 1 or seq_len < 1:
      raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
    shape = (batch_size, seq_len)
    self._arrays = {
        "inputs": np.full(shape, pad_id, np.int32),
        "targets": np.full(shape, pad_id, np.int32),
        "weights": np.zeros(shape, np.float32),
        "segment_ids": np.zeros(shape, np.int32),
        "positions": np.zeros(shape, np.int32),
        "target_kind": np.full(shape, -1, np.int32),
        "source_id": np.full(shape, -1, np.int32),
    }
    self._used = [0] * batch_size
    self._segments = [0] * batch_size

  @property
  def tokens(self) -> int:
    """Non-padding positions filled so far."""
    return sum(self._used)

  @property
  def padding(self) -> int:
    return self.batch_size * self.seq_len - self.tokens

  def add(self, piece: Piece, min_split: Optional[int] = None) -> int:
    """Places `piece` (or its longest prefix that fits, if `min_split`) in the first row with
    room; returns the number of tokens placed, 0 (nothing written) when no row has room."""
    n = len(piece.tokens)
    if min_split is None:
      if not 1 <= n <= self.seq_len:
        raise ValueError(f"piece of {n} tokens cannot be packed into rows of {self.seq_len}")
      need = n
    else:
      if n < 1 or not 1 <= min_split <= self.seq_len:
        raise ValueError(f"cannot split a piece of {n} tokens with min_split={min_split} "
                         f"into rows of {self.seq_len}")
      need = min(n, min_split)
    for row in range(self.batch_size):
      free = self.seq_len - self._used[row]
      if free >= need:
        k = min(n, free)
        self._write(row, piece if k == n else Piece(piece.tokens[:k], piece.loss_weights[:k],
                                                    piece.mask_kind[:k], piece.source_id))
        return k
    return 0

  def _write(self, row: int, piece: Piece) -> None:
    a = self._arrays
    start = self._used[row]
    n = len(piece.tokens)
    end = start + n
    self._segments[row] += 1
    a["inputs"][row, start:end] = piece.tokens
    a["targets"][row, start:end - 1] = piece.tokens[1:]  # last position keeps pad_id
    a["weights"][row, start:end - 1] = piece.loss_weights[1:]
    a["target_kind"][row, start:end - 1] = piece.mask_kind[1:]
    a["segment_ids"][row, start:end] = self._segments[row]
    a["positions"][row, start:end] = np.arange(n, dtype=np.int32)
    a["source_id"][row, start:end] = piece.source_id
    self._used[row] = end

  def finish(self) -> dict[str, np.ndarray]:
    """The batch as a dict of [batch_size, seq_len] arrays (the builder must not be reused)."""
    out, self._arrays = self._arrays, None
    return out
