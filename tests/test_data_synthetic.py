"""Tests of the synthetic Criteo-schema stream (rectrain/data/synthetic.py)."""

import csv
import importlib.util
import math

import numpy as np
import pytest

from rectrain.data import hashing
from rectrain.data import synthetic


def small_config(**overrides):
  """The default model with vocabularies capped at 20k and short days (fast)."""
  c = synthetic.default_config()
  c.cardinalities = tuple(min(n, 20000) for n in c.cardinalities)
  c.rows_per_day = 30000
  c.table_ranks = 4096
  c.block_rows = 8192
  c.calibration_rows = 8192
  return synthetic.resolve_config(c, **overrides)


def collect(stream):
  """All batches of ``stream`` concatenated, padding rows dropped."""
  parts = {}
  for b in stream:
    keep = b["weight"] > 0
    for k, v in b.items():
      parts.setdefault(k, []).append(v[keep])
  return {k: np.concatenate(v) for k, v in parts.items()}


def raw_rows(stream, **kw):
  parts = {}
  for rows in stream.raw_blocks(**kw):
    for k, v in rows.items():
      parts.setdefault(k, []).append(v)
  return {k: np.concatenate(v) for k, v in parts.items()}


def log_loss(p, y):
  p = np.asarray(p, np.float64)
  return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# ---- config --------------------------------------------------------------------------
def test_default_config_spans_a_handful_to_millions():
  c = synthetic.default_config()
  card = np.asarray(c.cardinalities)
  assert card.shape == (26,) and len(c.int_log_mean) == 13
  assert card.min() <= 5 and card.max() >= 1_000_000
  assert 0.2 <= c.base_rate <= 0.3


@pytest.mark.parametrize("kwargs, name", [
    (dict(bogus=1), "bogus"),
    (dict(drift=dict(speed=2.0)), "drift.speed"),
    (dict(cardinalities=(10, 20)), "cardinalities"),
    (dict(cross_pairs=(("C1", "C99"),)), "cross_pairs[0]"),
    (dict(delay=dict(weights=(0.5, 0.2, 0.2))), "delay.weights"),
])
def test_bad_config_names_the_key(kwargs, name):
  with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
    synthetic.SyntheticStream(num_rows_total=10, **kwargs)
  with pytest.raises(ValueError, match=name.split("[")[0]):
    synthetic.resolve_config(kwargs)


# ---- batch contract --------------------------------------------------------------------
@pytest.mark.parametrize("int_mode", ["log1p", "categorical"])
def test_batches_follow_the_contract(int_mode):
  buckets = [3 + 7 * f for f in range(26)]
  s = synthetic.SyntheticStream(small_config(), batch_size=1000, cat_buckets=buckets,
                                int_mode=int_mode, int_buckets=64, num_rows_total=2500, seed=1)
  batches = list(s)
  assert len(batches) == 3 and s.report() == {"rows_read": 2500, "rows": 2500, "skipped": {}}
  num_fields = 26 if int_mode == "log1p" else 39
  assert s.num_dense == (13 if int_mode == "log1p" else 0)
  assert s.num_rows == s.layout.num_rows == sum(buckets) + (13 * 64 if num_fields == 39 else 0)
  dtypes = dict(label=np.float32, weight=np.float32, cat=np.int32, dense=np.float32,
                index=np.int64, time=np.float64, true_prob=np.float32, delay=np.float32)
  for b in batches:
    assert {k: b[k].dtype for k in dtypes} == dtypes and set(b) == set(dtypes)
    assert b["cat"].shape == (1000, num_fields) and b["dense"].shape == (1000, s.num_dense)
  last = batches[-1]
  np.testing.assert_array_equal(last["weight"], np.r_[np.ones(500), np.zeros(500)])
  np.testing.assert_array_equal(last["index"][500:], -1)
  rows = collect(s)
  np.testing.assert_array_equal(rows["index"], np.arange(2500))
  off = s.layout.offsets
  assert np.all((rows["cat"] >= off[:-1]) & (rows["cat"] < off[1:]))

  # Reference: hash the raw values with rectrain.data.hashing, field by field.
  raw = raw_rows(s, want_values=True)
  for f in range(26):
    ref = hashing.hash_to_bucket(raw["values"][:, f], f, buckets[f])
    ref[raw["cat_missing"][:, f]] = 0
    np.testing.assert_array_equal(rows["cat"][:, f], ref + off[f])
  if int_mode == "log1p":
    np.testing.assert_array_equal(rows["dense"],
                                  hashing.log1p_transform(raw["ints"], raw["int_missing"]))
  else:
    for i in range(13):
      tok = hashing.log_square_token(raw["ints"][:, i])
      ref = hashing.hash_to_bucket(tok, 26 + i, 64)
      ref[raw["int_missing"][:, i]] = 0
      np.testing.assert_array_equal(rows["cat"][:, 26 + i], ref + off[26 + i])
  np.testing.assert_array_equal(rows["label"], raw["label"])


