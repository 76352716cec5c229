"""Reproducible experiments: run records, sweeps, result tables and plots.

Every number in a result table traces back to a run directory holding

* ``config.json``   the full resolved config (written by the training loop),
* ``metrics.jsonl`` one JSON record per closed metric window,
* ``summary.json``  overall metrics, throughput, parameter count,
* ``run.json``      the run record of :func:`write_run_record`: config, seed,
  git commit (and whether the tree was dirty), package versions, device, wall
  time, rows/s, parameter count and the one command that re-runs it.

An experiment is a folder ``experiments/<name>/`` with a ``config.py`` holding
``get_config(arg=None)`` and ``get_sweep(arg=None)``. ``get_sweep`` returns a
list of *points*: dicts of config overrides (``{"model.name": "lr", "seed": 0}``)
plus an optional ``"name"`` (the run directory name; derived from the overrides
otherwise). Points that differ only in ``seed`` and share ``experiment.label``
form one row of the table.

Tables report, per row, the mean and the sample standard deviation (ddof = 1)
over the seeds of that row; the number of seeds is shown. The best mean of each
column among the model rows is bold (higher AUC / rows/s, lower log loss / NE /
wall time, PCOC closest to 1); reference rows (the Bayes ceiling of the
synthetic stream) are listed last and never bold.

The Bayes ceiling run (``experiment.oracle = True``) streams the true click
probabilities of the synthetic stream through the same metric windows as a
model, so it has a summary and per-window curves like any run.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import importlib.metadata
import inspect
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np

RUN_RECORD = "run.json"
SUMMARY = "summary.json"
CONFIG = "config.json"
METRICS_FILE = "metrics.jsonl"
RECORD_FORMAT = 1

# Config keys that do not change what a run computes; left out of the config hash.
NON_SEMANTIC_KEYS = ("seed", "experiment.label", "experiment.name", "train.progress",
                     "data.prefetch", "train.checkpoint_every", "train.keep_checkpoints")
PACKAGES = ("rectrain", "jax", "jaxlib", "flax", "optax", "numpy", "ml_collections",
            "orbax-checkpoint", "pyarrow", "datasets", "matplotlib")


# ---------------------------------------------------------------------------
# The experiment section of a config.


def experiment_section(name: str = "", label: str = "", oracle: bool = False,
                       num_windows: int = 0) -> ml_collections.ConfigDict:
  """The ``config.experiment`` section experiment configs add to the default config.

  Args:
    name: the experiment's name (its folder under ``experiments/``).
    label: the row label in result tables (default: the model name).
    oracle: run the Bayes ceiling (true probabilities) instead of a model;
      synthetic stream only.
    num_windows: if > 0, ``metrics.window_rows = ceil(data.max_rows /
      num_windows)`` at run time (after ``--set`` overrides), so the stream is
      cut into ``num_windows`` row windows (e.g. 7 "days" of Criteo).
  """
  return ml_collections.ConfigDict(
      {"name": name, "label": label, "oracle": oracle, "num_windows": num_windows})


# FTRL-Proximal for the logistic regression's weights (McMahan et al. 2013),
# TF/Keras semantics; beta = 0 and a tiny initial accumulator because the loss
# is a batch mean, so per-row gradients are O(1 / batch_size). Chosen on the
# first 262,144 rows of the synthetic stream (seed 0) from learning rates
# {0.02, 0.05, 0.2} x initial accumulators {1e-6, 1e-8} by NE.
LR_FTRL = {"name": "ftrl", "learning_rate": 0.2, "beta": 0.0,
           "initial_accumulator_value": 1e-6, "l1": 0.0, "l2": 0.0}
STANDARD_MODELS = ("lr", "fm", "wide_deep", "deepfm", "dcnv2", "dlrm")
_MODEL_LABELS = {"lr": "LR (FTRL)", "fm": "FM", "wide_deep": "Wide&Deep", "deepfm": "DeepFM",
                 "dcnv2": "DCNv2", "dlrm": "DLRM", "dnn": "DNN"}


def standard_model(name: str, small: bool = False) -> Dict[str, Any]:
  """Sweep overrides of one of the benchmark models (label included).

  The models keep rectrain's default hyperparameters
  (:func:`rectrain.models.default_model_config`); LR learns its weight table
  with :data:`LR_FTRL`. ``small`` shrinks every MLP to 32 units (smoke runs).
  """
  if name not in _MODEL_LABELS:
    raise ValueError(f"standard_model: unknown model {name!r}; expected one of "
                     f"{sorted(_MODEL_LABELS)}")
  point: Dict[str, Any] = {"model.name": name, "experiment.label": _MODEL_LABELS[name]}
  if name == "lr":
    point["optim.tables.linear"] = dict(LR_FTRL)
  if small:
    if name in ("wide_deep", "deepfm", "dcnv2", "dnn"):
      point["model.mlp_dims"] = (32, 32)
    if name == "dlrm":
      point["model.bottom_mlp_dims"] = (32, 16)
      point["model.top_mlp_dims"] = (32, 16)
  return point


def _experiment(config) -> Mapping[str, Any]:
  section = config.get("experiment", None)
  return section if section is not None else experiment_section()


def run_label(config) -> str:
  """The table row label of a config: ``experiment.label``, else the model name."""
  exp = _experiment(config)
  if exp.get("label"):
    return str(exp["label"])
  return "Bayes ceiling" if exp.get("oracle") else str(config["model"]["name"])


def resolve_windows(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets ``metrics.window_rows`` from ``experiment.num_windows`` (returns a copy)."""
  config = ml_collections.ConfigDict(config.to_dict())
  k = int(_experiment(config).get("num_windows", 0) or 0)
  if k < 0:
    raise ValueError(f"config experiment.num_windows={k}: must be >= 0")
  if k:
    if not config.data.max_rows:
      raise ValueError(f"config experiment.num_windows={k} needs data.max_rows > 0 "
                       f"(the number of rows the stream is cut into {k} windows of)")
    config.metrics.window_rows = -(-int(config.data.max_rows) // k)
  return config


# ---------------------------------------------------------------------------
# Run records.


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _config_dict(config) -> Dict[str, Any]:
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config, default=str))


