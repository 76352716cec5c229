"""Schema-driven tables (rectrain/data/schema.py, rectrain/data/table.py): the dataset cards
on real samples, CSV / TSV / gzip / parquet giving the same rows, bad rows counted by reason
with file:line, and a run of the loop on Avazu."""

import gzip
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rectrain.configs import apply_overrides, default_config, validate
from rectrain.data import make_stream
from rectrain.data.criteo import CriteoStream
from rectrain.data.schema import get_schema, parse_spec
from rectrain.data.table import TableStream, hash_strings
from rectrain.errors import InputError

DATA = os.path.join(os.path.dirname(__file__), "data")
AVAZU = os.path.join(DATA, "avazu_first9k_dev.csv")
CRITEO = os.path.join(DATA, "criteo_dac_head4222.tsv")
HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
          "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
          "C14,C15,C16,C17,C18,C19,C20,C21")


def _rows(stream):
  batches = list(stream)
  keep = [b["weight"] > 0 for b in batches]
  return {k: np.concatenate([b[k][m] for b, m in zip(batches, keep)]) for k in batches[0]}


def _hash_reference(s: bytes) -> int:
  from rectrain.data.hashing import splitmix64
  h = np.uint64(0)
  for w in range(0, len(s), 8):
    word = int.from_bytes(s[w:w + 8].ljust(8, b"\0"), "little")
    h = splitmix64(np.array([h ^ np.uint64(word)], np.uint64))[0]
  n = np.uint64(len(s))
  return int(splitmix64(np.array([h ^ (n << np.uint64(56)) ^ n], np.uint64))[0])


def test_string_hash_folds_8_byte_words_with_splitmix():
  words = [b"", b"a", b"a\0", b"e151e245", b"a much longer string of bytes", "é".encode()]
  offsets = np.cumsum([0] + [len(w) for w in words])
  data = np.frombuffer(b"".join(words), np.uint8)
  got = hash_strings(offsets, data)
  assert got.tolist() == [_hash_reference(w) for w in words]
  assert len(set(got.tolist())) == len(words)
  # a dictionary column hashes like the plain one
  from rectrain.data.table import cat_values
  plain = pa.array(["x", None, "yy", "x", ""])
  v1, m1 = cat_values(plain)
  v2, m2 = cat_values(plain.dictionary_encode())
  np.testing.assert_array_equal(v1, v2)
  np.testing.assert_array_equal(m1, [False, True, False, False, True])
  np.testing.assert_array_equal(m1, m2)


def test_avazu_card_on_the_real_sample():
  s = TableStream(AVAZU, 128, "avazu", cat_buckets=1000)
  r = _rows(s)
  assert s.report() == {"rows_read": 480, "rows": 480, "skipped": {}, "first_errors": []}
  assert s.layout.num_fields == 21 and s.num_dense == 0 and s.num_rows == 21_000
  assert s.layout.names[:3] == ("C1", "banner_pos", "site_id")
  assert r["label"].sum() == 86                         # click rate 0.179
  assert np.all(r["time"] == 1413849600.0)              # hour 14102100 = 2014-10-21 00:00 UTC
  offsets = s.layout.offsets
  assert np.all((r["cat"] >= offsets[:-1]) & (r["cat"] < offsets[1:]))
  # the same value in the same field is one row; the same value in two fields is not
  site_domain, app_domain = r["cat"][:, 6], r["cat"][:, 9]
  assert len(np.unique(r["cat"][:, 0])) <= 3            # C1 takes few values
  assert not np.intersect1d(site_domain, app_domain).size


def test_criteo_card_equals_the_criteo_stream_on_labels_and_dense_inputs():
  t = _rows(TableStream(CRITEO, 512, "criteo_kaggle", cat_buckets=1000))
  c = _rows(CriteoStream(CRITEO, 512, cat_buckets=1000))
  np.testing.assert_array_equal(t["label"], c["label"])
  np.testing.assert_array_equal(t["dense"], c["dense"])
  np.testing.assert_array_equal(t["cat"] == t["cat"][:, :1], c["cat"] == c["cat"][:, :1])
  # missing categoricals are bucket 0 of their field in both
  np.testing.assert_array_equal(t["cat"] == np.arange(26) * 1000, c["cat"] == np.arange(26) * 1000)
  assert np.isnan(t["time"]).all()


