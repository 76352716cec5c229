"""Tests of rectrain.data.delay_join against plain Python references."""

import math

import numpy as np
import pytest

from rectrain.data import batch as batch_lib
from rectrain.data.delay_join import (MODES, JoinConfig, JoinWindow, LabelJoiner,
                                      scatter_order, true_labels)

W, A = 300.0, 2000.0
SNAPS = (0.0, 300.0, 2000.0)
INF = float("inf")


def hand_stream(n=80, source_batch=7, seed=0):
  """Rows with tied times and delays on every boundary (0, W, A, inf, ...)."""
  rng = np.random.default_rng(seed)
  # Ties, and rows exactly on window boundaries (multiples of 350 and 700).
  time = np.sort(np.concatenate([rng.integers(0, 6000, n - 4), [700, 1400, 1400, 2100]]))
  time = time.astype(np.float64)
  time[5] = time[4]
  special = np.array([0.0, 1.0, 50.0, W, W + 1, 1999.0, A, A + 1, 4000.0, INF, INF, INF],
                     np.float32)
  delay = rng.choice(special, n).astype(np.float32)
  rows = {"label": np.isfinite(delay).astype(np.float32),
          "weight": np.ones(n, np.float32),
          "cat": rng.integers(0, 1000, (n, 3)).astype(np.int32),
          "dense": rng.random((n, 2)).astype(np.float32),
          "index": np.arange(n, dtype=np.int64) + 1000,
          "time": time,
          "true_prob": rng.random(n).astype(np.float32),
          "delay": delay}
  batches = [{k: v[i:i + source_batch] for k, v in rows.items()}
             for i in range(0, n, source_batch)]
  batches[-1] = batch_lib.pad_batch(batches[-1], source_batch)
  return batches, rows


def reference(rows, mode, wait_s=W, attribution_s=A, snapshot_s=SNAPS):
  """Plain Python: (emit_time, index, kind, observed label, true label) in emission order."""
  out = []
  for t, d, i in zip(rows["time"].tolist(), rows["delay"].astype(np.float64).tolist(),
                     rows["index"].tolist()):
    y = d <= attribution_s
    if mode == "oracle":
      out.append((t, i, 0, y, y))
    elif mode == "wait":
      w = attribution_s if math.isinf(wait_s) else wait_s
      out.append((t + w, i, 0, d <= w, y))
    elif mode in ("fast", "esdfm", "defer"):
      w = 0.0 if mode == "fast" else wait_s
      out.append((t + w, i, 0, d <= w, y))
      delayed = w < d <= attribution_s
      if delayed:
        out.append((t + d, i, 1, True, y))
      if mode == "defer" and not delayed:
        out.append((t + attribution_s, i, 3 if d <= w else 2, d <= w, y))
    else:
      for k, s in enumerate(snapshot_s):
        out.append((t + s, i, k, d <= s, y))
  out.sort(key=lambda e: (e[0], e[1], e[2]))
  return out


def config(mode, **kw):
  kw.setdefault("wait_s", W)
  return JoinConfig(mode=mode, attribution_s=A, snapshot_s=SNAPS, batch_size=4, **kw)


def real_rows(batches):
  """Concatenated real (weight > 0) rows of a list of batches."""
  if not batches:
    return None
  keys = batches[0].keys()
  cat = {k: np.concatenate([b[k] for b in batches]) for k in keys}
  real = cat["weight"] > 0
  return {k: v[real] for k, v in cat.items()}


def emitted_tuples(rows):
  return list(zip(rows["emit_time"].tolist(), rows["index"].tolist(), rows["kind"].tolist(),
                  (rows["label"] > 0.5).tolist(), (rows["label_true"] > 0.5).tolist()))


ALL_MODES = [("oracle", W), ("wait", W), ("wait", 0.0), ("wait", INF), ("fast", W),
             ("esdfm", W), ("esdfm", 0.0), ("esdfm", A), ("defer", W), ("snapshots", W)]


