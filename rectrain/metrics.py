"""Metrics of a streaming CTR run: AUC, log loss, NE, PCOC, calibration, windows.

Everything is computed on the host in NumPy (float64) from the predictions the
training step returns. Every function takes optional sample ``weights``; rows
of weight 0 (batch padding) are ignored entirely, so they equal dropping the
rows, and an integer weight equals repeating a row. Labels may be soft (in
[0, 1]): a row then counts as ``w * y`` positive and ``w * (1 - y)`` negative.

Shape legend: n rows, C calibration bins, H histogram bins of the streaming AUC.

With ``y`` labels, ``p`` predictions, ``w`` weights and ``b = sum(w y) / sum(w)``:

* AUC: the probability that a random positive (drawn by weight) scores above a
  random negative, ties counting 1/2 (Mann-Whitney U / (P N); Hanley & McNeil
  1982):  ``sum_{i,j} w_i y_i w_j (1 - y_j) (1[p_i > p_j] + 1/2 1[p_i = p_j]) / (P N)``.
* log loss: ``-sum w (y log p + (1 - y) log(1 - p)) / sum w``, ``p`` clipped to
  ``[eps, 1 - eps]``. (Normalised by ``sum w``, not by the number of rows.)
* NE, normalised entropy (He et al. 2014, "Practical Lessons from Predicting
  Clicks on Ads at Facebook"): log loss / ``H(b)``, ``H(b) = -b log b - (1-b) log(1-b)``.
  A constant predictor of the base rate has NE = 1; lower is better.
* PCOC (predicted clicks over observed clicks): ``sum(w p) / sum(w y)``; 1 is
  calibrated, > 1 over-predicts.
* calibration curve: per prediction bin, the mean prediction, the observed
  rate and the weight; ECE = ``sum_k W_k |mean_pred_k - observed_k| / sum_k W_k``
  (Naeini et al. 2015; Guo et al. 2017).

Undefined values are NaN, never an exception: AUC without positive or without
negative weight, log loss / mean prediction of zero total weight, NE when the
base rate is 0 or 1 (or undefined), PCOC without positive weight, ECE with zero
weight, and the mean prediction / observed rate of an empty calibration bin.

The streaming :class:`MetricAccumulator` keeps O(1) memory: running sums, a
small calibration histogram, and for the AUC two histograms (positive and
negative weight) over H bins uniform in logit space; predictions in the same
bin count as tied (1/2). With the default H = 2^16 bins over logits [-32, 32]
(bin width ~1e-3 in logit) it matches the exact AUC to better than 1e-4 on
realistic CTR predictions (see tests/test_metrics.py), but predictions that
differ by less than a bin width are treated as ties, so a model whose
predictions all lie within ~1e-3 logit of each other needs ``exact=True``.
:class:`WindowedMetrics` groups accumulators per window of rows, per
event-time window and per slice (feature value).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Sequence

import numpy as np

DEFAULT_EPS = 1e-7
DEFAULT_NUM_BINS = 1 << 16
DEFAULT_LOGIT_RANGE = (-32.0, 32.0)
STATE_VERSION = 1
OTHER = "__other__"
TIME_UNITS = {"minute": 60.0, "hour": 3600.0, "day": 86400.0, "week": 604800.0}
VARIATION_METRICS = ("auc", "logloss", "ne", "pcoc")


# ---------------------------------------------------------------------------
# Input checking.


def _as_1d(x, name: str, where: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{where}: {name} must be 1-D, got shape {a.shape}")
  if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
    raise ValueError(f"{where}: {name} must be numeric, got dtype {a.dtype}")
  return a.astype(np.float64, copy=False)


def _first_bad(bad: np.ndarray) -> str:
  idx = np.flatnonzero(bad)
  return f"{idx.size} rows (first at row {idx[0]})"


def _check(labels, preds, weights, where: str):
  """Validated float64 (y, p, w) restricted to rows of positive weight."""
  y = _as_1d(labels, "labels", where)
  p = _as_1d(preds, "preds", where)
  n = y.shape[0]
  if p.shape[0] != n:
    raise ValueError(f"{where}: labels has {n} rows but preds has {p.shape[0]}")
  if weights is None:
    w = np.ones(n)
  else:
    w = _as_1d(weights, "weights", where)
    if w.shape[0] != n:
      raise ValueError(f"{where}: labels has {n} rows but weights has {w.shape[0]}")
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
      raise ValueError(f"{where}: weights must be finite and >= 0; bad in {_first_bad(bad)}")
  keep = w > 0
  if not keep.all():
    y, p, w = y[keep], p[keep], w[keep]
  bad = ~((p >= 0) & (p <= 1))  # also catches NaN
  if bad.any():
    raise ValueError(f"{where}: preds must be probabilities in [0, 1] (rows of weight > 0); "
                     f"bad in {_first_bad(bad)} of the weighted rows, e.g. {p[bad][0]!r}")
  bad = ~((y >= 0) & (y <= 1))
  if bad.any():
    raise ValueError(f"{where}: labels must be in [0, 1] (rows of weight > 0); "
                     f"bad in {_first_bad(bad)} of the weighted rows, e.g. {y[bad][0]!r}")
  return y, p, w


def _dot(a: np.ndarray, b: np.ndarray) -> float:
  """sum(a * b) in NumPy, not BLAS (whose threads spin on a shared host)."""
  return float(np.sum(a * b))


def _div(a: float, b: float) -> float:
  return float(a) / float(b) if b > 0 else math.nan


def _entropy(b: float) -> float:
  """Binary entropy in nats; NaN unless 0 < b < 1."""
  if not 0.0 < b < 1.0:
    return math.nan
  return float(-b * math.log(b) - (1.0 - b) * math.log1p(-b))


def _logs(p):
  """(log p, log(1 - p)), -inf at p = 0 resp. 1."""
  with np.errstate(divide="ignore"):
    return np.log(p), np.log1p(-p)


def _row_logloss(y, p, eps, logs=None):
  """-(y log q + (1 - y) log(1 - q)), q = clip(p, eps, 1 - eps).

  Clipping the logs equals taking the logs of the clipped p (log is monotone),
  so the streaming path reuses the logs it computes for the logit.
  """
  log_p, log_1mp = _logs(p) if logs is None else logs
  lo, hi = np.log(eps), np.log(1.0 - eps)
  lo1, hi1 = np.log1p(-(1.0 - eps)), np.log1p(-eps)
  return -(y * np.clip(log_p, lo, hi) + (1.0 - y) * np.clip(log_1mp, lo1, hi1))


# ---------------------------------------------------------------------------
# Exact functions.


def _auc_from_counts(pos_K: np.ndarray, neg_K: np.ndarray) -> float:
  """AUC from positive/negative weight per ascending score group (ties within a group)."""
  total_pos, total_neg = float(pos_K.sum()), float(neg_K.sum())
  if not (total_pos > 0 and total_neg > 0):
    return math.nan
  # sum_k pos_k (negatives below k + neg_k / 2) = pos . cumsum(neg) - pos . neg / 2
  num = _dot(pos_K, np.cumsum(neg_K)) - 0.5 * _dot(pos_K, neg_K)
  return num / (total_pos * total_neg)


def auc(labels, preds, weights=None) -> float:
  """Exact weighted ROC AUC (rank based, ties count 1/2); NaN with one class.

  ``sum_{i,j} w_i y_i w_j (1-y_j) (1[p_i > p_j] + 1/2 1[p_i = p_j]) / (sum w y * sum w (1-y))``,
  computed in O(n log n) by grouping equal predictions (Mann-Whitney U).
  """
  y, p, w = _check(labels, preds, weights, "auc")
  if p.size == 0:
    return math.nan
  uniq, inverse = np.unique(p, return_inverse=True)
  pos_K = np.bincount(inverse, weights=w * y, minlength=uniq.size)
  neg_K = np.bincount(inverse, weights=w * (1.0 - y), minlength=uniq.size)
  return _auc_from_counts(pos_K, neg_K)


def log_loss(labels, preds, weights=None, eps: float = DEFAULT_EPS) -> float:
  """Weighted mean binary cross-entropy, ``p`` clipped to [eps, 1-eps]; NaN if no weight."""
  y, p, w = _check(labels, preds, weights, "log_loss")
  return _div(_dot(w, _row_logloss(y, p, eps)), w.sum())


def normalized_entropy(labels, preds, weights=None, eps: float = DEFAULT_EPS) -> float:
  """Log loss over the entropy of the weighted base rate (He et al. 2014); NaN if b in {0, 1}."""
  y, p, w = _check(labels, preds, weights, "normalized_entropy")
  total = w.sum()
  h = _entropy(_div(_dot(w, y), total))
  return _div(_dot(w, _row_logloss(y, p, eps)), total) / h


def pcoc(labels, preds, weights=None) -> float:
  """Predicted over observed positives, ``sum(w p) / sum(w y)``; NaN without positives."""
  y, p, w = _check(labels, preds, weights, "pcoc")
  return _div(_dot(w, p), _dot(w, y))


def calibration_edges(num_bins: int = 10, strategy: str = "uniform", preds=None,
                      weights=None) -> np.ndarray:
  """Bin edges (num_bins + 1 or fewer, ascending) of a calibration curve.

  ``uniform``: equal width on [0, 1]. ``quantile``: weighted quantiles of
  ``preds`` (edge k is the smallest prediction whose cumulative weight share
  reaches k / num_bins; first/last edges the min/max prediction; repeated
  edges merged, so heavy ties give fewer bins).
  """
  if int(num_bins) < 1:
    raise ValueError(f"calibration_edges: num_bins must be >= 1, got {num_bins}")
  num_bins = int(num_bins)
  if strategy == "uniform":
    return np.linspace(0.0, 1.0, num_bins + 1)
  if strategy != "quantile":
    raise ValueError(f"calibration_edges: strategy must be 'uniform' or 'quantile', got {strategy!r}")
  if preds is None:
    raise ValueError("calibration_edges: strategy='quantile' needs preds")
  p = np.asarray(preds, dtype=np.float64)
  w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
  keep = w > 0
  p, w = p[keep], w[keep]
  if p.size == 0:
    return np.linspace(0.0, 1.0, num_bins + 1)
  order = np.argsort(p, kind="stable")
  p, w = p[order], w[order]
  share = np.cumsum(w) / w.sum()
  qs = np.arange(1, num_bins) / num_bins
  inner = p[np.minimum(np.searchsorted(share, qs, side="left"), p.size - 1)]
  return np.unique(np.concatenate([[p[0]], inner, [p[-1]]]))


def _bin_index(p: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Bin k holds edges[k] <= p < edges[k+1]; the last bin also holds its right edge."""
  num = max(edges.size - 1, 1)
  return np.clip(np.searchsorted(edges, p, side="right") - 1, 0, num - 1)


