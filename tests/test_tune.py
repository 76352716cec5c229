"""rectrain tune: search spaces, results, resume after a kill, pruning, workers, CLI errors."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from rectrain import cli, configs
from rectrain.tune import LOCK_FILE, parse_param, split_values, tune

BASE = ["data.max_rows=16384", "data.batch_size=512", "data.cat_buckets=1024", "model.name=lr",
        "metrics.window_rows=4096", "metrics.time_windows=", "train.progress=False"]
LR = "optim.sparse.learning_rate"
GRID = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


def _sets(items):
  return sum((["--set", s] for s in items), [])


def _trials(tune_dir):
  try:
    study = optuna.load_study(study_name="rectrain", storage=f"sqlite:///{tune_dir}/study.db")
  except Exception:  # the study is not created yet
    return []
  return study.get_trials()


def _finished(tune_dir):
  done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  return [t for t in _trials(tune_dir) if t.state in done]


def test_parse_param():
  p = parse_param("optim.sparse.learning_rate=loguniform:1e-3:1")
  assert (p.key, p.kind, p.low, p.high, p.log) == (LR, "loguniform", 1e-3, 1.0, True)
  assert parse_param("a.b=int:1:64:log").log and not parse_param("a.b=int:1:64").log
  assert parse_param("a.b=choice:adam,rowwise_adagrad").values == ("adam", "rowwise_adagrad")
  assert parse_param("a.b=grid:0,20,100").values == (0, 20, 100)
  # Tuples stay --set texts (Optuna stores scalars only); commas inside brackets do not split.
  assert parse_param("model.mlp_dims=choice:(64,32),(128,)").values == ("(64,32)", "(128,)")
  assert split_values("'a,b',[1,2],3") == ["'a,b'", "[1,2]", "3"]
  for bad, msg in (("a.b", "KEY=SPEC"), ("a.b=normal:0:1", "unknown kind"),
                   ("a.b=uniform:1:0", "LO < HI"), ("a.b=loguniform:0:1", "LO > 0"),
                   ("a.b=uniform:x:1", "numbers"), ("a.b=choice:", "needs values"),
                   ("a.b=int:0.5:3", "integers"), ("a.b=grid:1,2,1", "twice"),
                   ("a.b=uniform:0:inf", "finite")):
    with pytest.raises(ValueError, match=msg):
      parse_param(bad)


def test_random_study_writes_the_best_point(tmp_path):
  space = {LR: "loguniform:0.01:1", "optim.bias.learning_rate": "loguniform:0.1:2"}
  result = tune(space, str(tmp_path), overrides=BASE, trials=4, sampler="random", prune=False,
                log=None)
  values = [t["value"] for t in result["trials"] if t["state"] == "COMPLETE"]
  assert len(values) == 4 and result["best"]["value"] == min(values)
  for name in ("study.db", "trials.md", "trials.csv", "best.json", "best_set.txt",
               "best_config.py", "spec.json"):
    assert (tmp_path / name).exists(), name
  assert len((tmp_path / "trials.csv").read_text().splitlines()) == 1 + 4
  # best_set.txt is a --set list `rectrain run` takes: the base values, then the best point.
  sets = (tmp_path / "best_set.txt").read_text().split()
  assert sets[:len(BASE)] == BASE and sets[len(BASE):] == result["best"]["set"]
  args = cli.build_parser().parse_args(["run", *_sets(sets)])
  config = configs.apply_overrides(configs.default_config(), args.set)
  assert config.optim.sparse.learning_rate == result["best"]["params"][LR]  # exact, not approx
  best = configs.load_config(str(tmp_path / "best_config.py"))
  assert best.to_dict() == config.to_dict()
  assert "**" in (tmp_path / "trials.md").read_text()  # the best row is bold
  saved = json.loads((tmp_path / "best.json").read_text())
  assert saved["best"]["number"] == result["best"]["number"] and saved["finished"] == 4
  # The trial's metrics are the run's.
  best_trial = [t for t in result["trials"] if t["number"] == result["best"]["number"]][0]
  assert best_trial["ne"] == pytest.approx(result["best"]["value"])
  assert 0.5 < best_trial["auc"] < 1.0 and best_trial["rows"] == 16384
  # The same command again: nothing left to run, the same best.
  again = tune(space, str(tmp_path), overrides=BASE, trials=4, sampler="random", prune=False,
               log=None)
  assert len(_trials(tmp_path)) == 4 and again["best"] == result["best"]
  # Another search in the same directory is refused; so is a second live run.
  with pytest.raises(ValueError, match="another search.*objective"):
    tune(space, str(tmp_path), overrides=BASE, trials=4, objective="logloss", log=None)
  with open(tmp_path / LOCK_FILE, "a") as f:
    fcntl.flock(f, fcntl.LOCK_SH)  # as a live worker holds it
    with pytest.raises(ValueError, match="another `rectrain tune`"):
      tune(space, str(tmp_path), overrides=BASE, trials=5, sampler="random", log=None)
  assert len(_trials(tmp_path)) == 4


def _tune_command(tune_dir):
  return [sys.executable, "-m", "rectrain.cli", "tune", "--dir", str(tune_dir), "--trials", "6",
          "--sampler", "grid", "--no-prune", "--param", f"{LR}=grid:" + ",".join(map(str, GRID)),
          *_sets(BASE)]


def test_killed_tuning_resumes_without_repeating_trials(tmp_path, capsys):
  tune_dir = tmp_path / "tune"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(_tune_command(tune_dir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env)
  deadline = time.monotonic() + 300
  try:  # kill it in the middle of a trial, after 2 finished ones
    while time.monotonic() < deadline:
      trials = _trials(tune_dir)  # one snapshot: finished and running from the same read
      running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
      done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                               optuna.trial.TrialState.PRUNED)]
      if len(done) >= 2 and running and set(running[0].params) == {LR}:
        break
      assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  before = {t.number: (t.params, t.value) for t in _finished(tune_dir)}
  killed = [t.number for t in _trials(tune_dir) if t.state == optuna.trial.TrialState.RUNNING]
  assert 2 <= len(before) < 6 and len(killed) == 1
  assert cli.main(_tune_command(tune_dir)[3:]) == 0  # the same command, in this process
  assert "1 interrupted (tried again)" in capsys.readouterr().out
  after = _finished(tune_dir)
  assert len(after) == 6
  for t in after:  # finished trials are kept as they were
    if t.number in before:
      assert (t.params, t.value) == before[t.number]
  assert sorted(t.params[LR] for t in after) == list(GRID)  # every grid point once
  trials = _trials(tune_dir)
  assert trials[killed[0]].state == optuna.trial.TrialState.FAIL
  restart = [t for t in after if t.user_attrs.get("restart_of") == killed[0]]
  assert len(restart) == 1 and restart[0].params == trials[killed[0]].params
  best = json.loads((tune_dir / "best.json").read_text())
  assert best["finished"] == 6
  assert best["best"]["value"] == min(t.value for t in after)


def test_pruning_stops_a_diverging_trial(tmp_path):
  good = [{LR: lr} for lr in (0.1, 0.2, 0.3)]
  result = tune({LR: "loguniform:0.01:1000"}, str(tmp_path), overrides=BASE, trials=4,
                sampler="random", enqueue=good + [{LR: 1000.0}], log=None)
  by_lr = {t[LR]: t for t in result["trials"]}
  assert all(by_lr[g[LR]]["state"] == "COMPLETE" for g in good)
  bad = by_lr[1000.0]
  # 4 windows of 4,096 rows: its running NE (~9) is far above the others' (~1)
  # at the first window the pruner looks at (window 1, after one warm-up step).
  assert bad["state"] == "PRUNED" and bad["pruned_at"] == 1 and bad["pruned_at_row"] == 8192
  trials = {t.number: t for t in _trials(tmp_path)}
  assert sorted(trials[bad["number"]].intermediate_values) == [0, 1]
  assert all(sorted(trials[by_lr[g[LR]]["number"]].intermediate_values) == [0, 1, 2, 3]
             for g in good)
  assert result["best"]["params"][LR] in (0.1, 0.2, 0.3)
  # The last intermediate value of a complete trial is its objective (the running NE).
  t0 = trials[by_lr[0.1]["number"]]
  assert t0.intermediate_values[3] == pytest.approx(t0.value, rel=1e-6)


def test_nonfinite_trial_is_never_best(tmp_path):
  # lr=1e38 overflows the logits: its batches are skipped as non-finite, so its
  # metrics cover only some rows. Without the pruner it still is PRUNED, not best.
  result = tune({LR: "choice:1e38,0.2"}, str(tmp_path), overrides=BASE, trials=2,
                sampler="grid", prune=False, log=None)
  by_lr = {t[LR]: t for t in result["trials"]}
  assert by_lr[1e38]["state"] == "PRUNED" and "non-finite" in by_lr[1e38]["note"]
  assert by_lr[0.2]["state"] == "COMPLETE" and result["best"]["params"] == {LR: 0.2}


def test_jobs_share_the_study(tmp_path):
  base = [s.replace("16384", "8192") for s in BASE]
  result = tune({LR: "grid:0.05,0.1,0.2,0.4"}, str(tmp_path), overrides=base, trials=4,
                sampler="grid", prune=False, jobs=2, log=None)
  assert result["finished"] == 4 and len(_trials(tmp_path)) == 4  # no extra trial
  assert sorted(t[LR] for t in result["trials"]) == [0.05, 0.1, 0.2, 0.4]


def test_bad_params_are_one_line_errors(tmp_path, capsys):
  for param, word in (("optim.sparse.bogus=uniform:0:1", "optim.sparse.bogus"),
                      ("optim.sparse.learning_rate=x", "unknown kind"),
                      ("optim.sparse.name=choice:rowwise_adagrad,no_such_opt", "no_such_opt"),
                      ("optim.sparse.learning_rate=uniform:0.1:1", "grid")):
    argv = ["tune", "--dir", str(tmp_path / "a"), "--param", param, *_sets(BASE)]
    if word == "grid":
      argv += ["--sampler", "grid"]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and word in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
  assert not (tmp_path / "a").exists()  # nothing ran
