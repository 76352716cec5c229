"""Tests of experiments/criteo_offline: arguments, sizing, the smoke sweep, the real sample."""

import json
import os

import pytest

from rectrain import configs
from rectrain import experiment as ex
from rectrain.data.split import split_counts
from rectrain.experiments.sweeps import load_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(REPO, "experiments", "criteo_offline")


def _module():
  module, _ = load_module(EXP)
  return module


def test_configs_size_train_and_test_exactly():
  for arg, rows in [(None, 45_840_617), ("sample", 4222), ("synthetic", 500_000),
                    ("smoke", 16_384), ("synthetic,rows=20000", 20_000), ("rows=1000", 1000)]:
    c = configs.load_config(EXP, arg)
    sizes = split_counts(rows, (7, 2, 1), 0)
    assert c.data.split == "train" and c.offline.eval_data.split == "test", arg
    assert c.data.max_rows == sizes["train"], arg
    assert c.offline.eval_data.max_rows == sizes["test"], arg
    assert c.offline.epochs == 1 and c.offline.eval_data.shuffle_buffer == 0
  assert configs.load_config(EXP, None).data.source == "criteo"
  sample = configs.load_config(EXP, "sample")
  assert sample.data.source == "criteo" and os.path.isfile(sample.data.path)
  configs.validate(sample)
  with pytest.raises(ValueError, match="data.path is required"):
    configs.validate(configs.load_config(EXP, None))


@pytest.mark.parametrize("arg,match", [("bogus", "unknown argument 'bogus'"),
                                       ("rows=ten", "rows must be an integer"),
                                       ("rows=0", "rows must be >= 1"),
                                       ("sample,rows=5000", "the sample has 4222 rows")])
def test_bad_arguments(arg, match):
  with pytest.raises(ValueError, match=match):
    configs.load_config(EXP, arg)


def test_sweep_models_and_embedding_dim():
  points = _module().get_sweep(None)
  assert len(points) == 18
  labels = {p["experiment.label"] for p in points}
  assert labels == {"LR (FTRL)", "FM", "Wide&Deep", "DeepFM", "DCNv2", "DLRM"}
  for p in points:
    assert p.get("model.embed_dim") == (None if p["model.name"] == "lr" else 10)
  names = [s.name for s in ex.load_sweep(EXP, "synthetic")]
  assert len(set(names)) == 18


def test_smoke_sweep_trains_on_train_and_scores_test(tmp_path):
  out = str(tmp_path / "smoke")
  st = ex.run_sweep(EXP, out, arg="smoke", in_process=True, log=lambda s: None)
  assert [s["status"] for s in st] == ["done", "done"], st
  sizes = split_counts(16_384)
  runs = {r.label: r for r in ex.load_runs([out])}
  assert set(runs) == {"LR (FTRL)", "DeepFM"}
  for run in runs.values():
    points = [json.loads(l) for l in open(os.path.join(run.dir, "offline.jsonl"))]
    assert [p["epoch"] for p in points] == [1.0]
    assert points[-1]["test"]["rows"] == sizes["test"]          # the whole test split
    assert points[-1]["train"]["rows"] == sizes["train"]        # one pass over train
    assert run.summary["rows"] == sizes["train"]
    assert run.summary["auc"] == pytest.approx(points[-1]["test"]["auc"], abs=1e-12)
    assert run.record["config"]["model"].get("embed_dim", 10) == 10
  # LR learns something in one pass over 11k rows (AUC 0.5 = nothing)
  assert runs["LR (FTRL)"].summary["auc"] > 0.6


def test_real_sample_path(tmp_path):
  """LR (FTRL) on the real 4,222-line sample: 2,913 train rows, 426 test rows."""
  config = ex.point_config(EXP, "sample", ["model.name=lr", "optim.tables.linear=" + repr(
      ex.LR_FTRL)])
  summary = ex.run_experiment(config, str(tmp_path / "lr"))
  sizes = split_counts(4222)
  assert (sizes["train"], sizes["test"]) == (2913, 426)
  assert summary["rows"] == 2913 and summary["points"][-1]["test"]["rows"] == 426
  assert 0.5 < summary["auc"] < 1.0