@pytest.mark.parametrize("mode,wait_s", ALL_MODES)
def test_emissions_match_reference(mode, wait_s):
  batches, rows = hand_stream()
  joiner = LabelJoiner(batches, config(mode, wait_s=wait_s, drain=True))
  got, pending_got, windows = [], [], list(joiner.windows(700.0))
  ref = reference(rows, mode, wait_s)
  for w in windows:
    assert w.end - w.start == 700.0 and w.start % 700.0 == 0
    e = real_rows(w.emitted)
    if e is None:
      pending_got.append(w.counts["pending"])
      continue
    assert np.all((e["emit_time"] >= w.start) & (e["emit_time"] < w.end))
    assert np.all(np.diff(e["emit_time"]) >= 0)                 # event-time order
    np.testing.assert_allclose(e["elapsed"], e["emit_time"] - e["time"], rtol=1e-6)
    # Features travel with the row.
    src = {i: j for j, i in enumerate(rows["index"].tolist())}
    at = np.array([src[i] for i in e["index"].tolist()])
    np.testing.assert_array_equal(e["cat"], rows["cat"][at])
    np.testing.assert_array_equal(e["delay"], rows["delay"][at])
    np.testing.assert_array_equal(e["time"], rows["time"][at])
    assert e["kind"].dtype == np.int32 and e["emit_time"].dtype == np.float64
    assert e["label_true"].dtype == np.float32 and e["elapsed"].dtype == np.float32
    got += emitted_tuples(e)
    pending_got.append(w.counts["pending"])
  assert got == ref
  # Pending at each window end = reference emissions of seen rows due at or after the end.
  for w, pending in zip(windows, pending_got):
    seen = set(rows["index"][rows["time"] < w.end].tolist())
    assert pending == sum(1 for e in ref if e[1] in seen and e[0] >= w.end)
  rep = joiner.report()
  assert rep["emitted"] == len(ref) and rep["dropped_at_end"] == 0 and rep["rows"] == 80
  for k in range(config(mode).num_kinds):
    assert rep[f"emitted_kind_{k}"] == rep[f"scheduled_kind_{k}"] == sum(
        1 for e in ref if e[2] == k)
  assert rep["fake_negatives"] == sum(1 for e in ref if e[4] and not e[3])


@pytest.mark.parametrize("mode", MODES)
def test_without_drain_the_rest_is_dropped_and_counted(mode):
  batches, rows = hand_stream()
  joiner = LabelJoiner(batches, config(mode))
  windows = list(joiner.windows(1000.0))
  last_end = windows[-1].end
  assert windows[-1].start <= rows["time"].max() < last_end
  ref = reference(rows, mode)
  got = []
  for w in windows:
    e = real_rows(w.emitted)
    got += emitted_tuples(e) if e is not None else []
  assert got == [e for e in ref if e[0] < last_end]
  rep = joiner.report()
  k = config(mode).num_kinds
  assert windows[-1].counts["dropped_at_end"] == rep["dropped_at_end"] == sum(
      1 for e in ref if e[0] >= last_end)
  for kind in range(k):
    assert rep[f"scheduled_kind_{kind}"] == (rep[f"emitted_kind_{kind}"]
                                             + rep[f"dropped_kind_{kind}"])
  assert rep["emitted"] + rep["dropped_at_end"] == len(ref)
  # Summing the windows' counters gives the totals.
  for key in ("emitted", "impressions", "lost_positives", "late_conversions"):
    total = sum(w.counts[key] for w in windows)
    assert total == rep["rows" if key == "impressions" else key]


def test_every_impression_in_exactly_one_window_with_true_labels():
  batches, rows = hand_stream()
  joiner = LabelJoiner(batches, config("fast"))
  seen = []
  for w in joiner.windows(350.0):
    assert isinstance(w, JoinWindow)
    imp = real_rows(w.impressions)
    if imp is None:
      assert w.counts["impressions"] == 0
      continue
    assert np.all((imp["time"] >= w.start) & (imp["time"] < w.end))
    np.testing.assert_array_equal(imp["label"], true_labels(imp["delay"], A))
    np.testing.assert_array_equal(imp["label_true"], imp["label"])
    assert w.counts["impressions"] == imp["index"].size
    assert w.counts["impression_positives"] == int(imp["label"].sum())
    seen += imp["index"].tolist()
  assert sorted(seen) == rows["index"].tolist()
  rep = joiner.report()
  assert rep["rows"] == 80 and rep["source_padding"] == 7 * 12 - 80
  assert rep["late_conversions"] == int((np.isfinite(rows["delay"]) & (rows["delay"] > A)).sum())


def test_oracle_labels_are_true_labels_and_wait_inf_matches_them():
  batches, rows = hand_stream()
  y = true_labels(rows["delay"], A).astype(np.float32)
  assert y.sum() > 0 and (1 - y).sum() > 0
  by_mode = {}
  for mode, wait_s in (("oracle", 0.0), ("wait", INF)):
    e = real_rows([b for w in LabelJoiner(batches, config(mode, wait_s=wait_s, drain=True))
                   .windows(500.0) for b in w.emitted])
    order = np.argsort(e["index"])
    np.testing.assert_array_equal(e["index"][order], rows["index"])
    by_mode[mode] = e["label"][order]
    np.testing.assert_array_equal(by_mode[mode], y)
  e = real_rows([b for w in LabelJoiner(batches, config("wait", wait_s=INF, drain=True))
                 .windows(500.0) for b in w.emitted])
  np.testing.assert_array_equal(e["elapsed"], np.full(80, A, np.float32))
  # A finite wait loses the positives that convert after it, and counts them.
  j = LabelJoiner(batches, config("wait", wait_s=W, drain=True))
  e = real_rows([b for w in j.windows(500.0) for b in w.emitted])
  lost = (rows["delay"] > W) & (rows["delay"] <= A)
  assert lost.sum() > 0 and j.report()["lost_positives"] == int(lost.sum())
  assert int(e["label"].sum()) == int(y.sum()) - int(lost.sum())