def _curve_from_sums(edges, w_C, wp_C, wy_C) -> Dict[str, np.ndarray]:
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_pred = np.where(w_C > 0, wp_C / w_C, np.nan)
    observed = np.where(w_C > 0, wy_C / w_C, np.nan)
  return {"edges": np.asarray(edges, np.float64), "mean_pred": mean_pred,
          "observed": observed, "weight": np.asarray(w_C, np.float64)}


def _ece_from_curve(curve) -> float:
  w = curve["weight"]
  nz = w > 0
  return _div(_dot(w[nz], np.abs(curve["mean_pred"][nz] - curve["observed"][nz])), w.sum())


def calibration_curve(labels, preds, weights=None, num_bins: int = 10,
                      strategy: str = "uniform", edges=None) -> Dict[str, np.ndarray]:
  """Reliability diagram: per prediction bin the mean prediction, observed rate and weight.

  Args:
    labels, preds, weights: as everywhere in this module.
    num_bins, strategy: see :func:`calibration_edges` (ignored when ``edges`` is given).
    edges: explicit ascending bin edges.

  Returns:
    dict of arrays ``edges`` (C+1,), ``mean_pred`` (C,) = sum(w p)/sum(w),
    ``observed`` (C,) = sum(w y)/sum(w) (both NaN for an empty bin), ``weight`` (C,).
  """
  y, p, w = _check(labels, preds, weights, "calibration_curve")
  if edges is None:
    edges = calibration_edges(num_bins, strategy, p, w)
  edges = _check_edges(edges, "calibration_curve")
  idx = _bin_index(p, edges)
  c = edges.size - 1
  return _curve_from_sums(edges, np.bincount(idx, w, minlength=c),
                          np.bincount(idx, w * p, minlength=c),
                          np.bincount(idx, w * y, minlength=c))