def config_hash(config) -> str:
  """sha256 (first 12 hex digits) of the config without :data:`NON_SEMANTIC_KEYS`."""
  return _hash_flat(_flatten(_config_dict(config)))


def recorded_config_hash(workdir: str, config) -> str | None:
  """The config hash of the finished run in ``workdir``, comparable with ``config``'s.

  Config keys added to rectrain after the run was recorded are absent from its
  recorded config (``run.json``, else ``config.json``); where ``config`` holds such a key at its default value (a
  feature that is off, as it was for the recorded run), the recorded config
  is completed with it before hashing, so adding an option to rectrain does
  not invalidate finished runs. A key whose value differs from its default,
  or any other difference, still changes the hash.
  """
  record = _read_json(os.path.join(workdir, RUN_RECORD))
  recorded = record.get("config")
  if recorded is None and os.path.isfile(os.path.join(workdir, CONFIG)):
    recorded = _read_json(os.path.join(workdir, CONFIG))
  if not isinstance(recorded, Mapping):
    return record.get("config_hash")
  from rectrain.configs import default_config
  recorded = _flatten(recorded)
  defaults = _flatten(_config_dict(default_config()))
  current = _flatten(_config_dict(config))
  added = {k: v for k, v in current.items()
           if k not in recorded and k in defaults and defaults[k] == v}
  if not added:
    return record.get("config_hash")
  return _hash_flat({**recorded, **added})


def _hash_flat(flat: Mapping[str, Any]) -> str:
  flat = {k: v for k, v in flat.items() if k not in NON_SEMANTIC_KEYS}
  text = json.dumps(flat, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def git_state(path: str | None = None) -> Dict[str, Any]:
  """Commit of the repository holding ``path`` (default: the rectrain package).

  Returns ``{"commit": sha or None, "dirty": bool or None, "changes": [...]}``;
  ``changes`` lists up to 50 lines of ``git status --porcelain`` (untracked
  files included: an uncommitted new file changes what runs).
  """
  path = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*args):
    return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True,
                          timeout=30, check=True).stdout
  try:
    commit = git("rev-parse", "HEAD").strip()
    status = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None, "changes": [], "path": path}
  return {"commit": commit, "dirty": bool(status), "changes": status[:50],
          "num_changes": len(status), "path": path}


def package_versions(packages: Sequence[str] = PACKAGES) -> Dict[str, str | None]:
  """Installed versions of ``packages`` and of Python (None: not installed)."""
  out: Dict[str, str | None] = {"python": platform.python_version()}
  for name in packages:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def device_info() -> Dict[str, Any]:
  """The JAX backend and devices, and the host CPU."""
  import jax
  devices = jax.devices()
  return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
          "device_count": len(devices), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
          "hostname": socket.gethostname(), "platform": platform.platform()}


def _now() -> str:
  return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite(v):
  if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
    v = float(v) if isinstance(v, (float, np.floating)) else int(v)
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None
  return v


def reproduce_command(source: str | None, workdir: str, arg: str | None = None,
                      overrides: Sequence[str] = ()) -> str:
  """The ``rectrain run`` command line that re-runs a run into ``workdir``."""
  parts = ["rectrain", "run"]
  if source:
    parts.append(source)
  if arg is not None:
    parts += ["--arg", arg]
  for item in overrides:
    parts += ["--set", item]
  parts += ["--workdir", workdir]
  return " ".join(shlex.quote(p) for p in parts)


