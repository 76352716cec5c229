"""Freshness loss per drift strength and the strength that matches He et al. 2014.

  python experiments/synthetic_calibration/fit.py runs/synthetic_calibration \\
      [--delay 6] [--target 0.01] [--model LR]

Reads the sweep's runs (config.py), computes each frozen model's freshness
loss ``NE(day F + 1 + d) / NE(day F + 1) - 1`` per seed (F = the freeze day),
prints a markdown table of mean ± sample std over seeds per point and delay,
and the drift strength at which ``--model``'s loss at ``--delay`` equals
``--target``. A point's loss at ``--delay`` is read off a line through the
origin fitted (least squares) to its seed-mean losses at delays 1 ..
``--delay``, which averages out the day-to-day noise of single days (about
±0.3 % per seed); between the two measured strengths that bracket the target
the strength is interpolated log-log (linearly from 0 below the smallest).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from rectrain.experiments.tables import load_runs, read_windows

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from config import FREEZE_DAYS  # noqa: E402  (the experiment's own config)


def freshness_losses(run_dirs: Sequence[str], delays: int) -> Dict[str, List[np.ndarray]]:
  """label -> per seed, the (delays,) losses at delays 1 .. ``delays``."""
  out: Dict[str, List[np.ndarray]] = defaultdict(list)
  for run in load_runs(run_dirs):
    days = {r["index"]: r.get("ne") for r in read_windows(run.dir, "day")}
    ne = [days.get(FREEZE_DAYS + d) for d in range(delays + 1)]
    if any(v is None for v in ne):
      raise ValueError(f"{run.dir}: no NE for days {FREEZE_DAYS + 1} .. "
                       f"{FREEZE_DAYS + delays + 1} (was the run cut short?)")
    ne = np.asarray(ne, dtype=np.float64)
    out[run.label].append(ne[1:] / ne[0] - 1.0)
  return dict(out)


def strength_of(label: str) -> float | None:
  """The drift strength of a ``MODEL, strength S`` label (None for preset points)."""
  _, _, rest = label.partition(", strength ")
  return float(rest) if rest else None


def trend(per_seed: Sequence[np.ndarray], delay: int) -> float:
  """The loss at ``delay`` of the least-squares line through 0 of the seed-mean losses."""
  mean = np.mean(np.stack(per_seed), axis=0)[:delay]
  d = np.arange(1, delay + 1, dtype=np.float64)
  return float(delay * np.dot(d, mean) / np.dot(d, d))


def fit_strength(losses: Dict[str, List[np.ndarray]], model: str, delay: int,
                 target: float) -> Tuple[float, Tuple[float, float]]:
  """The strength where ``model``'s mean loss at ``delay`` is ``target``, and its bracket."""
  points = sorted((s, trend(vals, delay)) for label, vals in losses.items()
                  if label.startswith(model + ",") and (s := strength_of(label)))
  if len(points) < 1:
    raise ValueError(f"no {model} runs with a non-zero drift strength")
  for (s0, l0), (s1, l1) in zip([(0.0, 0.0)] + points[:-1], points):
    if l0 <= target <= l1:
      if s0 == 0.0 or l0 <= 0.0:
        return s1 * target / l1, (s0, s1)
      t = (math.log(target) - math.log(l0)) / (math.log(l1) - math.log(l0))
      return math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0))), (s0, s1)
  raise ValueError(f"{model}: the target {target:g} is not bracketed by the measured losses "
                   f"{[round(l, 5) for _, l in points]} at strengths {[s for s, _ in points]}")


def format_losses(losses: Dict[str, List[np.ndarray]], delays: int) -> str:
  def key(label):
    s = strength_of(label)
    return (label.split(",")[0], s is None, s or 0.0)

  head = "| point | seeds | " + " | ".join(f"delay {d} (%)" for d in range(1, delays + 1))
  lines = [head + f" | trend at {delays} (%) |", "|:---|---:|" + "---:|" * (delays + 1)]
  for label in sorted(losses, key=key):
    vals = np.stack(losses[label]) * 100.0
    cells = []
    for d in range(delays):
      col = vals[:, d]
      cells.append(f"{col.mean():+.2f} ± {col.std(ddof=1):.2f}" if len(col) > 1
                   else f"{col.mean():+.2f}")
    cells.append(f"{100.0 * trend(losses[label], delays):+.2f}")
    lines.append(f"| {label} | {len(vals)} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("runs", nargs="+", help="the sweep's run directory (or run dirs)")
  parser.add_argument("--delay", type=int, default=6, help="the delay (days) of the target")
  parser.add_argument("--target", type=float, default=0.01, help="the loss at --delay")
  parser.add_argument("--model", default="LR", help="the label prefix of the fitted model")
  args = parser.parse_args(argv)
  try:
    losses = freshness_losses(args.runs, args.delay)
    print(format_losses(losses, args.delay))
    strength, (lo, hi) = fit_strength(losses, args.model, args.delay, args.target)
  except (ValueError, OSError) as e:
    print(f"fit.py: error: {e}", file=sys.stderr)
    return 2
  print(f"\n{args.model}: loss {args.target:.2%} at delay {args.delay} d at drift.strength "
        f"{strength:.4g} (between the measured {lo:g} and {hi:g})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
