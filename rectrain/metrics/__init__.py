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


Modules: :mod:`.core` (the metric functions), :mod:`.accumulator`
(:class:`MetricAccumulator`), :mod:`.windows` (:class:`WindowedMetrics`), :mod:`.table`.
"""

from rectrain.metrics.core import (DEFAULT_EPS, DEFAULT_LOGIT_RANGE, DEFAULT_NUM_BINS, OTHER,
                                   STATE_VERSION, TIME_UNITS, VARIATION_METRICS, auc,
                                   calibration_curve, calibration_edges,
                                   expected_calibration_error, log_loss, normalized_entropy, pcoc)  # noqa: F401
from rectrain.metrics.accumulator import MetricAccumulator  # noqa: F401
from rectrain.metrics.windows import WindowedMetrics, top_k_values  # noqa: F401
from rectrain.metrics.table import format_table  # noqa: F401