def write_run_record(workdir: str, config, summary: Mapping[str, Any], seed: int,
                     command: str | None = None, started_at: str | None = None,
                     extra: Mapping[str, Any] | None = None) -> Dict[str, Any]:
  """Writes ``workdir/run.json``: what ran, where, on which code, and how fast.

  Args:
    workdir: the run directory (holds the loop's config.json / summary.json).
    config: the run config.
    summary: the dict ``train_stream`` returned (or the ceiling run's summary).
    seed: the run's seed (``config.seed``).
    command: the command that re-runs it (see :func:`reproduce_command`).
    started_at: ISO time the run started (default: unknown).
    extra: more fields to store (e.g. the sweep point).

  Returns:
    the record.
  """
  exp = _experiment(config)
  metrics = {k: _finite(summary.get(k)) for k in ("auc", "logloss", "ne", "pcoc", "base_rate")}
  record = {
      "format": RECORD_FORMAT,
      "label": run_label(config),
      "experiment": exp.get("name") or None,
      "model": str(config["model"]["name"]),
      "oracle": bool(exp.get("oracle", False)),
      "seed": int(seed),
      "config_hash": config_hash(config),
      "command": command,
      "git": git_state(),
      "versions": package_versions(),
      "device": device_info(),
      "started_at": started_at,
      "finished_at": _now(),
      "rows": _finite(summary.get("rows")),
      "wall_time_sec": _finite(summary.get("wall_time_sec")),
      "rows_per_sec": _finite(summary.get("rows_per_sec")),
      "param_count": _finite(summary.get("param_count")),
      "metrics": metrics,
      "warnings": [],
      "config": _config_dict(config),
  }
  max_rows = int(config["data"]["max_rows"] or 0)
  if max_rows and record["rows"] is not None and record["rows"] < max_rows:
    record["warnings"].append(f"the stream ended after {record['rows']:,} rows, fewer than "
                              f"data.max_rows={max_rows:,}; windows sized from max_rows")
  if extra:
    record.update(dict(extra))
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, RUN_RECORD + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, default=str)
  os.replace(tmp, os.path.join(workdir, RUN_RECORD))
  return record


# ---------------------------------------------------------------------------
# Running one config.


def run_bayes_ceiling(config: ml_collections.ConfigDict, workdir: str | None) -> Dict[str, Any]:
  """Metrics of the TRUE probabilities of the synthetic stream, like a model run.

  The same rows as a training run with this config (``make_stream(config.data,
  config.seed)``) go through the same overall and windowed metrics with the
  prediction ``p = true_prob``, writing config.json, metrics.jsonl and
  summary.json. ``summary["exact"]`` holds
  :func:`rectrain.data.synthetic.bayes_ceiling` (exact AUC, log loss and its
  expectation) for comparison with the histogram AUC.
  """
  import rectrain.metrics as metrics_lib
  from rectrain.configs import validate
  from rectrain.data import make_stream
  from rectrain.data.synthetic import NUM_CAT, SyntheticStream, bayes_ceiling

  validate(config)
  if config.data.source != "synthetic":
    raise ValueError(f"config experiment.oracle=True needs data.source='synthetic' (true "
                     f"probabilities), got data.source={config.data.source!r}")
  if not config.data.max_rows:
    raise ValueError("config experiment.oracle=True needs data.max_rows > 0")
  t0 = time.perf_counter()
  stream = make_stream(config.data, seed=config.seed)
  assert isinstance(stream, SyntheticStream)
  slice_fields = [s for s in config.metrics.slice_fields.split(",") if s]
  slice_cols = []
  for s in slice_fields:
    if s not in stream.layout.names or stream.layout.names.index(s) >= NUM_CAT:
      raise ValueError(f"config metrics.slice_fields: {s!r} is not one of C1..C26 (the "
                       f"Bayes ceiling run slices by categorical fields only)")
    slice_cols.append(stream.layout.names.index(s))
  time_windows = [t for t in config.metrics.time_windows.split(",") if t]
  windows = metrics_lib.WindowedMetrics(window_rows=config.metrics.window_rows,
                                        time_windows=time_windows,
                                        slice_top_k=config.metrics.slice_top_k)
  overall = metrics_lib.MetricAccumulator()
  out = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG), "w") as f:
      f.write(config.to_json(indent=2))
    out = open(os.path.join(workdir, METRICS_FILE), "w")
  records = []
  rows = 0
  try:
    for block in stream.raw_blocks(want_cat=bool(slice_cols)):
      label = block["label"].astype(np.float64)
      prob = block["true_prob"].astype(np.float64)
      slices = {n: block["cat"][:, c] for n, c in zip(slice_fields, slice_cols)} or None
      overall.update(label, prob)
      records += windows.update(label, prob, time=block["time"], slices=slices)
      rows += label.shape[0]
    records += windows.finalize_windows()
    if out:
      for r in records:
        out.write(json.dumps(_jsonable(r)) + "\n")
  finally:
    if out:
      out.close()
  result = overall.result()
  wall = time.perf_counter() - t0
  summary = {
      "model": "bayes_ceiling",
      "rows": rows,
      "auc": result["auc"], "logloss": result["logloss"], "ne": result["ne"],
      "pcoc": result["pcoc"], "base_rate": result["base_rate"],
      "rows_per_sec": None, "wall_time_sec": wall, "param_count": None,
      "batches": None, "nonfinite_batches": 0, "skipped_rows": 0,
      "variation": windows.variation(),
      "exact": bayes_ceiling(stream),
  }
  if workdir:
    with open(os.path.join(workdir, SUMMARY), "w") as f:
      json.dump(_jsonable(summary), f, indent=2)
  return summary


