"""Tests of ``rectrain reproduce`` (rectrain/experiments/reproduce.py): a tiny recorded run
(LR, 2,048 synthetic rows) rerun bit-identically; a tampered record exits 1; a changed config,
a missing or damaged run.json are one-line errors (exit 2)."""

import json
import os
import shutil

import pytest

from rectrain.cli import main
from rectrain.experiments.records import git_state
from rectrain.experiments.reproduce import code_warning

TINY = ["model.name=lr", "data.max_rows=2048", "data.batch_size=512", "data.cat_buckets=512",
        "train.progress=False"]


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
  """A run recorded by ``rectrain run`` (its run.json, config.json, summary.json)."""
  workdir = str(tmp_path_factory.mktemp("recorded") / "lr")
  argv = ["run", "--workdir", workdir]
  for item in TINY:
    argv += ["--set", item]
  assert main(argv) == 0
  return workdir


def _record(run_dir):
  with open(os.path.join(run_dir, "run.json")) as f:
    return json.load(f)


def _copy(run_dir, dest, **changes):
  """A copy of ``run_dir`` whose run.json has ``changes`` applied (``"metrics.auc": v``)."""
  shutil.copytree(run_dir, dest)
  record = _record(dest)
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    section = record
    for p in parents:
      section = section[p]
    section[leaf] = value(section[leaf]) if callable(value) else value
  with open(os.path.join(dest, "run.json"), "w") as f:
    json.dump(record, f)
  return str(dest)


def test_reproduce_gives_identical_metrics(recorded_run, tmp_path, capsys):
  out = str(tmp_path / "again")
  assert main(["reproduce", recorded_run, "--workdir", out]) == 0
  stdout = capsys.readouterr().out
  assert "all 5 metrics equal within rtol=0" in stdout
  a, b = _record(recorded_run), _record(out)
  assert b["metrics"] == a["metrics"] and b["rows"] == a["rows"] == 2048
  assert b["config_hash"] == a["config_hash"] and b["reproduces"] == os.path.abspath(recorded_run)
  auc_line = next(line for line in stdout.splitlines() if line.startswith("auc "))
  assert auc_line.split() == ["auc", repr(a["metrics"]["auc"]), repr(a["metrics"]["auc"]), "0"]
  windows = [open(os.path.join(d, "metrics.jsonl")).read() for d in (recorded_run, out)]
  assert windows[0] == windows[1] and len(windows[0].splitlines()) >= 2
  # the rerun directory is now taken: a second reproduce into it is refused
  assert main(["reproduce", recorded_run, "--workdir", out]) == 2
  assert capsys.readouterr().err.strip() == (f"rectrain: error: {out}: not empty; remove it "
                                             f"or pass another --workdir")


def test_tampered_metric_exits_1_and_rtol_allows_it(recorded_run, tmp_path, capsys):
  bumped = lambda v: v * (1 + 1e-9)  # noqa: E731
  tampered = _copy(recorded_run, tmp_path / "tampered", **{"metrics.auc": bumped})
  assert main(["reproduce", tampered]) == 1
  out = capsys.readouterr().out
  assert out.splitlines()[-1] == "rectrain reproduce: 1 of 5 metrics differ beyond rtol=0 (auc)"
  assert "DIFFERS" in next(line for line in out.splitlines() if line.startswith("auc "))
  assert os.path.isfile(os.path.join(tampered + "_reproduce", "run.json"))   # the default workdir
  assert main(["reproduce", tampered, "--workdir", str(tmp_path / "tol"), "--rtol", "1e-6"]) == 0


def test_changed_config_is_refused(recorded_run, tmp_path, capsys):
  changed = _copy(recorded_run, tmp_path / "changed", **{"config.data.max_rows": 4096})
  assert main(["reproduce", changed]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert err.startswith(f"rectrain: error: {changed}/run.json: the recorded config hashes to ")
  assert not os.path.exists(changed + "_reproduce")


def test_missing_or_damaged_run_json_is_a_one_line_error(recorded_run, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert main(["reproduce", str(empty)]) == 2
  err = capsys.readouterr().err
  assert err == f"rectrain: error: {empty}/run.json: no run record (not a finished run directory)\n"
  damaged = tmp_path / "damaged"
  shutil.copytree(recorded_run, damaged)
  text = open(damaged / "run.json").read()
  (damaged / "run.json").write_text(text[:len(text) // 2])   # a truncated write
  assert main(["reproduce", str(damaged)]) == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert err.startswith(f"rectrain: error: {damaged}/run.json: line ") and "not valid JSON" in err
  no_metrics = _copy(recorded_run, tmp_path / "no_metrics", metrics=None)
  assert main(["reproduce", no_metrics]) == 2
  assert capsys.readouterr().err == (f"rectrain: error: {no_metrics}/run.json: field 'metrics' "
                                     f"is missing or not a JSON object\n")
  text_auc = _copy(recorded_run, tmp_path / "text_auc", **{"metrics.auc": "high"})
  assert main(["reproduce", text_auc]) == 2
  assert capsys.readouterr().err == (f"rectrain: error: {text_auc}/run.json: auc = 'high' is not "
                                     f"a number\n")


def test_code_warning_names_the_commits():
  now = git_state()
  other = {"git": {"commit": "f" * 40, "dirty": True, "num_changes": 3}}
  warning = code_warning(other, "R/run.json")
  assert warning.startswith("warning: R/run.json was recorded at commit ffffffffff; ")
  assert f"this checkout is at commit {(now['commit'] or 'unknown')[:10]}" in warning
  assert "the recorded tree had 3 uncommitted changes" in warning
  same = code_warning({"git": dict(now, dirty=False)}, "R/run.json")
  if now["dirty"]:
    assert same == (f"warning: R/run.json was recorded at commit {now['commit'][:10]}; this "
                    f"tree has uncommitted changes: metrics may differ")
  else:
    assert same is None
  assert code_warning({}, "R/run.json") == ("warning: R/run.json records no git commit; the "
                                            "code may differ")
