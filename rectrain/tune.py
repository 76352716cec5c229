"""Hyperparameter tuning over any config keys, with Optuna.

  rectrain tune [CONFIG] [--arg A] [--set k=v ...] --param KEY=SPEC ... --dir DIR
      [--trials N] [--sampler tpe|random|grid] [--objective ne|logloss]
      [--holdout-rows N] [--prune|--no-prune] [--jobs N] [--seed S]

Each trial is one streaming run (:func:`rectrain.train.loop.train_stream`) of
the base config (CONFIG, or the default, with the ``--set`` values) with the
trial's values set. The objective, minimised, is the progressive NE or log
loss of the run over the stream prefix the config reads (``data.max_rows``),
or, with ``holdout_rows``, the NE / log loss of the frozen final model on that
many synthetic rows after the prefix.

The stream gives intermediate values for free: at every closed count window
(``metrics.window_rows``) a trial reports its running objective (progressive,
all rows so far) at step = window index, and the pruner (``MedianPruner``)
stops trials worse than the median of the others at the same window, so a
diverging learning rate stops early. A trial whose metrics are not finite, or
that skipped non-finite batches or scored non-finite predictions (rows the
loop leaves out of its metrics), is pruned: it is never a best value.

Search space: ``KEY=SPEC`` with SPEC one of ``loguniform:LO:HI``,
``uniform:LO:HI``, ``int:LO:HI`` (``int:LO:HI:log``), ``choice:A,B,C`` and
``grid:A,B,C``; values are split at top-level commas (``choice:(64,32),(128,)``
has two) and parsed like ``--set`` values. Samplers: ``tpe`` (model-based),
``random`` and ``grid`` (every combination of the ``grid:`` / ``choice:``
values at most once).

Resume: the study is ``DIR/study.db`` (SQLite, study ``rectrain``); running
the same command again continues it. Trials a killed run left RUNNING are
marked FAIL and their values enqueued again; finished trials are kept and
never repeated; the run stops when ``trials`` trials have finished (complete,
pruned, or failed with an error -- a bad combination of values is recorded,
not fatal). A new trial is asked for under a file lock, so ``jobs`` worker
processes sharing the study never run one grid point twice nor more than
``trials`` trials; a params set equal to a finished trial's takes its result
(training is deterministic). Samplers are re-seeded per worker and resume, so a
resumed run does not replay the first run's draws. ``DIR/spec.json`` records
the search; another search (other keys, objective, base config) in the same
DIR is an error, and so is a second live tuning run.

Outputs in DIR, rewritten after every trial: ``trials.md`` / ``trials.csv``
(one row per trial, the best in bold), ``best.json``, ``best_set.txt`` (the
``--set`` list -- the base ``--set`` values, then the best point -- that
``rectrain run`` takes) and ``best_config.py`` (``get_config()`` = the base
config with the best values).
"""

from __future__ import annotations

import ast
import contextlib
import csv
import dataclasses
import fcntl
import io
import json
import math
import multiprocessing
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence

import optuna
from optuna.trial import TrialState

SAMPLERS = ("tpe", "random", "grid")
OBJECTIVES = ("ne", "logloss")
KINDS = ("loguniform", "uniform", "int", "choice", "grid")
STUDY = "rectrain"
METRICS = ("auc", "logloss", "ne", "pcoc", "rows", "rows_per_sec")
HOLDOUT_METRICS = ("auc", "logloss", "ne", "pcoc")
LOCK_FILE = "tune.lock"      # held by a live tuning run and its workers
ASK_LOCK_FILE = "ask.lock"   # held while a worker picks its next trial


