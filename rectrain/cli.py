"""The ``rectrain`` command line: thin, it parses and calls library functions.

  rectrain run [CONFIG] [--arg ARG] [--set key=value ...] [--workdir DIR]
  rectrain data stats FILE [--max-rows N]
  rectrain synth --rows N --seed S --out FILE
  rectrain tune [CONFIG] [--arg ARG] [--set key=value ...] --param KEY=SPEC ... --dir DIR

Errors end in one line and a non-zero exit; --debug (anywhere) shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time


def _cmd_run(args) -> int:
  from rectrain import configs

  if args.config:
    config = configs.load_config(args.config, args.arg)
  else:
    config = configs.default_config()
  configs.apply_overrides(config, args.set or [])
  workdir = args.workdir or os.path.join(
      "runs", f"{config.model.name}_{time.strftime('%Y%m%d-%H%M%S')}")
  from rectrain.experiments.records import reproduce_command, run_experiment
  summary = run_experiment(config, workdir, command=reproduce_command(
      args.config, workdir, args.arg, args.set or []))
  import jax
  if jax.process_index() != 0:  # several processes: the main one prints the result
    return 0
  if config.offline.epochs:
    print(format_offline(summary))
    print(f"\nrun directory: {workdir}  (run.json, config.json, offline.jsonl, summary.json)")
    return 0
  print(format_summary(summary))
  print(f"\nrun directory: {workdir}  (run.json, config.json, metrics.jsonl, summary.json)")
  return 0


def format_summary(summary: dict) -> str:
  """The result table printed at the end of a run."""
  def fmt(v, spec):
    if v is None:
      return "n/a"
    try:
      return format(v, spec)
    except (TypeError, ValueError):
      return str(v)

  rows = [
      ("model", summary.get("model")),
      ("rows", fmt(summary.get("rows"), ",d")),
      ("AUC", fmt(summary.get("auc"), ".4f")),
      ("log loss", fmt(summary.get("logloss"), ".4f")),
      ("NE", fmt(summary.get("ne"), ".4f")),
      ("PCOC", fmt(summary.get("pcoc"), ".4f")),
      ("base rate", fmt(summary.get("base_rate"), ".4f")),
  ]
  if summary.get("method") is not None:  # a delayed-feedback run (rectrain/train/delayed.py)
    rows.insert(1, ("delayed-feedback method", f"{summary['method']} ({summary.get('join_mode')} join)"))
    rows.insert(2, ("rows (incremental, scored)", rows.pop(2)[1]))
    rows.insert(4, ("PR-AUC", fmt(summary.get("pr_auc"), ".4f")))
    pw = summary.get("pcoc_windows") or {}
    if pw.get("std") is not None:
      rows.append(("PCOC over windows (mean ± std)", f"{pw['mean']:.4f} ± {pw['std']:.4f}"))
  if summary.get("bayes_auc") is not None:
    rows += [("Bayes ceiling AUC", fmt(summary.get("bayes_auc"), ".4f")),
             ("Bayes ceiling log loss", fmt(summary.get("bayes_logloss"), ".4f"))]
  rows += [
      ("rows/s", fmt(summary.get("rows_per_sec"), ",.0f")),
      ("wall time (s)", fmt(summary.get("wall_time_sec"), ".1f")),
      ("parameters", fmt(summary.get("param_count"), ",d")),
      ("skipped rows", fmt(summary.get("skipped_rows"), ",d")),
      ("non-finite batches", fmt(summary.get("nonfinite_batches"), ",d")),
  ]
  if summary.get("multi_hot_values_cut"):
    rows.append(("multi-hot values cut (max length)", fmt(summary["multi_hot_values_cut"], ",d")))
  var = summary.get("variation") or {}
  for key in ("auc_std", "ne_std", "pcoc_std"):
    if key in var and var[key] is not None:
      rows.append((f"window {key.replace('_', ' ')}", fmt(var[key], ".4f")))
  width = max(len(k) for k, _ in rows)
  vwidth = max(len(str(v)) for _, v in rows)
  line = "+" + "-" * (width + 2) + "+" + "-" * (vwidth + 2) + "+"
  out = [line, f"| {'metric'.ljust(width)} | {'value'.rjust(vwidth)} |", line]
  out += [f"| {k.ljust(width)} | {str(v).rjust(vwidth)} |" for k, v in rows]
  out.append(line)
  return "\n".join(out)


def format_offline(result: dict) -> str:
  """The table of held-out metrics per evaluation point of the offline protocol."""
  head = f"{'epoch':>6}  {'test AUC':>9}  {'test logloss':>12}  {'train AUC':>9}  " \
         f"{'|grad| emb':>10}  {'|grad| dense':>12}"
  lines = [head, "-" * len(head)]
  for p in result["points"]:
    train = p.get("train", {})
    lines.append(f"{p['epoch']:>6.2f}  {p['test']['auc']:>9.4f}  {p['test']['logloss']:>12.4f}  "
                 f"{train.get('auc', float('nan')):>9.4f}  {p.get('grad_norm_tables', float('nan')):>10.4g}  "
                 f"{p.get('grad_norm_dense', float('nan')):>12.4g}")
  return "\n".join(lines)


def _cmd_data_stats(args) -> int:
  from rectrain.data.stats import data_stats

  stats = data_stats(args.file, max_rows=args.max_rows or None)
  print(json.dumps(stats, indent=2))
  return 0


def _cmd_data_prepare(args) -> int:
  from rectrain.data.prepare import prepare

  report = prepare(args.name, args.raw_dir, args.out, progress=not args.quiet,
                   **({"history_len": args.history_len} if args.history_len else {}),
                   **({"partitions": args.partitions} if args.partitions else {}))
  skipped = sum(report["skipped"].values())
  print(f"{args.name}: read {', '.join(f'{k} {v:,}' for k, v in report['rows_read'].items())} "
        f"lines; wrote {report['rows_written']:,} rows to {report['out']} (skipped {skipped:,}"
        + (f": {report['skipped']}" if skipped else "") + ")")
  for e in report["first_errors"]:
    print(f"  {e}")
  return 0


def _cmd_synth(args) -> int:
  from rectrain.data.synthetic import write_tsv

  write_tsv(args.out, num_rows=args.rows, seed=args.seed)
  print(f"wrote {args.rows:,} rows to {args.out}")
  return 0


def _cmd_tune(args) -> int:
  from rectrain.tune import tune

  tune(args.param or [], args.dir, config_path=args.config, config_arg=args.arg,
       overrides=args.set or [], trials=args.trials, sampler=args.sampler,
       objective=args.objective, holdout_rows=args.holdout_rows, prune=args.prune,
       jobs=args.jobs, seed=args.seed)
  return 0


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line usage error (the usage is one ``--help`` away)."""

  def error(self, message):
    self.exit(2, f"rectrain: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="rectrain", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)

  run = sub.add_parser("run", help="one streaming run from a python config")
  run.add_argument("config", nargs="?", default=None,
                   help="config .py file or experiment dir (default: the built-in default)")
  run.add_argument("--arg", default=None, help="argument for get_config(arg), e.g. smoke")
  run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
  run.add_argument("--workdir", default=None, help="run directory (default runs/<model>_<time>)")
  run.set_defaults(func=_cmd_run)

  data = sub.add_parser("data", help="data tools")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  stats = data_sub.add_parser("stats", help="JSON statistics of a Criteo-format file")
  stats.add_argument("file")
  stats.add_argument("--max-rows", type=int, default=0)
  stats.set_defaults(func=_cmd_data_stats)
  from rectrain.data.prepare import DATASETS
  prep = data_sub.add_parser("prepare", help="convert a raw dataset into time-ordered parquet "
                                             "for its dataset card")
  prep.add_argument("name", choices=DATASETS)
  prep.add_argument("raw_dir", help="the directory of the files as published")
  prep.add_argument("out", help="the parquet file to write (OUT.report.json beside it)")
  prep.add_argument("--history-len", type=int, default=0, help="behaviour sequence length "
                                                               "(default: the dataset's)")
  prep.add_argument("--partitions", type=int, default=0,
                    help="taobao_ad: user partitions of the behaviour log (default: by its size)")
  prep.add_argument("--quiet", action="store_true", help="no progress bar")
  prep.set_defaults(func=_cmd_data_prepare)

  synth = sub.add_parser("synth", help="write the synthetic stream as Criteo TSV")
  synth.add_argument("--rows", type=int, required=True)
  synth.add_argument("--seed", type=int, default=0)
  synth.add_argument("--out", required=True)
  synth.set_defaults(func=_cmd_synth)

  tune = sub.add_parser("tune", help="search config values with Optuna (resumable)",
                        description=("Each trial is one streaming run; the study lives in "
                                     "DIR/study.db, so the same command resumes. SPEC: "
                                     "loguniform:LO:HI | uniform:LO:HI | int:LO:HI[:log] | "
                                     "choice:A,B | grid:A,B"))
  tune.add_argument("config", nargs="?", default=None, help="config .py file or experiment dir")
  tune.add_argument("--arg", default=None, help="argument for get_config(arg)")
  tune.add_argument("--set", action="append", metavar="KEY=VALUE", help="fixed override")
  tune.add_argument("--param", action="append", metavar="KEY=SPEC", required=True,
                    help="a searched key, e.g. optim.sparse.learning_rate=loguniform:1e-3:1")
  tune.add_argument("--dir", required=True, help="tuning directory (study.db, best_config.py)")
  tune.add_argument("--trials", type=int, default=20,
                    help="finished trials to reach (at most the grid size for --sampler grid)")
  tune.add_argument("--sampler", default="tpe", help="tpe | random | grid")
  tune.add_argument("--objective", default="ne", help="ne | logloss (minimised)")
  tune.add_argument("--holdout-rows", type=int, default=0,
                    help="objective on this many synthetic rows after the prefix (frozen model)")
  tune.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                    help="stop trials worse than the median at a count window (default on)")
  tune.add_argument("--jobs", type=int, default=1, help="worker processes")
  tune.add_argument("--seed", type=int, default=0, help="sampler seed")
  tune.set_defaults(func=_cmd_tune)

  from rectrain.experiments.commands import add_experiment_commands
  add_experiment_commands(sub)
  return parser


