"""Hyperparameter tuning over any config keys, with Optuna.

A tuning run is a study in ``TUNE_DIR/study.db`` (SQLite), so a killed run
resumes where it stopped: finished trials are kept, trials the kill left
running are marked failed and their points tried again, and the run stops
when ``trials`` trials have finished (complete or pruned). Each trial is one
streaming run (:func:`rectrain.train.loop.train_stream`) of the base config
with the trial's values set. The objective, minimised, is the progressive NE
or log loss of the run (over the stream prefix the config reads), or the NE /
log loss of the frozen final model on held-out rows after it. The stream
gives intermediate values for free: each closed count window reports its
value, and the pruner stops trials that are worse than the others at the same
window (``MedianPruner``) -- a diverging learning rate is stopped early.

Search space: ``KEY=SPEC`` with SPEC one of ``loguniform:LO:HI``,
``uniform:LO:HI``, ``int:LO:HI`` (``int:LO:HI:log``), ``choice:A,B,C`` and
``grid:A,B,C`` (values parsed like ``--set`` values). Samplers: ``tpe``
(model-based, seeded), ``random`` (seeded) and ``grid`` (every combination of
the ``grid:`` / ``choice:`` values once).

Outputs in TUNE_DIR: ``study.db``, ``trials.md`` (one row per trial, best in
bold), ``best.json``, ``best_set.txt`` (the ``--set`` list that ``rectrain
run`` takes) and ``best_config.py`` (``get_config()`` = the base config with
the best values).

  rectrain tune [CONFIG] [--arg A] [--set k=v ...] --param KEY=SPEC ... --dir DIR
      [--trials N] [--sampler tpe|random|grid] [--objective ne|logloss]
      [--holdout-rows N] [--no-prune] [--jobs N] [--seed S]
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Sequence

SAMPLERS = ("tpe", "random", "grid")
OBJECTIVES = ("ne", "logloss")
KINDS = ("loguniform", "uniform", "int", "choice", "grid")
STUDY = "rectrain"
METRICS = ("auc", "logloss", "ne", "pcoc", "rows", "rows_per_sec")


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched config key: ``kind`` in :data:`KINDS`, bounds or values."""

  key: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  log: bool = False
  values: tuple = ()

  def suggest(self, trial):
    if self.kind in ("loguniform", "uniform"):
      return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "loguniform")
    if self.kind == "int":
      return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
    return trial.suggest_categorical(self.key, list(self.values))


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_param(text: str) -> Param:
  """``KEY=SPEC`` (module docstring) as a :class:`Param`; errors name the text."""
  key, sep, spec = text.partition("=")
  key, spec = key.strip(), spec.strip()
  if not sep or not key or not spec:
    raise ValueError(f"--param {text!r}: expected KEY=SPEC, e.g. "
                     "optim.sparse.learning_rate=loguniform:1e-3:1")
  kind, _, rest = spec.partition(":")
  if kind not in KINDS:
    raise ValueError(f"--param {text!r}: unknown kind {kind!r}; use one of {KINDS}")
  if kind in ("choice", "grid"):
    values = tuple(_value(v.strip()) for v in rest.split(",") if v.strip())
    if not values:
      raise ValueError(f"--param {text!r}: {kind} needs values, e.g. {kind}:0.01,0.1")
    return Param(key, kind, values=values)
  parts = rest.split(":")
  log = kind == "loguniform"
  if kind == "int" and len(parts) == 3 and parts[2] == "log":
    parts, log = parts[:2], True
  try:
    low, high = (float(p) for p in parts)
  except ValueError:
    raise ValueError(f"--param {text!r}: {kind} needs LO:HI numbers, e.g. {kind}:1:10") from None
  if not low < high or (log and low <= 0):
    raise ValueError(f"--param {text!r}: need LO < HI{' and LO > 0 (log scale)' if log else ''}")
  if kind == "int" and (low != int(low) or high != int(high)):
    raise ValueError(f"--param {text!r}: int bounds must be integers")
  return Param(key, kind, low, high, log)


