"""Runs the defaults protocol of experiments/defaults/config.py.

  python experiments/defaults/tune_defaults.py tune   [--models lr,fm,...] [--out runs/defaults]
  python experiments/defaults/tune_defaults.py report [--models ...] [--out runs/defaults]

``tune`` runs one ``rectrain tune`` study per model (resumable: the same
command continues a killed run) and writes ``OUT/best.json`` (its values,
rounded to 2 significant digits, are rectrain.configs.MODEL_DEFAULTS);
``report`` runs the committed defaults and the first-wave defaults on the
report seeds and prints the
markdown table of experiments/defaults/README.md (also ``OUT/report.json``).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import config as exp  # noqa: E402

from rectrain.configs import apply_overrides  # noqa: E402
from rectrain.tune import _override, parse_param, tune  # noqa: E402


def _current(model, arg="untuned"):
  """The searched keys' values in the config of ``MODEL,arg`` ("untuned": the
  tuning's starting point; "": the committed defaults)."""
  c = exp.get_config(f"{model},{arg}" if arg else model)
  out = {}
  for key, spec in exp.search_space(model).items():
    if key.startswith("optim.tables.") and key.split(".")[2] not in c.optim.tables:
      key_in_config = "optim.sparse." + key.split(".", 3)[3]  # the table follows optim.sparse
    else:
      key_in_config = key
    node = c
    for part in key_in_config.split("."):
      node = node[part]
    p = parse_param(f"{key}={spec}")
    if p.values and node not in p.values:
      continue
    if not p.values and not (p.low <= node <= p.high):
      continue
    out[key] = node
  return out


def _trial_stats(tune_dir):
  """Pruned trials and the summed trial time of a study (over every resumed run)."""
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.load_study(study_name=None, storage=f"sqlite:///{os.path.join(tune_dir, 'study.db')}")
  trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete and t.datetime_start]
  return {"pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
          "seconds": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)}


def run_tune(models, out):
  best = {}
  path = os.path.join(out, "best.json")
  if os.path.exists(path):
    with open(path) as f:
      best = json.load(f)
  for m in models:
    t0 = time.perf_counter()
    low_acc0 = {**_current(m, ""), "optim.sparse.initial_accumulator_value": 1e-6}
    result = tune(exp.search_space(m), os.path.join(out, f"tune_{m}"), config_path=HERE,
                  config_arg=f"{m},untuned", trials=exp.trials(m), sampler="tpe", objective="ne",
                  holdout_rows=exp.HOLDOUT_ROWS, prune=False,
                  enqueue=[_current(m), _current(m, ""), low_acc0], log=None)
    best[m] = {"params": result["best"]["params"], "value": result["best"]["value"],
               "finished": result["finished"], **_trial_stats(os.path.join(out, f"tune_{m}"))}
    print(f"{m}: NE {result['best']['value']:.5f} {result['best']['params']} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    with open(path, "w") as f:
      json.dump(best, f, indent=2)
  return best


def run_report(models, out):
  from rectrain.train.loop import train_stream
  rows = {}
  for m in models:
    for variant in ("tuned", "first_wave"):  # tuned = the committed MODEL_DEFAULTS
      arg = f"{m},report" + (",first_wave" if variant == "first_wave" else "")
      sets = []
      res = []
      for seed in exp.REPORT_SEEDS:
        c = apply_overrides(exp.get_config(arg), sets + [f"seed={seed}"])
        windows = []
        s = train_stream(c, on_window=lambda w: windows.append(w)
                         if w["window"] == "rows" and w["slice"] is None else None)
        res.append({"seed": seed, "auc": s["auc"], "logloss": s["logloss"], "ne": s["ne"],
                    "pcoc": s["pcoc"], "bayes_auc": s["bayes_auc"],
                    "first_window_ne": windows[0]["ne"] if windows else None,
                    "max_ne_after_first": max(w["ne"] for w in windows[1:]) if windows else None,
                    "rows_per_sec": s["rows_per_sec"]})
        print(m, variant, res[-1], flush=True)
      rows[f"{m}/{variant}"] = res
      with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rows, f, indent=2)
  print(format_report(rows, models))
  return rows


def format_report(rows, models):
  def ms(vals, fmt=".4f"):
    vals = [v for v in vals if v is not None]
    return f"{np.mean(vals):{fmt}} ± {np.std(vals):{fmt}}" if vals else ""
  lines = ["| model | defaults | AUC | NE | log loss | PCOC | NE of window 1 | max NE of windows 2+ |",
           "|---|---|---|---|---|---|---|---|"]
  for m in models:
    for variant in ("tuned", "first_wave"):
      r = rows.get(f"{m}/{variant}")
      if not r:
        continue
      lines.append(f"| {m} | {variant.replace('_', ' ')} | {ms([x['auc'] for x in r])} | "
                   f"{ms([x['ne'] for x in r])} | {ms([x['logloss'] for x in r])} | "
                   f"{ms([x['pcoc'] for x in r], '.3f')} | {ms([x['first_window_ne'] for x in r], '.3f')} | "
                   f"{ms([x['max_ne_after_first'] for x in r], '.3f')} |")
  return "\n".join(lines)


def format_tuning(best, models):
  """The markdown table of ``OUT/best.json``: per model the chosen values and the tuning NE."""
  keys = []
  for m in models:
    for k in best.get(m, {}).get("params", {}):
      if k not in keys:
        keys.append(k)
  short = {k: k.replace("optim.", "").replace("initial_accumulator_value", "acc0")
                .replace("learning_rate", "lr").replace("model.", "") for k in keys}
  lines = ["| model | tuning NE | trials (pruned) | minutes | " + " | ".join(short[k] for k in keys) + " |",
           "|---|---|---|---|" + "---|" * len(keys)]
  for m in models:
    r = best.get(m)
    if not r:
      continue
    vals = [format(float(format(r["params"][k], ".2g")), "g") if k in r["params"] else ""
            for k in keys]
    pruned = f" ({r['pruned']})" if "pruned" in r else ""
    lines.append(f"| {m} | {r['value']:.4f} | {r['finished']}{pruned} | {r['seconds'] / 60:.1f} | "
                 + " | ".join(vals) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("stage", choices=("tune", "report", "table"))
  parser.add_argument("--models", default=",".join(exp.MODELS))
  parser.add_argument("--out", default="runs/defaults")
  args = parser.parse_args()
  models = [m for m in args.models.split(",") if m]
  os.makedirs(args.out, exist_ok=True)
  if args.stage == "tune":
    run_tune(models, args.out)
  elif args.stage == "table":  # the tuning table of OUT/best.json
    with open(os.path.join(args.out, "best.json")) as f:
      print(format_tuning(json.load(f), models))
  else:
    run_report(models, args.out)


if __name__ == "__main__":
  main()
