"""Tests of rectrain.data.criteo (CriteoStream) and rectrain.data.stats."""

import gzip
import json
import os
import shutil

import numpy as np
import pytest

from rectrain.data import hashing
from rectrain.data.criteo import COLUMN_NAMES, CriteoStream
from rectrain.data.stats import KMVSketch, data_stats

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "criteo_dac_head4222.tsv")
NUM_LINES = 4222


def _lines():
  with open(SAMPLE) as f:
    return f.read().split("\n")[:NUM_LINES]


def _collect(stream):
  batches = list(stream)
  out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  keep = out["weight"] > 0
  return batches, {k: v[keep] for k, v in out.items()}


def _reference(lines, cat_buckets, int_mode="log1p", int_buckets=512):
  """Plain per-line reference: str.split, int(), int(hex, 16), one hash per field."""
  fields = [line.split("\t") for line in lines]
  assert all(len(f) == 40 for f in fields)
  layout = hashing.make_layout(cat_buckets, int_mode, int_buckets)
  offsets = layout.offsets
  label = np.array([float(f[0]) for f in fields], np.float32)
  cat = np.zeros((len(fields), layout.num_fields), np.int64)
  for j in range(26):
    raw = [f[14 + j] for f in fields]
    present = np.array([v != "" for v in raw])
    vals = np.array([int(v, 16) if v else 0 for v in raw], np.uint64)
    ids = hashing.hash_to_bucket(vals, j, layout.buckets[j])
    cat[:, j] = offsets[j] + np.where(present, ids, 0)
  ints = [[f[1 + j] for f in fields] for j in range(13)]
  if int_mode == "log1p":
    dense = np.array([[np.log1p(max(int(v), 0)) if v else 0.0 for v in col] for col in ints],
                     np.float64).T.astype(np.float32)
  else:
    dense = np.zeros((len(fields), 0), np.float32)
    for j, col in enumerate(ints):
      f = 26 + j
      present = np.array([v != "" for v in col])
      vals = np.array([int(v) if v else 0 for v in col], np.int64)
      tok = hashing.log_square_token(vals)
      ids = hashing.hash_to_bucket(tok, f, layout.buckets[f])
      cat[:, f] = offsets[f] + np.where(present, ids, 0)
  return label, cat, dense


def _write(path, lines, gz=False):
  data = ("\n".join(lines) + "\n").encode()
  if gz:
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    with open(path, "wb") as f:
      f.write(data)
  return str(path)


# ---------------------------------------------------------------- the real sample


def test_sample_rows_labels_and_report():
  stream = CriteoStream(SAMPLE, batch_size=1000, cat_buckets=1000)
  batches, rows = _collect(stream)
  assert len(batches) == 5
  for b in batches:
    assert b["label"].shape == (1000,) and b["label"].dtype == np.float32
    assert b["weight"].dtype == np.float32
    assert b["cat"].shape == (1000, 26) and b["cat"].dtype == np.int32
    assert b["dense"].shape == (1000, 13) and b["dense"].dtype == np.float32
    assert b["index"].dtype == np.int64 and b["time"].dtype == np.float64
    assert np.isnan(b["time"]).all()
  assert rows["label"].shape == (NUM_LINES,)
  assert int(rows["label"].sum()) == 876
  assert round(float(rows["label"].mean()), 4) == 0.2075
  np.testing.assert_array_equal(rows["index"], np.arange(NUM_LINES))
  assert stream.report() == {"rows_read": NUM_LINES, "rows": NUM_LINES, "skipped": {},
                             "first_errors": []}
  assert stream.num_rows == 26 * 1000 == stream.layout.num_rows
  assert stream.num_dense == 13 and stream.batch_size == 1000


def test_sample_matches_per_line_reference():
  buckets = [1000 + 17 * j for j in range(26)]
  _, rows = _collect(CriteoStream(SAMPLE, batch_size=512, cat_buckets=buckets))
  label, cat, dense = _reference(_lines(), buckets)
  np.testing.assert_array_equal(rows["label"], label)
  np.testing.assert_array_equal(rows["cat"], cat)
  np.testing.assert_allclose(rows["dense"], dense, rtol=1e-6)


def test_sample_categorical_mode_matches_reference():
  stream = CriteoStream(SAMPLE, batch_size=4096, cat_buckets=300, int_mode="categorical",
                        int_buckets=64)
  _, rows = _collect(stream)
  label, cat, dense = _reference(_lines(), 300, "categorical", 64)
  assert stream.num_dense == 0 and rows["dense"].shape == (NUM_LINES, 0)
  assert rows["cat"].shape == (NUM_LINES, 39)
  assert stream.num_rows == 26 * 300 + 13 * 64
  np.testing.assert_array_equal(rows["cat"], cat)
  np.testing.assert_array_equal(rows["label"], label)


