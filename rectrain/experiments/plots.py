"""Plots of the per-window metrics of runs (matplotlib).

See :mod:`rectrain.experiments` for what a run directory holds.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np

from rectrain.experiments.records import METRICS_FILE
from rectrain.experiments.tables import Run, load_runs, metric_spec, read_windows


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