def expected_calibration_error(labels, preds, weights=None, num_bins: int = 10,
                               strategy: str = "uniform", edges=None) -> float:
  """ECE = sum_k W_k |mean_pred_k - observed_k| / sum_k W_k over the bins of :func:`calibration_curve`."""
  return _ece_from_curve(calibration_curve(labels, preds, weights, num_bins, strategy, edges))


def _check_edges(edges, where: str) -> np.ndarray:
  e = np.asarray(edges, dtype=np.float64).reshape(-1)
  if e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
    raise ValueError(f"{where}: calibration edges must be >= 2 finite strictly increasing "
                     f"values, got {e.tolist()[:12]}")
  return e


# ---------------------------------------------------------------------------
# Streaming accumulator.


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


# ---------------------------------------------------------------------------
# Windows.


def _time_span(spec) -> tuple[str, float]:
  """'hour' | 'day' | 'minute' | 'week' | seconds (a number, '90' or '90s') -> (name, seconds)."""
  if isinstance(spec, str) and spec.strip().lower() in TIME_UNITS:
    name = spec.strip().lower()
    return name, TIME_UNITS[name]
  text = spec.strip().lower() if isinstance(spec, str) else spec
  if isinstance(text, str) and text.endswith("s"):
    text = text[:-1]
  try:
    seconds = float(text)
  except (TypeError, ValueError):
    raise ValueError(f"WindowedMetrics: time window {spec!r} is not one of "
                     f"{sorted(TIME_UNITS)} or a number of seconds") from None
  if not (np.isfinite(seconds) and seconds > 0):
    raise ValueError(f"WindowedMetrics: time window must be > 0 seconds, got {spec!r}")
  return f"{seconds:g}s", seconds