def test_header_gzip_and_parquet_give_the_same_rows(tmp_path):
  plain = _rows(TableStream(AVAZU, 100, "avazu", cat_buckets=997))
  with_header = tmp_path / "train.csv.gz"
  with gzip.open(with_header, "wb") as f:
    f.write((HEADER + "\n").encode() + open(AVAZU, "rb").read())
  # a typed parquet copy: pyarrow infers int64 for id, click, hour, C1, ...
  table = pacsv.read_csv(AVAZU, read_options=pacsv.ReadOptions(column_names=HEADER.split(",")))
  assert pa.types.is_integer(table.schema.field("hour").type)
  pq.write_table(table, tmp_path / "train.parquet", row_group_size=150)
  for path, fmt in ((with_header, ""), (tmp_path / "train.parquet", "parquet")):
    got = _rows(TableStream(str(path), 100, get_schema("avazu", format=fmt), cat_buckets=997))
    for key in ("label", "cat", "time", "index"):
      np.testing.assert_array_equal(got[key], plain[key], err_msg=f"{path} {key}")


def test_a_spec_with_star_over_the_header(tmp_path):
  path = tmp_path / "t.csv"
  path.write_text(HEADER + "\n" + open(AVAZU).read())
  spec = parse_spec("id:ignore,click:label,hour:time:yymmddhh,C14:num:bucket,*:cat", format="csv")
  s = TableStream(str(path), 64, spec, cat_buckets=500, int_buckets=50)
  r = _rows(s)
  assert s.layout.num_fields == 21 and "C14" in s.layout.names
  assert s.layout.buckets[s.layout.names.index("C14")] == 50
  assert r["label"].shape == (480,)
  with pytest.raises(ValueError, match="needs a header"):
    TableStream(AVAZU, 64, spec)


def _bad_file(tmp_path):
  good = open(AVAZU).read().splitlines()[:6]
  lines = [HEADER] + good[:2] + [
      good[2].replace(",0,14102100,", ",2,14102100,", 1),     # line 4: label 2
      ",".join(good[3].split(",")[:10]),                      # line 5: 10 fields
      good[4].replace(",14102100,", ",14023000,", 1),         # line 6: Feb 30
      good[5]]
  path = tmp_path / "bad.csv"
  path.write_text("\n".join(lines) + "\n")
  return path


def test_bad_rows_are_skipped_and_counted_by_reason_with_file_and_line(tmp_path):
  path = _bad_file(tmp_path)
  s = TableStream(str(path), 8, "avazu", cat_buckets=100)
  r = _rows(s)
  rep = s.report()
  assert r["label"].shape == (3,) and rep["rows"] == 3 and rep["rows_read"] == 6
  assert rep["skipped"] == {"bad_label": 1, "wrong_field_count": 1, "bad_time": 1}
  errors = "\n".join(rep["first_errors"])
  assert f"{path}:4: bad_label: column click: '2' is not 0 or 1" in errors
  assert f"{path}:5: wrong_field_count: expected 24 comma-separated fields, got 10" in errors
  assert f"{path}:6: bad_time: column hour: '14023000' is not a time (yymmddhh)" in errors
  with pytest.raises(InputError, match=rf"{path}:4: bad_label"):
    list(TableStream(str(path), 8, "avazu", cat_buckets=100, bad_lines="error"))