def _jsonable(obj):
  if isinstance(obj, Mapping):
    return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(float(obj)) else None
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  return obj


def run_experiment(config: ml_collections.ConfigDict, workdir: str,
                   command: str | None = None, extra: Mapping[str, Any] | None = None,
                   ) -> Dict[str, Any]:
  """Runs one config (a model, or the Bayes ceiling) and writes its run record.

  Resolves ``experiment.num_windows`` into ``metrics.window_rows``, calls
  :func:`rectrain.train.loop.train_stream` (or :func:`run_bayes_ceiling` when
  ``experiment.oracle``, :func:`rectrain.train.delayed.train_delayed` when
  ``delayed.method`` is set, :func:`rectrain.train.loop.train_offline` when
  ``offline.epochs``), then :func:`write_run_record`. Returns the summary.
  """
  if not workdir:
    raise ValueError("run_experiment: a run directory (workdir) is required")
  config = resolve_windows(config)
  started = _now()
  if _experiment(config).get("oracle"):
    summary = run_bayes_ceiling(config, workdir)
  elif config.get("delayed", None) is not None and config.delayed.method:
    from rectrain.train.delayed import train_delayed
    summary = train_delayed(config, workdir=workdir)
  elif config.offline.epochs:
    from rectrain.train.loop import train_offline
    summary = train_offline(config, workdir=workdir)
  else:
    from rectrain.train.loop import train_stream
    summary = train_stream(config, workdir=workdir)
  import jax
  if jax.process_index() == 0:  # several processes: the main one writes the record
    write_run_record(workdir, config, summary, int(config.seed), command=command,
                     started_at=started, extra=extra)
  return summary


# ---------------------------------------------------------------------------
# Sweeps.


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


def _load_module(exp_dir: str):
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
  module, path = _load_module(exp_dir)
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


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


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


# ---------------------------------------------------------------------------
# Loading runs.


class Run(NamedTuple):
  """A finished run directory."""
  dir: str
  label: str
  seed: int
  config_hash: str
  oracle: bool
  summary: Dict[str, Any]
  record: Dict[str, Any] | None


def _is_run_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, SUMMARY))


def find_run_dirs(paths: Iterable[str]) -> List[str]:
  """Run directories among ``paths``: a run dir itself, or the run dirs one level below."""
  out = []
  for path in paths:
    if not os.path.isdir(path):
      raise FileNotFoundError(f"run directory not found: {path}")
    if _is_run_dir(path):
      out.append(path)
      continue
    subs = sorted(os.path.join(path, d) for d in os.listdir(path))
    sweep_json = os.path.join(path, "sweep.json")
    if os.path.isfile(sweep_json):   # the sweep's order first
      order = [os.path.join(path, p["name"]) for p in _read_json(sweep_json).get("points", [])]
      subs = [d for d in order if d in subs] + [d for d in subs if d not in order]
    found = [d for d in subs if os.path.isdir(d) and _is_run_dir(d)]
    if not found:
      raise ValueError(f"{path}: neither a run directory (no {SUMMARY}) nor a folder of runs")
    out += found
  return out


def load_run(path: str) -> Run:
  """Reads a run directory (run.json if present, else config.json + summary.json)."""
  summary = _read_json(os.path.join(path, SUMMARY))
  record_path = os.path.join(path, RUN_RECORD)
  record = _read_json(record_path) if os.path.isfile(record_path) else None
  if record is not None:
    config = record["config"]
  else:
    config_path = os.path.join(path, CONFIG)
    if not os.path.isfile(config_path):
      raise ValueError(f"{path}: has {SUMMARY} but neither {RUN_RECORD} nor {CONFIG}")
    config = _read_json(config_path)
  return Run(dir=path, label=run_label(config), seed=int(config.get("seed", 0)),
             config_hash=config_hash(config), oracle=bool(_experiment(config).get("oracle")),
             summary=summary, record=record)


