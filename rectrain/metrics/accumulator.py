"""MetricAccumulator: streaming sufficient statistics of AUC (logit histogram or
exact), log loss, NE, PCOC and calibration, mergeable and serialisable.

See :mod:`rectrain.metrics` for the definitions and conventions.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence

import numpy as np

from rectrain.metrics.core import (DEFAULT_EPS, DEFAULT_LOGIT_RANGE, DEFAULT_NUM_BINS,
                                   STATE_VERSION, _auc_from_counts, _bin_index, _check,
                                   _check_edges, _curve_from_sums, _div, _ece_from_curve,
                                   _entropy, _logs, _row_logloss, auc, calibration_edges)


class _Rows:
  """A validated batch restricted to rows of weight > 0, packed for accumulators.

  ``sums_4`` = (sum w, sum w y, sum w p, sum w logloss); the AUC histogram update
  is one scatter-add of ``hval_2n`` at ``hidx_2n`` (negative weights at bin k,
  positive at H + k); the calibration update one bincount of ``cval_3n`` at
  ``cidx_3n`` (w, w p, w y at bin c, C + c, 2C + c). Subsets are packed on demand.
  """

  def __init__(self, y, p, w, wll, hbin, cbin, num_bins, num_cal):
    self.y, self.p, self.w, self.wll, self.hbin, self.cbin = y, p, w, wll, hbin, cbin
    self.n = y.shape[0]
    self._sizes = (num_bins, num_cal)
    self._full = None

  def packed(self, sel=None):
    """(n, sums_4, hidx_2n, hval_2n, cidx_3n, cval_3n, min bin, max bin) of rows ``sel``."""
    if sel is None and self._full is not None:
      return self._full
    y, p, w, wll, hbin, cbin = (a if sel is None else a[sel]
                                for a in (self.y, self.p, self.w, self.wll, self.hbin, self.cbin))
    n = y.shape[0]
    if n == 0:
      return (0,) + (None,) * 7
    wy, wp = w * y, w * p
    h, c = self._sizes
    out = (n, np.array([w.sum(), wy.sum(), wp.sum(), wll.sum()]),
           np.concatenate([hbin, hbin + h]), np.concatenate([w - wy, wy]),
           np.concatenate([cbin, cbin + c, cbin + 2 * c]), np.concatenate([w, wp, wy]),
           int(hbin.min()), int(hbin.max()))
    if sel is None:
      self._full = out
    return out

  def subset(self, sel) -> "_Rows":
    """The rows ``sel`` as their own (separately cached) batch."""
    return _Rows(self.y[sel], self.p[sel], self.w[sel], self.wll[sel], self.hbin[sel],
                 self.cbin[sel], *self._sizes)

  def stored(self, sel=None) -> np.ndarray:
    """(3, n) labels, predictions, weights of rows ``sel`` (exact mode)."""
    if sel is None:
      return np.stack([self.y, self.p, self.w])
    return np.stack([self.y[sel], self.p[sel], self.w[sel]])


class _Config(NamedTuple):
  num_bins: int
  logit_min: float
  logit_max: float
  eps: float
  exact: bool
  edges: tuple

  def to_json(self) -> dict:
    return {"num_bins": self.num_bins, "logit_range": [self.logit_min, self.logit_max],
            "eps": self.eps, "exact": self.exact, "calibration_edges": list(self.edges)}


def _make_config(num_bins, logit_range, eps, exact, calibration_bins, calibration_edges_,
                 where) -> _Config:
  num_bins = int(num_bins)
  if num_bins < 2:
    raise ValueError(f"{where}: num_bins must be >= 2, got {num_bins}")
  lo, hi = (float(v) for v in logit_range)
  if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
    raise ValueError(f"{where}: logit_range must be finite (lo, hi) with lo < hi, got {logit_range}")
  if not 0.0 < float(eps) < 0.5:
    raise ValueError(f"{where}: eps must be in (0, 0.5), got {eps}")
  if calibration_edges_ is None:
    calibration_edges_ = calibration_edges(calibration_bins, "uniform")
  edges = _check_edges(calibration_edges_, where)
  return _Config(num_bins, lo, hi, float(eps), bool(exact), tuple(float(e) for e in edges))


def _prepare(cfg: _Config, labels, preds, weights, where: str) -> _Rows:
  y, p, w = _check(labels, preds, weights, where)
  return _prepare_checked(cfg, y, p, w)


def _prepare_checked(cfg: _Config, y, p, w) -> _Rows:
  logs = _logs(p)
  logit = logs[0] - logs[1]
  scale = cfg.num_bins / (cfg.logit_max - cfg.logit_min)
  hbin = np.clip(np.floor((logit - cfg.logit_min) * scale), 0, cfg.num_bins - 1).astype(np.int64)
  cbin = _bin_index(p, np.asarray(cfg.edges))
  return _Rows(y, p, w, w * _row_logloss(y, p, cfg.eps, logs), hbin, cbin, cfg.num_bins,
               len(cfg.edges) - 1)


class MetricAccumulator:
  """Streaming AUC / log loss / NE / PCOC / calibration over weighted batches.

  ``update`` costs O(rows) (vectorised, independent of the number of bins);
  ``result`` costs O(occupied histogram bins) <= O(num_bins). Memory is O(num_bins + calibration bins), or
  O(rows seen) with ``exact=True``, which stores every row and gives exact
  results from the functions above.

  The streaming AUC uses histograms of positive and negative weight over
  ``num_bins`` bins uniform in logit over ``logit_range`` (logits outside fall
  into the end bins); predictions in the same bin count as tied (1/2). Its
  error is at most ``1/2 * sum_k pos_k neg_k / (P N)`` and in practice far
  smaller (within-bin orderings cancel); see the module docstring.

  Args:
    num_bins: AUC histogram bins H.
    logit_range: (lo, hi) logit range of the AUC histogram.
    eps: clipping of predictions in the log loss.
    exact: store all rows and compute exact metrics.
    calibration_bins: number of uniform calibration bins on [0, 1] (for ECE and
      the calibration curve), unless ``calibration_edges`` gives the edges.
    calibration_edges: explicit ascending calibration bin edges.
  """

  def __init__(self, num_bins: int = DEFAULT_NUM_BINS,
               logit_range: Sequence[float] = DEFAULT_LOGIT_RANGE,
               eps: float = DEFAULT_EPS, exact: bool = False, calibration_bins: int = 10,
               calibration_edges: Sequence[float] | None = None):
    self._cfg = _make_config(num_bins, logit_range, eps, exact, calibration_bins,
                             calibration_edges, "MetricAccumulator")
    self.reset()

  @classmethod
  def _from_config(cls, cfg: _Config) -> "MetricAccumulator":
    acc = cls.__new__(cls)
    acc._cfg = cfg
    acc.reset()
    return acc

  def reset(self) -> None:
    """Forgets every row seen."""
    cfg = self._cfg
    self._rows = 0
    self._sums = np.zeros(4)  # sum w, sum w y, sum w p, sum w logloss
    self._cal = np.zeros((3, len(cfg.edges) - 1))  # w, w p, w y per calibration bin
    if cfg.exact:
      self._hist = None
      self._stored: List[np.ndarray] = []  # (3, n) blocks of y, p, w
    else:
      self._hist = np.zeros((2, cfg.num_bins))  # negative, positive weight per bin
    self._lo, self._hi = cfg.num_bins, -1  # occupied range of the histogram

  @property
  def exact(self) -> bool:
    return self._cfg.exact

  def update(self, labels, preds, weights=None) -> None:
    """Adds one batch (rows of weight 0 are ignored)."""
    self._add(_prepare(self._cfg, labels, preds, weights, "MetricAccumulator.update"))

  def _add(self, rows: _Rows, sel=None) -> None:
    n, sums_4, hidx, hval, cidx, cval, lo, hi = rows.packed(sel)
    if n == 0:
      return
    self._rows += n
    self._sums += sums_4
    self._cal += np.bincount(cidx, cval, minlength=self._cal.size).reshape(self._cal.shape)
    if self._cfg.exact:
      self._stored.append(rows.stored(sel))
    else:
      np.add.at(self._hist.reshape(-1), hidx, hval)
      self._lo, self._hi = min(self._lo, lo), max(self._hi, hi)

  def merge(self, other: "MetricAccumulator") -> "MetricAccumulator":
    """Adds the rows of ``other`` (same configuration) to this accumulator; returns self."""
    if other._cfg != self._cfg:
      raise ValueError(f"MetricAccumulator.merge: configurations differ: {self._cfg.to_json()} "
                       f"vs {other._cfg.to_json()}")
    self._rows += other._rows
    self._sums += other._sums
    self._cal += other._cal
    if self._cfg.exact:
      self._stored.extend(other._stored)
    else:
      self._hist += other._hist
      self._lo, self._hi = min(self._lo, other._lo), max(self._hi, other._hi)
    return self

  def _exact_rows(self) -> np.ndarray:
    if not self._stored:
      return np.zeros((3, 0))
    if len(self._stored) > 1:
      self._stored = [np.concatenate(self._stored, axis=1)]
    return self._stored[0]

  def auc(self) -> float:
    if self._cfg.exact:
      y, p, w = self._exact_rows()
      return auc(y, p, w)
    if self._hi < self._lo:
      return math.nan
    return _auc_from_counts(self._hist[1, self._lo:self._hi + 1],
                            self._hist[0, self._lo:self._hi + 1])

  def calibration(self) -> Dict[str, np.ndarray]:
    """The calibration curve over the configured edges (exact in both modes)."""
    return _curve_from_sums(np.asarray(self._cfg.edges), *self._cal)

  def result(self, calibration: bool = False) -> Dict[str, Any]:
    """Metrics of all rows seen, as Python numbers (NaN where undefined).

    Keys: ``auc``, ``logloss``, ``ne``, ``pcoc``, ``ece``, ``count`` (sum of
    weights), ``rows`` (rows of weight > 0), ``positives`` (sum w y),
    ``base_rate``, ``mean_pred``; with ``calibration=True`` also
    ``calibration``: dict of lists ``edges``, ``mean_pred``, ``observed``, ``weight``.
    """
    sw, swy, swp, swll = (float(v) for v in self._sums)
    base_rate = _div(swy, sw)
    logloss = _div(swll, sw)
    curve = self.calibration()
    out = {
        "auc": self.auc(),
        "logloss": logloss,
        "ne": logloss / _entropy(base_rate) if sw > 0 else math.nan,
        "pcoc": _div(swp, swy),
        "ece": _ece_from_curve(curve),
        "count": sw,
        "rows": int(self._rows),
        "positives": swy,
        "base_rate": base_rate,
        "mean_pred": _div(swp, sw),
    }
    if calibration:
      out["calibration"] = {k: [float(x) for x in v] for k, v in curve.items()}
    return out

  def state(self) -> Dict[str, Any]:
    """A JSON-serialisable snapshot (plain lists and numbers) for checkpoints.

    The AUC histograms are stored sparsely (indices and values of non-zero
    bins). ``from_state(state())`` continues bit-identically.
    """
    st = {"version": STATE_VERSION, "config": self._cfg.to_json(), "rows": int(self._rows),
          "sums": [float(v) for v in self._sums], "calibration": self._cal.tolist()}
    if self._cfg.exact:
      st["stored"] = self._exact_rows().tolist()
    else:
      st["hist"] = []
      for h in self._hist:
        nz = np.flatnonzero(h)
        st["hist"].append({"index": nz.tolist(), "value": h[nz].tolist()})
    return st

  @classmethod
  def from_state(cls, state: Mapping[str, Any]) -> "MetricAccumulator":
    """Restores an accumulator from :meth:`state` (also after a JSON round trip)."""
    where = "MetricAccumulator.from_state"
    try:
      if state["version"] != STATE_VERSION:
        raise ValueError(f"{where}: state version {state['version']} != {STATE_VERSION}")
      c = state["config"]
      cfg = _make_config(c["num_bins"], c["logit_range"], c["eps"], c["exact"], None,
                         c["calibration_edges"], where)
      acc = cls._from_config(cfg)
      acc._rows = int(state["rows"])
      acc._sums = np.asarray(state["sums"], np.float64).reshape(4).copy()
      cal = np.asarray(state["calibration"], np.float64)
      if cal.shape != acc._cal.shape:
        raise ValueError(f"{where}: calibration has shape {cal.shape}, expected {acc._cal.shape}")
      acc._cal = cal.copy()
      if cfg.exact:
        stored = np.asarray(state["stored"], np.float64).reshape(3, -1)
        acc._stored = [stored] if stored.shape[1] else []
      else:
        if len(state["hist"]) != 2:
          raise ValueError(f"{where}: hist must hold 2 (negative, positive) histograms")
        for k, h in enumerate(state["hist"]):
          idx = np.asarray(h["index"], np.int64)
          if idx.size and (idx.min() < 0 or idx.max() >= cfg.num_bins):
            raise ValueError(f"{where}: hist[{k}] index out of range [0, {cfg.num_bins})")
          acc._hist[k, idx] = np.asarray(h["value"], np.float64)
          if idx.size:
            acc._lo, acc._hi = min(acc._lo, int(idx.min())), max(acc._hi, int(idx.max()))
    except KeyError as e:
      raise ValueError(f"{where}: state lacks the key {e.args[0]!r}") from None
    return acc
