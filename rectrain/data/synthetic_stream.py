"""The synthetic stream's batches and the Bayes ceiling of its true model.

:class:`SyntheticStream` turns the rows of the generating model
(:mod:`rectrain.data.synthetic_world`) into batches following
:mod:`rectrain.data.batch`; :func:`bayes_ceiling` scores the true
probabilities on the stream's rows (log loss, NE, AUC).

Shape legend: n = rows of a block, B = batch size, F = categorical fields of the
layout (26, or 39 with categorical integers), P = cross pairs.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Mapping, Sequence

import numpy as np

from rectrain.data import batch as batch_lib
from rectrain.data import hashing
from rectrain.data.synthetic_config import NUM_CAT, NUM_INT, resolve_config
from rectrain.data.synthetic_world import _ROWS_TAG, _World


def _slice(d: Mapping[str, np.ndarray], sl) -> Dict[str, np.ndarray]:
  return {k: v[sl] for k, v in d.items()}


class SyntheticStream:
  """Batches of the synthetic stream, following :mod:`rectrain.data.batch`.

  Usage: ``SyntheticStream(batch_size=4096, cat_buckets=1 << 18, seed=0,
  num_rows_total=10_000_000, rows_per_day=1_000_000)``; keyword arguments that
  are not stream arguments override keys of ``config`` (``drift=dict(strength=0)``
  updates a nested group).

  With ``raw_ids=True`` every batch also carries the unhashed ids (for
  :mod:`rectrain.data.idmap`): ``raw_ids`` (B, F) uint64, the raw value of
  every field (the uint32 Criteo value of C1..C26, the
  :func:`hashing.log_square_token` of I1..I13 in categorical mode; 0 where
  missing) and ``raw_missing`` (B, F) bool.

  Attributes: ``batch_size``, ``layout`` (:class:`hashing.FieldLayout`),
  ``num_rows`` (rows of the fused table), ``num_dense``, ``config``.
  """

  def __init__(self, config: Mapping[str, Any] | None = None, *, batch_size: int = 4096,
               cat_buckets: int | Sequence[int] = 1 << 18, int_mode: str = "log1p",
               int_buckets: int = 512, num_rows_total: int | None = None,
               seed: int = 0, start_row: int = 0, raw_ids: bool = False, **overrides):
    self.config = resolve_config(config, **overrides)
    if int(batch_size) < 1:
      raise ValueError(f"SyntheticStream: batch_size must be >= 1, got {batch_size}")
    if int(seed) < 0 or int(start_row) < 0:
      raise ValueError(f"SyntheticStream: seed and start_row must be >= 0, got {seed}, {start_row}")
    if num_rows_total is not None and int(num_rows_total) < 0:
      raise ValueError(f"SyntheticStream: num_rows_total must be >= 0, got {num_rows_total}")
    self.batch_size = int(batch_size)
    self.layout = hashing.make_layout(cat_buckets, int_mode, int_buckets)
    self.int_mode = int_mode
    self.num_rows = self.layout.num_rows
    self.num_dense = NUM_INT if int_mode == "log1p" else 0
    self.num_rows_total = None if num_rows_total is None else int(num_rows_total)
    self.seed = int(seed)
    self.start_row = int(start_row)
    self.raw_ids = bool(raw_ids)
    self._bias = None
    self._rows_read = 0

  # ---- raw rows ---------------------------------------------------------------
  def world(self) -> _World:
    """A fresh generating model at time 0 (its bias is computed once and cached)."""
    offsets = self.layout.offsets
    w = _World(self.config, self.seed, np.asarray(self.layout.buckets[:NUM_CAT]),
               offsets, self._bias)
    self._bias = w.bias
    return w

  @property
  def bias(self) -> float:
    """The calibrated intercept b(0) of the generating logit."""
    if self._bias is None:
      self.world()
    return self._bias

  def raw_blocks(self, want_values: bool = False, want_cat: bool = True,
                 components: bool = False) -> Iterator[Dict[str, np.ndarray]]:
    """Yields the rows as blocks of (at most ``block_rows``) rows, in time order.

    Keys: ``index`` (n,) int64, ``time`` (n,) float64, ``label`` (n,) bool,
    ``true_prob`` (n,) float32, ``delay`` (n,) float32, ``rank`` (n, 26) int32
    (-1 = missing), ``cat_missing`` (n, 26) bool, ``ints`` (n, 13) int64,
    ``int_missing`` (n, 13) bool, ``logit_nobias`` (n,); with ``want_cat``
    ``cat`` (n, 26) int32 global row ids of C1..C26; with ``want_values``
    ``values`` (n, 26) uint32 raw values; with ``components`` the logit terms
    ``logit_main`` (n, 26), ``logit_cross`` (n, P), ``logit_int`` (n, 13),
    ``logit_time`` (n,) (``logit = bias + their sum``).
    """
    world = self.world()
    cfg = self.config
    block_rows = int(cfg.block_rows)
    day_s = 86400.0 / float(cfg.rows_per_day)
    start = self.start_row
    stop = None if self.num_rows_total is None else start + self.num_rows_total
    block = start // block_rows
    while stop is None or block * block_rows < stop:
      b0 = block * block_rows
      lo, hi = max(start, b0), b0 + block_rows if stop is None else min(stop, b0 + block_rows)
      draws = world.draw(np.random.default_rng([self.seed, _ROWS_TAG, block]), block_rows)
      draws = _slice(draws, slice(lo - b0, hi - b0))
      index = np.arange(lo, hi, dtype=np.int64)
      time = (index + draws["u_time"]) * day_s
      epoch = np.floor(time / world.epoch_s).astype(np.int64)
      cuts = np.flatnonzero(np.diff(epoch)) + 1
      for s0, s1 in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [hi - lo]])):
        world.advance(int(epoch[s0]))
        seg = _slice(draws, slice(s0, s1))
        rows = world.evaluate(seg, time[s0:s1], int(epoch[s0]), want_values=want_values,
                              want_cat=want_cat, components=components)
        rows = world.finish(seg, rows)
        rows.update(index=index[s0:s1], time=time[s0:s1])
        yield rows
      block += 1

  # ---- batches --------------------------------------------------------------------
  def _to_batch(self, rows) -> batch_lib.Batch:
    n = rows["index"].shape[0]
    tokens_IxN = None
    if self.int_mode == "log1p":
      cat = rows["cat"]
      dense = hashing.log1p_transform(rows["ints"], rows["int_missing"])
    else:
      fields = range(NUM_CAT, NUM_CAT + NUM_INT)
      tokens_IxN = hashing.log_square_token(rows["ints"].T).view(np.uint64)
      bucket_IxN = hashing.hash_fields_to_buckets(
          tokens_IxN, fields, self.layout.buckets[NUM_CAT:])
      bucket_IxN[rows["int_missing"].T] = 0
      bucket_IxN += self.layout.offsets[NUM_CAT:-1, None]
      cat = np.concatenate([rows["cat"], bucket_IxN.T.astype(np.int32)], axis=1)
      dense = np.zeros((n, 0), dtype=np.float32)
    out = {
        "label": rows["label"].astype(np.float32),
        "weight": np.ones((n,), dtype=np.float32),
        "cat": cat.astype(np.int32, copy=False),
        "dense": dense,
        "index": rows["index"],
        "time": rows["time"],
        "true_prob": rows["true_prob"],
        "delay": rows["delay"],
    }
    if self.raw_ids:
      raw = rows["values"].astype(np.uint64)
      raw[rows["cat_missing"]] = 0
      missing = rows["cat_missing"]
      if tokens_IxN is not None:
        tok = tokens_IxN.T.copy()
        tok[rows["int_missing"]] = 0
        raw = np.concatenate([raw, tok], axis=1)
        missing = np.concatenate([missing, rows["int_missing"]], axis=1)
      out["raw_ids"] = raw
      out["raw_missing"] = missing
    return out

  def __iter__(self) -> Iterator[batch_lib.Batch]:
    self._rows_read = 0
    pending, have = [], 0       # chunks not yet yielded, and their row count
    for rows in self.raw_blocks(want_values=self.raw_ids):
      chunk = self._to_batch(rows)
      n = chunk["index"].shape[0]
      start = 0
      if pending and have + n >= self.batch_size:   # complete the straddling batch
        start = self.batch_size - have
        pending.append(_slice(chunk, slice(0, start)))
        yield self._emit({k: np.concatenate([p[k] for p in pending]) for k in chunk})
        pending, have = [], 0
      while n - start >= self.batch_size:          # whole batches: views, no copy
        yield self._emit(_slice(chunk, slice(start, start + self.batch_size)))
        start += self.batch_size
      if start < n:
        pending.append(_slice(chunk, slice(start, n)))
        have += n - start
    if pending:
      merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
      yield self._emit(batch_lib.pad_batch(merged, self.batch_size), rows=have)

  def _emit(self, batch, rows=None):
    self._rows_read += self.batch_size if rows is None else rows
    return batch

  def report(self) -> Dict[str, Any]:
    """Rows yielded by the latest pass (nothing is ever skipped)."""
    return {"rows_read": self._rows_read, "rows": self._rows_read, "skipped": {}}


# ---- metrics of the true model ----------------------------------------------------
def _auc(score: np.ndarray, label: np.ndarray) -> float:
  """ROC AUC by the Mann-Whitney statistic, ties counted one half."""
  order = np.argsort(score, kind="stable")
  s = score[order]
  first = np.concatenate([[True], s[1:] != s[:-1]])
  group = np.cumsum(first) - 1
  starts = np.flatnonzero(first)
  ends = np.concatenate([starts[1:], [s.size]])
  avg_rank = (starts + ends + 1) / 2.0          # 1-based mean rank of each tie group
  ranks = avg_rank[group]
  pos = label[order].astype(bool)
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ceiling(prob: np.ndarray, label: np.ndarray) -> Dict[str, float]:
  p = prob.astype(np.float64)
  y = label.astype(np.float64)
  ll = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
  rate = float(y.mean())
  ent = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)) if 0 < rate < 1 else 0.0
  exp_ll = -np.mean(p * np.log(p) + (1 - p) * np.log1p(-p))
  return {"rows": int(p.size), "base_rate": rate, "log_loss": float(ll),
          "expected_log_loss": float(exp_ll), "entropy": ent,
          "ne": float(ll / ent) if ent > 0 else float("nan"), "auc": _auc(p, y),
          "mean_true_prob": float(p.mean())}


def bayes_ceiling(stream: SyntheticStream, by_day: bool = False) -> Dict[str, Any]:
  """Log loss and AUC of the true probabilities on ``stream``'s rows.

  ``log_loss = -mean(y log p + (1 - y) log(1 - p))`` with p = ``true_prob``
  (no model can do better in expectation), ``expected_log_loss`` its
  expectation over labels (mean binary entropy of p), ``ne`` = log loss over
  the entropy of the empirical base rate (He et al. 2014, normalised entropy).
  With ``by_day`` the same metrics per day of event time under ``"days"``.
  """
  if stream.num_rows_total is None:
    raise ValueError("bayes_ceiling: the stream needs a finite num_rows_total")
  probs, labels, days = [], [], []
  for rows in stream.raw_blocks(want_cat=False):
    probs.append(rows["true_prob"])
    labels.append(rows["label"])
    days.append((rows["time"] // 86400.0).astype(np.int64))
  prob, label, day = np.concatenate(probs), np.concatenate(labels), np.concatenate(days)
  out = _ceiling(prob, label)
  if by_day:
    out["days"] = {int(d): _ceiling(prob[day == d], label[day == d]) for d in np.unique(day)}
  return out
