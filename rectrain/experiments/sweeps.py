"""Sweeps: the points of an experiment folder, their run directories, resumable runs in
worker processes, ``sweep.json``.

See :mod:`rectrain.experiments` for what a run directory holds.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Sequence

import ml_collections

from rectrain.experiments.records import (RUN_RECORD, SUMMARY, _config_dict, _read_json, _now,
                                          config_hash, recorded_config_hash, reproduce_command,
                                          resolve_windows, run_experiment)


class SweepPoint(NamedTuple):
  """One run of a sweep: its directory name and its ``key=value`` overrides."""
  name: str
  overrides: List[str]


def _value_text(value) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, (ml_collections.ConfigDict, Mapping)):
    value = _config_dict(value)
  return repr(value)


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-") or "run"


def point_name(overrides: Mapping[str, Any]) -> str:
  """A directory name from a point's overrides: ``<label or values>_seed<k>``."""
  items = {k: v for k, v in overrides.items() if k != "seed"}
  if "experiment.label" in items:
    base = _slug(str(items["experiment.label"]))
  elif items:
    base = "_".join(_slug(str(v) if not isinstance(v, Mapping) else k.split(".")[-1])
                    for k, v in items.items())
  else:
    base = "default"
  return f"{base}_seed{overrides['seed']}" if "seed" in overrides else base


def load_module(exp_dir: str):
  """``(module, path)`` of an experiment's ``config.py`` (or of any python file)."""
  import importlib.util
  path = os.path.join(exp_dir, "config.py") if os.path.isdir(exp_dir) else exp_dir
  if not os.path.isfile(path):
    raise FileNotFoundError(f"experiment config not found: {path}")
  spec = importlib.util.spec_from_file_location("_rectrain_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, path


def load_sweep(exp_dir: str, arg: str | None = None) -> List[SweepPoint]:
  """The points of ``get_sweep(arg)`` in ``exp_dir/config.py``.

  Each point is a dict of config overrides (values are Python values; strings
  are taken as they are) and an optional ``"name"``. Errors name the point.
  """
  module, path = load_module(exp_dir)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path}: defines no get_sweep()")
  params = inspect.signature(module.get_sweep).parameters
  raw = module.get_sweep(arg) if params else module.get_sweep()
  points, seen = [], {}
  for i, point in enumerate(raw):
    if not isinstance(point, Mapping):
      raise ValueError(f"{path}: get_sweep() point {i} must be a dict of overrides, got {point!r}")
    point = dict(point)
    name = point.pop("name", None) or point_name(point)
    if name in seen:
      raise ValueError(f"{path}: get_sweep() points {seen[name]} and {i} have the same "
                       f"run name {name!r}; give them distinct labels, seeds or names")
    seen[name] = i
    points.append(SweepPoint(_slug(name), [f"{k}={_value_text(v)}" for k, v in point.items()]))
  return points


