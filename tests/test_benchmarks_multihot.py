"""benchmarks/multihot_throughput.py at smoke size: it runs, and its batches are what
the reader gives (unused slots the padding id, lengths matching)."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import multihot_throughput as mt  # noqa: E402


def test_batches_follow_the_layout():
  lay = mt.layouts()["multi"]
  b = mt.make_batches(lay, 1)[0]
  assert b["cat"].shape == (mt.B, lay.num_columns) and b["lengths"].shape == (mt.B, 6)
  for m, (start, width, _) in enumerate(lay.multi_hot):
    used = np.arange(width)[None, :] < b["lengths"][:, m:m + 1]
    block = b["cat"][:, start:start + width]
    assert (block[~used] == lay.num_rows).all() and (block[used] < lay.num_rows).all()


def test_smoke_run_writes_json(tmp_path):
  out = tmp_path / "r.json"
  mt.main(["--batches", "8", "--reps", "1", "--models", "lr", "--json", str(out)])
  res = json.loads(out.read_text())["results"]
  assert [r["layout"] for r in res] == ["single", "multi"]
  assert all(r["step_ms"] > 0 and r["unique_rows_per_batch"] > 0 for r in res)
  assert res[1]["values_per_batch"] > res[0]["values_per_batch"]