def _override(key: str, value) -> str:
  return f"{key}={value!r}" if isinstance(value, str) and value == "" else f"{key}={value}"


def base_config(config_path: str | None = None, config_arg: str | None = None,
                overrides: Sequence[str] = ()):
  """The config a tuning run starts from: CONFIG (or the default) plus ``--set`` values."""
  from rectrain import configs
  config = (configs.load_config(config_path, config_arg) if config_path
            else configs.default_config())
  return configs.apply_overrides(config, list(overrides))


def trial_config(spec: Mapping[str, Any], values: Mapping[str, Any]):
  """The base config of ``spec`` with a trial's ``values`` set (validated)."""
  from rectrain import configs
  config = base_config(spec["config"], spec["arg"], spec["set"])
  config = configs.apply_overrides(config, [_override(k, v) for k, v in values.items()])
  configs.validate(config)
  return config


def _check_space(spec, params: Sequence[Param]) -> None:
  """Fails before any trial when a key or a value does not fit the config."""
  probe = {}
  for p in params:
    probe[p.key] = p.values[0] if p.values else (p.low if p.kind != "int" else int(p.low))
  try:
    config = trial_config(spec, probe)
  except KeyError as e:
    raise KeyError(f"--param: {e.args[0] if e.args else e}") from None
  except ValueError as e:
    raise ValueError(f"--param: {e}") from None
  if spec["holdout_rows"] and config.data.source != "synthetic":
    raise ValueError("--holdout-rows: held-out rows after the prefix need data.source=synthetic; "
                     "for a file, tune on its progressive objective")
  if config.metrics.window_rows <= 0 and spec["prune"]:
    raise ValueError("pruning needs count windows: set metrics.window_rows > 0 (or --no-prune)")


def _storage(tune_dir: str):
  import optuna
  return optuna.storages.RDBStorage(
      f"sqlite:///{os.path.abspath(os.path.join(tune_dir, 'study.db'))}",
      engine_kwargs={"connect_args": {"timeout": 60}})


def _sampler(spec, params: Sequence[Param]):
  import optuna
  if spec["sampler"] == "grid":
    bad = [p.key for p in params if p.kind not in ("grid", "choice")]
    if bad:
      raise ValueError(f"--sampler grid: {bad} are not grid:/choice: params")
    return optuna.samplers.GridSampler({p.key: list(p.values) for p in params}, seed=spec["seed"])
  if spec["sampler"] == "random":
    return optuna.samplers.RandomSampler(seed=spec["seed"])
  return optuna.samplers.TPESampler(seed=spec["seed"], n_startup_trials=min(8, spec["trials"]))


def _load_study(spec, params):
  import optuna
  pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
            if spec["prune"] else optuna.pruners.NopPruner())
  return optuna.create_study(study_name=STUDY, storage=_storage(spec["dir"]),
                             sampler=_sampler(spec, params), pruner=pruner,
                             direction="minimize", load_if_exists=True)


def _finished(study) -> List[Any]:
  import optuna
  done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  return [t for t in study.get_trials(deepcopy=False) if t.state in done]


def _objective_fn(spec, params: Sequence[Param]) -> Callable:
  import optuna
  from rectrain.train.loop import train_stream

  def objective(trial):
    values = {p.key: p.suggest(trial) for p in params}
    config = trial_config(spec, values)
    config.train.progress = False
    name = spec["objective"]

    def on_window(w):
      if w.get("window") != "rows" or w.get("slice") is not None or w.get("partial"):
        return
      value = w.get(name)
      if value is None or not math.isfinite(value):
        raise optuna.TrialPruned(f"window {w.get('index')}: {name} is not finite")
      trial.report(float(value), step=int(w["index"]))
      if trial.should_prune():
        raise optuna.TrialPruned(f"window {w['index']}: {name} {value:.4f}")

    summary = train_stream(config, workdir=None, on_window=on_window if spec["prune"] else None)
    result = {k: summary.get(k) for k in METRICS}
    value = summary.get(name)
    if spec["holdout_rows"]:
      held = holdout_metrics(config, summary, spec["holdout_rows"])
      result.update({f"holdout_{k}": v for k, v in held.items()})
      value = held.get(name)
    for k, v in result.items():
      trial.set_user_attr(k, v if v is None or isinstance(v, (int, float)) else str(v))
    if value is None or not math.isfinite(value):
      raise optuna.TrialPruned(f"{name} is not finite")
    return float(value)

  return objective


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
  return {k: result[k] for k in ("auc", "logloss", "ne", "pcoc")}


