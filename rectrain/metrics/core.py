"""Per-sample checks and the metric functions: AUC, log loss, NE, PCOC, calibration
curves and ECE.

See :mod:`rectrain.metrics` for the definitions and conventions.
"""

from __future__ import annotations

import math
from typing import Dict

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
