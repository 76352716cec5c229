"""Tests of rectrain.data.hf (Hugging Face datasets source), on local files only."""

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"  # Before datasets is imported: no network.

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from rectrain.data.criteo import COLUMN_NAMES, CriteoStream  # noqa: E402
from rectrain.data.hf import HFStream  # noqa: E402

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "criteo_dac_head4222.tsv")
NUM_LINES = 4222


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def _sample_table(typed: bool) -> pa.Table:
  types = None if typed else {c: pa.string() for c in COLUMN_NAMES}
  return pacsv.read_csv(
      SAMPLE, read_options=pacsv.ReadOptions(column_names=list(COLUMN_NAMES)),
      parse_options=pacsv.ParseOptions(delimiter="\t"),
      convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))


def _assert_same(a_stream, b_stream):
  a, b = list(a_stream), list(b_stream)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_local_tsv_equals_criteo_stream(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_bytes(open(SAMPLE, "rb").read())
  hf = HFStream(str(path), batch_size=1000, cat_buckets=5000, block_rows=1500)
  _assert_same(CriteoStream(SAMPLE, batch_size=1000, cat_buckets=5000), hf)
  assert hf.report()["rows"] == NUM_LINES and hf.report()["skipped"] == {}


@pytest.mark.parametrize("typed", [True, False], ids=["typed", "strings"])
def test_local_parquet_equals_criteo_stream(tmp_path, typed):
  table = _sample_table(typed)
  if typed:
    assert pa.types.is_integer(table.schema.field("I1").type)
  path = tmp_path / "train.parquet"
  pq.write_table(table, path, row_group_size=1000)
  for mode in ("log1p", "categorical"):
    _assert_same(CriteoStream(SAMPLE, batch_size=700, int_mode=mode, cat_buckets=999),
                 HFStream(str(path), batch_size=700, int_mode=mode, cat_buckets=999))


def test_csv_with_header_and_bad_value(tmp_path):
  lines = open(SAMPLE).read().split("\n")[:50]
  fields = lines[9].split("\t")
  fields[20] = "nothex!!"
  lines[9] = "\t".join(fields)
  path = tmp_path / "with_header.csv"
  path.write_text(",".join(COLUMN_NAMES) + "\n" + "\n".join(l.replace("\t", ",") for l in lines)
                  + "\n")
  hf = HFStream(str(path), batch_size=16, header=True)
  rows = sum(float(b["weight"].sum()) for b in hf)
  assert rows == 49
  rep = hf.report()
  assert rep["skipped"] == {"bad_cat": 1}
  # Line 11 of the file: the header, then the 10th data line.
  assert rep["first_errors"] == [f"{path}:11: bad_cat: field C7: 'nothex!!' is not 8 hex digits"]
  with pytest.raises(ValueError, match=r"with_header.csv:11: bad_cat"):
    list(HFStream(str(path), batch_size=16, header=True, bad_lines="error"))


def test_missing_columns_and_files(tmp_path):
  path = tmp_path / "bad.parquet"
  pq.write_table(pa.table({"label": [0, 1], "I1": [1, 2]}), path)
  with pytest.raises(ValueError, match=r"lacks the Criteo columns \['I2'"):
    list(HFStream(str(path), batch_size=4))
  with pytest.raises(FileNotFoundError, match="nope.tsv"):
    HFStream([str(path), str(tmp_path / "nope.tsv")], batch_size=4)
