"""Online optimizers: L1 sparsity of FTRL vs OGD, and embedding / dense optimizers under drift.

Two questions on one drifting synthetic stream (rectrain/data/synthetic.py):

1. **Sparsity** (McMahan et al. 2013, "Ad Click Prediction: a View from the
   Trenches", Sec. 3 and Table 1): logistic regression learned with OGD, OGD +
   L1 (subgradient ``l1 * sign(w)``) and FTRL-Proximal over a sweep of L1.
   Claim: at the same loss FTRL has far more exactly-zero weights; OGD + L1
   has almost none. Measured: progressive log loss and the fraction of
   exactly-zero weights of the ``linear`` table among the weights whose
   hash bucket occurred in the stream (:func:`zero_fraction`,
   :func:`touched_rows`).
2. **Embedding / dense optimizers under drift**: DeepFM with its tables
   (embedding and linear) on row-wise AdaGrad, lazy Adam or AdaMom (Monolith),
   and its dense part on Adam or AdaMom. Measured: progressive AUC per 10,000-row
   window and per day, the AUC drop at each drift and the recovery after it
   (:func:`drift_recovery`), and the optimizer state floats per parameter
   counted from the actual optimizer states (:func:`optimizer_floats`).

Stream ("sudden drift", existing knobs of the synthetic stream): 100,000 rows
per simulated day; the drift is applied in one step per day
(``drift.update_hours = 24``), with ``drift.effect_corr_days = 1`` (the
effects and latent factors of the 8,192 most popular ids of every field keep
a correlation of exp(-1) = 0.37 with the previous day) and
``drift.churn_per_day = 0.25`` (every 4th rank of the large fields gets a new
id at each day boundary). So rows 100,000 and 200,000 start a new world; the
300,000-row runs cover 3 days and 2 drifts. 65,536 hash buckets per field,
batches of 2,048, integers as log1p dense inputs.

``seed`` seeds the stream and the model initialisation (seeds 0, 1, 2).
Learning rates were chosen on seed 100 (not used in the table) on the first
200,000 rows (emb / dense) or 300,000 rows (OGD), see README.md.

The extra metrics need the final train state, which ``rectrain sweep`` does
not keep, so the sweep runs in process with :func:`run_point` as the runner;
it adds them to each run's ``summary.json`` (so ``rectrain table`` shows them)
and writes the run record like ``rectrain.experiment.run_experiment``.

Commands (see README.md for the measured runtime and the table):

  python experiments/online_optimizers/config.py                # the sweep, runs/online_optimizers
  rectrain table runs/online_optimizers --metrics logloss,auc,zero_fraction,nonzero_weights

Runtime: 7 min 24 s for the whole real-sized notebook (sweep: 432 s, 45 runs) on
2 shared CPU cores.

Smoke (seconds; tests/test_study_online_optimizers.py runs two points):
``python experiments/online_optimizers/config.py --arg smoke``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import experiment_section
from rectrain.models import default_model_config

SEEDS = (0, 1, 2)
EXP_DIR = os.path.dirname(os.path.abspath(__file__))

# LR weights: FTRL as rectrain.experiment.LR_FTRL; OGD w <- w - lr/sqrt(t) (g + l1 sign w).
FTRL = {"name": "ftrl", "learning_rate": 0.2, "beta": 0.0, "initial_accumulator_value": 1e-6,
        "l2": 0.0}
OGD = {"name": "ogd", "learning_rate": 3.0}
FTRL_L1 = (0.0, 1e-4, 3e-4, 1e-3, 3e-3)
OGD_L1 = (0.0, 1e-3, 1e-2, 3e-2)

# DeepFM tables (embedding + linear) and dense part.
EMB_OPTS = {
    "rowwise_adagrad": {"name": "rowwise_adagrad", "learning_rate": 0.02},
    "adam": {"name": "adam", "learning_rate": 1e-2},
    "adamom": {"name": "adamom", "learning_rate": 0.1},
}
DENSE_OPTS = {
    "adam": {"name": "adam", "learning_rate": 3e-3},
    "adamom": {"name": "adamom", "learning_rate": 3e-2},
}
# (tables, dense) pairs: every table optimizer with dense Adam, and dense AdaMom
# with row-wise AdaGrad and with AdaMom tables (the Monolith setting).
EMB_DENSE = (("rowwise_adagrad", "adam"), ("adam", "adam"), ("adamom", "adam"),
             ("rowwise_adagrad", "adamom"), ("adamom", "adamom"))
_NAMES = {"rowwise_adagrad": "row-wise AdaGrad", "adam": "Adam", "adamom": "AdaMom",
          "ogd": "OGD", "ftrl": "FTRL"}


def get_config(arg=None):
  """The base config (DeepFM on the sudden-drift stream); ``arg="smoke"`` shrinks it."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/online_optimizers: unknown argument {arg!r} "
                     f"(use smoke or none)")
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="online_optimizers")
  c.data.source = "synthetic"
  c.data.max_rows = 300_000
  c.data.batch_size = 2048
  c.data.cat_buckets = 1 << 16
  syn = c.data.synthetic
  syn.rows_per_day = 100_000
  syn.drift.update_hours = 24.0
  syn.drift.effect_corr_days = 1.0
  syn.drift.churn_per_day = 0.25
  c.model = default_model_config("deepfm")
  c.model.embed_dim = 8
  c.model.mlp_dims = (64, 32)
  c.optim.sparse = dict(EMB_OPTS["rowwise_adagrad"])
  c.optim.dense = dict(DENSE_OPTS["adam"])
  c.metrics.window_rows = 10_000
  c.metrics.time_windows = "day"
  c.train.progress = False
  if arg == "smoke":
    c.data.max_rows = 8192
    c.data.batch_size = 512
    c.data.cat_buckets = 1024
    syn.rows_per_day = 4096          # 2 days, one drift at row 4,096
    syn.calibration_rows = 4096
    c.metrics.window_rows = 1024
    c.train.steps_per_dispatch = 4   # 16 batches = 4 equal groups: one compilation
  return c