def _plain(v):
  """A NumPy scalar as the Python scalar (JSON-serialisable)."""
  return v.item() if hasattr(v, "item") else v


def top_k_values(column, weights=None, k: int = 5) -> list:
  """The ``k`` values of ``column`` with the largest total weight (ties: smaller value first)."""
  col = np.asarray(column).reshape(-1)
  w = np.ones(col.shape[0]) if weights is None else np.asarray(weights, np.float64).reshape(-1)
  keep = w > 0
  values, inverse = np.unique(col[keep], return_inverse=True)
  totals = np.bincount(inverse, w[keep], minlength=values.size)
  order = np.lexsort((np.arange(values.size), -totals))[: int(k)]
  return [v.item() for v in values[order]]


def _variation(values: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
  out = {}
  for m in VARIATION_METRICS:
    v = np.asarray(values.get(m, []), np.float64)
    v = v[np.isfinite(v)]
    out[m] = {"windows": int(v.size),
              "mean": float(v.mean()) if v.size else math.nan,
              "std": float(v.std(ddof=1)) if v.size >= 2 else math.nan,
              "min": float(v.min()) if v.size else math.nan,
              "max": float(v.max()) if v.size else math.nan}
  return out


class WindowedMetrics:
  """Per-window, per-time-window and per-slice metrics of a stream, updated per batch.

  Windows of rows: every ``window_rows`` rows of weight > 0 (padding does not
  count; a window may end in the middle of a batch, the batch is split there).
  Time windows: for each span in ``time_windows`` (``"hour"``, ``"day"``, or
  seconds), window i holds event times in ``[origin + i T, origin + (i+1) T)``.
  A time window closes once the watermark ``max time seen - allowed_lateness``
  reaches its end; rows that arrive for an already closed time window are
  counted as late (``late_rows``) and left out of the time windows (they stay
  in the row windows and the overall metrics). Rows with NaN time are left out
  of the time windows and counted (``rows_without_time``), so a stream without
  event time (Criteo) simply has no time windows.

  Slices: ``update(..., slices={"C1": column_B})`` gives a feature column per
  batch; the fields are fixed by the first batch with rows. Each field has a
  fixed set of values: ``slice_values[field]`` if given, else the
  ``slice_top_k`` values of largest weight in that first batch (pass explicit
  values, e.g. from :func:`top_k_values` over a sample, for a choice that does
  not depend on one batch); all other values form the group ``"__other__"``.
  Every group (all rows, and each slice value) has its own row, time and
  overall metrics.

  ``update`` returns the windows closed by this batch, each a dict::

    {"window": "rows" | "hour" | "day" | "<T>s", "index": i, "slice": None | field,
     "value": None | value | "__other__", "start_row", "end_row" (rows windows,
     half open, counted over rows of weight > 0) or "start_time", "end_time",
     "partial": bool, **MetricAccumulator.result(calibration=record_calibration)}

  Args:
    window_rows: rows per window; 0 or None for no row windows.
    time_windows: spans of event-time windows (empty for none).
    slice_values: explicit values per slice field.
    slice_top_k: values per slice field chosen from its first batch otherwise.
    time_origin: event time (s) where time window 0 starts.
    allowed_lateness: seconds a time window stays open past its end.
    record_calibration: include the calibration curve in window records.
    **accumulator_kwargs: passed to every :class:`MetricAccumulator`.
  """

  def __init__(self, window_rows: int | None = 0, time_windows: Iterable = (),
               slice_values: Mapping[str, Sequence] | None = None, slice_top_k: int = 5,
               time_origin: float = 0.0, allowed_lateness: float = 0.0,
               record_calibration: bool = True, **accumulator_kwargs):
    self._window_rows = int(window_rows or 0)
    if self._window_rows < 0:
      raise ValueError(f"WindowedMetrics: window_rows must be >= 0, got {window_rows}")
    if isinstance(time_windows, str):
      time_windows = [t for t in time_windows.split(",") if t.strip()]
    self._spans = [_time_span(t) for t in time_windows]
    names = [n for n, _ in self._spans]
    if len(set(names)) != len(names) or "rows" in names:
      raise ValueError(f"WindowedMetrics: repeated time windows {names}")
    if int(slice_top_k) < 1:
      raise ValueError(f"WindowedMetrics: slice_top_k must be >= 1, got {slice_top_k}")
    self._top_k = int(slice_top_k)
    self._origin = float(time_origin)
    self._lateness = float(allowed_lateness)
    if not (np.isfinite(self._origin) and np.isfinite(self._lateness) and self._lateness >= 0):
      raise ValueError("WindowedMetrics: time_origin must be finite and allowed_lateness >= 0")
    self._record_cal = bool(record_calibration)
    self._acc_kwargs = dict(accumulator_kwargs)
    self._cfg = MetricAccumulator(**accumulator_kwargs)._cfg
    self._explicit = {str(k): [_plain(x) for x in np.asarray(v).reshape(-1)]
                      for k, v in (slice_values or {}).items()}
    for k, v in self._explicit.items():
      if not v:
        raise ValueError(f"WindowedMetrics: slice_values[{k!r}] is empty")
    # Groups: 0 = all rows; then per slice field its values and OTHER.
    self._groups: List[tuple] = [(None, None)]
    self._fields: Dict[str, dict] = {}   # field -> {"values": sorted array, "order", "base"}
    self._rows_seen = 0
    self._row_acc: Dict[int, MetricAccumulator] = {}
    self._time_acc = {name: {} for name, _ in self._spans}  # name -> {index: {group: acc}}
    self._closed_below = {name: None for name, _ in self._spans}
    self._overall: Dict[int, MetricAccumulator] = {}
    self._max_time = -math.inf
    self._late_rows = {name: 0 for name, _ in self._spans}
    self._late_weight = {name: 0.0 for name, _ in self._spans}
    self._rows_without_time = 0
    self._closed_stats = {kind: {m: [] for m in VARIATION_METRICS}
                          for kind in ["rows"] + names}
    self._finalized = False

  # -- groups ---------------------------------------------------------------

  def _add_field(self, field: str, values: list) -> None:
    values = list(dict.fromkeys(values))
    arr = np.asarray(values)
    order = np.argsort(arr, kind="stable")
    self._fields[field] = {"values": arr[order], "order": order, "base": len(self._groups),
                           "list": values}
    self._groups += [(field, v) for v in values] + [(field, OTHER)]

  def _group_ids(self, slices, n, keep, w_all) -> List[tuple]:
    """Per slice field: (base group, local group id per kept row, number of local groups)."""
    out = []
    slices = dict(slices or {})
    if not keep.any():
      return out  # nothing to route; slice values are chosen from a batch with rows
    new = [f for f in slices if f not in self._fields]
    if new and self._overall:
      raise ValueError(f"WindowedMetrics.update: slices has new fields {sorted(new)}; the "
                       f"slice fields are fixed by the first batch ({sorted(self._fields)})")
    for field in new:
      col = np.asarray(slices[field]).reshape(-1)
      values = self._explicit.get(field) or top_k_values(col, w_all, self._top_k)
      self._add_field(field, values)
    missing = set(self._fields) - set(slices)
    if missing:
      raise ValueError(f"WindowedMetrics.update: slices lacks the fields {sorted(missing)} "
                       f"given in earlier batches")
    for field, f in self._fields.items():
      col = np.asarray(slices[field]).reshape(-1)
      if col.shape[0] != n:
        raise ValueError(f"WindowedMetrics.update: slices[{field!r}] has {col.shape[0]} rows, "
                         f"labels has {n}")
      col = col[keep]
      vals, k = f["values"], f["values"].size
      pos = np.searchsorted(vals, col)
      posc = np.minimum(pos, k - 1)
      match = vals[posc] == col
      local = np.where(match, f["order"][posc], k)
      out.append((f["base"], local, k + 1))
    return out

  def _add_groups(self, rows: _Rows, sel, group_ids, get_acc, parts) -> None:
    """Adds rows ``sel`` (a slice or index array) to group 0 and to their slice groups.

    ``parts`` maps each slice group to its rows of the whole batch; a whole
    batch (the common case) reuses them, so every group's rows are packed once
    per batch however many windows they go to.
    """
    if isinstance(sel, slice):
      sel_idx = np.arange(rows.n)[sel]
      if sel_idx.size == rows.n:
        sel = None  # all rows: no copies
    else:
      sel_idx = sel
    if sel_idx.size == 0:
      return
    get_acc(0)._add(rows, sel)
    if sel is None:
      for g, part in parts.items():
        get_acc(g)._add(part)
      return
    for base, local, num in group_ids:
      loc = local[sel_idx]
      for g in range(num):
        sub = sel_idx[loc == g]
        if sub.size:
          get_acc(base + g)._add(rows, sub)

  def _new_acc(self) -> MetricAccumulator:
    return MetricAccumulator._from_config(self._cfg)

  def _getter(self, table: dict):
    def get(g):
      acc = table.get(g)
      if acc is None:
        acc = table[g] = self._new_acc()
      return acc
    return get

  # -- records --------------------------------------------------------------

  def _records(self, table: Dict[int, MetricAccumulator], head: dict) -> List[dict]:
    out = []
    for g in sorted(table):
      field, value = self._groups[g]
      rec = dict(head, slice=field, value=value)
      rec.update(table[g].result(calibration=self._record_cal))
      out.append(rec)
      if g == 0 and not rec["partial"]:
        stats = self._closed_stats[head["window"]]
        for m in VARIATION_METRICS:
          stats[m].append(rec[m])
    return out

  def _close_row_window(self, partial: bool) -> List[dict]:
    n = self._window_rows
    start = (self._rows_seen - 1) // n * n if partial else self._rows_seen - n
    head = {"window": "rows", "index": start // n, "start_row": start,
            "end_row": self._rows_seen, "partial": partial}
    out = self._records(self._row_acc, head)
    self._row_acc = {}
    return out

  def _close_time_window(self, name: str, seconds: float, index: int, partial: bool) -> List[dict]:
    head = {"window": name, "index": int(index),
            "start_time": self._origin + index * seconds,
            "end_time": self._origin + (index + 1) * seconds, "partial": partial}
    return self._records(self._time_acc[name].pop(index), head)

  # -- update ---------------------------------------------------------------

  def update(self, labels, preds, weights=None, time=None, slices=None) -> List[dict]:
    """Adds a batch; returns the windows it closed (see the class docstring)."""
    where = "WindowedMetrics.update"
    if self._finalized:
      raise RuntimeError(f"{where}: called after finalize()")
    y_all = _as_1d(labels, "labels", where)
    n = y_all.shape[0]
    w_all = np.ones(n) if weights is None else _as_1d(weights, "weights", where)
    if w_all.shape[0] != n:
      raise ValueError(f"{where}: labels has {n} rows but weights has {w_all.shape[0]}")
    y, p, w = _check(y_all, preds, w_all, where)
    keep = w_all > 0
    rows = _prepare_checked(self._cfg, y, p, w)
    m = y.shape[0]
    group_ids = self._group_ids(slices, n, keep, w_all)
    parts = {}
    for base, local, num in group_ids:
      for g in range(num):
        idx = np.flatnonzero(local == g)
        if idx.size:
          parts[base + g] = rows.subset(idx)
    closed: List[dict] = []

    self._add_groups(rows, slice(None), group_ids, self._getter(self._overall), parts)

    # Row windows: split the batch where a window fills up.
    if self._window_rows:
      nw = self._window_rows
      start = 0
      while start < m:
        room = nw - self._rows_seen % nw
        stop = min(m, start + room)
        self._add_groups(rows, slice(start, stop), group_ids, self._getter(self._row_acc), parts)
        self._rows_seen += stop - start
        start = stop
        if self._rows_seen % nw == 0:
          closed += self._close_row_window(partial=False)
    else:
      self._rows_seen += m

    # Event-time windows.
    if self._spans:
      if time is None:
        t = np.full(m, np.nan)
      else:
        t_all = _as_1d(time, "time", where)
        if t_all.shape[0] != n:
          raise ValueError(f"{where}: labels has {n} rows but time has {t_all.shape[0]}")
        t = t_all[keep]
      has = np.isfinite(t)
      self._rows_without_time += int(m - has.sum())
      if has.any():
        batch_max = float(t[has].max())
        for name, seconds in self._spans:
          idx = np.floor((t - self._origin) / seconds)
          below = self._closed_below[name]
          late = has & (idx < below) if below is not None else np.zeros(m, bool)
          self._late_rows[name] += int(late.sum())
          self._late_weight[name] += float(w[late].sum())
          ok = has & ~late
          table = self._time_acc[name]
          present = np.unique(idx[ok])
          for i in present:
            # the usual case, a whole batch in one window, adds without copies
            sel = (slice(None) if present.size == 1 and ok.all()
                   else np.flatnonzero(ok & (idx == i)))
            self._add_groups(rows, sel, group_ids, self._getter(table.setdefault(int(i), {})),
                              parts)
        self._max_time = max(self._max_time, batch_max)
        watermark = self._max_time - self._lateness
        for name, seconds in self._spans:
          new_below = int(math.floor((watermark - self._origin) / seconds))
          if self._closed_below[name] is None or new_below > self._closed_below[name]:
            self._closed_below[name] = new_below
          for i in sorted(self._time_acc[name]):
            if i < self._closed_below[name]:
              closed += self._close_time_window(name, seconds, i, partial=False)
    return closed

  # -- results --------------------------------------------------------------

  def finalize_windows(self) -> List[dict]:
    """Closes the open windows (marked ``partial``; a full last row window is not) and returns them."""
    closed = []
    if not self._finalized:
      if self._window_rows and self._row_acc:
        closed += self._close_row_window(partial=self._rows_seen % self._window_rows != 0)
      for name, seconds in self._spans:
        for i in sorted(self._time_acc[name]):
          closed += self._close_time_window(name, seconds, i, partial=True)
      self._finalized = True
    return closed

  def overall(self) -> Dict[str, Any]:
    """Metrics of all rows seen so far."""
    acc = self._overall.get(0) or self._new_acc()
    return acc.result(calibration=self._record_cal)

  def slice_results(self) -> Dict[str, Dict[Any, dict]]:
    """field -> value -> metrics of all rows seen so far of that slice value."""
    out: Dict[str, Dict[Any, dict]] = {}
    for g, (field, value) in enumerate(self._groups):
      if field is not None and g in self._overall:
        out.setdefault(field, {})[value] = self._overall[g].result()
    return out

  def variation(self) -> Dict[str, Any]:
    """Spread of AUC, log loss, NE and PCOC over the closed (non-partial) windows of all rows.

    ``by_window[kind][metric]`` = {windows, mean, std (ddof=1), min, max}, NaN
    where undefined (fewer than 2 windows for std; NaN metrics are skipped).
    The flat keys ``auc_std``, ``auc_min``, ``auc_max``, ``ne_*``, ``pcoc_*``,
    ``logloss_*`` repeat those of the ``primary`` kind: row windows if
    configured, else the first time window.
    """
    by_window = {kind: _variation(v) for kind, v in self._closed_stats.items()
                 if kind != "rows" or self._window_rows}
    primary = "rows" if self._window_rows else (self._spans[0][0] if self._spans else None)
    out: Dict[str, Any] = {"primary": primary, "by_window": by_window}
    if primary is not None:
      for m, s in by_window[primary].items():
        for stat in ("std", "min", "max"):
          out[f"{m}_{stat}"] = s[stat]
    return out

  def counters(self) -> Dict[str, Any]:
    """Rows seen (weight > 0), rows without event time, late rows / weight per time span."""
    return {"rows": self._rows_seen, "rows_without_time": self._rows_without_time,
            "late_rows": dict(self._late_rows), "late_weight": dict(self._late_weight)}

  def finalize(self) -> Dict[str, Any]:
    """Closes the open windows; returns them with the overall, per-slice and variation summary."""
    windows = self.finalize_windows()
    return {"windows": windows, "overall": self.overall(), "slices": self.slice_results(),
            "variation": self.variation(), **self.counters()}

  # -- checkpoint -----------------------------------------------------------

  def state(self) -> Dict[str, Any]:
    """A JSON-serialisable snapshot; :meth:`from_state` continues identically."""
    def accs(table):
      return {str(g): a.state() for g, a in table.items()}
    return {
        "version": STATE_VERSION,
        "config": {"window_rows": self._window_rows, "time_windows": [name for name, _ in self._spans],
                   "slice_values": self._explicit, "slice_top_k": self._top_k,
                   "time_origin": self._origin, "allowed_lateness": self._lateness,
                   "record_calibration": self._record_cal, "accumulator": self._cfg.to_json()},
        "fields": {f: v["list"] for f, v in self._fields.items()},
        "rows_seen": self._rows_seen,
        "row_acc": accs(self._row_acc),
        "time_acc": {name: {str(i): accs(t) for i, t in table.items()}
                     for name, table in self._time_acc.items()},
        "closed_below": dict(self._closed_below),
        "overall": accs(self._overall),
        "max_time": self._max_time if np.isfinite(self._max_time) else None,
        "late_rows": dict(self._late_rows),
        "late_weight": dict(self._late_weight),
        "rows_without_time": self._rows_without_time,
        "closed_stats": self._closed_stats,
        "finalized": self._finalized,
    }

  @classmethod
  def from_state(cls, state: Mapping[str, Any]) -> "WindowedMetrics":
    """Restores from :meth:`state` (also after a JSON round trip)."""
    where = "WindowedMetrics.from_state"
    try:
      if state["version"] != STATE_VERSION:
        raise ValueError(f"{where}: state version {state['version']} != {STATE_VERSION}")
      c = state["config"]
      a = c["accumulator"]
      wm = cls(window_rows=c["window_rows"], time_windows=c["time_windows"],
               slice_values=c["slice_values"], slice_top_k=c["slice_top_k"],
               time_origin=c["time_origin"], allowed_lateness=c["allowed_lateness"],
               record_calibration=c["record_calibration"], num_bins=a["num_bins"],
               logit_range=a["logit_range"], eps=a["eps"], exact=a["exact"],
               calibration_edges=a["calibration_edges"])
      for field, values in state["fields"].items():
        wm._add_field(field, values)
      load = MetricAccumulator.from_state
      wm._rows_seen = int(state["rows_seen"])
      wm._row_acc = {int(g): load(s) for g, s in state["row_acc"].items()}
      names = [n for n, _ in wm._spans]
      if sorted(state["time_acc"]) != sorted(names):
        raise ValueError(f"{where}: time windows {sorted(state['time_acc'])} != {sorted(names)}")
      wm._time_acc = {name: {int(i): {int(g): load(s) for g, s in t.items()}
                             for i, t in state["time_acc"][name].items()} for name in names}
      wm._closed_below = {n: (None if v is None else int(v))
                          for n, v in state["closed_below"].items()}
      wm._overall = {int(g): load(s) for g, s in state["overall"].items()}
      mt = state["max_time"]
      wm._max_time = -math.inf if mt is None else float(mt)
      wm._late_rows = {k: int(v) for k, v in state["late_rows"].items()}
      wm._late_weight = {k: float(v) for k, v in state["late_weight"].items()}
      wm._rows_without_time = int(state["rows_without_time"])
      wm._closed_stats = {k: {m: [float(x) for x in v[m]] for m in VARIATION_METRICS}
                          for k, v in state["closed_stats"].items()}
      wm._finalized = bool(state["finalized"])
    except KeyError as e:
      raise ValueError(f"{where}: state lacks the key {e.args[0]!r}") from None
    return wm


# ---------------------------------------------------------------------------
# Tables.


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence | None = None,
                 digits: int = 4, missing: str = "") -> str:
  """A plain-text table: one line per row, aligned columns.

  Args:
    rows: dicts of values.
    columns: keys to show, each a key or a ``(key, header)`` pair; default the
      keys of the first row.
    digits: decimals of floats (NaN/None shown as ``nan``/``missing``).
    missing: text for absent keys and None.
  """
  if columns is None:
    columns = list(rows[0]) if rows else []
  cols = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in columns]

  def cell(v) -> tuple[str, bool]:
    if v is None:
      return missing, False
    if isinstance(v, (bool, np.bool_)):
      return str(bool(v)), False
    if isinstance(v, (int, np.integer)):
      return str(int(v)), True
    if isinstance(v, (float, np.floating)):
      return (f"{float(v):.{digits}f}" if np.isfinite(v) else str(float(v))), True
    return str(v), False

  body = [[cell(r.get(k)) for k, _ in cols] for r in rows]
  widths = [max([len(str(h))] + [len(line[j][0]) for line in body]) for j, (_, h) in enumerate(cols)]
  numeric = [any(line[j][1] for line in body) for j in range(len(cols))]

  def fmt(texts):
    return "  ".join(t.rjust(wd) if num else t.ljust(wd)
                     for t, wd, num in zip(texts, widths, numeric)).rstrip()

  lines = [fmt([str(h) for _, h in cols]), "  ".join("-" * wd for wd in widths)]
  lines += [fmt([t for t, _ in line]) for line in body]
  return "\n".join(lines)
