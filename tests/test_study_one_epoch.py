"""experiments/one_epoch: the sweep builds valid configs and a smoke point runs."""

import json
import os

import numpy as np
import pytest

from rectrain import configs
from rectrain.experiment import is_finished, load_sweep, point_config, run_experiment
from rectrain.experiments.sweeps import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "experiments", "one_epoch")


def _load_module():
  return load_module(EXP)[0]


@pytest.mark.parametrize("arg", ["smoke", None])
def test_every_point_builds_a_valid_offline_config(arg):
  points = load_sweep(EXP, arg)
  labels = set()
  for p in points:
    c = point_config(EXP, arg, p.overrides)
    configs.validate(c)
    assert c.offline.epochs >= 2, p.name
    assert c.offline.eval_data.max_rows > 0, p.name
    labels.add(c.experiment.label)
    if c.data.source == "synthetic":
      # Held-out rows come right after the training rows, in a static world.
      assert c.offline.eval_data.start_row == c.data.max_rows, p.name
      assert c.data.synthetic.drift.strength == 0.0, p.name
    else:
      assert c.data.source == "criteo"
      assert os.path.isfile(c.data.path) and os.path.isfile(c.offline.eval_data.path)
      assert c.data.path != c.offline.eval_data.path
  groups = {label.split(":")[0] for label in labels}
  expected = {"main", "buckets", "remedy", "criteo"} | ({"optimizer", "lr"} if arg is None else set())
  assert groups == expected
  if arg is None:
    assert {"main: DNN", "main: DeepFM", "main: LR (FTRL)"} <= labels
    with pytest.raises(ValueError, match="unknown argument"):
      load_sweep(EXP, "nonsense")


def test_criteo_split_partitions_the_sample(tmp_path):
  module = _load_module()
  train, test, test_rows = module.criteo_split(dest=str(tmp_path))
  original = open(module.CRITEO_SAMPLE, "rb").read()
  a, b = open(train, "rb").read(), open(test, "rb").read()
  assert a + b == original
  assert a.count(b"\n") == module.CRITEO_TRAIN_ROWS
  assert b.count(b"\n") == test_rows == original.count(b"\n") - module.CRITEO_TRAIN_ROWS
  with pytest.raises(ValueError, match="need more than"):
    module.criteo_split(train_rows=10_000, dest=str(tmp_path))


def test_smoke_criteo_point_runs(tmp_path):
  point = [p for p in load_sweep(EXP, "smoke") if p.name.startswith("criteo-DNN")][0]
  c = point_config(EXP, "smoke", point.overrides)
  workdir = str(tmp_path / point.name)
  summary = run_experiment(c, workdir)
  assert is_finished(workdir)
  with open(os.path.join(workdir, "offline.jsonl")) as f:
    recs = [json.loads(line) for line in f]
  # One record per evaluation point (the initial point is not written to the file).
  assert len(recs) == c.offline.epochs * c.offline.evals_per_epoch
  epochs = [r["epoch"] for r in recs]
  assert np.all(np.diff(epochs) > 0) and epochs[-1] == pytest.approx(c.offline.epochs)
  aucs = [r["test"]["auc"] for r in recs]
  assert summary["best_auc"] == pytest.approx(max(aucs))
  assert summary["auc"] == pytest.approx(aucs[-1])
  assert all(r["change_dense"] > 0 and r["change_tables"] > 0 for r in recs)
  assert all(0.5 < r["test"]["auc"] < 1.0 for r in recs)