def test_known_values_read_by_hand():
  # Line 1: 0 1 1 5 0 1382 4 15 2 181 1 2 <empty> 2 | 68fd1e64 80e26c9b ... C22 empty ... 9727dd16
  # Line 4: 0 <empty> 893 ...; line 5: 0 3 -1 ...
  b = next(iter(CriteoStream(SAMPLE, batch_size=8, cat_buckets=1 << 20)))
  B = 1 << 20
  assert b["cat"][0, 0] == hashing.hash_to_bucket(np.array([0x68FD1E64]), 0, B)[0]
  assert b["cat"][0, 1] == B + hashing.hash_to_bucket(np.array([0x80E26C9B]), 1, B)[0]
  assert b["cat"][0, 25] == 25 * B + hashing.hash_to_bucket(np.array([0x9727DD16]), 25, B)[0]
  assert b["cat"][0, 21] == 21 * B  # C22 empty -> bucket 0 of field 21.
  np.testing.assert_allclose(b["dense"][0, :5], np.log1p([1, 1, 5, 0, 1382]), rtol=1e-6)
  assert b["dense"][0, 11] == 0.0  # I12 empty.
  assert b["dense"][3, 0] == 0.0 and np.isclose(b["dense"][3, 1], np.log1p(893))
  assert b["dense"][4, 1] == 0.0  # I2 = -1 clipped at 0.
  np.testing.assert_array_equal(b["label"], [0, 0, 0, 0, 0, 0, 0, 1])


def test_hashing_regression_values():
  """Ids computed once with this implementation; a change here breaks checkpoints."""
  assert hashing.hash_to_bucket(np.array([0x68FD1E64]), 0, 1 << 20)[0] == 688504
  assert hashing.hash_to_bucket(np.array([0x9727DD16]), 25, 1 << 20)[0] == 604872
  b = next(iter(CriteoStream(SAMPLE, batch_size=2, cat_buckets=1000)))
  np.testing.assert_array_equal(b["cat"][0], [
      217, 1928, 2186, 3134, 4081, 5597, 6390, 7489, 8982, 9089, 10343, 11520, 12302,
      13713, 14100, 15716, 16495, 17644, 18635, 19370, 20940, 21000, 22656, 23208, 24399,
      25843])


def test_hash_fields_to_buckets_equals_hash_to_bucket():
  rng = np.random.default_rng(0)
  values = rng.integers(0, 2**64 - 1, size=(5, 300), dtype=np.uint64, endpoint=True)
  values[0, :3] = [0, 2**64 - 1, 2**63]
  for buckets in ([2, 3, 1000, 1 << 20, 2**31 - 1], [1 << 20] * 5):
    got = hashing.hash_fields_to_buckets(values, [0, 7, 25, 26, 38], buckets)
    want = np.stack([hashing.hash_to_bucket(values[i], f, b)
                     for i, (f, b) in enumerate(zip([0, 7, 25, 26, 38], buckets))])
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 1


def test_partial_last_batch_is_padded():
  batches = list(CriteoStream(SAMPLE, batch_size=1000))
  last = batches[-1]
  assert last["label"].shape == (1000,)
  np.testing.assert_array_equal(last["weight"][:222], 1)
  np.testing.assert_array_equal(last["weight"][222:], 0)
  np.testing.assert_array_equal(last["index"][222:], -1)
  np.testing.assert_array_equal(last["index"][:222], np.arange(4000, NUM_LINES))
  assert (last["label"][222:] == 0).all() and (last["cat"][222:] == 0).all()


def test_max_rows_and_reiteration():
  stream = CriteoStream(SAMPLE, batch_size=1000, max_rows=1500)
  first = list(stream)
  assert len(first) == 2 and sum(float(b["weight"].sum()) for b in first) == 1500
  assert stream.report()["rows"] == 1500 and stream.report()["rows_read"] == 1500
  second = list(stream)
  for a, b in zip(first, second):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert stream.report()["rows"] == 1500


