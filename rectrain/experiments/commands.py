"""The ``rectrain sweep | table | plot | reproduce`` commands (argparse), added to the main
command line by :mod:`rectrain.cli`.

See :mod:`rectrain.experiments` for what a run directory holds.
"""

from __future__ import annotations

import sys
from typing import List, Sequence

from rectrain.experiments.plots import plot_runs
from rectrain.experiments.reproduce import format_comparison, reproduce
from rectrain.experiments.sweeps import run_sweep
from rectrain.experiments.tables import (DEFAULT_METRICS, aggregate, format_table, load_runs,
                                         window_metrics)


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


def _cmd_reproduce(args) -> int:
  comparison = reproduce(args.run_dir, args.workdir, args.rtol,
                         log=lambda line: print(f"rectrain reproduce: {line}", file=sys.stderr))
  print(format_comparison(comparison))
  differ = [c.metric for c in comparison if not c.equal]
  if differ:
    print(f"rectrain reproduce: {len(differ)} of {len(comparison)} metrics differ beyond "
          f"rtol={args.rtol:g} ({', '.join(differ)})")
    return 1
  print(f"rectrain reproduce: all {len(comparison)} metrics equal within rtol={args.rtol:g}")
  return 0


def add_experiment_commands(subparsers) -> None:
  """Registers ``sweep``, ``table``, ``plot`` and ``reproduce`` on the ``rectrain`` command
  line."""
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

  rerun = subparsers.add_parser("reproduce", help="rerun a recorded run and compare its metrics",
                                description="Rebuilds the config of RUN_DIR/run.json (refused "
                                            "unless it has the recorded config hash), runs it "
                                            "into --workdir and compares auc, logloss, ne, pcoc "
                                            "and rows. Exit 0: all equal within --rtol; 1: some "
                                            "differ; 2: no usable run.json.")
  rerun.add_argument("run_dir", help="a finished run directory (holding run.json)")
  rerun.add_argument("--workdir", default=None,
                     help="empty or new directory of the rerun (default RUN_DIR_reproduce)")
  rerun.add_argument("--rtol", type=float, default=0.0,
                     help="relative tolerance (default 0: bit-identical, as on the same "
                          "machine and commit)")
  rerun.set_defaults(func=_cmd_reproduce)
