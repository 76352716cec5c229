"""Tests of rectrain/metrics.py against plain NumPy references."""

import json
import math

import numpy as np
import pytest

from rectrain import metrics as M


# ---------------------------------------------------------------------------
# Plain references.


def ref_auc_pairwise(y, p, w=None):
  """O(n^2) AUC: sum over (positive i, negative j) of w_i y_i w_j (1-y_j) [p_i > p_j] (+1/2 ties)."""
  y, p = np.asarray(y, float), np.asarray(p, float)
  w = np.ones_like(y) if w is None else np.asarray(w, float)
  num = den = 0.0
  for i in range(len(y)):
    for j in range(len(y)):
      pair = w[i] * y[i] * w[j] * (1 - y[j])
      den += pair
      num += pair * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
  return num / den if den > 0 else math.nan


def ref_log_loss(y, p, w, eps=1e-7):
  total = 0.0
  for yi, pi, wi in zip(y, p, w):
    q = min(max(pi, eps), 1 - eps)
    total += -wi * (yi * math.log(q) + (1 - yi) * math.log(1 - q))
  return total / sum(w)


def ref_ne(y, p, w):
  b = sum(wi * yi for wi, yi in zip(w, y)) / sum(w)
  return ref_log_loss(y, p, w) / -(b * math.log(b) + (1 - b) * math.log(1 - b))


def ref_calibration(y, p, w, edges):
  """Loop over rows: bin k holds edges[k] <= p < edges[k+1] (last bin closed)."""
  c = len(edges) - 1
  sw, swp, swy = np.zeros(c), np.zeros(c), np.zeros(c)
  for yi, pi, wi in zip(y, p, w):
    k = c - 1
    for j in range(c):
      if edges[j] <= pi < edges[j + 1]:
        k = j
        break
    if pi < edges[0]:
      k = 0
    sw[k] += wi
    swp[k] += wi * pi
    swy[k] += wi * yi
  with np.errstate(invalid="ignore"):
    return swp / sw, swy / sw, sw


def ctr_data(rng, n, kind):
  """Labels, float32 predictions and weights shaped like a CTR model's output."""
  if kind == "separated":
    y = (rng.random(n) < 0.3).astype(np.float64)
    logit = np.where(y > 0, rng.normal(1.5, 1.0, n), rng.normal(-1.5, 1.0, n))
  elif kind == "near_random":
    y = (rng.random(n) < 0.05).astype(np.float64)
    logit = rng.normal(-3.0, 0.5, n) + 0.02 * y
  elif kind == "tiny_base_rate":
    true_logit = rng.normal(-7.5, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.float64)
    logit = true_logit + rng.normal(0, 0.5, n)
  elif kind == "confident":
    y = (rng.random(n) < 0.4).astype(np.float64)
    logit = np.where(y > 0, rng.normal(12, 4, n), rng.normal(-14, 4, n))
  elif kind == "weighted_ctr":
    true_logit = rng.normal(-3.5, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.float64)
    logit = 0.8 * true_logit + rng.normal(0, 0.4, n)
  else:
    raise ValueError(kind)
  p = (1 / (1 + np.exp(-logit))).astype(np.float32)
  w = rng.uniform(0.2, 3.0, n) if kind == "weighted_ctr" else np.ones(n)
  return y, p, w


# ---------------------------------------------------------------------------
# Exact functions.


def test_auc_known_values():
  assert M.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # 3 of 4 pairs
  assert M.auc([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0
  assert M.auc([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]) == 0.0
  assert M.auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
  # pos 0.5 vs neg {0.5, 0.1}: tie 1/2 + win 1 -> 3/4.
  assert M.auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)
  # weighted: a positive of weight 3 at 0.2 below the negative 0.5, one of weight 1 at 0.9.
  assert M.auc([1, 0, 1], [0.2, 0.5, 0.9], [3, 1, 1]) == pytest.approx(0.25)


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_pairwise_bruteforce_with_ties_weights_and_soft_labels(seed):
  rng = np.random.default_rng(seed)
  n = 80
  y = (rng.random(n) < 0.4).astype(float)
  if seed == 3:
    y = rng.random(n).round(1)  # soft labels: w y positive, w (1-y) negative
  p = np.round(rng.random(n), 1)  # ~11 distinct values: many ties
  w = rng.integers(0, 4, n).astype(float)
  assert M.auc(y, p, w) == pytest.approx(ref_auc_pairwise(y, p, w), abs=1e-12)
  assert M.auc(y, p) == pytest.approx(ref_auc_pairwise(y, p), abs=1e-12)


def test_log_loss_direct_formula_and_known_value():
  assert M.log_loss([1], [0.5]) == pytest.approx(math.log(2))
  assert M.log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7))  # clipped
  rng = np.random.default_rng(1)
  y = (rng.random(50) < 0.3).astype(float)
  p, w = rng.random(50), rng.uniform(0.1, 2, 50)
  assert M.log_loss(y, p, w) == pytest.approx(ref_log_loss(y, p, w), rel=1e-12)


