"""The outputs of :mod:`rectrain.tune`: the trials table and the best point.

:func:`write_results` rewrites, after every trial, ``trials.md`` /
``trials.csv`` (one row per trial, the best in bold, :func:`format_trials`)
and, once a trial completed, ``best.json``, ``best_set.txt`` and
``best_config.py`` (files are replaced atomically).
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Sequence

from optuna.trial import TrialState

from rectrain.tune_space import _override, parse_param
from rectrain.tune_trial import HOLDOUT_METRICS, METRICS, _finished


def _trial_rows(study, spec) -> List[Dict[str, Any]]:
  rows = []
  holdout = tuple(f"holdout_{m}" for m in HOLDOUT_METRICS)
  for t in study.get_trials(deepcopy=False):
    if t.state in (TrialState.WAITING, TrialState.RUNNING):
      continue
    a = t.user_attrs
    row = {"number": t.number, "state": t.state.name, "value": t.value, **t.params,
           "pruned_at": t.last_step if t.state == TrialState.PRUNED else None,
           "pruned_at_row": a.get("pruned_at_row")}
    row.update({k: a.get(k) for k in METRICS + holdout if k in a})
    row["note"] = (a.get("pruned_reason") or a.get("error")
                   or (f"= trial {a['duplicate_of']}" if "duplicate_of" in a else "")
                   or (f"restart of trial {a['restart_of']}" if "restart_of" in a else "")
                   or ("interrupted (tried again)" if t.state == TrialState.FAIL else ""))
    rows.append(row)
  return rows


def format_trials(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], best: int | None,
                  holdout: bool = False) -> str:
  """The trials as a markdown table, the best trial in bold."""
  m = (lambda k: f"holdout_{k}") if holdout else (lambda k: k)  # noqa: E731
  cols = ["number", "state", *keys, "value", m("auc"), m("logloss"), m("pcoc"), "rows_per_sec",
          "pruned_at", "note"]

  def cell(r, c):
    v = r.get(c)
    if v is None:
      return ""
    if c == "rows_per_sec":
      return f"{v:,.0f}"
    if isinstance(v, float):
      return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v).replace("|", "/")[:70]

  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    cells = [cell(r, c) for c in cols]
    if r["number"] == best:
      cells = [f"**{c}**" if c else c for c in cells]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
  cols = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
  w.writeheader()
  w.writerows({k: ("" if r.get(k) is None else r[k]) for k in cols} for r in rows)
  return buf.getvalue()


def _write(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)  # a kill never leaves half a file


def write_results(study, spec, log: Callable[[str], None] | None = print) -> Dict[str, Any]:
  """Writes trials.md / trials.csv and, once a trial completed, best.json,
  best_set.txt and best_config.py; returns the result (``best`` None before)."""
  keys = [parse_param(p).key for p in spec["params"]]
  rows = _trial_rows(study, spec)
  trials = study.get_trials(deepcopy=False)
  complete = [t for t in trials if t.state == TrialState.COMPLETE]
  best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
  table = format_trials(rows, keys, best.number if best else None, bool(spec["holdout_rows"]))
  out = spec["dir"]
  _write(os.path.join(out, "trials.md"), table + "\n")
  _write(os.path.join(out, "trials.csv"), _csv(rows))
  result = {"best": None, "objective": spec["objective"], "holdout_rows": spec["holdout_rows"],
            "finished": len(_finished(study)),
            "failed": sum(t.state == TrialState.FAIL and "error" in t.user_attrs for t in trials),
            "trials": rows, "dir": out}
  if best is None:
    return result
  sets = [_override(k, best.params[k]) for k in keys]
  result["best"] = {"number": best.number, "value": best.value, "params": best.params,
                    "metrics": dict(best.user_attrs), "set": sets}
  _write(os.path.join(out, "best.json"), json.dumps(result, indent=2, default=str) + "\n")
  _write(os.path.join(out, "best_set.txt"), "\n".join(spec["set"] + sets) + "\n")
  config = os.path.abspath(spec["config"]) if spec["config"] else None
  _write(os.path.join(out, "best_config.py"), _BEST_CONFIG.format(
      dir=out, value=best.value, objective=spec["objective"], number=best.number, config=config,
      arg=spec["arg"], sets=json.dumps(spec["set"] + sets, indent=4)))
  if log:
    log(table)
    log(f"\nbest trial {best.number}: {spec['objective']} {best.value:.5f}  "
        + " ".join(f"--set {s}" for s in sets))
    log(f"written: {out}/best.json, best_set.txt, best_config.py, trials.md, trials.csv")
  return result


_BEST_CONFIG = '''"""The best point of the tuning run in {dir} (trial {number}, {objective} {value:.5f}).

  rectrain run {dir}/best_config.py
"""

from rectrain.tune import base_config

CONFIG = {config!r}
ARG = {arg!r}
SETS = {sets}


def get_config(arg=None):
  del arg
  return base_config(CONFIG, ARG, SETS)
'''
