"""The synthetic world's drift presets and the calibration experiment's smoke run."""

import os

import numpy as np
import pytest

from rectrain import configs
from rectrain import experiment as ex
from rectrain.data import make_stream
from rectrain.data import synthetic
from rectrain.data import synthetic_config
from rectrain.experiments.sweeps import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "experiments", "synthetic_calibration")


def _fit_module():
  return load_module(os.path.join(CALIB, "fit.py"))[0]


def test_strong_preset_is_the_default_world():
  assert synthetic.resolve_config().to_dict() == synthetic.default_config().to_dict()
  assert synthetic.resolve_config(preset="strong").drift.strength == 1.0


def test_calibrated_preset_sets_the_fitted_strength_unless_overridden():
  s = synthetic_config.CALIBRATED_DRIFT_STRENGTH
  assert 0.0 < s < 1.0
  assert synthetic.resolve_config(preset="calibrated").drift.strength == s
  # a key set away from the strong default keeps its value
  kept = synthetic.resolve_config(preset="calibrated", drift={"strength": 0.5})
  assert kept.drift.strength == 0.5
  # the preset touches nothing else
  a = synthetic.resolve_config(preset="calibrated").to_dict()
  b = synthetic.default_config().to_dict()
  a["drift"].pop("strength"), b["drift"].pop("strength"), a.pop("preset"), b.pop("preset")
  assert a == b


def test_unknown_preset_is_one_line_error():
  with pytest.raises(ValueError, match="unknown preset 'mild'.*calibrated"):
    synthetic.resolve_config(preset="mild")


def test_preset_from_the_run_config_reaches_the_stream():
  c = configs.default_config()
  configs.apply_overrides(c, ["data.synthetic.preset=calibrated", "data.max_rows=1024",
                              "data.batch_size=512", "data.synthetic.table_ranks=1024",
                              "data.synthetic.calibration_rows=1024"])
  stream = make_stream(c.data, seed=0)
  assert stream.config.drift.strength == synthetic_config.CALIBRATED_DRIFT_STRENGTH
  weak = [b["label"] for b in stream]
  assert sum(len(x) for x in weak) == 1024


def test_fit_strength_interpolates_and_refuses_unbracketed_targets():
  fit = _fit_module()
  losses = {"LR, strength 0.1": [np.array([0.002, 0.007]), np.array([0.004, 0.005])],
            "LR, strength 1": [np.array([0.02, 0.05])],
            "LR, preset calibrated": [np.array([0.0, 0.01])]}
  # the line through 0 of the seed means (0.003, 0.006), read at delay 2
  assert fit.trend(losses["LR, strength 0.1"], 2) == pytest.approx(2 * 0.015 / 5)
  low, high = 2 * 0.015 / 5, 2 * 0.12 / 5
  s, bracket = fit.fit_strength(losses, "LR", 2, 0.01)
  t = (np.log(0.01) - np.log(low)) / (np.log(high) - np.log(low))
  assert s == pytest.approx(np.exp(np.log(0.1) + t * np.log(10.0)))
  assert bracket == (0.1, 1.0)
  s, bracket = fit.fit_strength(losses, "LR", 2, 0.003)   # below the smallest: linear from 0
  assert s == pytest.approx(0.1 * 0.003 / low) and bracket == (0.0, 0.1)
  with pytest.raises(ValueError, match="not bracketed"):
    fit.fit_strength(losses, "LR", 2, 0.2)


def test_calibration_smoke_sweep_and_fit(tmp_path, capsys):
  out = str(tmp_path / "calib")
  st = ex.run_sweep(CALIB, out, arg="smoke", in_process=True, log=lambda s: None)
  assert [s["status"] for s in st] == ["done"] * 3, st
  fit = _fit_module()
  losses = fit.freshness_losses([out], 2)
  assert set(losses) == {"LR, strength 0", "LR, strength 1", "LR, preset calibrated"}
  runs = {r.label: r for r in ex.load_runs([out])}
  assert runs["LR, preset calibrated"].record["config"]["data"]["synthetic"]["preset"] == \
      "calibrated"
  # the frozen model is scored on every day after the freeze
  assert all(v.shape == (2,) and np.all(np.isfinite(v)) for vals in losses.values()
             for v in vals)
  assert fit.main([out, "--delay", "2", "--target", "0.5"]) == 2   # not bracketed: one line
  err = capsys.readouterr().err
  assert err.startswith("fit.py: error:") and err.count("\n") == 1