# ---------------------------------------------------------------------------
# Search space.


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched config key: ``kind`` in :data:`KINDS`, bounds or values."""

  key: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  log: bool = False
  values: tuple = ()

  def distribution(self) -> optuna.distributions.BaseDistribution:
    if self.kind in ("choice", "grid"):
      return optuna.distributions.CategoricalDistribution(self.values)
    if self.kind == "int":
      return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
    return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

  def examples(self) -> list:
    """The values checked against the config before any trial."""
    if self.values:
      return list(self.values)
    return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


def split_values(text: str) -> List[str]:
  """Splits at commas outside brackets and quotes: ``"(1,2),3"`` -> ``["(1,2)", "3"]``."""
  out, cur, depth, quote = [], "", 0, None
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
      continue
    cur += ch
  return out + [cur.strip()]


def _value(text: str):
  """A choice value: a Python scalar literal, else the ``--set`` text itself
  (Optuna stores only scalars; ``(64,32)`` stays text and parses at ``--set``)."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return value if value is None or isinstance(value, (bool, int, float, str)) else text


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
    texts = [v for v in split_values(rest) if v] if rest.strip() else []
    if not texts:
      raise ValueError(f"--param {text!r}: {kind} needs values, e.g. {kind}:0.01,0.1")
    values = tuple(_value(v) for v in texts)
    if len(set(map(repr, values))) != len(values):
      raise ValueError(f"--param {text!r}: a value is given twice")
    return Param(key, kind, values=values)
  parts = rest.split(":")
  log = kind == "loguniform"
  if kind == "int" and len(parts) == 3 and parts[2] == "log":
    parts, log = parts[:2], True
  try:
    low, high = (float(p) for p in parts)
  except ValueError:
    raise ValueError(f"--param {text!r}: {kind} needs LO:HI numbers, e.g. {kind}:1:10") from None
  if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
    raise ValueError(f"--param {text!r}: need finite LO < HI"
                     f"{' and LO > 0 (log scale)' if log else ''}")
  if kind == "int" and (low != int(low) or high != int(high)):
    raise ValueError(f"--param {text!r}: int bounds must be integers")
  return Param(key, kind, low, high, log)


def _override(key: str, value) -> str:
  """The ``--set`` text of a value (floats exact: ``str`` is the shortest repr)."""
  return f"{key}={value!r}" if isinstance(value, str) and value == "" else f"{key}={value}"


def base_config(config_path: str | None = None, config_arg: str | None = None,
                overrides: Sequence[str] = ()):
  """The config a tuning run starts from: CONFIG (or the default) plus ``--set`` values.

  ``overrides`` are applied in one :func:`rectrain.configs.apply_overrides`
  call (as ``rectrain run`` does), so a ``model.name`` among them is applied
  first and the other values survive it.
  """
  from rectrain import configs
  config = (configs.load_config(config_path, config_arg) if config_path
            else configs.default_config())
  return configs.apply_overrides(config, list(overrides))


def trial_config(spec: Mapping[str, Any], values: Mapping[str, Any]):
  """The base config of ``spec`` with a trial's ``values`` set (validated)."""
  from rectrain import configs
  config = base_config(spec["config"], spec["arg"],
                       list(spec["set"]) + [_override(k, v) for k, v in values.items()])
  configs.validate(config)
  return config


def _check_space(spec, params: Sequence[Param]) -> None:
  """Fails before any trial when a key or a value does not fit the config: every
  value of each param (range ends, choices), the others at their first value."""
  from rectrain.experiments.records import resolve_windows
  first = {p.key: p.examples()[0] for p in params}
  for p in params:
    for value in p.examples():
      try:
        config = resolve_windows(trial_config(spec, {**first, p.key: value}))
      except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"--param {p.key}={value!r}: {msg}") from None
  if spec["sampler"] == "grid":
    bad = [p.key for p in params if p.kind not in ("grid", "choice")]
    if bad:
      raise ValueError(f"--sampler grid: {bad} are not grid:/choice: params")
  if config.offline.epochs or (config.get("delayed", None) is not None and config.delayed.method):
    raise ValueError("tune runs streaming trials: set offline.epochs=0 and delayed.method=''")
  if spec["holdout_rows"]:
    if config.data.source != "synthetic":
      raise ValueError("--holdout-rows: held-out rows after the prefix need data.source=synthetic;"
                       " for a file, tune on its progressive objective")
    if not config.data.max_rows or config.data.get("split", "") or config.idmap.enabled:
      raise ValueError("--holdout-rows needs data.max_rows > 0 (the prefix), no data.split and "
                       "idmap.enabled=False")
  if config.metrics.window_rows <= 0 and spec["prune"]:
    raise ValueError("pruning needs count windows: set metrics.window_rows > 0 (or --no-prune)")


# ---------------------------------------------------------------------------
# One trial.


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


# ---------------------------------------------------------------------------
# Study, workers, locks.