def test_normalized_entropy():
  rng = np.random.default_rng(2)
  y = (rng.random(1000) < 0.1).astype(float)
  w = rng.uniform(0.5, 2, 1000)
  b = np.dot(w, y) / w.sum()
  assert M.normalized_entropy(y, np.full(1000, b), w) == pytest.approx(1.0, abs=1e-12)
  p = np.clip(0.1 + 0.5 * (y - 0.1) + 0.05 * rng.normal(size=1000), 0.01, 0.99)
  ne = M.normalized_entropy(y, p, w)
  assert ne == pytest.approx(ref_ne(y, p, w), rel=1e-12)
  assert ne < 1.0  # informative predictor beats the base rate


def test_pcoc():
  assert M.pcoc([1, 0, 0, 1], [0.5, 0.5, 0.25, 0.75]) == pytest.approx(2.0 / 2.0)
  assert M.pcoc([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [1, 1, 1, 3]) == pytest.approx(3.0)


def test_calibration_curve_and_ece_against_loop():
  rng = np.random.default_rng(3)
  n = 300
  p = rng.random(n) ** 2
  p[:5] = [0.0, 1.0, 0.1, 0.2, 0.5]  # on edges
  y = (rng.random(n) < p).astype(float)
  w = rng.uniform(0, 2, n)
  curve = M.calibration_curve(y, p, w, num_bins=10)
  mp, obs, wt = ref_calibration(y, p, w, np.linspace(0, 1, 11))
  np.testing.assert_allclose(curve["mean_pred"], mp, rtol=1e-12)
  np.testing.assert_allclose(curve["observed"], obs, rtol=1e-12)
  np.testing.assert_allclose(curve["weight"], wt, rtol=1e-12)
  ece = np.nansum(wt * np.abs(mp - obs)) / wt.sum()
  assert M.expected_calibration_error(y, p, w) == pytest.approx(ece, rel=1e-12)
  # quantile bins hold about equal weight (each within one row's weight of total/5).
  q = M.calibration_curve(y, p, w, num_bins=5, strategy="quantile")
  assert q["weight"].size == 5
  assert np.all(np.abs(q["weight"] - w.sum() / 5) <= 2 * w.max())
  mp, obs, wt = ref_calibration(y, p, w, q["edges"])
  np.testing.assert_allclose(q["observed"], obs, rtol=1e-12)


def test_calibration_empty_bin_is_nan():
  c = M.calibration_curve([1, 0], [0.05, 0.95], num_bins=4)
  assert np.isnan(c["mean_pred"][1]) and c["weight"][1] == 0
  assert c["mean_pred"][0] == pytest.approx(0.05)


def test_undefined_values_are_nan():
  assert math.isnan(M.auc([1, 1], [0.2, 0.3]))
  assert math.isnan(M.auc([0, 0], [0.2, 0.3]))
  assert math.isnan(M.auc([], []))
  assert math.isnan(M.log_loss([1, 0], [0.2, 0.3], [0, 0]))
  assert math.isnan(M.normalized_entropy([0, 0], [0.2, 0.3]))
  assert math.isnan(M.pcoc([0, 0], [0.2, 0.3]))
  assert math.isnan(M.expected_calibration_error([], []))
  r = M.MetricAccumulator().result()
  assert r["rows"] == 0 and r["count"] == 0.0
  assert all(math.isnan(r[k]) for k in ("auc", "logloss", "ne", "pcoc", "ece", "base_rate"))


def test_bad_input_names_the_argument():
  with pytest.raises(ValueError, match="preds must be probabilities.*row 1"):
    M.auc([0, 1], [0.2, np.nan])
  with pytest.raises(ValueError, match="preds"):
    M.log_loss([0, 1], [0.2, 1.5])
  with pytest.raises(ValueError, match="labels must be in"):
    M.pcoc([0, 2], [0.2, 0.5])
  with pytest.raises(ValueError, match="weights must be finite"):
    M.auc([0, 1], [0.2, 0.5], [1, -1])
  with pytest.raises(ValueError, match="labels has 2 rows but preds has 3"):
    M.MetricAccumulator().update([0, 1], [0.1, 0.2, 0.3])
  # NaN predictions on padding rows (weight 0) are ignored.
  assert M.auc([0, 1, 0], [0.2, 0.5, np.nan], [1, 1, 0]) == 1.0


def _all_exact(y, p, w):
  return {"auc": M.auc(y, p, w), "logloss": M.log_loss(y, p, w),
          "ne": M.normalized_entropy(y, p, w), "pcoc": M.pcoc(y, p, w),
          "ece": M.expected_calibration_error(y, p, w)}


def test_zero_weights_equal_dropping_rows_and_integer_weights_equal_repeating():
  rng = np.random.default_rng(4)
  n = 400
  y = (rng.random(n) < 0.2).astype(float)
  p = np.round(rng.random(n), 2)
  w = rng.integers(0, 4, n).astype(float)
  weighted = _all_exact(y, p, w)
  keep = w > 0
  dropped = _all_exact(y[keep], p[keep], np.ones(keep.sum()) * w[keep])
  rep = np.repeat(np.arange(n), w.astype(int))
  repeated = _all_exact(y[rep], p[rep], None)
  for k in weighted:
    assert weighted[k] == pytest.approx(dropped[k], rel=1e-12), k
    assert weighted[k] == pytest.approx(repeated[k], rel=1e-10), k
  acc_w, acc_r = M.MetricAccumulator(), M.MetricAccumulator()
  acc_w.update(y, p, w)
  acc_r.update(y[rep], p[rep])
  rw, rr = acc_w.result(), acc_r.result()
  for k in ("auc", "logloss", "ne", "pcoc", "ece", "count", "positives"):
    assert rw[k] == pytest.approx(rr[k], rel=1e-10), k
  assert rw["rows"] == keep.sum() and rr["rows"] == rep.size


# ---------------------------------------------------------------------------
# Streaming accumulator.


@pytest.mark.parametrize("kind", ["separated", "near_random", "tiny_base_rate", "confident",
                                  "weighted_ctr"])
def test_streaming_auc_agrees_with_exact(kind):
  rng = np.random.default_rng(5)
  y, p, w = ctr_data(rng, 200_000, kind)
  acc = M.MetricAccumulator()
  for chunk in np.array_split(np.arange(y.size), 50):
    acc.update(y[chunk], p[chunk], w[chunk])
  exact = M.auc(y, p, w)
  assert 0.0 < exact < 1.0
  assert abs(acc.result()["auc"] - exact) < 1e-4


def test_streaming_equals_exact_after_many_small_updates():
  rng = np.random.default_rng(6)
  y, p, w = ctr_data(rng, 60_000, "weighted_ctr")
  w[rng.random(w.size) < 0.05] = 0.0  # padding
  sizes = rng.integers(1, 700, 400)
  cuts = np.cumsum(sizes)
  cuts = cuts[cuts < y.size]
  stream, exact_mode = M.MetricAccumulator(), M.MetricAccumulator(exact=True)
  for chunk in np.split(np.arange(y.size), cuts):
    stream.update(y[chunk], p[chunk], w[chunk])
    exact_mode.update(y[chunk], p[chunk], w[chunk])
  ref = _all_exact(y, p, w)
  keep = w > 0
  ref.update(count=w.sum(), rows=int(keep.sum()), positives=np.dot(w, y),
             base_rate=np.dot(w, y) / w.sum(), mean_pred=np.dot(w, p) / w.sum())
  rs, re_ = stream.result(calibration=True), exact_mode.result()
  assert abs(rs["auc"] - ref["auc"]) < 1e-4
  assert re_["auc"] == pytest.approx(ref["auc"], abs=1e-12)
  for k in ("logloss", "ne", "pcoc", "ece", "count", "positives", "base_rate", "mean_pred"):
    assert rs[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    assert re_[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
  assert rs["rows"] == re_["rows"] == ref["rows"]
  curve = M.calibration_curve(y, p, w)
  np.testing.assert_allclose(rs["calibration"]["observed"], curve["observed"], rtol=1e-9)


def test_merge_equals_single_accumulator_and_reset():
  rng = np.random.default_rng(7)
  y, p, w = ctr_data(rng, 20_000, "weighted_ctr")
  single, a, b = M.MetricAccumulator(), M.MetricAccumulator(), M.MetricAccumulator()
  single.update(y, p, w)
  a.update(y[:7000], p[:7000], w[:7000])
  b.update(y[7000:], p[7000:], w[7000:])
  ra, rs = a.merge(b).result(), single.result()
  for k, v in rs.items():
    assert ra[k] == pytest.approx(v, rel=1e-12), k
  with pytest.raises(ValueError, match="configurations differ"):
    a.merge(M.MetricAccumulator(num_bins=1024))
  a.reset()
  assert a.result()["rows"] == 0 and math.isnan(a.result()["auc"])


@pytest.mark.parametrize("exact", [False, True])
def test_accumulator_state_round_trip_continues_identically(exact):
  rng = np.random.default_rng(8)
  y, p, w = ctr_data(rng, 10_000, "weighted_ctr")
  full, first = M.MetricAccumulator(exact=exact), M.MetricAccumulator(exact=exact)
  chunks = np.array_split(np.arange(y.size), 10)
  for i, c in enumerate(chunks):
    full.update(y[c], p[c], w[c])
    if i < 4:
      first.update(y[c], p[c], w[c])
  restored = M.MetricAccumulator.from_state(json.loads(json.dumps(first.state())))
  for c in chunks[4:]:
    restored.update(y[c], p[c], w[c])
  # json.dumps compares NaN (empty calibration bins) as text; floats are written exactly.
  assert json.dumps(restored.result(calibration=True)) == json.dumps(full.result(calibration=True))
  with pytest.raises(ValueError, match="lacks the key 'sums'"):
    M.MetricAccumulator.from_state({k: v for k, v in first.state().items() if k != "sums"})


def test_predictions_narrower_than_a_bin_need_exact_mode():
  # All predictions within 1e-5 in logit of each other: one histogram bin.
  rng = np.random.default_rng(9)
  y = (rng.random(5000) < 0.5).astype(float)
  p = 1 / (1 + np.exp(-(0.3 + 1e-5 * (y + rng.random(5000)))))
  stream, exact = M.MetricAccumulator(), M.MetricAccumulator(exact=True)
  stream.update(y, p)
  exact.update(y, p)
  assert stream.result()["auc"] == 0.5
  assert exact.result()["auc"] == pytest.approx(M.auc(y, p)) and M.auc(y, p) > 0.7


# ---------------------------------------------------------------------------
# Windows.


def padded_batches(y, p, t, cols, batch_size, rng):
  """Splits rows into batches of ``batch_size`` with zero-weight padding rows mixed in."""
  out, i = [], 0
  while i < y.size:
    real = min(int(rng.integers(batch_size // 2, batch_size + 1)), y.size - i)
    pad = batch_size - real
    order = rng.permutation(batch_size) < real  # True where a real row goes
    idx = np.full(batch_size, -1)
    idx[order] = np.arange(i, i + real)
    w = order.astype(float)
    take = np.maximum(idx, 0)
    out.append(dict(labels=np.where(order, y[take], 0.0),
                    preds=np.where(order, p[take], np.nan),
                    weights=w, time=np.where(order, t[take], np.nan),
                    slices={k: np.where(order, v[take], -1) for k, v in cols.items()}))
    i += real
    assert pad >= 0
  return out


def stream_data(seed, n=6000):
  rng = np.random.default_rng(seed)
  y, p, _ = ctr_data(rng, n, "separated")
  t = np.sort(rng.uniform(0, 5 * 3600, n))
  t[rng.random(n) < 0.05] = np.nan
  c1 = rng.choice([7, 8, 9, 10, 11], n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
  return rng, y, p, t, {"C1": c1}


def check_record(rec, y, p, sel, tol_auc=1e-12):
  y, p = y[sel], p[sel]
  assert rec["rows"] == sel.sum()
  assert rec["logloss"] == pytest.approx(M.log_loss(y, p), rel=1e-9)
  assert rec["pcoc"] == pytest.approx(M.pcoc(y, p), rel=1e-9)
  assert rec["ne"] == pytest.approx(M.normalized_entropy(y, p), rel=1e-9)
  assert abs(rec["auc"] - M.auc(y, p)) < tol_auc


def test_row_windows_split_batches_and_match_direct_slices():
  rng, y, p, t, cols = stream_data(10)
  wm = M.WindowedMetrics(window_rows=1000, exact=True)
  closed_at = []
  records = []
  seen = 0
  for b in padded_batches(y, p, t, cols, 384, rng):
    out = wm.update(b["labels"], b["preds"], b["weights"])
    seen += int(b["weights"].sum())
    closed_at += [(r["end_row"], seen) for r in out]
    records += out
  final = wm.finalize()
  records += final["windows"]
  assert [r["start_row"] for r in records] == list(range(0, 6000, 1000))
  assert all(r["end_row"] - r["start_row"] == 1000 for r in records)
  assert not any(r["partial"] for r in records)
  # each window is returned by the update whose batch fills it
  assert all(end <= s < end + 384 for end, s in closed_at)
  for r in records:
    sel = np.zeros(y.size, bool)
    sel[r["start_row"]:r["end_row"]] = True
    check_record(r, y, p, sel)
  assert final["overall"]["rows"] == y.size
  assert final["overall"]["auc"] == pytest.approx(M.auc(y, p), abs=1e-12)
  aucs = [r["auc"] for r in records]
  assert final["variation"]["auc_std"] == pytest.approx(np.std(aucs, ddof=1), rel=1e-12)
  assert final["variation"]["pcoc_max"] == max(r["pcoc"] for r in records)
  assert final["variation"]["by_window"]["rows"]["ne"]["windows"] == 6


def test_row_windows_streaming_mode_and_partial_last_window():
  rng, y, p, t, cols = stream_data(11, n=2500)
  wm = M.WindowedMetrics(window_rows=1000)
  records = []
  for b in padded_batches(y, p, t, cols, 700, rng):
    records += wm.update(b["labels"], b["preds"], b["weights"])
  assert len(records) == 2
  last = wm.finalize_windows()
  assert len(last) == 1 and last[0]["partial"] and last[0]["start_row"] == 2000
  for r in records + last:
    sel = np.zeros(y.size, bool)
    sel[r["start_row"]:r["end_row"]] = True
    check_record(r, y, p, sel, tol_auc=1e-4)
  assert wm.variation()["by_window"]["rows"]["auc"]["windows"] == 2  # partial left out
  with pytest.raises(RuntimeError, match="after finalize"):
    wm.update([1.0], [0.5])


def test_time_windows_close_in_order_count_late_rows_and_nan_time():
  rng, y, p, t, cols = stream_data(12)
  wm = M.WindowedMetrics(time_windows=["hour", 7200], exact=True)
  records = []
  batches = padded_batches(y, p, t, cols, 512, rng)
  max_t = -np.inf
  for b in batches:
    out = wm.update(b["labels"], b["preds"], b["weights"], time=b["time"])
    max_t = max(max_t, np.nanmax(b["time"]))
    # a window is returned as soon as a row at or past its end arrives
    assert all(r["end_time"] <= max_t for r in out)
    records += out
  # late rows for hour 0 and for hour 3 (the last closed one) are counted, not added
  assert max_t > 4 * 3600
  wm.update([1.0, 0.0], [0.9, 0.4], [2.0, 1.0], time=[10.0, 3 * 3600 + 5.0])
  records += wm.finalize_windows()
  hours = [r for r in records if r["window"] == "hour"]
  assert [r["index"] for r in hours] == [0, 1, 2, 3, 4]
  assert [r["partial"] for r in hours] == [False] * 4 + [True]
  two = [r for r in records if r["window"] == "7200s"]
  assert [(r["start_time"], r["end_time"]) for r in two] == [(0, 7200), (7200, 14400),
                                                            (14400, 21600)]
  for r in hours + two:
    sel = (t >= r["start_time"]) & (t < r["end_time"])
    check_record(r, y, p, sel)
  c = wm.counters()
  assert c["late_rows"] == {"hour": 2, "7200s": 2} and c["late_weight"]["hour"] == 3.0
  assert c["rows_without_time"] == np.isnan(t).sum()
  assert wm.overall()["rows"] == y.size + 2
  v = wm.variation()
  assert v["primary"] == "hour" and v["by_window"]["hour"]["auc"]["windows"] == 4


def test_time_windows_absent_without_event_time():
  wm = M.WindowedMetrics(window_rows=0, time_windows="hour,day")
  out = wm.update([0, 1, 1], [0.2, 0.7, 0.4], time=[np.nan] * 3)
  assert out == [] and wm.finalize_windows() == []
  assert wm.counters()["rows_without_time"] == 3
  assert math.isnan(wm.variation()["auc_std"])


def test_slices_explicit_and_top_k():
  rng, y, p, t, cols = stream_data(13)
  c2 = rng.integers(0, 50, y.size)
  cols["C2"] = c2
  wm = M.WindowedMetrics(window_rows=2000, slice_values={"C2": [3, 1]}, slice_top_k=2,
                         exact=True)
  records = []
  batches = padded_batches(y, p, t, cols, 1024, rng)
  first = batches[0]
  top2 = M.top_k_values(first["slices"]["C1"], first["weights"], 2)
  for b in batches:
    records += wm.update(b["labels"], b["preds"], b["weights"], slices=b["slices"])
  final = wm.finalize()
  records += final["windows"]
  assert top2 == [7, 8]
  assert sorted(final["slices"]["C1"], key=str) == sorted([7, 8, M.OTHER], key=str)
  assert sorted(final["slices"]["C2"], key=str) == sorted([3, 1, M.OTHER], key=str)
  c1 = cols["C1"]
  member = {("C1", 7): c1 == 7, ("C1", 8): c1 == 8, ("C1", M.OTHER): ~np.isin(c1, [7, 8]),
            ("C2", 3): c2 == 3, ("C2", 1): c2 == 1, ("C2", M.OTHER): ~np.isin(c2, [1, 3])}
  for (field, value), m in member.items():
    check_record(final["slices"][field][value], y, p, m)
  slice_recs = [r for r in records if r["slice"] is not None]
  assert len(slice_recs) == 3 * 6
  for r in slice_recs:
    sel = member[(r["slice"], r["value"])].copy()
    sel[:r["start_row"]] = False
    sel[r["end_row"]:] = False
    check_record(r, y, p, sel)

  # a first batch of padding only chooses nothing; the next batch with rows does
  wm = M.WindowedMetrics(slice_top_k=1)
  assert wm.update([0.0, 0.0], [0.5, 0.5], [0.0, 0.0], slices={"C1": [4, 4]}) == []
  wm.update([0.0, 1.0, 1.0], [0.2, 0.6, 0.7], slices={"C1": [5, 6, 6]})
  assert sorted(wm.slice_results()["C1"], key=str) == [6, M.OTHER]
  assert wm.slice_results()["C1"][6]["rows"] == 2
  # the slice fields are fixed by the first batch
  with pytest.raises(ValueError, match=r"lacks the fields \['C2'\]"):
    wm = M.WindowedMetrics(window_rows=10)
    wm.update([0, 1], [0.3, 0.4], slices={"C1": [1, 2], "C2": [1, 1]})
    wm.update([0, 1], [0.3, 0.4], slices={"C1": [1, 2]})
  with pytest.raises(ValueError, match=r"new fields \['C3'\]"):
    wm = M.WindowedMetrics(window_rows=10)
    wm.update([0, 1], [0.3, 0.4], slices={"C1": [1, 2]})
    wm.update([0, 1], [0.3, 0.4], slices={"C1": [1, 2], "C3": [1, 1]})


def test_windowed_state_round_trip_mid_stream():
  rng, y, p, t, cols = stream_data(14)
  kwargs = dict(window_rows=900, time_windows=["hour"], slice_top_k=2)
  batches = padded_batches(y, p, t, cols, 500, rng)

  def run(wm, bs):
    out = []
    for b in bs:
      out += wm.update(b["labels"], b["preds"], b["weights"], time=b["time"],
                       slices=b["slices"])
    return out

  full = M.WindowedMetrics(**kwargs)
  ref = run(full, batches)
  ref_final = full.finalize()
  part = M.WindowedMetrics(**kwargs)
  got = run(part, batches[:5])
  restored = M.WindowedMetrics.from_state(json.loads(json.dumps(part.state())))
  got += run(restored, batches[5:])
  final = restored.finalize()
  assert len(ref) > 10
  assert json.dumps(got) == json.dumps(ref)
  assert json.dumps(final) == json.dumps(ref_final)


def test_format_table():
  rows = [{"model": "lr", "auc": 0.781234, "rows": 1000, "pcoc": float("nan")},
          {"model": "deepfm", "auc": 0.8, "rows": 25, "pcoc": None}]
  text = M.format_table(rows, ["model", ("auc", "AUC"), "rows", "pcoc"])
  lines = text.splitlines()
  assert lines[0].split() == ["model", "AUC", "rows", "pcoc"]
  assert lines[2].split() == ["lr", "0.7812", "1000", "nan"]
  assert lines[3].split() == ["deepfm", "0.8000", "25"]
  assert len({len(line) for line in lines[:3]}) == 1  # aligned columns
  assert lines[3].index("0.8000") == lines[2].index("0.7812")
