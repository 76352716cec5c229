"""Tests of rectrain.experiment: run records, sweeps (resume), tables, plots, determinism.

Table numbers are checked against means and standard deviations computed by
hand in the test; the end-to-end tests train tiny configs (16k rows).
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from rectrain import configs
from rectrain import experiment as ex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(REPO, "experiments", "synthetic_stream")
CRITEO = os.path.join(REPO, "experiments", "criteo_stream")


# ---------------------------------------------------------------------------
# Helpers: hand-made run directories.


def _fake_run(root, name, label, seed, metrics, oracle=False, model="lr", windows=None,
              mlp=None):
  """A run dir with config.json, summary.json, run.json (and metrics.jsonl)."""
  config = configs.default_config()
  config.experiment = ex.experiment_section(name="fake", label=label, oracle=oracle)
  configs.apply_overrides(config, [f"model.name={model}", f"seed={seed}"])
  if mlp is not None:
    config.model.mlp_dims = mlp
  workdir = os.path.join(root, name)
  os.makedirs(workdir)
  summary = dict(metrics, model=model, rows=1000)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json())
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f)
  if windows:
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      for i, rec in enumerate(windows):
        f.write(json.dumps(dict(rec, window="rows", index=i, slice=None, value=None,
                                start_row=i * 100, end_row=(i + 1) * 100,
                                partial=False)) + "\n")
        # a slice record that must be ignored
        f.write(json.dumps(dict(rec, auc=0.0, window="rows", index=i, slice="C1",
                                value=3, partial=False)) + "\n")
  ex.write_run_record(workdir, config, summary, seed)
  return workdir


@pytest.fixture
def table_runs(tmp_path):
  root = str(tmp_path / "runs")
  os.makedirs(root)
  # LR: three seeds; DeepFM: two seeds; ceiling: one seed.
  lr = [(0.70, 0.50, 0.90, 1.02), (0.72, 0.48, 0.88, 0.98), (0.74, 0.49, 0.86, 1.05)]
  for s, (auc, ll, ne, pc) in enumerate(lr):
    _fake_run(root, f"lr_s{s}", "LR", s, dict(auc=auc, logloss=ll, ne=ne, pcoc=pc),
              windows=[{"auc": auc - 0.01, "ne": ne}, {"auc": auc + 0.01, "ne": ne}])
  dfm = [(0.75, 0.47, 0.87, 1.10), (0.76, 0.46, 0.85, 1.20)]
  for s, (auc, ll, ne, pc) in enumerate(dfm):
    _fake_run(root, f"dfm_s{s}", "DeepFM", s, dict(auc=auc, logloss=ll, ne=ne, pcoc=pc),
              model="deepfm",
              windows=[{"auc": auc, "ne": ne}, {"auc": auc + 0.02, "ne": ne}])
  _fake_run(root, "oracle_s0", "Bayes ceiling", 0,
            dict(auc=0.90, logloss=0.30, ne=0.60, pcoc=1.00), oracle=True)
  return root


# ---------------------------------------------------------------------------
# Tables.


def test_aggregate_matches_hand_computed_mean_and_std(table_runs):
  runs = ex.load_runs([table_runs])
  rows = ex.aggregate(runs, ["auc", "logloss", "ne", "pcoc"])
  by = {r.label: r for r in rows}
  assert [r.label for r in rows][-1] == "Bayes ceiling"   # references last
  assert by["LR"].seeds == [0, 1, 2] and by["DeepFM"].seeds == [0, 1]
  # LR AUC: mean (0.70 + 0.72 + 0.74) / 3 = 0.72; deviations -0.02, 0, 0.02:
  # sample variance (0.0004 + 0 + 0.0004) / 2 = 0.0004 -> std 0.02.
  assert by["LR"].mean("auc") == pytest.approx(0.72, abs=1e-12)
  assert by["LR"].std("auc") == pytest.approx(0.02, abs=1e-12)
  # LR PCOC: mean (1.02 + 0.98 + 1.05) / 3 = 1.0166...; deviations 0.00333, -0.03667, 0.03333
  # -> variance (0.0000111 + 0.0013444 + 0.0011111) / 2 = 0.00123333 -> std 0.0351188.
  assert by["LR"].mean("pcoc") == pytest.approx(3.05 / 3, abs=1e-12)
  assert by["LR"].std("pcoc") == pytest.approx(math.sqrt(0.0024666666666666 / 2), abs=1e-9)
  # DeepFM log loss: mean 0.465, std |0.47 - 0.46| / sqrt(2) = 0.00707107.
  assert by["DeepFM"].mean("logloss") == pytest.approx(0.465, abs=1e-12)
  assert by["DeepFM"].std("logloss") == pytest.approx(0.01 / math.sqrt(2), abs=1e-12)
  # One seed: the std is undefined.
  assert math.isnan(by["Bayes ceiling"].std("auc"))
  assert by["Bayes ceiling"].reference and not by["LR"].reference


def test_aggregate_window_columns_ignore_slices(table_runs):
  runs = ex.load_runs([table_runs])
  metrics = ex.window_metrics(runs, "rows", ["auc"])
  assert metrics == ["rows:0:auc", "rows:1:auc"]
  by = {r.label: r for r in ex.aggregate(runs, metrics)}
  # LR window 0: auc - 0.01 per seed -> mean 0.71; window 1: mean 0.73.
  assert by["LR"].mean("rows:0:auc") == pytest.approx(0.71, abs=1e-12)
  assert by["LR"].mean("rows:1:auc") == pytest.approx(0.73, abs=1e-12)
  assert by["DeepFM"].mean("rows:1:auc") == pytest.approx(0.775, abs=1e-12)
  assert math.isnan(by["Bayes ceiling"].mean("rows:0:auc"))   # no windows recorded


def test_aggregate_rejects_duplicate_seed(table_runs, tmp_path):
  other = str(tmp_path / "other")
  os.makedirs(other)
  _fake_run(other, "lr_again", "LR", 1, dict(auc=0.5, logloss=0.5, ne=0.9, pcoc=1.0),
            windows=[{"auc": 0.5, "ne": 0.9}])
  with pytest.raises(ValueError, match=r"seed\(s\) \[1\]"):
    ex.aggregate(ex.load_runs([table_runs, other]))


def test_same_label_different_config_are_separate_rows(tmp_path):
  root = str(tmp_path)
  _fake_run(root, "a", "DeepFM", 0, dict(auc=0.7), model="deepfm", mlp=(8,))
  _fake_run(root, "b", "DeepFM", 0, dict(auc=0.8), model="deepfm", mlp=(16,))
  rows = ex.aggregate(ex.load_runs([root]), ["auc"])
  assert len(rows) == 2 and rows[0].label != rows[1].label
  assert all(r.label.startswith("DeepFM [") for r in rows)


def test_markdown_shape_and_bold(table_runs):
  metrics = ["auc", "logloss", "ne", "pcoc"]
  rows = ex.aggregate(ex.load_runs([table_runs]), metrics)
  text = ex.format_table(rows, metrics, "md")
  lines = text.splitlines()
  table = [l for l in lines if l.startswith("|")]
  assert len(table) == 2 + 3                       # header, rule, 3 rows
  assert all(l.count("|") == 2 + 4 + 1 for l in table)   # model, seeds, 4 metrics
  lr = next(l for l in table if l.startswith("| LR"))
  dfm = next(l for l in table if l.startswith("| DeepFM"))
  ceiling = next(l for l in table if "Bayes ceiling" in l)
  cells = lambda l: [c.strip() for c in l.strip("|").split("|")]  # noqa: E731
  assert cells(lr)[:3] == ["LR", "3", "0.7200 ± 0.0200"]
  # best AUC (0.7550), log loss (0.4650) and NE (0.8600) are DeepFM's; PCOC closest
  # to 1 is LR's (|1.0167 - 1| < |1.15 - 1|).
  assert cells(dfm)[2] == "**0.7550 ± 0.0071**"
  assert cells(dfm)[3] == "**0.4650 ± 0.0071**"
  assert cells(lr)[4] == "0.8800 ± 0.0200" and cells(dfm)[4] == "**0.8600 ± 0.0141**"
  assert cells(lr)[5] == "**1.0167 ± 0.0351**"
  assert "**" not in ceiling and cells(ceiling)[1] == "1"
  assert cells(ceiling)[2] == "0.9000"               # one seed: no ± part
  assert text.count("**") == 2 * 4
  assert any(l.startswith("- LR: seeds 0,1,2; config ") for l in lines)


def test_latex_shape(table_runs):
  metrics = ["auc", "ne", "rows:0:auc"]
  rows = ex.aggregate(ex.load_runs([table_runs]), metrics)
  text = ex.format_table(rows, metrics, "latex")
  lines = text.splitlines()
  assert lines[0] == r"\begin{tabular}{l r r r r}"
  assert lines[1] == r"\toprule" and r"\bottomrule" in lines and r"\end{tabular}" in lines
  body = [l for l in lines if l.endswith(r"\\")]
  assert len(body) == 1 + 3
  assert all(l.count(" & ") == 1 + len(metrics) for l in body)
  assert body[0].startswith("Model & Seeds & AUC $\\uparrow$ & NE $\\downarrow$ & AUC win 1")
  assert lines.count(r"\midrule") == 2              # after the header, before references
  assert r"\textbf{0.7550 $\pm$ 0.0071}" in text
  assert text.count(r"\textbf") == 3               # one best per column
  assert all(l.startswith("%") for l in lines[lines.index(r"\end{tabular}") + 1:])


def test_csv_output(table_runs):
  metrics = ["auc", "pcoc"]
  rows = ex.aggregate(ex.load_runs([table_runs]), metrics)
  import csv
  import io
  data = list(csv.DictReader(io.StringIO(ex.format_table(rows, metrics, "csv"))))
  assert [d["label"] for d in data] == ["DeepFM", "LR", "Bayes ceiling"]   # dir order
  assert float(data[1]["auc_mean"]) == pytest.approx(0.72)
  assert float(data[0]["pcoc_std"]) == pytest.approx(0.1 / math.sqrt(2))
  assert data[2]["auc_std"] == "" and data[2]["reference"] == "1" and data[1]["seeds"] == "3"


def test_bad_table_inputs(tmp_path, table_runs):
  with pytest.raises(ValueError, match="must be md, latex or csv"):
    ex.format_table([], ["auc"], "html")
  with pytest.raises(ValueError, match="window index"):
    ex.metric_spec("rows:x:auc")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    ex.find_run_dirs([str(tmp_path / "nowhere")])
  with pytest.raises(ValueError, match="no run .* 'day' windows"):
    ex.window_metrics(ex.load_runs([table_runs]), "day", ["auc"])
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "summary.json").write_text("{\n  oops\n}")
  (bad / "config.json").write_text("{}")
  with pytest.raises(ValueError, match=r"summary.json: line 2"):
    ex.load_run(str(bad))


# ---------------------------------------------------------------------------
# Run records and sweeps.


def test_run_record_fields(tmp_path):
  config = ex.point_config(SYNTH, "smoke", ["model.name=lr", "seed=3"])
  rec = ex.write_run_record(str(tmp_path), config, {"rows": 10, "auc": 0.6, "logloss": 0.5,
                                                    "ne": float("nan"), "rows_per_sec": 5.0,
                                                    "wall_time_sec": 2.0, "param_count": 7},
                            seed=3, command="rectrain run x")
  on_disk = json.load(open(tmp_path / "run.json"))
  assert on_disk == json.loads(json.dumps(rec, default=str))
  head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
  assert rec["git"]["commit"] == head and isinstance(rec["git"]["dirty"], bool)
  import jax
  assert rec["versions"]["jax"] == jax.__version__
  assert rec["device"]["device_kind"] == jax.devices()[0].device_kind
  assert rec["seed"] == 3 and rec["config"]["seed"] == 3 and rec["label"] == "lr"
  assert rec["metrics"]["ne"] is None and rec["rows_per_sec"] == 5.0 and rec["param_count"] == 7
  assert rec["warnings"] and "fewer than data.max_rows" in rec["warnings"][0]
  # the hash ignores seed and progress, not what a run computes
  other = ex.point_config(SYNTH, "smoke", ["model.name=lr", "seed=4", "train.progress=True"])
  assert ex.config_hash(other) == rec["config_hash"]
  other.optim.sparse.learning_rate = 0.01
  assert ex.config_hash(other) != rec["config_hash"]


def test_num_windows_resolves_window_rows():
  config = ex.point_config(CRITEO, None, [])
  assert config.metrics.window_rows == 6_548_660            # ceil(45,840,617 / 7)
  assert 45_840_617 - 6 * 6_548_660 == 6_548_657
  config = ex.point_config(CRITEO, "smoke", [])
  assert config.metrics.window_rows == 2341                # ceil(16,384 / 7)
  with pytest.raises(ValueError, match="experiment.num_windows=7 needs data.max_rows"):
    ex.point_config(CRITEO, None, ["data.max_rows=0"])


def _write_experiment(path, seeds=(0, 1, 2), lr=0.05):
  path.mkdir(exist_ok=True)
  (path / "config.py").write_text(f'''
from rectrain.configs import default_config
from rectrain.experiment import experiment_section

def get_config(arg=None):
  c = default_config()
  c.experiment = experiment_section(name="toy")
  c.optim.sparse.learning_rate = {lr}
  return c

def get_sweep(arg=None):
  return [{{"model.name": "lr", "experiment.label": "LR", "seed": s}} for s in {tuple(seeds)}]
''')
  return str(path)


def test_sweep_resume_skips_finished_runs(tmp_path):
  exp = _write_experiment(tmp_path / "toy")
  out = str(tmp_path / "out")
  calls = []

  def runner(config, workdir, command):
    calls.append((os.path.basename(workdir), int(config.seed)))
    summary = {"rows": 5, "auc": 0.5 + config.seed / 10, "logloss": 0.6, "ne": 0.9, "pcoc": 1.0}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    ex.write_run_record(workdir, config, summary, config.seed, command=command)

  st = ex.run_sweep(exp, out, in_process=True, runner=runner, log=lambda s: None)
  assert [s["status"] for s in st] == ["done"] * 3
  assert calls == [("LR_seed0", 0), ("LR_seed1", 1), ("LR_seed2", 2)]
  # a crashed run (no run.json) and a deleted one run again; the others are skipped
  os.remove(os.path.join(out, "LR_seed1", "run.json"))
  calls.clear()
  st = ex.run_sweep(exp, out, in_process=True, runner=runner, log=lambda s: None)
  assert [s["status"] for s in st] == ["skipped", "done", "skipped"]
  assert calls == [("LR_seed1", 1)]
  sweep = json.load(open(os.path.join(out, "sweep.json")))
  assert [h["ran"] for h in sweep["history"]] == [["LR_seed0", "LR_seed1", "LR_seed2"],
                                                  ["LR_seed1"]]
  assert "--set seed=1" in sweep["points"][1]["command"]
  # nothing left: a third sweep runs nothing
  calls.clear()
  st = ex.run_sweep(exp, out, in_process=True, runner=runner, log=lambda s: None)
  assert calls == [] and {s["status"] for s in st} == {"skipped"}
  # the table of the sweep folder follows the sweep order, one row of 3 seeds
  rows = ex.aggregate(ex.load_runs([out]), ["auc"])
  assert len(rows) == 1 and rows[0].seeds == [0, 1, 2]
  assert rows[0].mean("auc") == pytest.approx(0.6)
  # a changed config does not silently reuse finished runs
  _write_experiment(tmp_path / "toy", lr=0.1)
  with pytest.raises(ValueError, match="different config"):
    ex.run_sweep(exp, out, in_process=True, runner=runner, log=lambda s: None)
  st = ex.run_sweep(exp, out, in_process=True, runner=runner, ignore_changed=True,
                    log=lambda s: None)
  assert calls == []
  # a failing run is reported, the others still run
  _write_experiment(tmp_path / "toy", seeds=(0, 5))
  def failing(config, workdir, command):
    raise RuntimeError("boom")
  st = ex.run_sweep(exp, out, in_process=True, runner=failing, ignore_changed=True,
                    log=lambda s: None)
  assert [s["status"] for s in st] == ["skipped", "failed"]
  assert "boom" in st[1]["error"]


def test_sweep_point_names_and_errors(tmp_path):
  points = ex.load_sweep(SYNTH)
  assert len(points) == 7 * 3
  names = [p.name for p in points]
  assert names[0] == "LR-FTRL_seed0" and "Bayes-ceiling_seed2" in names
  assert len(set(names)) == len(names)
  assert "model.name=dcnv2" in points[12].overrides
  bad = tmp_path / "dup"
  bad.mkdir()
  (bad / "config.py").write_text("def get_config(arg=None):\n  return None\n"
                                 "def get_sweep():\n  return [{'seed': 0}, {'seed': 0}]\n")
  with pytest.raises(ValueError, match="same run name 'default_seed0'"):
    ex.load_sweep(str(bad))
  with pytest.raises(ValueError, match="unknown argument 'big'"):
    ex.point_config(SYNTH, "big", [])


# ---------------------------------------------------------------------------
# End to end (tiny real runs).


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
  """The synthetic_stream smoke sweep: LR (FTRL), DeepFM and the Bayes ceiling, seed 0."""
  out = str(tmp_path_factory.mktemp("synthetic_smoke"))
  st = ex.run_sweep(SYNTH, out, arg="smoke", in_process=True, log=lambda s: None)
  assert [s["status"] for s in st] == ["done"] * 3, st
  return out


def test_synthetic_smoke_sweep_and_ceiling(smoke_sweep):
  runs = {r.label: r for r in ex.load_runs([smoke_sweep])}
  assert set(runs) == {"LR (FTRL)", "DeepFM", "Bayes ceiling"}
  lr, ceiling = runs["LR (FTRL)"], runs["Bayes ceiling"]
  assert lr.record["config"]["optim"]["tables"]["linear"]["name"] == "ftrl"
  assert lr.summary["rows"] == ceiling.summary["rows"] == 16_384
  # the ceiling run scores exactly the rows the model saw: it equals the
  # loop's own ceiling accumulator and the exact bayes_ceiling() of the stream
  assert ceiling.summary["logloss"] == pytest.approx(lr.summary["bayes_logloss"], rel=1e-12)
  assert ceiling.summary["auc"] == pytest.approx(lr.summary["bayes_auc"], abs=1e-12)
  exact = ceiling.summary["exact"]
  assert ceiling.summary["logloss"] == pytest.approx(exact["log_loss"], rel=1e-9)
  assert ceiling.summary["auc"] == pytest.approx(exact["auc"], abs=1e-3)
  for model in ("LR (FTRL)", "DeepFM"):
    assert runs[model].summary["logloss"] > ceiling.summary["logloss"]
    assert runs[model].record["param_count"] > 0
  # per-window curves: 4 row windows of 4,096 rows for each run
  for run in runs.values():
    wins = ex.read_windows(run.dir, "rows")
    assert [w["end_row"] for w in wins] == [4096, 8192, 12288, 16384]
  text = ex.format_table(ex.aggregate(list(runs.values())), ex.DEFAULT_METRICS, "md")
  assert [l for l in text.splitlines() if l.startswith("|")][-1].startswith(
      "| *Bayes ceiling* | 1 |")


def test_plot(smoke_sweep, tmp_path):
  png = ex.plot_runs([smoke_sweep], str(tmp_path / "curves.png"))
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  pdf = ex.plot_runs([smoke_sweep], str(tmp_path / "c.pdf"), metrics=["auc"], window="hour",
                     per_run=True)
  with open(pdf, "rb") as f:
    assert f.read(5) == b"%PDF-"
  with pytest.raises(ValueError, match="png, .pdf or .svg"):
    ex.plot_runs([smoke_sweep], str(tmp_path / "c.jpg"))


def test_same_config_and_seed_give_same_metrics(tmp_path):
  """Two runs of one config and seed: identical metrics, window by window."""
  overrides = ["model.name=fm", "seed=1"]
  dirs = []
  for k in range(2):
    workdir = str(tmp_path / f"run{k}")
    ex.run_experiment(ex.point_config(SYNTH, "smoke", overrides), workdir)
    dirs.append(workdir)
  a, b = (ex.load_run(d) for d in dirs)
  for key in ("auc", "logloss", "ne", "pcoc", "rows", "param_count"):
    assert a.summary[key] == b.summary[key], key
  assert a.record["config_hash"] == b.record["config_hash"]
  wa, wb = (open(os.path.join(d, "metrics.jsonl")).read() for d in dirs)
  assert wa == wb and len(wa.splitlines()) > 4
  # a different seed gives different metrics (the comparison can fail)
  workdir = str(tmp_path / "run_seed2")
  ex.run_experiment(ex.point_config(SYNTH, "smoke", ["model.name=fm", "seed=2"]), workdir)
  assert ex.load_run(workdir).summary["logloss"] != a.summary["logloss"]


def test_criteo_smoke_sweep_cli(tmp_path, capsys):
  """The criteo_stream protocol at smoke size, through the command line (2 jobs)."""
  out = str(tmp_path / "criteo")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "rectrain.experiment", "sweep", CRITEO, "--arg", "smoke",
         "--out", out, "--jobs", "2", "--drop-checkpoints"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
  assert res.returncode == 0, res.stdout + res.stderr
  runs = ex.load_runs([out])
  assert sorted(r.label for r in runs) == ["DLRM", "LR (FTRL)"]
  for run in runs:
    assert not os.path.exists(os.path.join(run.dir, "checkpoints"))
    assert run.record["config"]["metrics"]["window_rows"] == 2341
    wins = ex.read_windows(run.dir, "rows")
    # 7 "days": six of 2,341 rows and the last holding the 2,338 left
    assert [w["end_row"] - w["start_row"] for w in wins] == [2341] * 6 + [2338]
    assert run.record["command"].startswith("rectrain run ")
  # resume and table through the same entry point, in this process
  assert ex.main(cmd[3:]) == 0
  assert "2 finished, 0 to run" in capsys.readouterr().out
  assert ex.main(["table", out, "--windows", "rows", "--metrics", "auc", "--format", "latex"]) == 0
  header = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Model & Seeds"))
  assert header.count("AUC win") == 7


def test_offline_config_runs_the_offline_protocol_and_records_last_point(tmp_path):
  config = configs.default_config()
  configs.apply_overrides(config, [
      "model.name=lr", "data.max_rows=2048", "data.batch_size=512", "data.cat_buckets=512",
      "offline.epochs=2", "offline.evals_per_epoch=2", "offline.eval_data.start_row=2048",
      "offline.eval_data.max_rows=1024", "train.progress=False"])
  summary = ex.run_experiment(config, str(tmp_path / "run"))
  record = json.load(open(tmp_path / "run" / "run.json"))
  points = [json.loads(line) for line in open(tmp_path / "run" / "offline.jsonl")]
  assert [p["epoch"] for p in points] == [0.5, 1.0, 1.5, 2.0]
  assert record["metrics"]["auc"] == pytest.approx(points[-1]["test"]["auc"], abs=1e-12)
  assert record["metrics"]["logloss"] == pytest.approx(points[-1]["test"]["logloss"], abs=1e-12)
  assert record["rows"] == 2 * 2048 and record["rows_per_sec"] > 0
  best = max(points, key=lambda p: p["test"]["auc"])
  assert summary["best_epoch"] == best["epoch"]


def test_options_added_after_a_run_was_recorded_keep_it_finished(tmp_path):
  exp = _write_experiment(tmp_path / "toy", seeds=(0,))
  out = str(tmp_path / "out")

  def runner(config, workdir, command):
    summary = {"rows": 5, "auc": 0.5, "logloss": 0.6, "ne": 0.9, "pcoc": 1.0}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f)
    ex.write_run_record(workdir, config, summary, config.seed, command=command)

  ex.run_sweep(exp, out, in_process=True, runner=runner, log=lambda s: None)
  run_dir = os.path.join(out, "LR_seed0")
  # Simulate a run recorded before the serving section existed: drop it from
  # its config.json and give run.json the hash of that older config.
  path = os.path.join(run_dir, "run.json")
  data = json.load(open(path))
  del data["config"]["serving"]
  data["config_hash"] = ex._hash_flat(ex._flatten(data["config"]))
  json.dump(data, open(path, "w"))
  old_hash = json.load(open(os.path.join(run_dir, "run.json")))["config_hash"]
  point = ex.point_config(exp, None, ["model.name=lr", "seed=0"])
  assert ex.config_hash(point) != old_hash
  assert ex.recorded_config_hash(run_dir, point) == ex.config_hash(point)
  st = ex.run_sweep(exp, out, in_process=True, runner=runner, log=lambda s: None)
  assert [s["status"] for s in st] == ["skipped"]
  # the added option at a value other than its default is a different run
  with pytest.raises(ValueError, match="different config"):
    ex.run_sweep(exp, out, overrides=["serving.sync_tables_s=3600.0"], in_process=True,
                 runner=runner,
                 log=lambda s: None)


def test_nested_summary_metric_and_delayed_dispatch(tmp_path):
  config = configs.default_config()
  configs.apply_overrides(config, [
      "delayed.method=fnw", "data.max_rows=20000", "data.synthetic.rows_per_day=10000",
      "model.name=lr", "train.progress=False", "data.cat_buckets=4096",
      "data.batch_size=512", "train.steps_per_dispatch=1", "delayed.window_s=14400.0"])
  workdir = str(tmp_path / "fnw")
  summary = ex.run_experiment(config, workdir)
  assert summary["method"] == "fnw" and summary["incremental_rows"] == 10_000
  run = ex.load_runs([workdir])[0]
  assert run.record["rows"] == 10_000 and run.record["param_count"] > 0
  assert ex.run_value(run, "pcoc_windows.std") == pytest.approx(summary["pcoc_windows"]["std"])
  assert 0 < ex.run_value(run, "pr_auc") < 1
  config.delayed.method = "nope"
  with pytest.raises(ValueError, match="delayed.method"):
    ex.run_experiment(config, str(tmp_path / "bad"))