def _storage(tune_dir: str):
  # Worker processes share the file: wait for SQLite's lock instead of failing.
  return optuna.storages.RDBStorage(
      f"sqlite:///{os.path.abspath(os.path.join(tune_dir, 'study.db'))}",
      engine_kwargs={"connect_args": {"timeout": 60}})


class _GridSampler(optuna.samplers.GridSampler):
  """GridSampler for ask-and-tell: the tuner decides when the grid is done
  (the base class calls ``study.stop()``, an error outside ``study.optimize``)."""

  def after_trial(self, study, trial, state, values) -> None:
    del study, trial, state, values


def _sampler(spec, params: Sequence[Param], worker: int = 0, offset: int = 0):
  if spec["sampler"] == "grid":  # one seed everywhere: grid ids index its shuffled grid
    return _GridSampler({p.key: list(p.values) for p in params}, seed=spec["seed"])
  # Another worker, or a resumed run, must not replay the same draws.
  seed = (spec["seed"] + 1_000_003 * worker + offset) % 2**31
  if spec["sampler"] == "random":
    return optuna.samplers.RandomSampler(seed=seed)
  return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, spec["trials"]))


def _load_study(spec, params, worker: int = 0, offset: int = 0):
  pruner = (optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
            if spec["prune"] else optuna.pruners.NopPruner())
  return optuna.create_study(study_name=STUDY, storage=_storage(spec["dir"]),
                             sampler=_sampler(spec, params, worker, offset), pruner=pruner,
                             direction="minimize", load_if_exists=True)


def _finished(study) -> List[Any]:
  done = (TrialState.COMPLETE, TrialState.PRUNED)
  return [t for t in study.get_trials(deepcopy=False) if t.state in done]


@contextlib.contextmanager
def _locked(path: str):
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _more_trials(study, spec) -> bool:
  trials = study.get_trials(deepcopy=False)
  if sum(_counted(t) or t.state == TrialState.RUNNING for t in trials) >= spec["trials"]:
    return False
  if any(t.state == TrialState.WAITING for t in trials):
    return True
  return not (spec["sampler"] == "grid" and study.sampler.is_exhausted(study))