def _mark_interrupted(study) -> int:
  """Marks trials left RUNNING by a killed process as FAIL; returns how many."""
  import optuna
  n = 0
  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    n += 1
  return n


def _optimize(spec, params) -> None:
  import optuna
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = _load_study(spec, params)
  states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  left = spec["trials"] - len(_finished(study))
  if left <= 0:
    return
  study.optimize(_objective_fn(spec, params), n_trials=None if spec["jobs"] > 1 else left,
                 callbacks=[optuna.study.MaxTrialsCallback(spec["trials"], states=states)],
                 catch=(FloatingPointError,))


def _worker(spec, params) -> None:  # a --jobs process
  _optimize(spec, params)


def tune(params: Mapping[str, str] | Sequence[str], tune_dir: str, config_path: str | None = None,
         config_arg: str | None = None, overrides: Sequence[str] = (), trials: int = 20,
         sampler: str = "tpe", objective: str = "ne", holdout_rows: int = 0, prune: bool = True,
         jobs: int = 1, seed: int = 0, enqueue: Sequence[Mapping[str, Any]] = (),
         log: Callable[[str], None] | None = print) -> Dict[str, Any]:
  """Tunes ``params`` (``{key: spec}`` or ``["key=spec", ...]``); see the module docstring.

  Args:
    params: the search space.
    tune_dir: where the study and its outputs live; an existing study there is resumed.
    config_path, config_arg, overrides: the base config (``rectrain run``'s CONFIG,
      ``--arg``, ``--set``).
    trials: finished (complete or pruned) trials to reach.
    sampler: ``tpe``, ``random`` or ``grid``.
    objective: ``ne`` or ``logloss``, minimised.
    holdout_rows: > 0: the objective is measured on this many synthetic rows after
      the prefix, by the frozen final model.
    prune: stop trials that are worse than the median at the same window.
    jobs: worker processes sharing the study.
    seed: the sampler's seed.
    enqueue: points to try first (each ``{key: value}``), e.g. the current defaults.

  Returns:
    ``{"best": {"value", "params", "number"}, "trials": [...], "dir": ...}`` (also
    written to ``best.json``).
  """
  import optuna
  if isinstance(params, Mapping):
    items = [f"{k}={v}" for k, v in params.items()]
  else:
    items = list(params)
  parsed = [parse_param(p) for p in items]
  keys = [p.key for p in parsed]
  if len(set(keys)) != len(keys):
    raise ValueError(f"--param: a key is given twice in {keys}")
  if sampler not in SAMPLERS:
    raise ValueError(f"--sampler {sampler!r}: use one of {SAMPLERS}")
  if objective not in OBJECTIVES:
    raise ValueError(f"--objective {objective!r}: use one of {OBJECTIVES}")
  if trials < 1 or jobs < 1:
    raise ValueError("--trials and --jobs must be >= 1")
  spec = {"config": config_path, "arg": config_arg, "set": list(overrides), "dir": tune_dir,
          "trials": int(trials), "sampler": sampler, "objective": objective,
          "holdout_rows": int(holdout_rows), "prune": bool(prune), "jobs": int(jobs),
          "seed": int(seed), "params": items}
  _check_space(spec, parsed)
  os.makedirs(tune_dir, exist_ok=True)
  spec_path = os.path.join(tune_dir, "spec.json")
  if os.path.exists(spec_path):
    with open(spec_path) as f:
      old = json.load(f)
    same = {k: old.get(k) for k in ("config", "arg", "set", "objective", "holdout_rows", "params")}
    if same != {k: spec[k] for k in same}:
      raise ValueError(f"{tune_dir}: holds a study of another search (spec.json differs); "
                       "use another --dir")
  with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = _load_study(spec, parsed)
  interrupted = _mark_interrupted(study)
  if log and (interrupted or study.trials):
    log(f"resuming {tune_dir}: {len(_finished(study))} finished trials"
        + (f", {interrupted} interrupted (tried again)" if interrupted else ""))
  if not study.trials:
    for point in enqueue:
      study.enqueue_trial(dict(point))
  if jobs == 1:
    _optimize(spec, parsed)
  else:
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(spec, parsed)) for _ in range(jobs)]
    for p in procs:
      p.start()
    for p in procs:
      p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
      raise RuntimeError(f"rectrain tune: {len(failed)} worker(s) failed (exit codes {failed})")
  study = _load_study(spec, parsed)
  return write_results(study, spec, log=log)