def _fmt_l1(l1: float) -> str:
  return "0" if l1 == 0 else f"{l1:.0e}".replace("e-0", "e-")


def sparsity_points(smoke: bool = False) -> List[Dict[str, Any]]:
  """LR with OGD / OGD + L1 and FTRL over the L1 sweep (one dict per config, no seed)."""
  ogd_l1 = (1e-2,) if smoke else OGD_L1
  ftrl_l1 = (0.0, 1e-3) if smoke else FTRL_L1
  points = []
  for name, base, grid in (("ogd", OGD, ogd_l1), ("ftrl", FTRL, ftrl_l1)):
    for l1 in grid:
      label = f"LR {_NAMES[name]}{' + L1' if name == 'ogd' and l1 else ''} l1={_fmt_l1(l1)}"
      points.append({"experiment.label": label, "model.name": "lr",
                     "optim.tables.linear": dict(base, l1=float(l1))})
  return points


def drift_points(smoke: bool = False) -> List[Dict[str, Any]]:
  """DeepFM with each (tables, dense) optimizer pair of :data:`EMB_DENSE`."""
  pairs = (("rowwise_adagrad", "adam"),) if smoke else EMB_DENSE
  return [{"experiment.label": f"DeepFM tables {_NAMES[e]} / dense {_NAMES[d]}",
           "optim.sparse": dict(EMB_OPTS[e]), "optim.dense": dict(DENSE_OPTS[d])}
          for e, d in pairs]