def load_runs(paths: Iterable[str]) -> List[Run]:
  return [load_run(d) for d in find_run_dirs(paths)]


def read_windows(run_dir: str, window: str = "rows") -> List[Dict[str, Any]]:
  """The all-rows (unsliced) window records of kind ``window`` in index order."""
  path = os.path.join(run_dir, METRICS_FILE)
  out = []
  if not os.path.isfile(path):
    return out
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from None
      if rec.get("window") == window and rec.get("slice") is None:
        out.append(rec)
  return sorted(out, key=lambda r: r["index"])


# ---------------------------------------------------------------------------
# Tables.


class MetricSpec(NamedTuple):
  key: str          # summary key, or "KIND:INDEX:METRIC" for a window
  title: str
  better: str | None  # "max" | "min" | "one" (closest to 1) | None (never bold)
  fmt: str


_METRICS = {
    "auc": ("AUC", "max", ".4f"),
    "logloss": ("log loss", "min", ".4f"),
    "ne": ("NE", "min", ".4f"),
    "pcoc": ("PCOC", "one", ".4f"),
    "base_rate": ("base rate", None, ".4f"),
    "rows_per_sec": ("rows/s", "max", ",.0f"),
    "wall_time_sec": ("wall time (s)", "min", ",.0f"),
    "param_count": ("params", None, "params"),
    "rows": ("rows", None, ",.0f"),
    "nonfinite_batches": ("non-finite batches", None, ",.0f"),
    "skipped_rows": ("skipped rows", None, ",.0f"),
    "best_auc": ("best AUC", "max", ".4f"),
    "best_epoch": ("best epoch", None, ".2f"),
    "pr_auc": ("PR-AUC", "max", ".4f"),
    "mean_pred": ("mean prediction", None, ".4f"),
    "pcoc_windows.std": ("PCOC std over windows", "min", ".4f"),
    "zero_fraction": ("zero weights", None, ".3f"),
    "table_bytes": ("table bytes", None, ",.0f"),
    "idmap_hit_rate": ("id map hit rate", None, ".4f"),
    "idmap_occupied": ("id map rows used", None, ",.0f"),
    "idmap_evicted": ("id map evictions", None, ",.0f"),
}
DEFAULT_METRICS = ("auc", "logloss", "ne", "pcoc")


def metric_spec(key: str) -> MetricSpec:
  """A table column: a summary key (``auc``) or a window metric ``KIND:INDEX:METRIC``.

  ``rows:0:auc`` is the AUC of the first row window (index 0), ``day:2:ne`` the
  NE of event-time day 2; ``variation`` keys (``auc_std``) come from the
  summary's ``variation`` section.
  """
  parts = key.split(":")
  if len(parts) == 3:
    kind, index, metric = parts
    if not index.isdigit():
      raise ValueError(f"metric {key!r}: the window index {index!r} must be an integer >= 0")
    title, better, fmt = _METRICS.get(metric, (metric, None, ".4f"))
    label = "win" if kind == "rows" else kind
    return MetricSpec(key, f"{title} {label} {int(index) + 1}", better, fmt)
  if len(parts) != 1:
    raise ValueError(f"metric {key!r}: expected NAME or KIND:INDEX:NAME (e.g. rows:0:auc)")
  if key in _METRICS:
    return MetricSpec(key, *_METRICS[key])
  if key.endswith("_std"):
    return MetricSpec(key, f"{key[:-4]} window std", "min", ".4f")
  return MetricSpec(key, key, None, ".4g")


def run_value(run: Run, key: str, _cache: dict | None = None) -> float:
  """The value of metric ``key`` of ``run``; NaN when the run does not have it."""
  parts = key.split(":")
  if len(parts) == 3:
    kind, index, metric = parts
    recs = read_windows(run.dir, kind) if _cache is None else _cache.setdefault(
        (run.dir, kind), read_windows(run.dir, kind))
    match = [r for r in recs if r["index"] == int(index)]
    v = match[0].get(metric) if match else None
  elif key in run.summary:
    v = run.summary.get(key)
  elif "." in key:  # a nested summary entry: pcoc_windows.std
    v = run.summary
    for part in key.split("."):
      v = v.get(part) if isinstance(v, Mapping) else None
  else:
    v = (run.summary.get("variation") or {}).get(key)
  if v is None or isinstance(v, (dict, list, str, bool)):
    return math.nan
  return float(v)


def window_metrics(runs: Sequence[Run], window: str, metrics: Sequence[str]) -> List[str]:
  """``KIND:INDEX:METRIC`` columns for every window index of kind ``window`` in ``runs``."""
  indices = sorted({r["index"] for run in runs for r in read_windows(run.dir, window)})
  if not indices:
    raise ValueError(f"no run among {[r.dir for r in runs]} has {window!r} windows in "
                     f"{METRICS_FILE}")
  return [f"{window}:{i}:{m}" for m in metrics for i in indices]