# ---- determinism -----------------------------------------------------------------------
def test_same_seed_same_stream_any_batch_size_or_start():
  cfg = small_config()
  a = collect(synthetic.SyntheticStream(cfg, batch_size=512, num_rows_total=20000, seed=5))
  b = collect(synthetic.SyntheticStream(cfg, batch_size=3000, num_rows_total=20000, seed=5))
  c = collect(synthetic.SyntheticStream(cfg, batch_size=700, num_rows_total=5000,
                                        start_row=15000, seed=5))
  d = collect(synthetic.SyntheticStream(cfg, batch_size=512, num_rows_total=20000, seed=6))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a[k][15000:], c[k])
  assert np.mean(a["cat"] != d["cat"]) > 0.3
  assert not np.array_equal(a["label"], d["label"])


# ---- base rate, Zipf, cardinality ---------------------------------------------------------
@pytest.mark.parametrize("base_rate", [0.25, 0.1])
def test_base_rate(base_rate):
  s = synthetic.SyntheticStream(batch_size=4096, num_rows_total=65536, seed=0,
                                base_rate=base_rate)
  rows = raw_rows(s, want_cat=False)
  assert abs(rows["true_prob"].mean() - base_rate) < 0.15 * base_rate
  assert abs(rows["label"].mean() - base_rate) < 0.15 * base_rate


def test_ranks_follow_the_bounded_power_law():
  s = synthetic.SyntheticStream(small_config(drift=dict(strength=0.0)), num_rows_total=40000,
                                seed=2)
  rank = raw_rows(s, want_cat=False)["rank"]
  cfg = s.config
  for f in (0, 1, 6, 13):   # C1 (s=2), C2 (s=1.03), C7 (s=0.66), C14 (s=1.5)
    r = rank[rank[:, f] >= 0, f]
    n, s_f = cfg.cardinalities[f], cfg.zipf_exponents[f]
    # Plain reference: P(rank <= k) = ((k + 2)^(1-s) - 1) / ((N + 1)^(1-s) - 1).
    k = np.arange(8)
    ref_cdf = ((k + 2.0) ** (1 - s_f) - 1) / ((n + 1.0) ** (1 - s_f) - 1)
    emp_cdf = np.array([np.mean(r <= j) for j in k])
    np.testing.assert_allclose(emp_cdf, ref_cdf, atol=4 / math.sqrt(r.size))
    np.testing.assert_allclose(synthetic.zipf_pmf(s_f, n, 8), np.diff(np.r_[0, ref_cdf]),
                               rtol=1e-9)
    counts = np.bincount(r)
    assert counts[0] > 20 * np.median(counts[counts > 0])   # the head dominates


def test_largest_field_reaches_past_a_million():
  s = synthetic.SyntheticStream(num_rows_total=30000, seed=0)
  rows = raw_rows(s, want_values=True, want_cat=False)
  c3 = rows["rank"][:, 2]                   # C3: 10.1M values, s = 1.04
  # P(rank >= 1e6) = (G(N+1) - G(1e6 + 1)) ~ 0.10 under the configured law.
  a = 1 - s.config.zipf_exponents[2]
  n = s.config.cardinalities[2]
  p_ref = 1 - ((1e6 + 1) ** a - 1) / ((n + 1) ** a - 1)
  frac = np.mean(c3 >= 1_000_000)
  assert abs(frac - p_ref) < 0.02 and p_ref > 0.05
  assert np.unique(rows["values"][c3 >= 0, 2]).size > 10000


# ---- time, delays, probabilities ------------------------------------------------------------
def test_time_and_delays():
  s = synthetic.SyntheticStream(small_config(), batch_size=4096, num_rows_total=60000, seed=3)
  rows = collect(s)
  t = rows["time"]
  assert np.all(np.diff(t) >= 0)
  day = 86400.0 / s.config.rows_per_day
  assert np.all((t >= rows["index"] * day) & (t < (rows["index"] + 1) * day))
  pos = rows["label"] == 1
  assert np.all(np.isinf(rows["delay"][~pos])) and np.all(np.isfinite(rows["delay"][pos]))
  d = rows["delay"][pos].astype(np.float64)
  assert 60 < np.median(d) < 6 * 3600 and np.mean(d > 86400) > 0.05
  # Empirical CDF against the log-normal mixture, a plain NumPy reference.
  cfg = s.config.delay
  for x in (60.0, 600.0, 3600.0, 86400.0, 4 * 86400.0):
    ref = sum(w * 0.5 * (1 + math.erf(math.log(x / m) / (sg * math.sqrt(2))))
              for w, m, sg in zip(cfg.weights, cfg.medians_s, cfg.sigmas))
    assert abs(np.mean(d <= x) - ref) < 0.03, x


