"""Re-running a recorded run and comparing its metrics (``rectrain reproduce``).

The config comes from the run record (``run.json``), not from its command
line: JSON arrays become tuples again (configs hold no lists), and the rebuilt
config must have the recorded config hash, so the rerun computes what the
recorded run computed. Runs are deterministic, so on the same machine and
commit the metrics are expected to be bit-identical (``rtol = 0``).

See :mod:`rectrain.experiments` for what a run directory holds.
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Callable, Dict, List, Mapping, NamedTuple

import ml_collections

from rectrain.experiments.records import (RUN_RECORD, _read_json, config_hash, git_state,
                                          run_experiment)

COMPARED = ("auc", "logloss", "ne", "pcoc", "rows")


class Comparison(NamedTuple):
  """One compared metric of the recorded and the reproduced run."""
  metric: str
  recorded: Any
  reproduced: Any
  equal: bool


def read_record(run_dir: str) -> Dict[str, Any]:
  """``run_dir/run.json``; errors name the file (missing, not JSON, a field missing)."""
  path = os.path.join(run_dir, RUN_RECORD)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no run record (not a finished run directory)")
  record = _read_json(path)
  if not isinstance(record, Mapping):
    raise ValueError(f"{path}: not a run record (a JSON object)")
  for key, kind, what in (("config", Mapping, "a JSON object"), ("config_hash", str, "a string"),
                          ("metrics", Mapping, "a JSON object")):
    if not isinstance(record.get(key), kind):
      raise ValueError(f"{path}: field {key!r} is missing or not {what}")
  for metric in COMPARED:
    value = _value(record, metric)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise ValueError(f"{path}: {metric} = {value!r} is not a number")
  return record


def _value(record: Mapping[str, Any], metric: str):
  return (record if metric == "rows" else record["metrics"]).get(metric)


def _tuples(value):
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def record_config(record: Mapping[str, Any], path: str) -> ml_collections.ConfigDict:
  """The config of a run record, refused unless it has the recorded config hash."""
  config = ml_collections.ConfigDict(_tuples(record["config"]))
  rebuilt = config_hash(config)
  if rebuilt != record["config_hash"]:
    raise ValueError(f"{path}: the recorded config hashes to {rebuilt}, not to the recorded "
                     f"config_hash {record['config_hash']}; the record was changed or written "
                     f"by another rectrain")
  return config


def code_warning(record: Mapping[str, Any], path: str) -> str | None:
  """A warning when the code running now may differ from the recorded run's, else None."""
  recorded = record.get("git") or {}
  now = git_state()
  if not recorded.get("commit"):
    return f"warning: {path} records no git commit; the code may differ"
  notes = []
  if recorded["commit"] != now["commit"]:
    notes.append(f"this checkout is at commit {(now['commit'] or 'unknown')[:10]}")
  if recorded.get("dirty"):
    notes.append(f"the recorded tree had {recorded.get('num_changes', 'some')} uncommitted "
                 f"changes")
  if now["dirty"]:
    notes.append("this tree has uncommitted changes")
  if not notes:
    return None
  return (f"warning: {path} was recorded at commit {recorded['commit'][:10]}; "
          f"{', '.join(notes)}: metrics may differ")


def _equal(a, b, rtol: float) -> bool:
  if a is None or b is None:
    return a is b
  return abs(a - b) <= rtol * abs(a)


def compare(recorded: Mapping[str, Any], reproduced: Mapping[str, Any],
            rtol: float = 0.0) -> List[Comparison]:
  """Compares :data:`COMPARED` of two run records: ``|new - old| <= rtol * |old|``."""
  out = []
  for metric in COMPARED:
    a, b = _value(recorded, metric), _value(reproduced, metric)
    out.append(Comparison(metric, a, b, _equal(a, b, rtol)))
  return out


def format_comparison(rows: List[Comparison]) -> str:
  """A plain-text table: metric, recorded, reproduced, relative difference."""
  def rel(c):
    if c.recorded is None or c.reproduced is None:
      return "n/a"
    if c.recorded == c.reproduced:
      return "0"
    return f"{(c.reproduced - c.recorded) / abs(c.recorded):+.3g}" if c.recorded else "inf"

  cells = [("metric", "recorded", "reproduced", "rel. diff", "")]
  cells += [(c.metric, repr(c.recorded), repr(c.reproduced), rel(c), "" if c.equal else "DIFFERS")
            for c in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(5)]
  return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                   for row in cells)


def reproduce(run_dir: str, workdir: str | None = None, rtol: float = 0.0,
              log: Callable[[str], None] = print) -> List[Comparison]:
  """Reruns the recorded run in ``run_dir`` into ``workdir`` and compares the two.

  Args:
    run_dir: a finished run directory (holding ``run.json``).
    workdir: an empty or new directory for the rerun (default ``RUN_DIR_reproduce``).
    rtol: the relative tolerance of :func:`compare` (0: bit-identical).
    log: where the warning about differing code goes (see :func:`code_warning`).

  Returns:
    one :class:`Comparison` per metric of :data:`COMPARED`.
  """
  if not rtol >= 0:
    raise ValueError(f"reproduce: rtol={rtol}: must be >= 0")
  path = os.path.join(run_dir, RUN_RECORD)
  record = read_record(run_dir)
  config = record_config(record, path)
  workdir = workdir or run_dir.rstrip("/") + "_reproduce"
  if os.path.isdir(workdir) and os.listdir(workdir):
    raise ValueError(f"{workdir}: not empty; remove it or pass another --workdir")
  warning = code_warning(record, path)
  if warning:
    log(warning)
  command = " ".join(shlex.quote(p) for p in ["rectrain", "reproduce", run_dir,
                                               "--workdir", workdir])
  run_experiment(config, workdir, command=command,
                 extra={"reproduces": os.path.abspath(run_dir)})
  return compare(record, read_record(workdir), rtol)