def _trial_rows(study, spec) -> List[Dict[str, Any]]:
  rows = []
  for t in study.get_trials(deepcopy=False):
    row = {"number": t.number, "state": t.state.name, "value": t.value, **t.params,
           "pruned_at": (t.last_step if t.state.name == "PRUNED" else None)}
    row.update({k: t.user_attrs.get(k) for k in METRICS + tuple(
        f"holdout_{m}" for m in ("auc", "logloss", "ne", "pcoc")) if k in t.user_attrs})
    rows.append(row)
  return rows


def format_trials(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], best: int | None) -> str:
  """The trials as a markdown table, the best trial in bold."""
  cols = ["number", "state", *keys, "value", "auc", "logloss", "pcoc", "pruned_at"]

  def cell(v):
    if v is None:
      return ""
    if isinstance(v, float):
      return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)

  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    cells = [cell(r.get(c)) for c in cols]
    if r["number"] == best:
      cells = [f"**{c}**" if c else c for c in cells]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_results(study, spec, log: Callable[[str], None] | None = print) -> Dict[str, Any]:
  """Writes trials.md, best.json, best_set.txt and best_config.py; returns the result."""
  keys = [parse_param(p).key for p in spec["params"]]
  rows = _trial_rows(study, spec)
  complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
  if not complete:
    raise ValueError(f"{spec['dir']}: no trial completed (all pruned or failed); "
                     "widen the search space or use --no-prune")
  best = min(complete, key=lambda t: t.value)
  table = format_trials(rows, keys, best.number)
  out = spec["dir"]
  with open(os.path.join(out, "trials.md"), "w") as f:
    f.write(table + "\n")
  sets = [_override(k, best.params[k]) for k in keys]
  result = {"best": {"number": best.number, "value": best.value, "params": best.params,
                     "metrics": dict(best.user_attrs)},
            "objective": spec["objective"], "holdout_rows": spec["holdout_rows"],
            "finished": len(_finished(study)), "trials": rows, "dir": out}
  with open(os.path.join(out, "best.json"), "w") as f:
    json.dump(result, f, indent=2, default=str)
  with open(os.path.join(out, "best_set.txt"), "w") as f:
    f.write("\n".join(spec["set"] + sets) + "\n")
  with open(os.path.join(out, "best_config.py"), "w") as f:
    f.write(_BEST_CONFIG.format(dir=out, value=best.value, objective=spec["objective"],
                                config=spec["config"], arg=spec["arg"],
                                sets=json.dumps(spec["set"] + sets, indent=4)))
  if log:
    log(table)
    log(f"\nbest trial {best.number}: {spec['objective']} {best.value:.5f}  "
        + " ".join(f"--set {s}" for s in sets))
    log(f"written: {out}/best.json, best_set.txt, best_config.py, trials.md")
  return result


_BEST_CONFIG = '''"""The best point of the tuning run in {dir} ({objective} {value:.5f}).

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
