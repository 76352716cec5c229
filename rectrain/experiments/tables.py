"""Result tables: loading run directories, metric specs, mean and standard deviation
over seeds, markdown / csv / latex output with provenance.

See :mod:`rectrain.experiments` for what a run directory holds.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Sequence

import numpy as np

from rectrain.experiments.records import (CONFIG, METRICS_FILE, RUN_RECORD, SUMMARY, _experiment,
                                         _read_json, config_hash, run_label)


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