def test_workers_and_block_size_do_not_change_the_stream():
  ref = list(CriteoStream(SAMPLE, batch_size=300, workers=0))
  got = list(CriteoStream(SAMPLE, batch_size=300, workers=3, block_size=1 << 14))
  assert len(ref) == len(got)
  for a, b in zip(ref, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_gzip_equals_plain(tmp_path):
  gz = tmp_path / "train.txt.gz"
  with open(SAMPLE, "rb") as f, gzip.open(gz, "wb") as g:
    shutil.copyfileobj(f, g)
  magic_only = tmp_path / "day_0"  # gzip detected by magic bytes, no suffix.
  shutil.copy(gz, magic_only)
  _, ref = _collect(CriteoStream(SAMPLE, batch_size=777))
  for path in (gz, magic_only):
    _, got = _collect(CriteoStream(path, batch_size=777))
    for k in ref:
      np.testing.assert_array_equal(ref[k], got[k])


def test_several_paths_in_order(tmp_path):
  lines = _lines()
  a = _write(tmp_path / "day_0", lines[:1000])
  b = _write(tmp_path / "day_1", lines[1000:2500] + ["0\t1"] + lines[2500:])
  stream = CriteoStream([a, b], batch_size=1000)
  _, got = _collect(stream)
  _, ref = _collect(CriteoStream(SAMPLE, batch_size=1000))
  for k in ref:
    np.testing.assert_array_equal(ref[k], got[k])
  assert stream.report()["rows_read"] == NUM_LINES + 1
  assert stream.report()["first_errors"] == [
      f"{b}:1501: wrong_field_count: expected 40 tab-separated fields, got 2"]


# ---------------------------------------------------------------- bad lines

_GOOD = _lines()[:40]


def _corrupt(line, col, value):
  f = line.split("\t")
  f[col] = value
  return "\t".join(f)


BAD_CASES = [
    ("too_few", lambda l: "\t".join(l.split("\t")[:39]), "wrong_field_count", "got 39"),
    ("too_many", lambda l: l + "\tabc", "wrong_field_count", "got 41"),
    ("empty", lambda l: "", "wrong_field_count", "empty line"),
    ("bad_int", lambda l: _corrupt(l, 5, "12a"), "bad_int", "field I5: '12a'"),
    ("float_int", lambda l: _corrupt(l, 2, "1.5"), "bad_int", "field I2: '1.5'"),
    ("hex_int", lambda l: _corrupt(l, 3, "0x10"), "bad_int", "field I3: '0x10'"),
    ("non_hex", lambda l: _corrupt(l, 16, "zzzzzzzz"), "bad_cat", "field C3: 'zzzzzzzz'"),
    ("short_hex", lambda l: _corrupt(l, 39, "abc"), "bad_cat", "field C26: 'abc'"),
    ("long_hex", lambda l: _corrupt(l, 14, "68fd1e641"), "bad_cat", "field C1: '68fd1e641'"),
    ("label_2", lambda l: _corrupt(l, 0, "2"), "bad_label", "label '2'"),
    ("label_missing", lambda l: _corrupt(l, 0, ""), "bad_label", "field label is empty"),
]


@pytest.mark.parametrize("name,make,reason,detail", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_each_bad_line_reason_under_both_policies(tmp_path, name, make, reason, detail):
  lines = list(_GOOD)
  lines[16] = make(lines[16])  # line 17
  path = _write(tmp_path / f"{name}.tsv", lines)
  stream = CriteoStream(path, batch_size=16, bad_lines="skip")
  _, rows = _collect(stream)
  rep = stream.report()
  assert rep["rows_read"] == 40 and rep["rows"] == 39 and rep["skipped"] == {reason: 1}
  assert len(rep["first_errors"]) == 1
  assert rep["first_errors"][0].startswith(f"{path}:17: {reason}: ")
  assert detail in rep["first_errors"][0]
  _, ref = _collect(CriteoStream(_write(tmp_path / "ok.tsv", _GOOD[:16] + _GOOD[17:]),
                                 batch_size=16))
  np.testing.assert_array_equal(rows["cat"], ref["cat"])
  np.testing.assert_array_equal(rows["label"], ref["label"])
  np.testing.assert_array_equal(rows["index"], np.arange(39))
  with pytest.raises(ValueError, match=f"{name}.tsv:17: {reason}"):
    list(CriteoStream(path, batch_size=16, bad_lines="error"))


def test_bad_line_numbers_across_blocks(tmp_path):
  lines = _lines()[:3000]
  bad_at = {5: "short", 700: "int", 701: "empty", 1999: "long", 2000: "cat", 2999: "label"}
  for line_no, kind in bad_at.items():
    i = line_no - 1
    lines[i] = {"short": "\t".join(lines[i].split("\t")[:10]),
                "long": lines[i] + "\t1",
                "empty": "",
                "int": _corrupt(lines[i], 1, "x"),
                "cat": _corrupt(lines[i], 20, "g0000000"),
                "label": _corrupt(lines[i], 0, "-1")}[kind]
  path = _write(tmp_path / "blocks.tsv", lines)
  for workers in (0, 2):
    stream = CriteoStream(path, batch_size=256, block_size=1 << 14, workers=workers)
    _, rows = _collect(stream)
    rep = stream.report()
    got_lines = [int(e.split(":")[1]) for e in rep["first_errors"]]
    assert got_lines == sorted(bad_at)
    assert rep["skipped"] == {"wrong_field_count": 3, "bad_int": 1, "bad_cat": 1, "bad_label": 1}
    assert rep["rows_read"] == 3000 and rep["rows"] == 2994
    assert rows["label"].shape == (2994,)
  with pytest.raises(ValueError, match=r"blocks.tsv:5: wrong_field_count"):
    list(CriteoStream(path, batch_size=256, block_size=1 << 14, bad_lines="error"))


def test_first_errors_capped(tmp_path):
  lines = [_corrupt(l, 0, "7") if i % 2 else l for i, l in enumerate(_GOOD)]
  stream = CriteoStream(_write(tmp_path / "many.tsv", lines), batch_size=8, max_reported=3)
  list(stream)
  rep = stream.report()
  assert rep["skipped"] == {"bad_label": 20} and rep["rows"] == 20
  assert [int(e.split(":")[1]) for e in rep["first_errors"]] == [2, 4, 6]


# ---------------------------------------------------------------- shuffle buffer


def test_shuffle_buffer_is_a_deterministic_permutation():
  _, ref = _collect(CriteoStream(SAMPLE, batch_size=500))
  _, a = _collect(CriteoStream(SAMPLE, batch_size=500, shuffle_buffer=1000, seed=3))
  _, b = _collect(CriteoStream(SAMPLE, batch_size=500, shuffle_buffer=1000, seed=3))
  _, c = _collect(CriteoStream(SAMPLE, batch_size=500, shuffle_buffer=1000, seed=4))
  np.testing.assert_array_equal(np.sort(a["index"]), np.arange(NUM_LINES))
  assert not np.array_equal(a["index"], np.arange(NUM_LINES))
  np.testing.assert_array_equal(a["index"], b["index"])
  assert not np.array_equal(a["index"], c["index"])
  # Rows travel whole: row with index i equals the unshuffled row i.
  np.testing.assert_array_equal(a["cat"], ref["cat"][a["index"]])
  np.testing.assert_array_equal(a["label"], ref["label"][a["index"]])
  # Bounded: a row is never emitted before position index - buffer.
  assert (np.arange(NUM_LINES) >= a["index"] - 1000).all()


# ---------------------------------------------------------------- arguments


def test_bad_arguments():
  with pytest.raises(ValueError, match="int_mode"):
    CriteoStream(SAMPLE, batch_size=8, int_mode="onehot")
  with pytest.raises(ValueError, match="bad_lines"):
    CriteoStream(SAMPLE, batch_size=8, bad_lines="ignore")
  with pytest.raises(ValueError, match="cat_buckets"):
    CriteoStream(SAMPLE, batch_size=8, cat_buckets=[10] * 25)
  with pytest.raises(FileNotFoundError, match="nope.tsv"):
    CriteoStream("/nonexistent/nope.tsv", batch_size=8)
  assert COLUMN_NAMES[0] == "label" and COLUMN_NAMES[14] == "C1" and len(COLUMN_NAMES) == 40


# ---------------------------------------------------------------- stats


def test_data_stats_on_sample_is_exact_below_k(tmp_path):
  lines = _lines()
  path = _write(tmp_path / "s.tsv", lines[:2000] + ["1\t2"] + lines[2000:])
  stats = data_stats(path, sketch_k=4096)
  json.dumps(stats)  # JSON-serialisable.
  fields = [l.split("\t") for l in lines]
  assert stats["rows"] == NUM_LINES and stats["rows_read"] == NUM_LINES + 1
  assert stats["skipped"] == {"wrong_field_count": 1}
  assert stats["first_errors"][0].startswith(f"{path}:2001: ")
  assert abs(stats["positive_rate"] - 876 / NUM_LINES) < 1e-12
  for name, col in (("C1", 14), ("C3", 16), ("C22", 35), ("I1", 1), ("I5", 5)):
    exact = len({f[col] for f in fields if f[col]})
    assert stats["distinct"][name] == exact and stats["distinct_exact"][name]
    missing = sum(1 for f in fields if not f[col]) / NUM_LINES
    assert stats["missing_rate"][name] == pytest.approx(missing)
  assert "KMV" in stats["distinct_method"]


def test_kmv_sketch_estimate_close():
  rng = np.random.default_rng(0)
  sketch = KMVSketch(k=1024)
  true = 200_000
  hashes = hashing.splitmix64(np.arange(true, dtype=np.uint64))
  for chunk in np.array_split(rng.permutation(np.repeat(hashes, 2)), 7):
    sketch.update(chunk)
  assert not sketch.exact
  # 1/sqrt(k-2) ~ 3.1 % standard error; 4 sigma bound.
  assert abs(sketch.estimate() / true - 1) < 0.125