def _one_line(e: BaseException) -> str:
  msg = e.args[0] if isinstance(e, KeyError) and e.args else e
  lines = str(msg).strip().splitlines()
  return lines[0] if lines else type(e).__name__


def _quiet_after_error():
  """After a reported error: no asyncio "Task exception was never retrieved"
  logs at exit from the tasks of a failed checkpoint write."""
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def compile_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for this process; returns its directory.

  ``RECTRAIN_COMPILE_CACHE``: the directory (default ``~/.cache/rectrain/jax``),
  or ``0`` / empty to leave the cache off. A later run of the same shapes
  loads the compiled programs instead of compiling them again. Every program
  is stored, however short its compilation (the dozens of small programs of
  the model's initialisation add up to about 0.4 s per run; the cache holds
  a few hundred KB per configuration). Only the command line turns it on;
  library calls (and the tests) keep JAX's default.
  """
  where = os.environ.get("RECTRAIN_COMPILE_CACHE",
                         os.path.join(os.path.expanduser("~"), ".cache", "rectrain", "jax"))
  if where in ("", "0"):
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return where


# Errors of the user's world (input, config, files, the run directory): exit 2.
_USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)


def main(argv=None) -> int:
  """The command line. Every error ends in one line on stderr and a non-zero
  exit (2: input, config or file error; 1: anything else; 130: interrupted);
  ``--debug`` anywhere on the line (or ``RECTRAIN_DEBUG=1``) re-raises it
  with its traceback."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv or os.environ.get("RECTRAIN_DEBUG", "") not in ("", "0")
  argv = [a for a in argv if a != "--debug"]
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  args = build_parser().parse_args(argv)
  before = os.environ.get("RECTRAIN_DEBUG")
  if debug:  # for this call (and the processes it starts) only
    os.environ["RECTRAIN_DEBUG"] = "1"
  try:
    compile_cache()
    return args.func(args)
  except BrokenPipeError:  # output piped into e.g. `head`
    sys.stderr.close()
    return 0
  except KeyboardInterrupt:
    if debug:
      raise
    print("rectrain: interrupted", file=sys.stderr)
    return 130
  except _USER_ERRORS as e:
    if debug:
      raise
    _quiet_after_error()
    print(f"rectrain: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - a bug or an unforeseen fault: still one line
    if debug:
      raise
    _quiet_after_error()
    print(f"rectrain: internal error: {type(e).__name__}: {_one_line(e)} "
          "(run again with --debug for the traceback)", file=sys.stderr)
    return 1
  finally:
    if before is None:
      os.environ.pop("RECTRAIN_DEBUG", None)
    else:
      os.environ["RECTRAIN_DEBUG"] = before


if __name__ == "__main__":
  sys.exit(main())
