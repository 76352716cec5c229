"""One trial of :mod:`rectrain.tune`: a streaming run, its pruning and its result.

:func:`run_trial` trains the trial's config and reports the running
objective at every count window (the pruner's intermediate values);
:func:`holdout_metrics` scores the frozen final model on held-out synthetic
rows; ``_evaluate`` runs one asked trial (or copies the result of a finished
trial with the same values) and tells the study. ``_counted`` / ``_finished``
say which trials count as finished.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Dict, List, Mapping

import optuna
from optuna.trial import TrialState

from rectrain.tune_space import _override, trial_config

METRICS = ("auc", "logloss", "ne", "pcoc", "rows", "rows_per_sec")
HOLDOUT_METRICS = ("auc", "logloss", "ne", "pcoc")


class _Orphaned(BaseException):
  """Raised in a worker process whose tuning run (its parent) died."""


def _entropy(b: float) -> float:
  return -(b * math.log(b) + (1 - b) * math.log(1 - b)) if 0.0 < b < 1.0 else math.nan


def _finite(v):
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    try:
      v = float(v)
    except (TypeError, ValueError):
      return None
  return v if math.isfinite(v) else None


def _prune(trial, reason: str, row: int | None = None):
  trial.set_user_attr("pruned_reason", reason)
  if row is not None:
    trial.set_user_attr("pruned_at_row", int(row))
  raise optuna.TrialPruned(reason)


def holdout_metrics(config, summary: Mapping[str, Any], rows: int) -> Dict[str, float]:
  """Metrics of the frozen final model on the ``rows`` synthetic rows after the prefix."""
  import ml_collections
  from rectrain.data import make_stream
  from rectrain.models import build_model
  from rectrain.train.loop import evaluate
  from rectrain.train.step import make_predict
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.start_row = config.data.start_row + summary["rows"]
  data.max_rows = int(rows)
  stream = make_stream(data, seed=config.seed)
  state = summary["_state"]
  predict = make_predict(build_model(config.model))
  result = evaluate(predict, state.dense_params, state.tables, stream, stream.num_rows)
  return {k: result[k] for k in HOLDOUT_METRICS}


def run_trial(trial, spec: Mapping[str, Any], values: Mapping[str, Any],
              parent_pid: int | None = None) -> float:
  """One streaming run of the trial's config; returns the objective.

  Reports the running progressive objective at every count window (and
  prunes there); raises ``optuna.TrialPruned`` when pruned or not finite.
  The run's metrics go to the trial's user attrs.
  """
  from rectrain.experiments.records import resolve_windows
  from rectrain.train.loop import train_stream
  config = resolve_windows(trial_config(spec, values))
  config.train.progress = False
  name = spec["objective"]
  max_rows = int(config.data.max_rows or 0)
  sums = {"count": 0.0, "loss": 0.0, "positives": 0.0}

  def on_window(w):
    if parent_pid is not None and os.getppid() != parent_pid:
      raise _Orphaned()
    if w.get("window") != "rows" or w.get("slice") is not None:
      return
    sums["count"] += w["count"]
    sums["loss"] += w["count"] * w["logloss"]
    sums["positives"] += w["positives"]
    logloss = sums["loss"] / sums["count"] if sums["count"] else math.nan
    value = logloss if name == "logloss" else logloss / _entropy(
        sums["positives"] / sums["count"] if sums["count"] else math.nan)
    if not math.isfinite(value):
      _prune(trial, f"window {w['index']}: {name} is not finite", w["end_row"])
    trial.report(value, step=int(w["index"]))
    last = w["partial"] or (max_rows and w["end_row"] >= max_rows)
    if not last and trial.should_prune():
      _prune(trial, f"window {w['index']}: {name} {value:.4f}", w["end_row"])

  summary = train_stream(config, workdir=None, on_window=on_window)
  for k in METRICS + ("wall_time_sec",):
    trial.set_user_attr(k, _finite(summary.get(k)))
  nonfinite = (int(summary.get("nonfinite_batches") or 0),
               int(summary.get("nonfinite_prediction_rows") or 0))
  if any(nonfinite):
    _prune(trial, f"non-finite loss in {nonfinite[0]} batches, predictions in {nonfinite[1]} rows")
  value = summary.get(name)
  if spec["holdout_rows"]:
    held = holdout_metrics(config, summary, spec["holdout_rows"])
    for k, v in held.items():
      trial.set_user_attr(f"holdout_{k}", _finite(v))
    value = held.get(name)
  if _finite(value) is None:
    _prune(trial, f"{name} is not finite")
  return float(value)


def _counted(t) -> bool:
  """A finished trial that counts towards ``trials`` (not one killed with its run)."""
  return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
      t.state == TrialState.FAIL and "error" in t.user_attrs)


def _evaluate(study, trial, spec, params, log, parent_pid) -> None:
  """Runs one asked trial and tells the study its result."""
  t0 = time.perf_counter()
  values = {p.key: trial.params[p.key] for p in params}
  twin = next((t for t in study.get_trials(deepcopy=False)
               if t.number != trial.number and _counted(t) and t.params == values), None)
  value, state, error = None, TrialState.COMPLETE, None
  try:
    if twin is not None:  # the same config trains to the same result: reuse it
      trial.set_user_attr("duplicate_of", twin.number)
      for k, v in twin.user_attrs.items():
        if k not in ("duplicate_of", "restart_of", "error"):
          trial.set_user_attr(k, v)
      for step, v in sorted(twin.intermediate_values.items()):
        trial.report(v, step)
      state, value, error = twin.state, twin.value, twin.user_attrs.get("error")
    else:
      value = run_trial(trial, spec, values, parent_pid)
  except optuna.TrialPruned:
    state = TrialState.PRUNED
  except Exception as e:  # noqa: BLE001 - e.g. a combination the optimizer refuses: recorded
    state, error = TrialState.FAIL, f"{type(e).__name__}: {e}"
  except BaseException:  # killed, interrupted: the next run tries these values again
    study.tell(trial, state=TrialState.FAIL)
    raise
  if state == TrialState.FAIL:
    trial.set_user_attr("error", error or "failed")
  attrs = trial.user_attrs
  study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
  if log:
    what = (f"{spec['objective']} {value:.5f}" if state == TrialState.COMPLETE
            else attrs.get("pruned_reason") or attrs.get("error", ""))
    same = f" (= trial {twin.number})" if twin is not None else ""
    log(f"trial {trial.number} {state.name}{same}: {what} | "
        + " ".join(_override(k, v) for k, v in values.items())
        + f" ({time.perf_counter() - t0:.1f} s)")


def _finished(study) -> List[Any]:
  done = (TrialState.COMPLETE, TrialState.PRUNED)
  return [t for t in study.get_trials(deepcopy=False) if t.state in done]