class Row(NamedTuple):
  """One table row: a config over its seeds."""
  label: str
  config_hash: str
  reference: bool
  seeds: List[int]
  dirs: List[str]
  values: Dict[str, List[float]]   # metric -> one value per seed
  commits: List[str]

  @property
  def n(self) -> int:
    return len(self.seeds)

  def mean(self, key: str) -> float:
    v = np.asarray(self.values[key], np.float64)
    return float(v.mean()) if v.size and np.all(np.isfinite(v)) else math.nan

  def std(self, key: str) -> float:
    """Sample standard deviation over seeds (ddof = 1); NaN with one seed."""
    v = np.asarray(self.values[key], np.float64)
    return float(v.std(ddof=1)) if v.size >= 2 and np.all(np.isfinite(v)) else math.nan


def _commit(run: Run) -> str:
  git = (run.record or {}).get("git") or {}
  if not git.get("commit"):
    return "unknown"
  return git["commit"][:10] + ("+dirty" if git.get("dirty") else "")


def aggregate(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> List[Row]:
  """Groups runs by (label, config hash) into rows, in order of first appearance.

  Model rows come first, reference (Bayes ceiling) rows last. Two runs of one
  row with the same seed are an error (the table would count a seed twice).
  """
  groups: Dict[tuple, List[Run]] = {}
  for run in runs:
    groups.setdefault((run.label, run.config_hash), []).append(run)
  labels = [label for label, _ in groups]
  cache: dict = {}
  rows = []
  for (label, h), members in groups.items():
    seeds = [r.seed for r in members]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
      raise ValueError(f"table row {label!r}: seed(s) {dup} appear in several run dirs "
                       f"({[r.dir for r in members if r.seed in dup]})")
    members = sorted(members, key=lambda r: r.seed)
    shown = label if labels.count(label) == 1 else f"{label} [{h[:6]}]"
    rows.append(Row(label=shown, config_hash=h, reference=members[0].oracle,
                    seeds=[r.seed for r in members], dirs=[r.dir for r in members],
                    values={m: [run_value(r, m, cache) for r in members] for m in metrics},
                    commits=sorted({_commit(r) for r in members})))
  return [r for r in rows if not r.reference] + [r for r in rows if r.reference]


def _fmt(value: float, fmt: str) -> str:
  if not math.isfinite(value):
    return "–"
  if fmt == "params":
    if abs(value) >= 1e6:
      return f"{value / 1e6:.2f}M"
    if abs(value) >= 1e3:
      return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"
  return format(value, fmt)


def _best(rows: Sequence[Row], spec: MetricSpec) -> str | None:
  """The formatted best mean of the model rows (ties at display precision all win)."""
  if spec.better is None:
    return None
  cands = [(r.mean(spec.key), r) for r in rows if not r.reference]
  cands = [(v, r) for v, r in cands if math.isfinite(v)]
  if len(cands) < 2:
    return None
  score = {"max": lambda v: -v, "min": lambda v: v, "one": lambda v: abs(v - 1.0)}[spec.better]
  best = min(cands, key=lambda vr: score(vr[0]))[0]
  return _fmt(best, spec.fmt)


def format_table(rows: Sequence[Row], metrics: Sequence[str] = DEFAULT_METRICS,
                 fmt: str = "md", provenance: bool = True) -> str:
  """Renders rows as Markdown (``md``), LaTeX (``latex``, booktabs) or ``csv``.

  Cells read ``mean ± std`` (std omitted for one seed); the best model mean
  per column is bold; a ``seeds`` column gives the number of seeds. Markdown
  and LaTeX end with the provenance of each row (seeds, commits, run dirs)
  unless ``provenance`` is False; CSV has ``<metric>_mean``/``<metric>_std``
  columns, ``seeds``, ``commits`` and ``config_hash``.
  """
  specs = [metric_spec(m) for m in metrics]
  if fmt == "csv":
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "seeds", "reference"] + [f"{s.key}_{x}" for s in specs
                                                  for x in ("mean", "std")]
               + ["commits", "config_hash"])
    for r in rows:
      cells = []
      for s in specs:
        cells += [_csv_num(r.mean(s.key)), _csv_num(r.std(s.key))]
      w.writerow([r.label, r.n, int(r.reference)] + cells + [" ".join(r.commits), r.config_hash])
    return buf.getvalue()
  if fmt not in ("md", "latex"):
    raise ValueError(f"table format {fmt!r}: must be md, latex or csv")
  latex = fmt == "latex"
  best = {s.key: _best(rows, s) for s in specs}

  def cell(r: Row, s: MetricSpec) -> str:
    mean, std = r.mean(s.key), r.std(s.key)
    text = _fmt(mean, s.fmt)
    if math.isfinite(std) and not (std == 0 and s.better is None):  # e.g. parameter counts
      text += (r" $\pm$ " if latex else " ± ") + _fmt(std, s.fmt)
    bold = not r.reference and best[s.key] is not None and _fmt(mean, s.fmt) == best[s.key]
    if latex:
      text = text.replace(",", "{,}")
    if bold:
      text = rf"\textbf{{{text}}}" if latex else f"**{text}**"
    return text

  arrows = {"max": "↑", "min": "↓", "one": "→1", None: ""}
  larrows = {"max": r" $\uparrow$", "min": r" $\downarrow$", "one": r" $\to 1$", None: ""}
  lines = []
  if latex:
    esc = lambda t: re.sub(r"([_%&#$])", r"\\\1", t)  # noqa: E731
    lines.append(r"\begin{tabular}{l r " + " ".join("r" for _ in specs) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(["Model", "Seeds"] + [esc(s.title) + larrows[s.better]
                                                  for s in specs]) + r" \\")
    lines.append(r"\midrule")
    for i, r in enumerate(rows):
      if r.reference and (i == 0 or not rows[i - 1].reference):
        lines.append(r"\midrule")
      lines.append(" & ".join([esc(r.label), str(r.n)] + [cell(r, s) for s in specs]) + r" \\")
    lines.append(r"\bottomrule")
    lines.append(r"\end{tabular}")
    if provenance:
      lines += [f"% {line}" for line in _provenance(rows)]
    return "\n".join(lines) + "\n"
  lines.append("| " + " | ".join(["model", "seeds"] + [f"{s.title} {arrows[s.better]}".strip()
                                                     for s in specs]) + " |")
  lines.append("|" + "|".join([":---", "---:"] + ["---:" for _ in specs]) + "|")
  for r in rows:
    label = f"*{r.label}*" if r.reference else r.label
    lines.append("| " + " | ".join([label, str(r.n)] + [cell(r, s) for s in specs]) + " |")
  if provenance:
    lines += ["", "mean ± sample std (ddof = 1) over seeds; bold = best model per column; "
              "*italic* rows are references, not models.", ""]
    lines += [f"- {line}" for line in _provenance(rows)]
  return "\n".join(lines) + "\n"


