"""experiments/online_optimizers: valid sweep configs, the study's measurements, one smoke point."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from rectrain import configs
from rectrain.experiment import aggregate, load_runs, load_sweep, point_config
from rectrain.optim import get_optimizer, get_sparse_optimizer
from rectrain.train.step import init_train_state
from rectrain.experiments.sweeps import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXP = os.path.join(ROOT, "experiments", "online_optimizers")


def _load_module():
  return load_module(EXP)[0]


study = _load_module()


@pytest.mark.parametrize("arg", ["smoke", None])
def test_every_point_builds_a_valid_config(arg):
  points = load_sweep(EXP, arg)
  seeds = {}
  kinds = {"ogd": set(), "ftrl": set(), "deepfm": set(), "oracle": 0}
  for p in points:
    c = point_config(EXP, arg, p.overrides)
    configs.validate(c)
    seeds.setdefault(c.experiment.label, []).append(c.seed)
    syn = c.data.synthetic
    # The sudden-drift stream: one drift step per day, at least one day boundary.
    assert syn.drift.update_hours == 24.0 and c.data.max_rows > syn.rows_per_day, p.name
    assert c.data.max_rows % c.metrics.window_rows == 0
    assert syn.rows_per_day % c.metrics.window_rows == 0
    if c.experiment.oracle:
      kinds["oracle"] += 1
    elif c.model.name == "lr":
      opt = c.optim.tables.linear
      kinds[opt.name].add(opt.l1)
    else:
      assert c.model.name == "deepfm" and not c.optim.tables
      kinds["deepfm"].add((c.optim.sparse.name, c.optim.dense.name))
  n_seeds = 1 if arg == "smoke" else 3
  assert all(sorted(s) == list(range(n_seeds)) for s in seeds.values()), seeds
  assert 0.0 in kinds["ftrl"] and max(kinds["ogd"]) > 0 and max(kinds["ftrl"]) > 0
  assert kinds["oracle"] == n_seeds
  assert ("rowwise_adagrad", "adam") in kinds["deepfm"]
  if arg is None:
    assert 0.0 in kinds["ogd"] and ("adamom", "adamom") in kinds["deepfm"]
    assert {e for e, _ in kinds["deepfm"]} == {"rowwise_adagrad", "adam", "adamom"}
    assert {d for _, d in kinds["deepfm"]} == {"adam", "adamom"}
    assert kinds["ftrl"] == set(study.FTRL_L1) and kinds["ogd"] == set(study.OGD_L1)
  with pytest.raises(ValueError, match="unknown argument"):
    load_sweep(EXP, "nonsense")


def test_zero_fraction_on_a_hand_made_table():
  table = np.array([[0.0], [1.5], [0.0], [-2.0], [0.0], [1e-30]], np.float32)
  all_rows = study.zero_fraction(table)
  assert all_rows == {"zero_fraction": 3 / 6, "nonzero_weights": 3, "weights": 6}
  touched = np.array([True, True, False, True, False, True])
  sub = study.zero_fraction(jnp.asarray(table), touched)
  assert sub == {"zero_fraction": 1 / 4, "nonzero_weights": 3, "weights": 4}
  wide = np.array([[0.0, 1.0], [0.0, 0.0], [2.0, 3.0]], np.float32)   # element-wise
  assert study.zero_fraction(wide, np.array([True, True, False]))["zero_fraction"] == 3 / 4
  with pytest.raises(ValueError, match="touched_N"):
    study.zero_fraction(table, np.ones(5, bool))
  with pytest.raises(ValueError, match="2-D"):
    study.zero_fraction(np.zeros(3))


def test_optimizer_floats_counts_the_state_arrays():
  n, d = 50, 8
  dense = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}   # 16 params, 2 leaves
  tables = {"embedding": jnp.zeros((n, d)), "linear": jnp.zeros((n, 1))}
  cases = {
      # (table optimizer, dense optimizer): (embedding, linear, dense) floats per param
      ("rowwise_adagrad", "adam"): (1 / d, 1.0, 2.0),   # one accumulator per row; mu, nu
      ("adam", "adam"): (2.0, 2.0, 2.0),                 # lazy Adam m, v
      ("adamom", "adamom"): (2 + 1 / d, 3.0, 2 + 7 / 16),  # m, v + c per row (w: 3, b: 4)
      ("ftrl", "sgd"): (2.0, 2.0, 0.0),                  # z, n; SGD has no state
  }
  for (t_name, d_name), (emb, lin, den) in cases.items():
    state = init_train_state(dense, tables, get_optimizer(d_name, learning_rate=0.1),
                             {k: get_sparse_optimizer(t_name, learning_rate=0.1) for k in tables})
    got = study.optimizer_floats(state)
    assert got["opt_floats_per_param_embedding"] == pytest.approx(emb), (t_name, d_name)
    assert got["opt_floats_per_param_linear"] == pytest.approx(lin), (t_name, d_name)
    assert got["opt_floats_per_param_dense"] == pytest.approx(den), (t_name, d_name)
    assert got["opt_floats_per_param_tables"] == pytest.approx((emb * n * d + lin * n) / (n * d + n))
    assert got["opt_floats_per_param"] == pytest.approx(
        (emb * n * d + lin * n + den * 16) / (n * d + n + 16))


def _windows(aucs, size):
  return [{"start_row": i * size, "end_row": (i + 1) * size, "partial": False, "auc": a}
          for i, a in enumerate(aucs)]


def test_drift_recovery_on_hand_made_windows():
  # Days of 4 windows of 10 rows; drifts at rows 40 and 80.
  aucs = [0.60, 0.65, 0.70, 0.72,   0.50, 0.60, 0.70, 0.75,   0.66, 0.68, 0.69, 0.70]
  got = study.drift_recovery(_windows(aucs, 10), rows_per_day=40, pre_windows=2,
                             after_rows=20, tol=0.01)
  # Boundary 40: pre 0.71, first 0.50, recovers (>= 0.70) in the window ending at 70.
  # Boundary 80: pre 0.725, first 0.66, never >= 0.715 -> censored at the day's end (40).
  assert got["drift_events"] == 2 and got["drift_censored"] == 1
  assert got["drift_drop"] == pytest.approx(((0.71 - 0.50) + (0.725 - 0.66)) / 2)
  assert got["drift_after"] == pytest.approx(((0.50 + 0.60) / 2 + (0.66 + 0.68) / 2) / 2)
  assert got["drift_recovery_rows"] == pytest.approx((30 + 40) / 2)
  # No boundary inside the stream: nothing to measure.
  none = study.drift_recovery(_windows(aucs[:3], 10), rows_per_day=40)
  assert none["drift_events"] == 0 and np.isnan(none["drift_drop"])


def test_smoke_points_run_and_record_the_measurements(tmp_path):
  c = study.get_config("smoke")
  points = {p.name: p for p in load_sweep(EXP, "smoke")}
  ogd = [n for n in points if n.startswith("LR-OGD-+-L1-l1-1e-2")][0]
  ftrl = [n for n in points if n.startswith("LR-FTRL-l1-1e-3")][0]
  out = {}
  for name in (ogd, ftrl):
    config = point_config(EXP, "smoke", points[name].overrides)
    workdir = str(tmp_path / name)
    study.run_point(config, workdir, command="test")
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert os.path.isfile(os.path.join(workdir, "run.json"))
    out[name] = summary
  config = point_config(EXP, "smoke", points[ogd].overrides)
  touched = study.touched_rows(config)
  # Independently: the ids of the generator's raw blocks (no batching, no padding).
  from rectrain.data import make_stream
  stream = make_stream(config.data, seed=config.seed)
  expected = np.zeros(stream.num_rows, bool)
  for block in stream.raw_blocks(want_cat=True):
    expected[block["cat"].reshape(-1)] = True
  np.testing.assert_array_equal(touched, expected)
  for s in out.values():
    assert s["rows"] == c.data.max_rows
    assert s["weights"] == int(touched.sum()) < touched.size   # zeros counted over touched rows
    assert s["opt_floats_per_param_dense"] == pytest.approx(2.0, abs=1e-6)   # Adam on the bias
    assert s["drift_events"] == 1
  # OGD + L1 almost never lands on an exact zero (a weight stays 0 only if its
  # gradients sum to exactly 0, e.g. one click and one non-click at p = 0.5);
  # FTRL's L1 zeroes many.
  assert out[ogd]["zero_fraction"] < 1e-3
  assert out[ogd]["opt_floats_per_param_linear"] == 0.0
  assert 0.1 < out[ftrl]["zero_fraction"] <= 1.0
  assert out[ftrl]["opt_floats_per_param_linear"] == 2.0
  rows = aggregate(load_runs([str(tmp_path)]), ["logloss", "zero_fraction"])
  assert {r.label for r in rows} == {"LR OGD + L1 l1=1e-2", "LR FTRL l1=1e-3"}
  assert all(np.isfinite(r.mean("zero_fraction")) for r in rows)