def test_true_prob_and_bayes_ceiling():
  s = synthetic.SyntheticStream(small_config(), batch_size=4096, num_rows_total=30000, seed=4)
  rows = collect(s)
  p, y = rows["true_prob"], rows["label"]
  assert np.all((p > 0) & (p < 1))
  ceil = synthetic.bayes_ceiling(s, by_day=True)
  rate = y.mean()
  entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
  assert ceil["log_loss"] == pytest.approx(log_loss(p, y), rel=1e-9)
  assert ceil["entropy"] == pytest.approx(entropy) and ceil["log_loss"] < 0.9 * entropy
  assert 0.7 < ceil["auc"] < 0.98
  assert set(ceil["days"]) == {0} and ceil["days"][0]["rows"] == 30000


def test_auc_matches_pairwise_count_with_ties():
  rng = np.random.default_rng(0)
  score = rng.integers(0, 5, 300).astype(np.float32)
  label = rng.random(300) < 0.3
  pos, neg = score[label], score[~label]
  ref = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
  assert synthetic._auc(score, label) == pytest.approx(ref, rel=1e-12)


# ---- the generating model ---------------------------------------------------------------
def test_components_sum_to_the_true_logit_and_crosses_matter():
  s = synthetic.SyntheticStream(small_config(), num_rows_total=40000, seed=7)
  rows = raw_rows(s, want_cat=False, components=True)
  logit = (rows["logit_bias"] + rows["logit_main"].sum(1) + rows["logit_cross"].sum(1)
           + rows["logit_int"].sum(1) + rows["logit_time"])
  p = np.clip(1 / (1 + np.exp(-logit)), 1e-6, 1 - 1e-6).astype(np.float32)
  np.testing.assert_allclose(p, rows["true_prob"], rtol=2e-6, atol=1e-7)
  y = rows["label"].astype(np.float64)
  bayes = log_loss(rows["true_prob"], y)

  def best_rescaling(z):
    """Log loss of the best a + b z (Newton on two parameters)."""
    theta = np.zeros(2)
    x = np.stack([np.ones_like(z), z], 1)
    for _ in range(25):
      q = 1 / (1 + np.exp(-x @ theta))
      hess = x.T @ (x * (q * (1 - q))[:, None])
      theta -= np.linalg.solve(hess, x.T @ (q - y))
    return log_loss(np.clip(1 / (1 + np.exp(-x @ theta)), 1e-12, 1 - 1e-12), y)

  assert best_rescaling(logit) == pytest.approx(bayes, abs=2e-3)   # sanity of the fit
  no_cross = best_rescaling(logit - rows["logit_cross"].sum(1))
  no_int = best_rescaling(logit - rows["logit_int"].sum(1))
  assert no_cross > bayes + 0.02 and no_int > bayes + 0.005


def test_effects_drift_and_ids_churn():
  """Day 0 vs day 3: top ids' effects moved and new ids took over traffic."""
  def days(strength):
    cfg = small_config(drift=dict(strength=strength))
    kw = dict(num_rows_total=30000, seed=8)
    d0 = raw_rows(synthetic.SyntheticStream(cfg, **kw), want_values=True, components=True)
    d3 = raw_rows(synthetic.SyntheticStream(cfg, start_row=90000, **kw), want_values=True,
                  components=True)
    return d0, d3

  stats = {}
  for strength in (1.0, 0.0):
    d0, d3 = days(strength)
    f = 0                                    # C1's most popular value
    eff0 = d0["logit_main"][d0["rank"][:, f] == 0, f]
    eff3 = d3["logit_main"][d3["rank"][:, f] == 0, f]
    if strength == 0.0:
      assert np.all(eff0 == eff0[0]) and np.all(eff3 == eff0[0])
    f = 6                                    # C7: 12517 values, churns
    seen = np.isin(d3["values"][:, f], d0["values"][:, f])
    top0 = set(np.unique(d0["values"][d0["rank"][:, f] < 20, f]))
    top3 = set(np.unique(d3["values"][d3["rank"][:, f] < 20, f]))
    stats[strength] = (abs(eff3[0] - eff0[0]), 1 - seen.mean(), len(top0 & top3))
  moved, unseen, shared_top = stats[1.0]
  assert moved > 0.02 and stats[0.0][0] == 0.0
  # New ids: churn 0.05/day replaces ~15% of the head in 3 days.
  assert unseen > stats[0.0][1] + 0.05
  assert shared_top < 20 and stats[0.0][2] == 20