def test_wrong_files_get_one_line_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="data file not found"):
    TableStream(str(tmp_path / "none.csv"), 8, "avazu")
  wrong = tmp_path / "h.csv"
  wrong.write_text("click,id,hour\n1,2,3\n")
  with pytest.raises(InputError, match=rf"{wrong}: header .* is not the columns of schema 'avazu'"):
    list(TableStream(str(wrong), 8, get_schema("avazu", header="yes")))
  damaged = tmp_path / "d.parquet"
  damaged.write_bytes(b"PAR1" + b"\x00" * 100)
  with pytest.raises(InputError, match=rf"{damaged}: damaged parquet file"):
    list(TableStream(str(damaged), 8, get_schema("avazu", format="parquet")))
  with pytest.raises(InputError, match=rf"{damaged}: not a readable parquet file"):
    TableStream(str(damaged), 8, parse_spec("click:label,*:cat", format="parquet"))
  pq.write_table(pa.table({"click": [0, 1]}), tmp_path / "few.parquet")
  with pytest.raises(InputError, match=r"few\.parquet: columns \['id', 'hour'"):
    list(TableStream(str(tmp_path / "few.parquet"), 8, get_schema("avazu", format="parquet")))
  with pytest.raises(ValueError, match="3 sizes for the 21 fields"):
    TableStream(AVAZU, 8, "avazu", cat_buckets=[10, 10, 10])
  with pytest.raises(ValueError, match="exactly one label"):
    parse_spec("a:cat,b:cat")
  with pytest.raises(ValueError, match="not a dataset card"):
    get_schema("kaggle_nonsense")


def test_config_and_the_streaming_loop_on_avazu(tmp_path):
  from rectrain.train.loop import train_stream
  c = apply_overrides(default_config(), [
      "data.source=table", "data.schema=avazu", f"data.path={AVAZU}", "data.batch_size=64",
      "data.cat_buckets=512", "data.max_rows=0", "model.name=lr", "train.progress=False",
      "metrics.window_rows=256"])
  validate(c)
  stream = make_stream(c.data)
  assert isinstance(stream, TableStream) and stream.schema.name == "avazu"
  s = train_stream(c, workdir=str(tmp_path / "run"))
  assert s["rows"] == 480 and 0 < s["logloss"] < 1 and s["skipped_rows"] == 0
  bad = apply_overrides(default_config(), ["data.source=table", f"data.path={AVAZU}"])
  with pytest.raises(ValueError, match="data.schema is required"):
    validate(bad)
  bad = apply_overrides(bad, ["data.schema=click:label"])
  with pytest.raises(ValueError, match=r"config data.schema='click:label': .*no categorical"):
    validate(bad)


def test_any_column_as_the_label():
  # C18 of the Avazu sample takes values 0..3: as a label thresholded at 2
  s = get_schema("avazu", label="C18:2")
  assert s.label.name == "C18" and s.label.arg == "2"
  assert [c.role for c in s.columns if c.name == "click"] == ["ignore"]
  r = _rows(TableStream(AVAZU, 64, s, cat_buckets=100))
  c18 = np.array([int(l.split(",")[20]) for l in open(AVAZU)])
  np.testing.assert_array_equal(r["label"], (c18 >= 2).astype(np.float32))
  assert len(TableStream(AVAZU, 64, s, cat_buckets=100).layout.names) == 20
  with pytest.raises(ValueError, match="label column 'nope' is not one of its columns"):
    get_schema("avazu", label="nope")


def test_conversion_logs_card_gives_labels_and_delays(tmp_path):
  # the layout of Criteo's conversion logs (Chapelle 2014): click ts, conversion ts or empty,
  # 8 integers, 9 categoricals
  ints = "\t".join(str(i) for i in range(8))
  cats = "\t".join(f"{i:08x}" for i in range(9))
  lines = [f"1000\t\t{ints}\t{cats}", f"1010\t1310\t{ints}\t{cats}",
           f"1020\t900\t{ints}\t{cats}",              # converts before its click: bad
           f"1030\t87430\t{ints}\t{cats}"]
  path = tmp_path / "data.txt"
  path.write_text("\n".join(lines) + "\n")
  s = TableStream(str(path), 4, "criteo_conversion_logs", cat_buckets=50)
  r = _rows(s)
  assert s.layout.num_fields == 9 and s.num_dense == 8
  np.testing.assert_array_equal(r["label"], [0, 1, 1])
  np.testing.assert_array_equal(r["time"], [1000, 1010, 1030])
  np.testing.assert_array_equal(r["delay"], [np.inf, 300, 86400])
  assert s.report()["skipped"] == {"bad_time": 1}
  assert "column conv_ts: '900' is not a time (unix_s) at or after the event time" in (
      s.report()["first_errors"][0])


