"""Tests of the peer comparison protocol (benchmarks/peers_lib.py, quality.py, peers.py).

Everything here runs without the side venv except the peer runners, which
are skipped unless it exists (``RECTRAIN_PEERS_VENV`` or the default
``~/.cache/rectrain-peers-venv``, built by ``python benchmarks/peers.py``).
"""

import json
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import peers  # noqa: E402
import peers_lib as pl  # noqa: E402
import quality  # noqa: E402
from rectrain import metrics as M  # noqa: E402
from rectrain.data.synthetic import write_tsv  # noqa: E402

SIDE_VENV = os.environ.get("RECTRAIN_PEERS_VENV", pl.DEFAULT_VENV)
HAS_VENV = os.path.exists(os.path.join(SIDE_VENV, "rectrain-peers.json"))


def ref_auc_pairwise(y, p):
  num = den = 0.0
  for yi, pi in zip(y, p):
    for yj, pj in zip(y, p):
      if yi == 1 and yj == 0:
        den += 1
        num += 1.0 if pi > pj else 0.5 if pi == pj else 0.0
  return num / den


def ref_log_loss(y, p, eps=1e-7):
  return -sum(yi * math.log(min(max(pi, eps), 1 - eps)) + (1 - yi) * math.log(1 - min(max(pi, eps), 1 - eps))
              for yi, pi in zip(y, p)) / len(y)


# ---------------------------------------------------------------------------
# Metrics.


def test_heldout_metrics_match_pairwise_reference():
  rng = np.random.default_rng(0)
  y = (rng.random(300) < 0.3).astype(np.int8)
  p = np.round(rng.random(300) * 0.5 + 0.3 * y, 2)  # rounding makes ties
  p[:3] = [0.0, 1.0, 1e-9]  # clipped in the log loss
  got = pl.heldout_metrics(y, p)
  assert got["auc"] == pytest.approx(ref_auc_pairwise(y, p), abs=1e-12)
  assert got["logloss"] == pytest.approx(ref_log_loss(y, p), rel=1e-12)
  assert got["auc"] == pytest.approx(M.auc(y, p), abs=1e-12)
  assert got["logloss"] == pytest.approx(M.log_loss(y, p), rel=1e-9)
  assert got["rows"] == 300
  assert got["pcoc"] == pytest.approx(p.mean() / y.mean())