def synthetic(rows=6000, batch_size=256):
  from rectrain.data.synthetic import SyntheticStream
  return list(SyntheticStream(batch_size=batch_size, cat_buckets=1 << 10, num_rows_total=rows,
                              seed=1, rows_per_day=2000))


@pytest.fixture(scope="module")
def synth():
  return synthetic()


@pytest.mark.parametrize("mode", ["fast", "esdfm", "defer"])
def test_re_emissions_equal_delayed_positives_on_the_synthetic_stream(synth, mode):
  a, w = 86400.0, 3600.0
  d = np.concatenate([b["delay"][b["weight"] > 0] for b in synth]).astype(np.float64)
  joiner = LabelJoiner(synth, JoinConfig(mode=mode, wait_s=w, attribution_s=a, batch_size=256,
                                         drain=True))
  kinds = np.concatenate([b["kind"][b["weight"] > 0] for win in joiner.windows(7200.0)
                          for b in win.emitted])
  w_eff = 0.0 if mode == "fast" else w
  delayed = int(((d > w_eff) & (d <= a)).sum())
  assert delayed > 100
  assert int((kinds == 1).sum()) == delayed == joiner.report()["emitted_kind_1"]
  assert int((kinds == 0).sum()) == d.size
  if mode == "defer":     # every sample twice: real negatives and in-window positives at t + A
    assert kinds.size == 2 * d.size
    assert int((kinds == 3).sum()) == int((d <= w).sum())
    assert int((kinds == 2).sum()) == int((d > a).sum())   # never / too late: real negatives


