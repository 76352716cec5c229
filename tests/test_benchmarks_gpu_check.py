"""benchmarks/gpu_check.py --smoke on CPU (the script a lent GPU runs): it runs, reports
every measurement, and the device-vs-CPU check compares real runs (here CPU vs CPU: bit
identical)."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import gpu_check  # noqa: E402


def test_smoke_reports_throughput_table_size_and_equality(tmp_path):
  out = tmp_path / "g.json"
  assert gpu_check.main(["--smoke", "--models", "deepfm", "--json", str(out)]) == 0
  res = json.loads(out.read_text())
  assert res["smoke"] and res["platform"] == "cpu"
  assert [(r["model"], r["batch"]) for r in res["throughput"]] == [("deepfm", 256)]
  assert all(r["rows_per_sec"] > 0 for r in res["throughput"])
  small, large = res["table_size"]
  assert large["table_rows"] > 10 * small["table_rows"]
  assert res["step_time_ratio_large_over_small"] > 0
  (e,) = res["equality"]
  assert e["bit_identical"] and e["equal"] and e["max_pred_diff"] == 0.0
