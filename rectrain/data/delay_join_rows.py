"""Row chunks and pending-emission queues of :mod:`rectrain.data.delay_join`.

A chunk (``Rows``) is a dict of equal-length column arrays; ``_take``,
``_length`` and ``_concat`` slice, measure and join chunks. Pending emissions
wait in ``_FifoQueue`` (a constant offset: emit times never decrease in push
order) or ``_MergeQueue`` (the variable ``t + delay`` offset: a log-structured
set of sorted runs). :func:`scatter_order` is the permutation of positive
scattering and ``_pad`` pads a batch with rows of weight 0.

Shape legend: N rows of a chunk.
"""

from __future__ import annotations

import collections
from typing import Dict, List

import numpy as np

from rectrain.data import batch as batch_lib

Rows = Dict[str, np.ndarray]
_NAN_PAD = ("time", "true_prob", "delay", "emit_time", "elapsed")


def scatter_order(positive_N: np.ndarray, block_rows: int) -> np.ndarray:
  """The permutation of positive scattering (module docstring).

  ``N`` rows are cut into ``G = ceil(N / block_rows)`` consecutive blocks of
  equal size (up to one row; block ``g`` starts at ``floor(g N / G)``); in a
  block of ``n`` rows with ``p`` positives, positive ``r`` (in order) goes to
  offset ``floor((r + 1/2) n / p)`` and the negatives fill the other offsets
  in order. Every row moves by less than ``block_rows`` positions.

  Returns:
    ``order_N`` int64: output position ``j`` holds input row ``order_N[j]``.
  """
  pos = np.asarray(positive_N, bool)
  n = pos.size
  s = int(block_rows)
  if s < 1:
    raise ValueError(f"scatter_order: block_rows={block_rows} must be >= 1")
  if n == 0:
    return np.zeros((0,), np.int64)
  num_blocks = -(-n // s)
  starts = np.arange(num_blocks, dtype=np.int64) * n // num_blocks
  size_G = np.diff(np.append(starts, n))
  block = np.searchsorted(starts, np.arange(n, dtype=np.int64), side="right") - 1
  pos_idx = np.flatnonzero(pos)
  p_G = np.bincount(block[pos_idx], minlength=starts.size)
  g = block[pos_idx]
  first_G = np.concatenate([[0], np.cumsum(p_G)[:-1]])
  rank = np.arange(pos_idx.size, dtype=np.int64) - first_G[g]
  slot = starts[g] + np.floor((rank + 0.5) * size_G[g] / p_G[g]).astype(np.int64)
  taken = np.zeros(n, bool)
  taken[slot] = True
  order = np.empty(n, np.int64)
  order[slot] = pos_idx
  order[~taken] = np.flatnonzero(~pos)
  return order



def _take(rows: Rows, sel) -> Rows:
  return {k: v[sel] for k, v in rows.items()}


def _length(rows: Rows) -> int:
  return int(rows["emit_time"].shape[0]) if "emit_time" in rows else int(rows["time"].shape[0])


def _concat(parts: List[Rows]) -> Rows:
  if len(parts) == 1:
    return parts[0]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class _FifoQueue:
  """Pending emissions whose emit times never decrease in push order."""

  def __init__(self):
    self.runs: collections.deque = collections.deque()
    self.size = 0

  def push(self, run: Rows) -> None:
    n = _length(run)
    if n:
      self.runs.append(run)
      self.size += n

  def pop_before(self, threshold: float) -> List[Rows]:
    out = []
    while self.runs:
      run = self.runs[0]
      et = run["emit_time"]
      if et[-1] < threshold:
        out.append(self.runs.popleft())
        self.size -= et.shape[0]
        continue
      k = int(np.searchsorted(et, threshold, side="left"))
      if k:
        out.append(_take(run, slice(0, k)))
        self.runs[0] = _take(run, slice(k, None))
        self.size -= k
      break
    return out


class _MergeQueue:
  """Pending emissions in any order: a log-structured set of sorted runs.

  A pushed run is sorted by emit time; while the previous run is at most
  twice as long as the last one they are merged, so there are O(log n) runs.
  """

  def __init__(self):
    self.runs: List[Rows] = []
    self.size = 0

  def push(self, run: Rows) -> None:
    n = _length(run)
    if not n:
      return
    self.runs.append(_take(run, np.argsort(run["emit_time"], kind="stable")))
    self.size += n
    while len(self.runs) >= 2 and _length(self.runs[-2]) <= 2 * _length(self.runs[-1]):
      last = self.runs.pop()
      merged = _concat([self.runs.pop(), last])
      self.runs.append(_take(merged, np.argsort(merged["emit_time"], kind="stable")))

  def pop_before(self, threshold: float) -> List[Rows]:
    out, keep = [], []
    for run in self.runs:
      k = int(np.searchsorted(run["emit_time"], threshold, side="left"))
      if k:
        out.append(_take(run, slice(0, k)))
        self.size -= k
      if k < _length(run):
        keep.append(run if k == 0 else _take(run, slice(k, None)))
    self.runs = keep
    return out


def _pad(batch: batch_lib.Batch, batch_size: int) -> batch_lib.Batch:
  """Pads to ``batch_size`` rows: weight 0, index -1, NaN times/probabilities, 0 elsewhere."""
  n = batch["weight"].shape[0]
  if n == batch_size:
    return batch
  out = {}
  for key, value in batch.items():
    fill = -1 if key == "index" else (
        np.nan if key in _NAN_PAD and np.issubdtype(value.dtype, np.floating) else 0)
    pad = np.full((batch_size - n,) + value.shape[1:], fill, dtype=value.dtype)
    out[key] = np.concatenate([value, pad])
  return out
