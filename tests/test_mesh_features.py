"""Features on several devices (issue 15, item 1): a run on mesh (4, 1)
warm-started from a 1-device or a 4-device checkpoint, learning or frozen,
equals the 1-device run within float32 summation tolerance, and frozen runs
give the same predictions from either checkpoint; the async simulation (with
adaptive delay compensation) and the serving copy on mesh (4, 1) equal one
device, also resumed on 4 devices from their first checkpoint; the offline
protocol (2 epochs, tables re-initialised between them) on mesh (4, 1) gives
the 1-device evaluation points; the delayed-feedback protocol (ES-DFM, main
and auxiliary model, and a frozen model) on mesh (4, 1) equals one device;
the offline and delayed runs start from a 4-device checkpoint (warm start)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp("mesh_features")
  r = subprocess.run([sys.executable, os.path.join(HERE, "helpers", "mesh_features_run.py"), str(out)],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return out, json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("src", ["seed1", "seed4"])
@pytest.mark.parametrize("learn", ["True", "False"])
def test_four_devices_equal_one(results, src, learn):
  out, res = results
  one, four = res[f"{src}|(1,1)|{learn}"], res[f"{src}|(4,1)|{learn}"]
  assert one["rows"] == four["rows"] == 4096
  assert four["auc"] == pytest.approx(one["auc"], abs=1e-4)
  assert four["logloss"] == pytest.approx(one["logloss"], abs=1e-5)
  p1 = np.load(out / f"{src}_(1,1)_{learn}.npy")
  p4 = np.load(out / f"{src}_(4,1)_{learn}.npy")
  np.testing.assert_allclose(p4, p1, atol=2e-5)


def test_frozen_runs_score_the_warm_start_model(results):
  out, res = results
  # the 1- and 4-device source runs trained the same model: frozen, they predict alike
  a = np.load(out / "seed1_(1,1)_False.npy")
  b = np.load(out / "seed4_(1,1)_False.npy")
  np.testing.assert_allclose(a, b, atol=2e-5)
  # and learning changes the predictions
  c = np.load(out / "seed1_(1,1)_True.npy")
  assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("feature", ["async", "serving"])
def test_step_features_on_four_devices_equal_one(results, feature):
  out, res = results
  one, four = res[f"{feature}_(1,1)"], res[f"{feature}_(4,1)"]
  assert one["rows"] == four["rows"] == 4096
  assert four["auc"] == pytest.approx(one["auc"], abs=1e-4)
  assert four["logloss"] == pytest.approx(one["logloss"], abs=1e-5)
  p1, p4 = np.load(out / f"{feature}_(1,1).npy"), np.load(out / f"{feature}_(4,1).npy")
  np.testing.assert_allclose(p4, p1, atol=2e-5)
  # resumed on 4 devices from the first checkpoint: the rest of the same run
  resumed = res[f"{feature}_resumed"]
  assert resumed["resumed_from"] and resumed["rows"] == 4096
  assert resumed["logloss"] == pytest.approx(one["logloss"], abs=1e-5)
  tail = np.load(out / f"{feature}_resumed.npy")
  assert 0 < tail.size < p1.size
  np.testing.assert_allclose(tail, p1[-tail.size:], atol=2e-5)


def test_offline_protocol_on_four_devices_equals_one(results):
  _, res = results
  one, four = res["offline_(1,1)"], res["offline_(4,1)"]
  assert one["mesh"] is None and four["mesh"]["devices"] == 4
  assert len(one["test_logloss"]) == len(four["test_logloss"]) == 5   # start + 2 per epoch
  np.testing.assert_allclose(four["test_logloss"], one["test_logloss"], atol=1e-6)
  np.testing.assert_allclose(four["test_auc"], one["test_auc"], atol=1e-4)
  assert one["test_logloss"][3] != one["test_logloss"][2]   # the re-initialised tables
  # warm-started from the 4-device streaming run: the first point scores its model
  assert one["warm_start"]["tables"] and four["warm_start"]["tables"]
  assert one["test_logloss"][0] < 0.69


@pytest.mark.parametrize("method", ["esdfm", "vanilla"])
def test_delayed_protocol_on_four_devices_equals_one(results, method):
  """ES-DFM learning, and a frozen (train.learn=False) vanilla model; both warm-started
  from a 4-device checkpoint."""
  _, res = results
  one, four = res[f"delayed_{method}_(1,1)"], res[f"delayed_{method}_(4,1)"]
  assert one["mesh"] is None and four["mesh"]["devices"] == 4
  assert one["warm_start"]["tables"] and four["warm_start"]["tables"]
  if method == "vanilla":
    assert one["steps"] == four["steps"] == 0
  else:
    assert one["steps"] == four["steps"] > 0
  assert one["rows"] == four["rows"] > 0
  assert four["param_count"] == one["param_count"]   # the real rows, not the padding
  assert four["auc"] == pytest.approx(one["auc"], abs=1e-4)
  assert four["logloss"] == pytest.approx(one["logloss"], abs=1e-6)