def test_scatter_order_matches_block_reference():
  rng = np.random.default_rng(3)
  for n, s in ((0, 4), (1, 4), (37, 8), (64, 16), (100, 100), (101, 7)):
    pos = rng.random(n) < 0.3
    pos[:min(n, 12)] = True   # a burst at the start
    order = scatter_order(pos, s)
    ref = []
    g = -(-n // s)
    for k in range(g):
      idx = list(range(k * n // g, (k + 1) * n // g))
      assert len(idx) <= s
      p = [i for i in idx if pos[i]]
      q = [i for i in idx if not pos[i]]
      m = len(idx)
      slots = {math.floor((r + 0.5) * m / len(p)): i for r, i in enumerate(p)}
      block = [slots[o] if o in slots else q.pop(0) for o in range(m)]
      ref += block
    assert order.tolist() == ref
    assert sorted(order.tolist()) == list(range(n))
    if n:
      assert np.abs(np.argsort(order) - np.arange(n)).max() < s


def test_scattering_spreads_a_burst_within_the_buffer_bound():
  # 464 impressions at t = 0..463 (fast emit: negatives at t); the first 64
  # convert together at t = 250.5, a burst of 64 positives mid-window.
  n_neg, n_pos, b = 400, 64, 16
  n = n_neg + n_pos
  time = np.arange(n, dtype=np.float64)
  delay = np.full(n, np.inf, np.float32)
  burst = np.arange(n_pos)
  delay[burst] = (250.5 - time[burst]).astype(np.float32)
  rows = {"label": np.isfinite(delay).astype(np.float32), "weight": np.ones(n, np.float32),
          "cat": np.arange(n, dtype=np.int32)[:, None], "dense": np.zeros((n, 0), np.float32),
          "index": np.arange(n, dtype=np.int64), "time": time, "delay": delay}
  src = [{k: v[i:i + 50] for k, v in rows.items()} for i in range(0, n, 50)]
  per_batch = {}
  emitted = {}
  bound = 16 * b
  for s in (0, bound):
    cfg = JoinConfig(mode="fast", attribution_s=5000.0, batch_size=b, scatter_rows=s,
                     drain=True)
    windows = list(LabelJoiner(src, cfg).windows(1e6))
    assert len(windows) == 1
    e = windows[0].emitted
    per_batch[s] = np.array([int(x["label"][x["weight"] > 0].sum()) for x in e])
    emitted[s] = real_rows(e)
    if s:
      assert windows[0].counts["scattered"] > 0
  assert per_batch[0].max() == b                  # the burst fills whole batches
  assert per_batch[0].sum() == per_batch[bound].sum() == n_pos
  # 528 emissions in 3 blocks of 176 rows; the burst's block gets 64 / 176
  # positives per row: at most ceil(16 * 64 / 176) = 6 per batch of 16.
  assert per_batch[bound].max() <= 6
  assert (per_batch[bound] > 0).sum() >= 11       # spread over the block's batches
  # Same multiset of samples, and nobody moved by the bound or more.
  key = lambda r: list(zip(r["index"].tolist(), r["kind"].tolist(), r["label"].tolist()))
  plain, scat = key(emitted[0]), key(emitted[bound])
  assert sorted(plain) == sorted(scat)
  pos_of = {k: i for i, k in enumerate(plain)}
  shift = np.array([i - pos_of[k] for i, k in enumerate(scat)])
  assert 0 < np.abs(shift).max() < bound


def test_batches_are_full_and_padding_has_weight_zero():
  batches, _ = hand_stream()
  for w in LabelJoiner(batches, config("defer", drain=True)).windows(700.0):
    for group in (w.impressions, w.emitted):
      for i, b in enumerate(group):
        for key, value in b.items():
          assert value.shape[0] == 4, key
        pad = b["weight"] == 0
        assert np.all(b["weight"][~pad] == 1)
        if i < len(group) - 1:
          assert not pad.any()
        assert np.all(b["index"][pad] == -1) and np.all(b["label"][pad] == 0)
        assert np.all(np.isnan(b["time"][pad]))
        if "emit_time" in b:
          assert np.all(np.isnan(b["emit_time"][pad])) and np.all(b["kind"][pad] == 0)


def test_emissions_iterator_rebatches_the_windows():
  batches, rows = hand_stream()
  cfg = config("esdfm", drain=True)
  out = list(LabelJoiner(batches, cfg).emissions(700.0))
  assert all(b["weight"].shape[0] == 4 for b in out)
  assert all(b["weight"].all() for b in out[:-1])
  assert emitted_tuples(real_rows(out)) == reference(rows, "esdfm")


def test_bad_configs_name_the_field():
  cases = [(dict(mode="nope"), "mode"),
           (dict(mode="wait", wait_s=-1.0), "wait_s"),
           (dict(mode="wait", wait_s=float("nan")), "wait_s"),
           (dict(mode="esdfm", wait_s=A + 1), "wait_s"),
           (dict(mode="defer", wait_s=INF), "wait_s"),
           (dict(mode="wait", wait_s=2 * A), "wait_s"),
           (dict(mode="fast", attribution_s=0.0), "attribution_s"),
           (dict(mode="fast", attribution_s=INF), "attribution_s"),
           (dict(mode="snapshots", snapshot_s=()), "snapshot_s"),
           (dict(mode="snapshots", snapshot_s=(10.0, 5.0)), "snapshot_s"),
           (dict(mode="snapshots", snapshot_s=(10.0, A + 1)), "snapshot_s"),
           (dict(mode="snapshots", snapshot_s=(-1.0,)), "snapshot_s"),
           (dict(mode="fast", batch_size=0), "batch_size"),
           (dict(mode="fast", scatter_rows=-1), "scatter_rows"),
           (dict(mode="fast", scatter_rows=2), "scatter_rows")]
  for kw, field in cases:
    kw.setdefault("batch_size", 4)
    kw.setdefault("attribution_s", A)
    with pytest.raises(ValueError, match=field):
      JoinConfig(**kw)
  # Fields a mode does not use are ignored (the trainer passes all of them).
  JoinConfig(mode="fast", wait_s=2 * A, attribution_s=A, snapshot_s=(5.0, 1.0), batch_size=4)
  with pytest.raises(ValueError, match="window_s"):
    next(LabelJoiner([], config("fast")).windows(0.0))


def test_bad_sources_raise_naming_the_row():
  batches, _ = hand_stream()
  swapped = [dict(b) for b in batches]
  swapped[0]["time"] = swapped[0]["time"][::-1].copy()
  with pytest.raises(ValueError, match="event-time order"):
    list(LabelJoiner(swapped, config("fast")).windows(500.0))
  no_delay = [{k: v for k, v in b.items() if k != "delay"} for b in batches]
  with pytest.raises(ValueError, match="'delay'"):
    list(LabelJoiner(no_delay, config("fast")).windows(500.0))
  negative = [dict(b) for b in batches]
  negative[1]["delay"] = negative[1]["delay"].copy()
  negative[1]["delay"][2] = -5.0
  with pytest.raises(ValueError, match="index 1009"):
    list(LabelJoiner(negative, config("fast")).windows(500.0))