def _fit_hashed_lr(cat, y, num_rows, iters=150, lr=0.3, l2=1e-4):
  """Full-batch AdaGrad logistic regression on one-hot row ids (plain NumPy)."""
  w, b, acc = np.zeros(num_rows), 0.0, np.full(num_rows, 1e-8)
  for _ in range(iters):
    p = 1 / (1 + np.exp(-(w[cat].sum(1) + b)))
    g = p - y
    gw = np.bincount(cat.ravel(), np.repeat(g, cat.shape[1]), num_rows) / y.size + l2 * w
    acc += gw * gw
    w -= lr * gw / np.sqrt(acc)
    b -= g.mean()
  return w, b


def test_frozen_model_loses_quality_over_days():
  """An LR trained on day 0 has a larger regret (vs Bayes) on day 3 than on day 0,
  and not when the drift is switched off."""
  regret_growth = {}
  for strength in (1.0, 0.0):
    cfg = small_config(drift=dict(strength=strength))
    kw = dict(batch_size=10000, cat_buckets=1 << 12, seed=3)
    d0 = collect(synthetic.SyntheticStream(cfg, num_rows_total=30000, **kw))
    d3 = collect(synthetic.SyntheticStream(cfg, num_rows_total=10000, start_row=90000, **kw))
    num_rows = synthetic.SyntheticStream(cfg, **kw).num_rows
    w, b = _fit_hashed_lr(d0["cat"][:20000], d0["label"][:20000], num_rows)
    regret = []
    for d in ({k: v[20000:] for k, v in d0.items()}, d3):
      p = 1 / (1 + np.exp(-(w[d["cat"]].sum(1) + b)))
      regret.append(log_loss(p, d["label"]) - log_loss(d["true_prob"], d["label"]))
    regret_growth[strength] = regret[1] - regret[0]
  assert regret_growth[1.0] > 0.015
  assert abs(regret_growth[0.0]) < 0.012
  assert regret_growth[1.0] > regret_growth[0.0] + 0.015


# ---- TSV -----------------------------------------------------------------------------
def _parse_tsv_numpy(path, layout):
  """A plain csv-module parser of Criteo TSV into label/cat/dense (reference)."""
  labels, cats, dense = [], [], []
  off = layout.offsets
  with open(path, newline="") as fh:
    for line in csv.reader(fh, delimiter="\t"):
      assert len(line) == 40
      labels.append(float(line[0]))
      ints = [int(v) if v else 0 for v in line[1:14]]
      miss = [v == "" for v in line[1:14]]
      dense.append(hashing.log1p_transform(np.array(ints), np.array(miss)))
      row = []
      for f, v in enumerate(line[14:]):
        if v == "":
          row.append(off[f])
        else:
          assert len(v) == 8 and v == v.lower()
          row.append(off[f] + hashing.hash_to_bucket(np.array([int(v, 16)]), f,
                                                     layout.buckets[f])[0])
      cats.append(row)
  return np.array(labels, np.float32), np.array(cats), np.array(dense)


def test_tsv_round_trip_plain_parser(tmp_path):
  path = tmp_path / "synth.tsv"
  cfg = small_config()
  info = synthetic.write_tsv(str(path), 300, seed=9, config=cfg)
  assert info["rows"] == 300
  s = synthetic.SyntheticStream(cfg, batch_size=128, cat_buckets=1000, num_rows_total=300,
                                seed=9)
  rows = collect(s)
  label, cat, dense = _parse_tsv_numpy(path, s.layout)
  assert info["positives"] == int(label.sum())
  np.testing.assert_array_equal(label, rows["label"])
  np.testing.assert_array_equal(cat, rows["cat"])
  np.testing.assert_array_equal(dense, rows["dense"])
  raw = raw_rows(s, want_cat=False)
  text = path.read_text().splitlines()
  assert any(line.split("\t")[2].startswith("-") for line in text)      # I2 negatives
  ints = np.array([[int(v) if v else 0 for v in line.split("\t")[1:14]] for line in text])
  np.testing.assert_array_equal(ints, np.where(raw["int_missing"], 0, raw["ints"]))


@pytest.mark.skipif(importlib.util.find_spec("rectrain.data.criteo") is None,
                    reason="rectrain.data.criteo not written yet")
@pytest.mark.parametrize("int_mode", ["log1p", "categorical"])
def test_tsv_round_trip_criteo_stream(tmp_path, int_mode):
  from rectrain.data.criteo import CriteoStream
  path = tmp_path / "synth.tsv.gz"
  synthetic.write_tsv(str(path), 5000, seed=11)
  kw = dict(batch_size=1024, cat_buckets=1 << 16, int_mode=int_mode, int_buckets=128)
  direct = collect(synthetic.SyntheticStream(num_rows_total=5000, seed=11, **kw))
  parsed = collect(CriteoStream(str(path), workers=0, **kw))
  for k in ("label", "cat", "dense", "index"):
    np.testing.assert_array_equal(parsed[k], direct[k], err_msg=k)
