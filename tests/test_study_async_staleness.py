"""experiments/async_staleness: the sweep's points are valid configs and a smoke point runs.

The study itself (notebooks/async_staleness.ipynb) is re-executed at smoke scale
by tests/test_notebooks.py; here the experiment folder is checked on its own:
every point of the real and the smoke sweep resolves to a config that passes
``rectrain.configs.validate`` and builds its async train step, the grid is the
one the README describes, and one smoke point (DC-ASGD-a, tau = 4) runs through
``run_experiment`` and leaves its run record.
"""

import os

import optax
import pytest

from rectrain import configs
from rectrain import experiment as ex
from rectrain.models import build_model
from rectrain.train.async_sim import make_async_train_step_from_config
from rectrain.experiments.sweeps import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "experiments", "async_staleness")


def _module():
  return load_module(EXP)[0]


def _configs(arg):
  return [(p, ex.point_config(EXP, arg, p.overrides)) for p in ex.load_sweep(EXP, arg)]


@pytest.mark.parametrize("arg", [None, "smoke"])
def test_every_point_is_a_valid_config_and_builds_its_step(arg):
  built = {}
  for p, c in _configs(arg):
    configs.validate(c)
    a = c.train.async_sim
    assert a.enabled == (a.tau > 0), p.name          # tau = 0 is the synchronous step
    key = (a.enabled, a.tau, a.delay_compensation, c.optim.dense.name)
    if key in built:
      continue
    model = build_model(c.model)
    built[key] = make_async_train_step_from_config(
        model, optax.identity(), {}, a, max_unique=c.data.batch_size * 26)
  assert built


def test_real_grid_is_the_documented_one():
  mod = _module()
  points = _configs(None)
  rows = {}
  for p, c in points:
    a = c.train.async_sim
    family = c.experiment.label.split(":")[0]
    method = "sync" if not a.enabled else a.delay_compensation
    rows.setdefault((family, method, a.tau), []).append(c.seed)
    # The sizes the notebook and the README state.
    assert (c.data.max_rows, c.data.batch_size, c.model.embed_dim, tuple(c.model.mlp_dims)) == (
        131_072, 256, 16, (256, 128)), p.name
    if family == "lr/10":
      assert c.optim.dense.learning_rate == pytest.approx(1e-4)
      assert c.optim.sparse.learning_rate == pytest.approx(0.005)
    elif family == "default":
      assert (c.optim.dense.name, c.optim.dense.learning_rate) == ("adam", 1e-3)
      assert c.optim.sparse.learning_rate == 0.05
    else:
      assert (family, c.optim.dense.name, c.optim.dense.learning_rate) == ("SGD", "sgd", 0.1)
    if a.enabled and a.delay_compensation == "constant":
      assert a.lambda_ == 0.04
    if a.enabled and a.delay_compensation == "adaptive":
      assert a.lambda_ == 2.0
  assert all(sorted(s) == [0, 1] for s in rows.values()), rows
  for tau in (1, 4, 16, 64):
    for dc in ("none", "constant", "adaptive"):
      assert ("default", dc, tau) in rows
  assert ("default", "sync", 0) in rows and ("lr/10", "sync", 0) in rows
  assert len(rows) == 21 and len(points) == 42
  # Labels identify rows: one label per (family, method, tau).
  labels = {c.experiment.label for _, c in points}
  assert len(labels) == len(rows)
  with pytest.raises(ValueError, match="sync is tau = 0"):
    mod.point("asgd", 0)
  with pytest.raises(ValueError, match="unknown family"):
    mod.point("asgd", 4, family="momentum")
  with pytest.raises(ValueError, match="unknown argument"):
    mod.get_config("big")


def test_one_smoke_point_runs(tmp_path):
  """The smoke DC-ASGD-a tau = 4 point, on 1,024 rows (4 updates), through run_experiment."""
  point = [p for p in ex.load_sweep(EXP, "smoke") if "DC-ASGD-a" in p.name]
  assert len(point) == 1, ex.load_sweep(EXP, "smoke")
  config = ex.point_config(EXP, "smoke", point[0].overrides + ["data.max_rows=1024"])
  workdir = str(tmp_path / point[0].name)
  summary = ex.run_experiment(config, workdir)
  assert summary["rows"] == 1024 and summary["batches"] == 4
  assert summary["nonfinite_batches"] == 0
  assert 0.0 < summary["logloss"] < 5.0 and 0.0 <= summary["auc"] <= 1.0
  # The async step really ran: its final state is the train state of the async run state.
  assert int(summary["_state"].step) == 4
  run = ex.load_run(workdir)
  assert run.label == "default: DC-ASGD-a tau=4"
  cfg = run.record["config"]["train"]["async_sim"]
  assert (cfg["enabled"], cfg["tau"], cfg["delay_compensation"], cfg["lambda_"]) == (
      True, 4, "adaptive", 2.0)
  windows = ex.read_windows(workdir)
  assert [w["end_row"] for w in windows] == [1024]
