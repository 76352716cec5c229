"""rectrain tune: search spaces, results, resume after a kill, pruning, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from rectrain import cli, configs
from rectrain.tune import parse_param, tune

BASE = ["data.max_rows=16384", "data.batch_size=512", "data.cat_buckets=1024", "model.name=lr",
        "metrics.window_rows=4096", "metrics.time_windows=", "train.progress=False"]


def test_parse_param():
  p = parse_param("optim.sparse.learning_rate=loguniform:1e-3:1")
  assert (p.key, p.kind, p.low, p.high) == ("optim.sparse.learning_rate", "loguniform", 1e-3, 1.0)
  assert parse_param("a.b=int:1:64:log").log
  assert parse_param("a.b=choice:adam,rowwise_adagrad").values == ("adam", "rowwise_adagrad")
  assert parse_param("a.b=grid:0,20,100").values == (0, 20, 100)
  for bad, msg in (("a.b", "KEY=SPEC"), ("a.b=normal:0:1", "unknown kind"),
                   ("a.b=uniform:1:0", "LO < HI"), ("a.b=loguniform:0:1", "LO > 0"),
                   ("a.b=uniform:x:1", "numbers"), ("a.b=choice:", "needs values"),
                   ("a.b=int:0.5:3", "integers")):
    with pytest.raises(ValueError, match=msg):
      parse_param(bad)


def test_random_study_writes_the_best_point(tmp_path):
  result = tune({"optim.sparse.learning_rate": "loguniform:0.01:1",
                 "optim.bias.learning_rate": "loguniform:0.1:2"},
                str(tmp_path), overrides=BASE, trials=4, sampler="random", prune=False, log=None)
  values = [t["value"] for t in result["trials"] if t["state"] == "COMPLETE"]
  assert len(values) == 4 and result["best"]["value"] == min(values)
  for name in ("study.db", "trials.md", "best.json", "best_set.txt", "best_config.py"):
    assert (tmp_path / name).exists(), name
  sets = (tmp_path / "best_set.txt").read_text().split()
  config = configs.apply_overrides(configs.default_config(), sets)
  assert config.optim.sparse.learning_rate == pytest.approx(
      result["best"]["params"]["optim.sparse.learning_rate"])
  best = configs.load_config(str(tmp_path / "best_config.py"))
  assert best.optim.bias.learning_rate == pytest.approx(
      result["best"]["params"]["optim.bias.learning_rate"])
  assert "**" in (tmp_path / "trials.md").read_text()  # the best row is bold
  # The trial's metrics are the run's.
  best_trial = [t for t in result["trials"] if t["number"] == result["best"]["number"]][0]
  assert best_trial["ne"] == pytest.approx(result["best"]["value"])
  assert 0.5 < best_trial["auc"] < 1.0


def _tune_command(tune_dir):
  cmd = [sys.executable, "-m", "rectrain.cli", "tune", "--dir", str(tune_dir), "--trials", "6",
         "--sampler", "grid", "--no-prune",
         "--param", "optim.sparse.learning_rate=grid:0.02,0.05,0.1,0.2,0.4,0.8"]
  for s in BASE:
    cmd += ["--set", s]
  return cmd


def _finished(tune_dir):
  try:
    study = optuna.load_study(study_name="rectrain",
                              storage=f"sqlite:///{tune_dir}/study.db")
  except Exception:  # the study is not created yet
    return []
  return [t for t in study.get_trials() if t.state.is_finished()
          and t.state != optuna.trial.TrialState.FAIL]


def test_killed_tuning_resumes_without_repeating_trials(tmp_path):
  tune_dir = tmp_path / "tune"
  proc = subprocess.Popen(_tune_command(tune_dir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while len(_finished(tune_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = {t.number: (t.params, t.value) for t in _finished(tune_dir)}
  assert 2 <= len(before) < 6
  r = subprocess.run(_tune_command(tune_dir), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resuming" in r.stdout
  after = _finished(tune_dir)
  assert len(after) == 6
  for t in after:  # finished trials are kept as they were
    if t.number in before:
      assert (t.params, t.value) == before[t.number]
  lrs = sorted(t.params["optim.sparse.learning_rate"] for t in after)
  assert lrs == [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]  # every grid point once
  best = json.loads((tune_dir / "best.json").read_text())
  assert best["finished"] == 6
  assert best["best"]["value"] == min(t.value for t in after)


def test_pruning_stops_a_diverging_trial(tmp_path):
  good = [{"optim.sparse.learning_rate": lr} for lr in (0.1, 0.2, 0.3)]
  result = tune({"optim.sparse.learning_rate": "loguniform:0.01:1000"}, str(tmp_path),
                overrides=BASE, trials=4, sampler="random",
                enqueue=good + [{"optim.sparse.learning_rate": 1000.0}], log=None)
  by_lr = {t["optim.sparse.learning_rate"]: t for t in result["trials"]}
  assert all(by_lr[g["optim.sparse.learning_rate"]]["state"] == "COMPLETE" for g in good)
  bad = by_lr[1000.0]
  assert bad["state"] == "PRUNED"
  assert bad["pruned_at"] < 3  # 4 windows of 4,096 rows: stopped before the end
  assert result["best"]["params"]["optim.sparse.learning_rate"] in (0.1, 0.2, 0.3)


def test_bad_params_are_one_line_errors(tmp_path, capsys):
  code = cli.main(["tune", "--dir", str(tmp_path / "a"), "--param", "optim.sparse.bogus=uniform:0:1",
                   *sum((["--set", s] for s in BASE), [])])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "optim.sparse.bogus" in err and len(err.splitlines()) == 1
  code = cli.main(["tune", "--dir", str(tmp_path / "b"), "--param", "optim.sparse.learning_rate=x"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "unknown kind" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "a").exists()  # nothing ran