def test_hugging_face_dataset_by_a_schema(tmp_path):
  pytest.importorskip("datasets")
  from rectrain.data.hf import HFTableStream
  table = pacsv.read_csv(AVAZU, read_options=pacsv.ReadOptions(column_names=HEADER.split(",")))
  path = str(tmp_path / "train.parquet")
  pq.write_table(table, path, row_group_size=100)
  want = _rows(TableStream(AVAZU, 64, "avazu", cat_buckets=997))
  c = apply_overrides(default_config(), ["data.source=hf", "data.schema=avazu",
                                         f"data.path={path}", "data.batch_size=64",
                                         "data.cat_buckets=997", "data.max_rows=0"])
  validate(c)
  stream = make_stream(c.data)
  assert isinstance(stream, HFTableStream)
  got = _rows(stream)
  for key in ("label", "cat", "time", "index"):
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  with pytest.raises(InputError, match=r"columns \['nope'\] of schema"):
    HFTableStream(path, 64, parse_spec("nope:label,C1:cat"))


def test_a_killed_table_run_resumes_per_file_to_the_same_result(tmp_path):
  """Three CSV files with header lines; a truncated gzip third file stops the run with one
  error after checkpoints; the same command resumes without reading the first two files and
  ends bit-identical to the uninterrupted run."""
  import json

  from rectrain.train import checkpoint as ckpt
  from rectrain.train.loop import train_stream
  lines = open(AVAZU).read().splitlines(keepends=True)
  parts = [lines[:200], lines[200:320], lines[320:]]
  ref_paths, live_paths = [], []
  for i, part in enumerate(parts):
    ref = tmp_path / f"ref_day{i}.csv"
    ref.write_text(HEADER + "\n" + "".join(part))
    ref_paths.append(str(ref))
    live = tmp_path / f"day{i}.csv.gz"
    with gzip.open(live, "wt") as g:
      g.write(HEADER + "\n" + "".join(part) * 40)   # long enough to cut in the middle
    live_paths.append(str(live))
    if i == 2:
      ref.write_text(HEADER + "\n" + "".join(part) * 40)
  for i in range(2):
    with gzip.open(live_paths[i], "wt") as g:
      g.write(HEADER + "\n" + "".join(parts[i]))

  def config(paths):
    return apply_overrides(default_config(), [
        "data.source=table", "data.schema=avazu", f"data.path={paths}", "data.batch_size=40",
        "data.cat_buckets=512", "data.max_rows=0", "model.name=lr", "train.progress=False",
        "train.checkpoint_every=2", "train.keep_checkpoints=3", "metrics.window_rows=200",
        "data.bad_lines=skip"])

  ref = train_stream(config(",".join(ref_paths)), workdir=str(tmp_path / "ref"))
  full = open(live_paths[2], "rb").read()
  open(live_paths[2], "wb").write(full[: len(full) * 2 // 3])
  work = tmp_path / "run"
  with pytest.raises(InputError, match=r"day2\.csv\.gz: corrupt or truncated gzip data"):
    train_stream(config(",".join(live_paths)), workdir=str(work))
  meta = json.load(open(os.path.join(ckpt.latest_checkpoint(str(work)), "meta.json")))
  done = [f["rows"] for f in meta["stream_files"]]
  assert done in ([200], [200, 120]) and meta["stream_rows"] >= 200
  for p in live_paths[:len(done)]:  # finished files are not read again: garbage changes nothing
    open(p, "wb").write(b"\x1f\x8b garbage")
  open(live_paths[2], "wb").write(full)
  resumed = train_stream(config(",".join(live_paths)), workdir=str(work))
  skip = {"rows_per_sec", "wall_time_sec", "resumed_from", "_state", "_unique_sizes", "params"}
  assert resumed["rows"] == ref["rows"] == 320 + 160 * 40
  assert {k: v for k, v in resumed.items() if k not in skip} == \
      {k: v for k, v in ref.items() if k not in skip}
  assert (work / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()


def test_schema_keys_are_never_silently_ignored():
  for sets, key in ((["data.schema=avazu"], "data.schema"),
                    (["data.source=criteo", "data.path=x", "data.label=click"], "data.label"),
                    (["data.source=hf", "data.path=x", "data.format=csv"], "data.format"),
                    (["data.source=hf", "data.path=x", "data.label=click"], "data.label")):
    with pytest.raises(ValueError, match=rf"config {key}"):
      validate(apply_overrides(default_config(), sets))