def point_config(exp_dir: str, arg: str | None, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of the experiment with ``overrides`` applied, windows resolved."""
  from rectrain import configs
  config = configs.load_config(exp_dir, arg)
  configs.apply_overrides(config, list(overrides))
  return resolve_windows(config)


def is_finished(workdir: str) -> bool:
  """A run is finished when its summary.json and run.json both exist."""
  return (os.path.isfile(os.path.join(workdir, SUMMARY))
          and os.path.isfile(os.path.join(workdir, RUN_RECORD)))


def _drop_checkpoints(workdir: str) -> None:
  path = os.path.join(workdir, "checkpoints")
  if os.path.isdir(path):
    shutil.rmtree(path)


def run_sweep(exp_dir: str, out_dir: str | None = None, arg: str | None = None,
              overrides: Sequence[str] = (), jobs: int = 1, in_process: bool = False,
              drop_checkpoints: bool = False, ignore_changed: bool = False,
              dry_run: bool = False, log: Callable[[str], None] = print,
              runner: Callable[[ml_collections.ConfigDict, str, str], Any] | None = None,
              ) -> List[Dict[str, Any]]:
  """Runs every point of ``get_sweep(arg)`` not finished yet, ``jobs`` at a time.

  Each point runs into ``out_dir/<point name>`` (default
  ``runs/<experiment>/<point name>``), in a subprocess
  ``python -m rectrain.cli run EXP --arg ARG --set ... --workdir DIR``
  (output in ``DIR/log.txt``), or in this process with ``in_process`` (jobs
  must then be 1). A finished run (:func:`is_finished`) is skipped if its
  recorded config hash equals the point's; a different hash is an error unless
  ``ignore_changed``. An unfinished run directory resumes from its checkpoint.
  ``overrides`` apply to every point, before the point's own.

  Returns one status dict per point: ``name, dir, status`` (skipped | done |
  failed | planned), ``seconds``, ``command``. Writes ``out_dir/sweep.json``.
  ``runner(config, workdir, command)`` replaces :func:`run_experiment` in
  process (for tests).
  """
  if jobs < 1:
    raise ValueError(f"run_sweep: jobs must be >= 1, got {jobs}")
  if in_process and jobs != 1:
    raise ValueError("run_sweep: in_process runs one point at a time (jobs=1)")
  exp_dir = exp_dir.rstrip("/")
  name = os.path.basename(exp_dir if os.path.isdir(exp_dir) else os.path.dirname(exp_dir))
  out_dir = out_dir or os.path.join("runs", name + (f"_{_slug(arg)}" if arg else ""))
  points = load_sweep(exp_dir, arg)
  statuses, todo = [], []
  for p in points:
    items = list(overrides) + p.overrides
    if "train.progress=False" not in items and not in_process:
      items = items + ["train.progress=False"]
    workdir = os.path.join(out_dir, p.name)
    config = point_config(exp_dir, arg, items)
    command = reproduce_command(exp_dir, workdir, arg, items)
    st = {"name": p.name, "dir": workdir, "overrides": items, "command": command,
          "config_hash": config_hash(config), "status": "planned", "seconds": None}
    statuses.append(st)
    if is_finished(workdir):
      recorded = recorded_config_hash(workdir, config)
      if recorded != st["config_hash"] and not ignore_changed:
        raise ValueError(f"{workdir}: holds a finished run of a different config (hash "
                         f"{recorded} != {st['config_hash']}); remove the directory, choose "
                         f"another --out, or pass --ignore-changed to keep it")
      st["status"] = "skipped"
      continue
    todo.append((st, config))
  log(f"sweep {exp_dir}: {len(points)} points, {len(points) - len(todo)} finished, "
      f"{len(todo)} to run -> {out_dir}")
  if dry_run:
    for st, _ in todo:
      log(f"  would run: {st['command']}")
    return statuses

  os.makedirs(out_dir, exist_ok=True)
  t_sweep = time.perf_counter()
  if in_process:
    run = runner or (lambda config, workdir, command: run_experiment(
        config, workdir, command=command))
    for st, config in todo:
      t0 = time.perf_counter()
      log(f"  run {st['name']}")
      try:
        run(config, st["dir"], st["command"])
        st["status"] = "done"
      except Exception as e:  # noqa: BLE001 - recorded and re-raised at the end
        st["status"], st["error"] = "failed", f"{type(e).__name__}: {e}"
      st["seconds"] = time.perf_counter() - t0
      if drop_checkpoints and st["status"] == "done":
        _drop_checkpoints(st["dir"])
  else:
    _run_subprocesses(exp_dir, arg, [st for st, _ in todo], jobs, drop_checkpoints, log)
  _write_sweep_json(out_dir, exp_dir, arg, list(overrides), jobs, statuses,
                    time.perf_counter() - t_sweep)
  failed = [st for st in statuses if st["status"] == "failed"]
  for st in failed:
    log(f"  FAILED {st['name']}: {st.get('error')}")
  return statuses


def _worker_command(exp_dir: str, arg: str | None, st: Mapping[str, Any]) -> List[str]:
  cmd = [sys.executable, "-m", "rectrain.cli", "run", exp_dir]
  if arg is not None:
    cmd += ["--arg", arg]
  for item in st["overrides"]:
    cmd += ["--set", item]
  return cmd + ["--workdir", st["dir"]]


def _run_subprocesses(exp_dir, arg, todo, jobs, drop_checkpoints, log) -> None:
  pending = list(todo)
  running = []   # (status, process, log file, start time)
  while pending or running:
    while pending and len(running) < jobs:
      st = pending.pop(0)
      os.makedirs(st["dir"], exist_ok=True)
      logf = open(os.path.join(st["dir"], "log.txt"), "a")
      proc = subprocess.Popen(_worker_command(exp_dir, arg, st), stdout=logf,
                              stderr=subprocess.STDOUT)
      log(f"  start {st['name']} (pid {proc.pid})")
      running.append((st, proc, logf, time.perf_counter()))
    time.sleep(0.2)
    still = []
    for st, proc, logf, t0 in running:
      rc = proc.poll()
      if rc is None:
        still.append((st, proc, logf, t0))
        continue
      logf.close()
      st["seconds"] = time.perf_counter() - t0
      if rc == 0 and is_finished(st["dir"]):
        st["status"] = "done"
        if drop_checkpoints:
          _drop_checkpoints(st["dir"])
      else:
        st["status"] = "failed"
        st["error"] = f"exit code {rc}; see {os.path.join(st['dir'], 'log.txt')}"
      log(f"  {st['status']} {st['name']} ({st['seconds']:.1f} s)")
    running = still


def _write_sweep_json(out_dir, exp_dir, arg, overrides, jobs, statuses, seconds) -> None:
  path = os.path.join(out_dir, "sweep.json")
  history = _read_json(path).get("history", []) if os.path.isfile(path) else []
  history.append({"finished_at": _now(), "seconds": seconds, "jobs": jobs,
                  "ran": [s["name"] for s in statuses if s["status"] in ("done", "failed")],
                  "failed": [s["name"] for s in statuses if s["status"] == "failed"]})
  with open(path, "w") as f:
    json.dump({"experiment": exp_dir, "arg": arg, "overrides": overrides,
               "points": statuses, "history": history}, f, indent=2, default=str)
