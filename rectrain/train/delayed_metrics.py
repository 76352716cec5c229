"""Metrics of the delayed-feedback runner: average precision (PR-AUC) with ties as one step,
the streaming metrics of one phase, and one window's metrics (rectrain/train/delayed.py)."""

from __future__ import annotations

import math
from typing import Any, Dict, Sequence

import numpy as np

import rectrain.metrics as metrics_lib


# ---------------------------------------------------------------------------
# Metrics.


def _ap_from_counts(pos_K: np.ndarray, neg_K: np.ndarray) -> float:
  """AP from positive/negative weight per ascending score group (ties form one step)."""
  pos = pos_K[::-1].astype(np.float64)
  tot = pos + neg_K[::-1]
  total_pos = pos.sum()
  if not total_pos > 0:
    return math.nan
  cum_pos, cum_tot = np.cumsum(pos), np.cumsum(tot)
  keep = pos > 0
  return float(np.sum(pos[keep] * cum_pos[keep] / cum_tot[keep]) / total_pos)


def average_precision(labels, preds, weights=None) -> float:
  """Average precision (area under the precision-recall curve, step-wise).

  ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct prediction values in
  decreasing order, ``P_k``/``R_k`` the (weighted) precision/recall of
  predicting positive for ``pred >= value_k`` (tied predictions form one step,
  as in scikit-learn's ``average_precision_score``). NaN without positives.
  """
  y = np.asarray(labels, np.float64).reshape(-1)
  p = np.asarray(preds, np.float64).reshape(-1)
  w = np.ones_like(y) if weights is None else np.asarray(weights, np.float64).reshape(-1)
  if not y.shape == p.shape == w.shape:
    raise ValueError(f"average_precision: labels {y.shape}, preds {p.shape} and weights "
                     f"{w.shape} must have the same length")
  keep = w > 0
  if not keep.any():
    return math.nan
  uniq, inverse = np.unique(p[keep], return_inverse=True)
  pos_K = np.bincount(inverse, weights=(w * y)[keep], minlength=uniq.size)
  neg_K = np.bincount(inverse, weights=(w * (1.0 - y))[keep], minlength=uniq.size)
  return _ap_from_counts(pos_K, neg_K)


class StreamMetrics:
  """AUC, PR-AUC (average precision), log loss, NE, PCOC of a stream, O(1) memory.

  Wraps :class:`rectrain.metrics.MetricAccumulator` and adds histograms of
  positive/negative weight over ``num_bins`` logit bins for the average
  precision (predictions in one bin count as tied, like the streaming AUC).
  """

  def __init__(self, num_bins: int = metrics_lib.DEFAULT_NUM_BINS,
               logit_range: Sequence[float] = metrics_lib.DEFAULT_LOGIT_RANGE):
    self.acc = metrics_lib.MetricAccumulator(num_bins=num_bins, logit_range=logit_range)
    self._lo, self._hi = float(logit_range[0]), float(logit_range[1])
    self._hist = np.zeros((2, int(num_bins)))

  def update(self, labels, preds, weights) -> None:
    y = np.asarray(labels, np.float64).reshape(-1)
    p = np.clip(np.asarray(preds, np.float64).reshape(-1), 1e-300, 1 - 1e-16)
    w = np.asarray(weights, np.float64).reshape(-1)
    self.acc.update(y, p, w)
    logit = np.log(p) - np.log1p(-p)
    n = self._hist.shape[1]
    idx = np.clip(((logit - self._lo) / (self._hi - self._lo) * n).astype(np.int64), 0, n - 1)
    self._hist[0] += np.bincount(idx, weights=w * (1.0 - y), minlength=n)
    self._hist[1] += np.bincount(idx, weights=w * y, minlength=n)

  def result(self) -> Dict[str, Any]:
    out = self.acc.result()
    out["pr_auc"] = _ap_from_counts(self._hist[1], self._hist[0])
    return out


def window_metrics(labels, preds, weights) -> Dict[str, float]:
  """Exact AUC, PR-AUC, log loss, PCOC, base rate and mean prediction of one window."""
  y = np.asarray(labels, np.float64)
  p = np.asarray(preds, np.float64)
  w = np.asarray(weights, np.float64)
  sw = float(w.sum())
  return {"rows": int((w > 0).sum()),
          "auc": metrics_lib.auc(y, p, w),
          "pr_auc": average_precision(y, p, w),
          "logloss": metrics_lib.log_loss(y, p, w),
          "pcoc": metrics_lib.pcoc(y, p, w),
          "base_rate": float(np.dot(w, y) / sw) if sw > 0 else math.nan,
          "mean_pred": float(np.dot(w, p) / sw) if sw > 0 else math.nan}
