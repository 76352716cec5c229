"""The study of :mod:`rectrain.tune`: storage, samplers, locks, workers and resume.

The study lives in ``DIR/study.db`` (SQLite); ``_optimize`` asks for trials
under the ask lock (``ASK_LOCK_FILE``) until ``trials`` are done, ``_worker``
is a ``--jobs`` process holding ``LOCK_FILE`` shared, ``_restart_interrupted``
re-enqueues the trials a killed run left RUNNING and ``_check_resume`` refuses
a DIR that holds another search.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from rectrain.tune_results import write_results
from rectrain.tune_space import Param
from rectrain.tune_trial import _counted, _evaluate, _Orphaned

STUDY = "rectrain"
LOCK_FILE = "tune.lock"      # held by a live tuning run and its workers
ASK_LOCK_FILE = "ask.lock"   # held while a worker picks its next trial


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