def _csv_num(v: float) -> str:
  return repr(float(v)) if math.isfinite(v) else ""


def _provenance(rows: Sequence[Row]) -> List[str]:
  out = []
  for r in rows:
    out.append(f"{r.label}: seeds {','.join(map(str, r.seeds))}; config {r.config_hash}; "
               f"commit {', '.join(r.commits)}; runs {', '.join(r.dirs)}")
  return out


# ---------------------------------------------------------------------------
# Plots.


def plot_runs(paths: Sequence[str], out: str, metrics: Sequence[str] = ("auc", "ne", "pcoc"),
              window: str = "rows", per_run: bool = False, title: str | None = None) -> str:
  """Metric-over-stream curves of several runs on one figure (PNG or PDF by extension).

  One panel per metric; x = rows streamed at the end of each window (``rows``
  windows) or event time in days (time windows). Runs of one table row are
  drawn as their mean over seeds with a ±1 std band, or one line per run with
  ``per_run``. Reference rows (Bayes ceiling) are dashed. Returns ``out``.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ext = os.path.splitext(out)[1].lower()
  if ext not in (".png", ".pdf", ".svg"):
    raise ValueError(f"plot output {out!r}: use a .png, .pdf or .svg file name")
  runs = load_runs(paths)
  groups: Dict[tuple, List[Run]] = {}
  for run in runs:
    key = (run.dir,) if per_run else (run.label, run.config_hash)
    groups.setdefault(key, []).append(run)
  fig, axes = plt.subplots(len(metrics), 1, figsize=(7.5, 2.6 * len(metrics)), sharex=True,
                           squeeze=False)
  drawn = 0
  for key, members in groups.items():
    curves = []
    for run in members:
      recs = read_windows(run.dir, window)
      if not recs:
        continue
      if window == "rows":
        x = np.array([r["end_row"] for r in recs], np.float64)
      else:
        x = np.array([r["end_time"] for r in recs], np.float64) / 86400.0
      curves.append((x, {m: np.array([np.nan if r.get(m) is None else r[m] for r in recs],
                                     np.float64) for m in metrics}))
    if not curves:
      continue
    n = min(len(x) for x, _ in curves)
    x = curves[0][0][:n]
    label = members[0].label if not per_run else f"{members[0].label} (seed {members[0].seed})"
    if len(members) > 1:
      label += f" (n={len(curves)})"
    style = dict(linestyle="--", color="black") if members[0].oracle else {}
    for ax, m in zip(axes[:, 0], metrics):
      y = np.stack([c[m][:n] for _, c in curves])
      mean = y.mean(axis=0)
      line, = ax.plot(x, mean, label=label, marker=".", markersize=3, **style)
      if y.shape[0] > 1:
        std = y.std(axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2, color=line.get_color())
    drawn += 1
  if not drawn:
    plt.close(fig)
    raise ValueError(f"no run among {paths} has {window!r} windows in {METRICS_FILE}")
  for ax, m in zip(axes[:, 0], metrics):
    ax.set_ylabel(metric_spec(m).title)
    ax.grid(alpha=0.3)
    if m == "pcoc":
      ax.axhline(1.0, color="gray", linewidth=0.8)
  axes[-1, 0].set_xlabel("rows streamed" if window == "rows" else "event time (days)")
  axes[0, 0].legend(fontsize=7, ncol=2)
  if title:
    axes[0, 0].set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=150)
  plt.close(fig)
  return out


# ---------------------------------------------------------------------------
# Command line.


def _split_list(values: Sequence[str] | None) -> List[str]:
  out = []
  for v in values or []:
    out += [x.strip() for x in v.split(",") if x.strip()]
  return out


def _cmd_sweep(args) -> int:
  statuses = run_sweep(args.experiment, out_dir=args.out, arg=args.arg,
                       overrides=args.set or [], jobs=args.jobs,
                       drop_checkpoints=args.drop_checkpoints,
                       ignore_changed=args.ignore_changed, dry_run=args.dry_run)
  failed = [s for s in statuses if s["status"] == "failed"]
  return 1 if failed else 0


def _cmd_table(args) -> int:
  runs = load_runs(args.run_dirs)
  metrics = _split_list(args.metrics) or list(DEFAULT_METRICS)
  if args.windows:
    metrics = window_metrics(runs, args.windows, metrics)
  text = format_table(aggregate(runs, metrics), metrics, args.format,
                      provenance=not args.no_provenance)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  print(text, end="")
  return 0


def _cmd_plot(args) -> int:
  metrics = _split_list(args.metrics) or ["auc", "ne", "pcoc"]
  out = plot_runs(args.run_dirs, args.out, metrics, window=args.window, per_run=args.per_run,
                  title=args.title)
  print(f"wrote {out}")
  return 0


def add_experiment_commands(subparsers) -> None:
  """Registers ``sweep``, ``table`` and ``plot`` on the ``rectrain`` command line."""
  sweep = subparsers.add_parser("sweep", help="run the points of an experiment's get_sweep()")
  sweep.add_argument("experiment", help="experiment dir (holding config.py)")
  sweep.add_argument("--arg", default=None, help="argument for get_config / get_sweep, e.g. smoke")
  sweep.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="override applied to every point")
  sweep.add_argument("--out", default=None, help="output dir (default runs/<experiment>[_<arg>])")
  sweep.add_argument("--jobs", type=int, default=1, help="runs in parallel (subprocesses)")
  sweep.add_argument("--drop-checkpoints", action="store_true",
                     help="delete each finished run's checkpoints (saves disk)")
  sweep.add_argument("--ignore-changed", action="store_true",
                     help="keep finished runs whose config differs from the sweep's")
  sweep.add_argument("--dry-run", action="store_true", help="list what would run")
  sweep.set_defaults(func=_cmd_sweep)

  table = subparsers.add_parser("table", help="mean ± std over seeds of finished runs")
  table.add_argument("run_dirs", nargs="+", help="run dirs, or folders of run dirs")
  table.add_argument("--format", choices=("md", "latex", "csv"), default="md")
  table.add_argument("--metrics", action="append",
                     help="comma separated: auc,logloss,ne,pcoc,rows_per_sec,param_count,"
                          "wall_time_sec,... or KIND:INDEX:METRIC (rows:0:auc)")
  table.add_argument("--windows", default=None,
                     help="one column per window of this kind (rows, day, hour) and metric")
  table.add_argument("--no-provenance", action="store_true", help="omit the provenance lines")
  table.add_argument("--out", default=None, help="also write the table to this file")
  table.set_defaults(func=_cmd_table)

  plot = subparsers.add_parser("plot", help="metric-over-stream curves of several runs")
  plot.add_argument("run_dirs", nargs="+", help="run dirs, or folders of run dirs")
  plot.add_argument("--metrics", action="append", help="comma separated (default auc,ne,pcoc)")
  plot.add_argument("--window", default="rows", help="window kind: rows, hour, day")
  plot.add_argument("--per-run", action="store_true", help="one line per run, not per config")
  plot.add_argument("--title", default=None)
  plot.add_argument("--out", default="plot.png", help="output .png / .pdf / .svg")
  plot.set_defaults(func=_cmd_plot)


def main(argv=None) -> int:
  """``python -m rectrain.experiment ...`` is the ``rectrain`` command line."""
  from rectrain.cli import main as cli_main
  return cli_main(argv)


if __name__ == "__main__":
  sys.exit(main())
