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

Where things live (this module re-exports them):

* :mod:`rectrain.tune_space`: ``SAMPLERS``, ``OBJECTIVES``, ``KINDS``,
  :class:`Param`, :func:`split_values`, :func:`parse_param`,
  :func:`base_config`, :func:`trial_config` (the search space and the configs).
* :mod:`rectrain.tune_trial`: ``METRICS``, ``HOLDOUT_METRICS``,
  :func:`run_trial`, :func:`holdout_metrics` (one trial).
* :mod:`rectrain.tune_study`: ``STUDY``, ``LOCK_FILE``, ``ASK_LOCK_FILE``, the
  study's storage, samplers, locks, workers and resume.
* :mod:`rectrain.tune_results`: :func:`write_results`, :func:`format_trials`
  (the outputs in DIR).
* here: :func:`tune`, the entry of ``rectrain tune``.
"""

from __future__ import annotations

import fcntl
import json
import math
import multiprocessing
import os
from typing import Any, Callable, Dict, Mapping, Sequence

import optuna

from rectrain.tune_results import (_BEST_CONFIG, _csv, _trial_rows, _write, format_trials,
                                   write_results)
from rectrain.tune_space import (KINDS, OBJECTIVES, SAMPLERS, Param, _check_space, _override,
                                 _value, base_config, parse_param, split_values, trial_config)
from rectrain.tune_study import (ASK_LOCK_FILE, LOCK_FILE, STUDY, _check_resume, _GridSampler,
                                 _load_study, _locked, _more_trials, _optimize,
                                 _restart_interrupted, _sampler, _storage, _worker)
from rectrain.tune_trial import (HOLDOUT_METRICS, METRICS, _counted, _entropy, _evaluate,
                                 _finished, _finite, _Orphaned, _prune, holdout_metrics,
                                 run_trial)

# The re-exports (the private ones too: callers import e.g. ``_override`` from here).
__all__ = [
    "ASK_LOCK_FILE", "HOLDOUT_METRICS", "KINDS", "LOCK_FILE", "METRICS", "OBJECTIVES", "SAMPLERS",
    "STUDY", "Param", "_BEST_CONFIG", "_GridSampler", "_Orphaned", "_check_resume",
    "_check_space", "_counted", "_csv", "_entropy", "_evaluate", "_finished", "_finite",
    "_load_study", "_locked", "_more_trials", "_optimize", "_override", "_prune",
    "_restart_interrupted", "_sampler", "_storage", "_trial_rows", "_value", "_worker", "_write",
    "base_config", "format_trials", "holdout_metrics", "parse_param", "run_trial",
    "split_values", "trial_config", "tune", "write_results",
]


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
