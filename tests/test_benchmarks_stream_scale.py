"""benchmarks/stream_scale.py (the 20M-row curve) on a small stream: the TSV its writers
produce in parallel is the one ``write_tsv`` writes in one piece, and the run reports one
chunk per ``--chunk`` rows with its rate and memory."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import stream_scale  # noqa: E402

from rectrain.data.synthetic_tsv import write_tsv


def test_parallel_writers_write_the_one_piece_file(tmp_path):
  rows = 7_001
  one, two = tmp_path / "one.tsv", tmp_path / "two.tsv"
  write_tsv(str(one), rows, seed=3)
  meta = stream_scale.write_data(str(two), rows, seed=3, writers=2)
  assert meta["rows"] == rows and not meta["reused"]
  assert one.read_bytes() == two.read_bytes()
  assert stream_scale.write_data(str(two), rows, seed=3, writers=2)["reused"]


def test_run_reports_every_chunk(tmp_path):
  out = tmp_path / "s.json"
  assert stream_scale.main(["--rows", "32768", "--chunk", "8192", "--data",
                            str(tmp_path / "d.tsv"), "--json", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["rows"] == 32_768 and res["skipped_rows"] == 0
  assert [c["end_row"] for c in res["chunks"]] == [8192, 16384, 24576, 32768]
  assert all(c["rows_per_sec"] > 0 and c["rss_mb"] > 0 and c["peak_rss_mb"] >= 0.9 * c["rss_mb"]
             for c in res["chunks"])
  assert res["middle_chunks"] == 2 and res["before_last_over_second_rows_per_sec"] > 0
  assert "rss_growth_mb_per_million" in res and res["last_rss_mb"] > 0
