"""Run records and single runs: the experiment config section, standard models, config
hashes, git / package / device facts, ``run.json``, the Bayes-ceiling run,
:func:`run_experiment`.

See :mod:`rectrain.experiments` for what a run directory holds.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import time
from typing import Any, Dict, Mapping, Sequence

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


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None


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