def test_heldout_metrics_errors():
  with pytest.raises(ValueError, match="3 predictions for 2 labels"):
    pl.heldout_metrics([0, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="0 or 1"):
    pl.heldout_metrics([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match="1 non-finite predictions, first at row 1"):
    pl.heldout_metrics([0, 1], [0.1, np.nan])
  assert math.isnan(pl.heldout_metrics([1, 1], [0.1, 0.2])["auc"])


# ---------------------------------------------------------------------------
# Data: generation and split.


def test_make_data_splits_the_synth_file_by_line(tmp_path):
  data = pl.make_data(1000, 3, str(tmp_path / "d"))
  assert not data["reused"]
  assert (data["train_rows"], data["test_rows"]) == (900, 100)
  write_tsv(str(tmp_path / "ref.tsv"), num_rows=1000, seed=3)
  ref = (tmp_path / "ref.tsv").read_bytes().splitlines(keepends=True)
  train = open(data["train"], "rb").read().splitlines(keepends=True)
  test = open(data["test"], "rb").read().splitlines(keepends=True)
  assert train == ref[:900] and test == ref[900:]
  labels = np.load(data["test_labels"])
  np.testing.assert_array_equal(labels, [int(l[:1]) for l in ref[900:]])
  assert data["test_base_rate"] == pytest.approx(labels.mean())
  assert "--rows 1000 --seed 3" in data["synth_command"]
  assert not os.path.exists(tmp_path / "d" / "all.tsv")
  again = pl.make_data(1000, 3, str(tmp_path / "d"))
  assert again["reused"] and again["train"] == data["train"]
  other = pl.make_data(500, 3, str(tmp_path / "d"))
  assert not other["reused"] and other["train_rows"] == 450


def test_split_lines_errors(tmp_path):
  src = tmp_path / "a.tsv"
  src.write_bytes(b"0\tx\n1\tx\n")
  with pytest.raises(ValueError, match="2 lines, need more than 2"):
    pl.split_lines(str(src), str(tmp_path / "tr"), str(tmp_path / "te"), 2)
  src.write_bytes(b"0\tx\n1\tx\nz\tx\n")
  with pytest.raises(ValueError, match="line 2: label is not 0 or 1"):
    pl.split_lines(str(src), str(tmp_path / "tr"), str(tmp_path / "te"), 1)


def test_criteo_to_vw_line():
  ints = ["5", "", "-3", "0"] + ["1"] * 9
  cats = ["68fd1e64", ""] + ["ab"] * 24
  line = "\t".join(["1"] + ints + cats) + "\n"
  got = pl.criteo_to_vw_line(line)
  expected_ints = " ".join([f"I1:{math.log1p(5):.6g}"] + [f"I{j}:{math.log1p(1):.6g}" for j in range(5, 14)])
  expected_cats = " ".join(["C1_68fd1e64", "C2_"] + [f"C{j}_ab" for j in range(3, 27)])
  assert got == f"1 |i {expected_ints} |c {expected_cats}\n"
  assert pl.criteo_to_vw_line("0" + line[1:]).startswith("-1 |i ")
  with pytest.raises(ValueError, match="39 columns"):
    pl.criteo_to_vw_line("\t".join(["1"] + ints + cats[1:]))


# ---------------------------------------------------------------------------
# Measured subprocesses.


@pytest.mark.parametrize("use_time", [True, False] if os.path.exists(pl.TIME_BIN) else [False])
def test_run_measured_is_per_child(tmp_path, use_time):
  """Peak RSS is the command's own, not this (large) process's nor an earlier child's."""
  ballast = np.ones(60_000_000)  # this process: > 450 MB
  ballast += 1
  run = lambda code, name, **kw: pl.run_measured([sys.executable, "-c", code], str(tmp_path / name),
                                                  use_time=use_time, **kw)
  big = run("import numpy as np, time; a = np.ones(40_000_000); a += 1; time.sleep(0.3)", "big.log")
  small = run("pass", "small.log")
  failed = run("import sys; print('boom'); sys.exit(3)", "fail.log")
  slow = run("import time; time.sleep(30)", "slow.log", timeout_s=0.5)
  assert big["returncode"] == 0 and 300 < big["peak_rss_mb"] < 450 and big["wall_sec"] >= 0.3
  assert small["peak_rss_mb"] < 100
  assert failed["returncode"] == 3 and "boom" in open(failed["log"]).read()
  assert slow["returncode"] != 0 and slow["wall_sec"] < 10
  assert small["measured_with"] == ("/usr/bin/time -v" if use_time else "wait4 launcher")
  del ballast


# ---------------------------------------------------------------------------
# The rectrain runner and the front-ends without peers.


def test_peers_skip_peers_smoke_end_to_end(tmp_path):
  """peers.py --smoke --skip-peers: the rectrain runner at tiny size, JSON and table."""
  out, data_dir = tmp_path / "out", tmp_path / "data"
  peers.main(["--smoke", "--rows", "4000", "--skip-peers", "--out", str(out),
              "--data-dir", str(data_dir)])
  record = json.loads((out / "result.json").read_text())
  # Each model on an empty compilation cache, then on the one it filled.
  assert [s["system"] for s in record["systems"]] == [
      "rectrain lr (compile cache cold)", "rectrain lr", "rectrain deepfm (compile cache cold)",
      "rectrain deepfm"]
  assert [s["compile_cache"] for s in record["systems"]] == ["cold", "warm"] * 2
  assert os.listdir(out / "jax_cache")
  for cold, warm in (record["systems"][:2], record["systems"][2:]):  # the cache changes no number
    np.testing.assert_array_equal(np.load(out / f"rectrain_{cold['model']}_cold" / "preds.npy"),
                                  np.load(out / f"rectrain_{warm['model']}" / "preds.npy"))
  record["systems"] = record["systems"][1::2]
  data = record["data"]
  for s in record["systems"]:
    assert "error" not in s, s.get("error")
    assert s["train_rows"] == data["train_rows"] == 3600 and s["rows"] == data["test_rows"] == 400
    assert 0.4 < s["auc"] < 1 and 0 < s["logloss"] < 1
    assert s["wall_sec"] > s["train_sec"] > 0 and s["peak_rss_mb"] > 50
    assert "data.cat_buckets=16384" in s["command"]
  assert "model.name=lr" in record["systems"][0]["overrides"]
  assert not any(o.startswith("model.name") for o in record["systems"][1]["overrides"])
  assert record["systems"][1]["settings"].startswith("default config: deepfm MLP 256-128, dim 16")
  assert math.isnan(record["ratios"]["lr_vs_vw_train_rows_per_sec"] or math.nan)
  table = (out / "table.md").read_text()
  assert f"| rectrain lr | {record['systems'][0]['train_rows_per_sec']:,.0f} |" in table

  # The runner's held-out predictions, row by row, are those of the same frozen
  # state on the same test stream in this process; its log loss is the one of
  # rectrain's evaluate() (whose AUC is histogram-binned, hence the looser check).
  from rectrain import configs
  from rectrain.data import make_stream
  from rectrain.data.batch import DEVICE_KEYS
  from rectrain.data.pipeline import with_unique
  from rectrain.models import build_model
  from rectrain.train.loop import evaluate, train_stream
  from rectrain.train.step import make_predict
  config = configs.default_config()
  configs.apply_overrides(config, pl.rectrain_overrides("lr", data["train"], ["data.cat_buckets=16384"]))
  state = train_stream(config, workdir=None)["_state"]
  config.data.path = data["test"]
  stream = make_stream(config.data, seed=config.seed)
  predict = make_predict(build_model(config.model))
  preds = np.concatenate([
      np.asarray(predict(state.dense_params, state.tables, {k: b[k] for k in DEVICE_KEYS}))[b["index"] >= 0]
      for b in with_unique(iter(stream), stream.num_rows)])
  np.testing.assert_allclose(np.load(out / "rectrain_lr" / "preds.npy"), preds, atol=1e-6)
  ref = evaluate(predict, state.dense_params, state.tables, stream, stream.num_rows)
  lr = record["systems"][0]
  assert lr["logloss"] == pytest.approx(ref["logloss"], abs=1e-6)
  assert lr["auc"] == pytest.approx(ref["auc"], abs=2e-3)
  assert lr["auc"] == pytest.approx(pl.heldout_metrics(np.load(data["test_labels"]), preds)["auc"], abs=1e-9)


def _record(systems):
  return {"machine": {"nproc": 2, "cpu": "Test CPU", "load_avg": (1.0, 1, 1), "load_avg_end": (2.0, 1, 1)},
          "data": {"train_rows": 900, "test_rows": 100, "synth_command": "rectrain synth --rows 1000"},
          "versions": {"jax": "0.1", "rectrain_commit": "abcdef1234567", "rectrain_dirty": False,
                       "vowpalwabbit": "9", "deepctr-torch": "0.3.0", "torch": "2"},
          "vw_conversion": {"train": {"wall_sec": 1.5}, "test": {"wall_sec": 0.5}},
          "systems": systems}


def _system(name, kind, model=None, **kw):
  base = {"system": name, "kind": kind, "model": model, "auc": 0.7, "logloss": 0.5, "wall_sec": 10.0,
          "peak_rss_mb": 1000.0, "train_rows_per_sec": 1000.0, "rows_per_process_sec": 90.0,
          "settings": f"{name} settings"}
  return {**base, **kw}


def test_tables_and_ratios():
  systems = [
      _system("VW LR -b 24", "vw", train_rows_per_sec=100_000.0, wall_sec=4.0, convert_sec=4.0,
              rows_per_process_sec=50_000.0),
      _system("rectrain lr", "rectrain", "lr", steady_rows_per_sec=300_000.0,
              train_rows_per_sec=150_000.0, wall_sec=6.0, rows_per_process_sec=20_000.0),
      _system("rectrain deepfm", "rectrain", "deepfm", steady_rows_per_sec=40_000.0, auc=0.71234),
      _system("DeepCTR-Torch DeepFM", "deepctr", "deepfm", train_rows_per_sec=10_000.0),
      {"system": "rectrain fm", "kind": "rectrain", "model": "fm", "error": "exit 1"},
  ]
  ratios = pl.speed_ratios(systems)
  assert ratios["lr_vs_vw_steady_rows_per_sec"] == pytest.approx(3.0)
  assert ratios["lr_vs_vw_train_rows_per_sec"] == pytest.approx(1.5)
  assert ratios["lr_vs_vw_rows_per_process_sec"] == pytest.approx(0.4)
  assert ratios["lr_wall_over_vw_wall"] == pytest.approx(1.5)
  assert ratios["lr_wall_over_vw_wall_plus_conversion"] == pytest.approx(0.75)
  assert ratios["deepfm_vs_deepctr_steady_rows_per_sec"] == pytest.approx(4.0)
  assert ratios["deepfm_wall_over_deepctr_wall"] == pytest.approx(1.0)
  assert math.isnan(pl.speed_ratios(systems[1:])["lr_vs_vw_train_rows_per_sec"])

  record = _record(systems)
  record["ratios"] = ratios
  speed = peers.speed_table(record)
  assert ("| rectrain lr | 150,000 | 300,000 | 20,000 | 6.0 | 1,000 | 0.7000 | 0.5000 |") in speed
  assert "| VW LR -b 24 | 100,000 | – | 50,000 | 4.0 |" in speed
  assert "| rectrain fm | failed (see log) |" in speed
  assert "| rectrain DeepFM steady rows/s / DeepCTR-Torch fit rows/s | 4.00 |" in speed
  assert "| --- | ---: | ---: |" in speed
  assert "2 x Test CPU, load avg 1.0 -> 2.0" in speed and "rectrain abcdef1234." in speed
  qual = quality.quality_table(_record(systems))
  assert "| rectrain deepfm | 0.7123 | 0.5000 | 1,000 | 10.0 | 1,000 |" in qual
  assert "* DeepCTR-Torch DeepFM: DeepCTR-Torch DeepFM settings" in qual
  assert "conversion 1.5 s (train) + 0.5 s (test)" in qual


def test_nan_to_none_for_json():
  assert pl._nan_to_none({"a": [1.0, math.nan], "b": {"c": math.inf}}) == {"a": [1.0, None],
                                                                          "b": {"c": None}}


# ---------------------------------------------------------------------------
# Peer runners (need the side venv).


@pytest.mark.skipif(not HAS_VENV, reason=f"side venv {SIDE_VENV} not built "
                    "(python benchmarks/peers.py --smoke builds it)")
def test_peer_runners_tiny(tmp_path):
  data = pl.make_data(3000, 0, str(tmp_path / "d"))
  labels = np.load(data["test_labels"])
  record = pl.ensure_side_venv(SIDE_VENV)
  assert record["reused"] and record["versions"]["torch_cuda"] is None
  assert not record["versions"]["nvidia_packages"]
  for split in ("train", "test"):
    m = pl.run_measured(pl.vw_convert_command(data[split], str(tmp_path / f"{split}.vw")),
                        str(tmp_path / f"conv_{split}.log"))
    assert m["returncode"] == 0
  vw = pl.run_system("vw", pl.vw_command(SIDE_VENV, str(tmp_path / "train.vw"), str(tmp_path / "test.vw"),
                                         18, str(tmp_path / "vw")),
                     str(tmp_path / "vw"), labels, data["train_rows"])
  dct = pl.run_system("deepctr", pl.deepctr_command(SIDE_VENV, data, str(tmp_path / "dc")),
                      str(tmp_path / "dc"), labels, data["train_rows"])
  for rec in (vw, dct):
    assert "error" not in rec, rec.get("error")
    assert rec["train_rows"] == 2700 and rec["rows"] == 300
    assert 0 < rec["auc"] < 1 and 0 < rec["logloss"] < 1
  assert vw["auc"] > 0.55  # DeepCTR: one step of 4096 rows here, no quality expected
  assert np.load(tmp_path / "dc" / "preds.npy").std() > 0
  assert "-b 18" in vw["vw_train_args"]
  assert dct["deepctr_torch"] == "0.3.0" and "+cpu" in dct["torch"]