def _optimize(spec, params, worker: int = 0, offset: int = 0, parent_pid: int | None = None,
              log: Callable[[str], None] | None = None) -> None:
  """Asks (under the ask lock) and runs trials until ``spec["trials"]`` are done."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = _load_study(spec, params, worker, offset)
  distributions = {p.key: p.distribution() for p in params}
  ask_lock = os.path.join(spec["dir"], ASK_LOCK_FILE)
  while parent_pid is None or os.getppid() == parent_pid:
    with _locked(ask_lock):
      if not _more_trials(study, spec):
        return
      trial = study.ask(distributions)
    _evaluate(study, trial, spec, params, log, parent_pid)
    with _locked(ask_lock):
      write_results(study, spec, log=None)


def _worker(spec, params, worker: int, offset: int, parent_pid: int) -> None:  # a --jobs process
  with open(os.path.join(spec["dir"], LOCK_FILE), "a") as owner:
    fcntl.flock(owner, fcntl.LOCK_SH)  # the directory is in use while a worker lives
    try:
      _optimize(spec, params, worker, offset, parent_pid, log=lambda s: print(s, flush=True))
    except _Orphaned:
      pass


def _restart_interrupted(study, params) -> int:
  """Marks trials a killed run left RUNNING as FAIL and enqueues their values again."""
  keys = {p.key for p in params}
  n = 0
  for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
    study.tell(t.number, state=TrialState.FAIL)
    n += 1
    if set(t.params) != keys:  # killed before its values were drawn
      continue
    again = any(u.system_attrs.get("fixed_params", u.params) == t.params
                and (u.state == TrialState.WAITING or _counted(u))
                for u in study.get_trials(deepcopy=False))
    if not again:
      study.enqueue_trial(t.params, user_attrs={"restart_of": t.number})
  return n


def _check_resume(spec, path: str) -> None:
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  keys = ("config", "arg", "set", "objective", "holdout_rows", "params", "config_hash")
  diff = [k for k in keys if k in old and old[k] != spec[k]]
  if diff:
    raise ValueError(f"{os.path.dirname(path) or '.'}: holds a study of another search "
                     f"({', '.join(diff)} differ from spec.json); use another --dir")


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
    trials: trials to finish (complete, pruned or failed with an error); at
      most the grid size with ``sampler="grid"``.
    sampler: ``tpe``, ``random`` or ``grid``.
    objective: ``ne`` or ``logloss``, minimised.
    holdout_rows: > 0: the objective is measured on this many synthetic rows after
      the prefix, by the frozen final model.
    prune: stop trials that are worse than the median at the same window.
    jobs: worker processes sharing the study (1: this process).
    seed: the sampler's seed (and the grid's order).
    enqueue: points to try first (each ``{key: value}``), e.g. the current defaults.
    log: progress lines (one per trial) and the final table; None: quiet.

  Returns:
    ``{"best": {"number", "value", "params", "metrics", "set"}, "finished",
    "failed", "trials": [one dict per trial], "dir", ...}`` (also ``best.json``).
  """
  from rectrain.experiments.records import config_hash
  items = [f"{k}={v}" for k, v in params.items()] if isinstance(params, Mapping) else list(params)
  parsed = [parse_param(p) for p in items]
  keys = [p.key for p in parsed]
  if not parsed or len(set(keys)) != len(keys):
    raise ValueError(f"--param: give each searched key once (got {keys})")
  if sampler not in SAMPLERS:
    raise ValueError(f"--sampler {sampler!r}: use one of {SAMPLERS}")
  if objective not in OBJECTIVES:
    raise ValueError(f"--objective {objective!r}: use one of {OBJECTIVES}")
  if trials < 1 or jobs < 1 or holdout_rows < 0:
    raise ValueError("--trials and --jobs must be >= 1, --holdout-rows >= 0")
  if sampler == "grid":
    size = math.prod(len(p.values) for p in parsed)
    if trials > size and log:
      log(f"the grid has {size} points: {size} trials, not {trials}")
    trials = min(trials, size)
  spec = {"config": config_path, "arg": config_arg, "set": list(overrides), "dir": tune_dir,
          "trials": int(trials), "sampler": sampler, "objective": objective,
          "holdout_rows": int(holdout_rows), "prune": bool(prune), "jobs": int(jobs),
          "seed": int(seed), "params": items}
  _check_space(spec, parsed)
  base = base_config(config_path, config_arg, overrides)
  spec["config_hash"] = f"{config_hash(base)} seed={base.seed}"  # the hash leaves seeds out
  os.makedirs(tune_dir, exist_ok=True)
  with open(os.path.join(tune_dir, LOCK_FILE), "a") as owner:
    try:
      fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise ValueError(f"{tune_dir}: another `rectrain tune` (or one of its workers) is "
                       "running in this directory") from None
    spec_path = os.path.join(tune_dir, "spec.json")
    _check_resume(spec, spec_path)
    with open(spec_path, "w") as f:
      json.dump(spec, f, indent=2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _load_study(spec, parsed)
    interrupted = _restart_interrupted(study, parsed)
    if log and (interrupted or study.trials):
      log(f"resuming {tune_dir}: {len(_finished(study))} finished trials"
          + (f", {interrupted} interrupted (tried again)" if interrupted else ""))
    for point in enqueue:
      study.enqueue_trial(dict(point), skip_if_exists=True)
    offset = len(study.trials)
    if jobs == 1:
      _optimize(spec, parsed, 0, offset, None, log)
    else:
      fcntl.flock(owner, fcntl.LOCK_SH)  # shared with the workers from here on
      os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # N processes, one GPU
      ctx = multiprocessing.get_context("spawn")
      procs = [ctx.Process(target=_worker, args=(spec, parsed, i, offset, os.getpid()))
               for i in range(jobs)]
      for p in procs:
        p.start()
      for p in procs:
        p.join()
      failed = [p.exitcode for p in procs if p.exitcode]
      if failed:
        raise RuntimeError(f"rectrain tune: {len(failed)} worker(s) failed (exit codes {failed});"
                           " run the same command again to resume")
    result = write_results(study, spec, log=log)
  if result["best"] is None:
    raise ValueError(f"{tune_dir}: no trial completed (all pruned or failed, see trials.md); "
                     "widen the search space or use --no-prune")
  return result


# ---------------------------------------------------------------------------
# Results.


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