def get_sweep(arg=None):
  """Sparsity points, drift points and the Bayes ceiling, each for every seed."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/online_optimizers: unknown argument {arg!r} "
                     f"(use smoke or none)")
  smoke = arg == "smoke"
  seeds = (0,) if smoke else SEEDS
  configs = sparsity_points(smoke) + drift_points(smoke) + [
      {"experiment.oracle": True, "experiment.label": "Bayes ceiling"}]
  return [dict(p, seed=s) for p in configs for s in seeds]


# ---------------------------------------------------------------------------
# Measurements from the final state and the windows.


def touched_rows(config) -> np.ndarray:
  """Bool ``(N,)``: rows of the fused table that a row of weight > 0 of the run's
  stream (``make_stream(config.data, config.seed)``) looks up at least once."""
  from rectrain.data import make_stream
  stream = make_stream(config.data, seed=config.seed)
  touched_N = np.zeros((stream.num_rows,), bool)
  for batch in stream:
    touched_N[batch["cat"][batch["weight"] > 0].reshape(-1)] = True
  return touched_N


def zero_fraction(table_NxW, touched_N=None) -> Dict[str, float]:
  """Exactly-zero weights of a table, over the rows in ``touched_N`` (all rows if None).

  ``zero_fraction = #{w == 0} / #weights`` and ``nonzero_weights = #{w != 0}``,
  counted element-wise over the (N, W) entries of the selected rows (the
  paper's "non-zero coefficients", McMahan et al. 2013, Table 1).
  """
  w_NxW = np.asarray(table_NxW)
  if w_NxW.ndim != 2:
    raise ValueError(f"zero_fraction: table must be 2-D (N, W), got shape {w_NxW.shape}")
  if touched_N is not None:
    touched_N = np.asarray(touched_N)
    if touched_N.dtype != bool or touched_N.shape != w_NxW.shape[:1]:
      raise ValueError(f"zero_fraction: touched_N must be a bool array of shape "
                       f"({w_NxW.shape[0]},), got {touched_N.dtype} {touched_N.shape}")
    w_NxW = w_NxW[touched_N]
  total = int(w_NxW.size)
  zeros = int(np.count_nonzero(w_NxW == 0))
  return {"zero_fraction": zeros / total if total else math.nan,
          "nonzero_weights": total - zeros, "weights": total}


def _float_size(tree) -> int:
  import jax
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)
                 if np.issubdtype(np.asarray(x).dtype, np.floating)))


def optimizer_floats(state) -> Dict[str, float]:
  """Optimizer-state floats per parameter, counted from the arrays of a TrainState.

  Per table ``t``: floating-point elements of ``state.table_opt_state[t]``
  divided by the elements of ``state.tables[t]``; ``tables``: all tables
  together; ``dense``: elements of ``state.dense_opt_state`` over those of
  ``state.dense_params``; ``all``: everything. Integer leaves (step counters)
  are not floats and are left out.
  """
  out = {}
  opt_tables = params_tables = 0
  for name, table in state.tables.items():
    opt = _float_size(state.table_opt_state[name])
    out[f"opt_floats_per_param_{name}"] = opt / int(np.size(table))
    opt_tables += opt
    params_tables += int(np.size(table))
  opt_dense = _float_size(state.dense_opt_state)
  params_dense = _float_size(state.dense_params)
  out["opt_floats_per_param_tables"] = opt_tables / params_tables if params_tables else math.nan
  out["opt_floats_per_param_dense"] = opt_dense / params_dense if params_dense else math.nan
  out["opt_floats_per_param"] = (opt_tables + opt_dense) / (params_tables + params_dense)
  return out


def drift_recovery(windows: Sequence[Mapping[str, Any]], rows_per_day: int,
                   metric: str = "auc", pre_windows: int = 2, after_rows: int = 30_000,
                   tol: float = 0.01) -> Dict[str, float]:
  """AUC drop and recovery at each day boundary (a sudden drift), from row windows.

  For every boundary ``b = k * rows_per_day`` (k >= 1) with a full window
  before and after it: ``pre`` = mean ``metric`` of the ``pre_windows`` row
  windows ending at ``b``; ``drop = pre - metric(first window after b)``;
  ``after`` = mean ``metric`` of the windows within ``after_rows`` rows after
  ``b``; ``recovery_rows`` = rows from ``b`` to the end of the first window
  whose ``metric >= pre - tol`` (the day's length if none does: censored).

  Returns the means over boundaries, ``drift_drop``, ``drift_after``,
  ``drift_recovery_rows``, and ``drift_events`` / ``drift_censored`` counts.
  """
  recs = sorted((w for w in windows if not w.get("partial")), key=lambda w: w["start_row"])
  drops, afters, recs_rows, censored = [], [], [], 0
  end = max((w["end_row"] for w in recs), default=0)
  for b in range(rows_per_day, end, rows_per_day):
    before = [w[metric] for w in recs if w["end_row"] <= b][-pre_windows:]
    day = [w for w in recs if b <= w["start_row"] and w["end_row"] <= b + rows_per_day]
    if len(before) < pre_windows or not day or any(v is None for v in before):
      continue
    pre = float(np.mean(before))
    drops.append(pre - day[0][metric])
    afters.append(float(np.mean([w[metric] for w in day if w["end_row"] <= b + after_rows])))
    hit = [w["end_row"] - b for w in day if w[metric] >= pre - tol]
    if not hit:
      censored += 1
    recs_rows.append(hit[0] if hit else day[-1]["end_row"] - b)
  mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
  return {"drift_drop": mean(drops), "drift_after": mean(afters),
          "drift_recovery_rows": mean(recs_rows), "drift_events": len(drops),
          "drift_censored": censored}


def run_point(config, workdir: str, command: str | None = None) -> Dict[str, Any]:
  """Runs one sweep point and records the study's extra metrics in its summary.

  Model points: ``rectrain.train.loop.train_stream``; then :func:`optimizer_floats`
  of the final state, :func:`drift_recovery` of its row windows and, for the
  ``linear`` table of LR, :func:`zero_fraction` over :func:`touched_rows` are
  added to ``summary.json``; ``run.json`` is written by
  ``rectrain.experiment.write_run_record``. Bayes-ceiling points go through
  ``rectrain.experiment.run_experiment`` unchanged.
  """
  from rectrain import experiment
  from rectrain.train.loop import train_stream
  if config.experiment.oracle:
    return experiment.run_experiment(config, workdir, command=command)
  started = experiment._now()
  summary = train_stream(config, workdir=workdir)
  state = summary.pop("_state")
  extra = optimizer_floats(state)
  extra.update(drift_recovery(experiment.read_windows(workdir, "rows"),
                              int(config.data.synthetic.rows_per_day)))
  if config.model.name == "lr":
    t0 = time.perf_counter()
    extra.update(zero_fraction(state.tables["linear"], touched_rows(config)))
    extra["touched_rows_sec"] = time.perf_counter() - t0
  summary.update(extra)
  with open(os.path.join(workdir, experiment.SUMMARY), "w") as f:
    json.dump(experiment._jsonable(summary), f, indent=2)
  experiment.write_run_record(workdir, config, summary, int(config.seed), command=command,
                              started_at=started)
  return summary


def run(out_dir: str | None = None, arg: str | None = None, log=print) -> List[Dict[str, Any]]:
  """Runs the sweep in this process with :func:`run_point` (finished runs are skipped)."""
  from rectrain.experiment import run_sweep
  out_dir = out_dir or os.path.join("runs", "online_optimizers" + (f"_{arg}" if arg else ""))
  return run_sweep(EXP_DIR, out_dir, arg=arg, in_process=True, drop_checkpoints=True,
                   runner=run_point, log=log)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arg", default=None, help="smoke, or nothing for the full sweep")
  parser.add_argument("--out", default=None, help="default runs/online_optimizers[_smoke]")
  args = parser.parse_args()
  statuses = run(args.out, args.arg)
  raise SystemExit(1 if any(s["status"] == "failed" for s in statuses) else 0)
