"""A long stream on one machine: rows/s and memory from the first to the last million.

Writes (or reuses) a Criteo-format TSV of ``--rows`` synthetic rows on disk
(``write_tsv``, as ``rectrain synth``, in ``--writers`` processes writing
consecutive row ranges of one world, concatenated), then trains the default config of ``--model`` on
it in this process exactly as ``rectrain run`` does (``train_stream`` with a
run directory: metrics.jsonl, summary.json, the final checkpoint) and records,
for every ``--chunk`` rows:

* the wall time at which the loop closed the chunk's metrics window (the
  ``on_window`` callback: the chunk's batches are predicted, scored and
  learned from), hence the chunk's rows/s;
* this process's resident memory when the chunk closed and its peak within
  the chunk (``/proc/self/statm``, sampled every 50 ms by a thread), and the
  process's high-water mark (``VmHWM``).

It prints one table and the verdict numbers over the middle chunks (the
first holds the compilation; the last the short tail batch, its own program,
and the final flush; both are reported apart): the spread of their rows/s,
the rate of the last middle chunk over the second's, and the RSS growth
between them (MB, and MB per million rows). ``--json`` keeps everything.

  python benchmarks/stream_scale.py --rows 20000000 --data /tmp/scale_20m.tsv --json /tmp/scale.json
  python benchmarks/stream_scale.py --smoke          # 200k rows in chunks of 50k (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * PAGE / 2**20


def hwm_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  return float("nan")


class RssSampler(threading.Thread):
  """Samples this process's RSS every ``interval`` s; ``take_peak()`` returns and resets
  the largest sample since the last call."""

  def __init__(self, interval: float = 0.05):
    super().__init__(daemon=True)
    self.interval = interval
    self._peak = 0.0
    self._lock = threading.Lock()
    self._stop = threading.Event()

  def run(self):
    while not self._stop.wait(self.interval):
      value = rss_mb()
      with self._lock:
        self._peak = max(self._peak, value)

  def take_peak(self) -> float:
    value = rss_mb()
    with self._lock:
      peak, self._peak = max(self._peak, value), 0.0
    return peak

  def stop(self):
    self._stop.set()


def write_data(path: str, rows: int, seed: int, writers: int) -> dict:
  """``rows`` rows of one synthetic world (seed ``seed``) as Criteo TSV at ``path``,
  written by ``writers`` processes (consecutive row ranges) and concatenated.
  Reuses the file when ``path.json`` records the same rows and seed."""
  meta_path = path + ".json"
  if os.path.exists(path) and os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("rows") == rows and meta.get("seed") == seed:
      return dict(meta, reused=True)
  t = time.perf_counter()
  bounds = [rows * i // writers for i in range(writers + 1)]
  parts = [f"{path}.part{i}" for i in range(writers)]
  # the stream does not depend on start_row (rectrain/data/synthetic.py): writer i
  # writes rows [lo, hi) of the one world
  code = ("import sys; from rectrain.data.synthetic_tsv import write_tsv; a = sys.argv; "
          "write_tsv(a[1], int(a[4]) - int(a[3]), seed=int(a[2]), start_row=int(a[3]))")
  procs = [subprocess.Popen([sys.executable, "-c", code, part, str(seed), str(lo), str(hi)],
                            cwd=REPO)
           for part, lo, hi in zip(parts, bounds[:-1], bounds[1:])]
  codes = [p.wait() for p in procs]
  if any(codes):
    raise SystemExit(f"stream_scale: writing {path} failed (exit codes {codes})")
  with open(path, "wb") as out:
    for part in parts:
      with open(part, "rb") as f:
        shutil.copyfileobj(f, out, 16 << 20)
      os.remove(part)
  meta = {"path": path, "rows": rows, "seed": seed, "writers": writers,
          "bytes": os.path.getsize(path), "write_sec": time.perf_counter() - t}
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2)
  return dict(meta, reused=False)


def run(args) -> dict:
  from rectrain.cli import compile_cache
  compile_cache()
  from rectrain import configs
  from rectrain.train.loop import train_stream

  data = write_data(args.data, args.rows, args.seed, args.writers)
  config = configs.apply_overrides(configs.default_config(), [
      f"model.name={args.model}", "data.source=criteo", f"data.path={args.data}",
      f"data.max_rows={args.rows}",
      f"metrics.window_rows={args.chunk}", "train.progress=False", *args.set])
  sampler = RssSampler()
  sampler.start()
  chunks = []
  start = [None]

  def on_window(record):
    if record.get("window") != "rows" or record.get("slice") is not None:
      return
    now = time.perf_counter()
    chunks.append({"end_row": int(record["end_row"]), "t": now - start[0],
                   "rss_mb": rss_mb(), "peak_rss_mb": sampler.take_peak(),
                   "ne": record.get("ne"), "auc": record.get("auc")})

  workdir = tempfile.mkdtemp(prefix="rectrain-scale-")
  rss_start = rss_mb()
  start[0] = time.perf_counter()
  try:
    summary = train_stream(config, workdir=workdir, on_window=on_window)
  finally:
    sampler.stop()
    shutil.rmtree(workdir, ignore_errors=True)
  wall = time.perf_counter() - start[0]
  summary.pop("_state", None)
  prev_t, prev_row = 0.0, 0
  for c in chunks:
    c["rows_per_sec"] = (c["end_row"] - prev_row) / max(c["t"] - prev_t, 1e-9)
    prev_t, prev_row = c["t"], c["end_row"]
  result = {
      "model": args.model, "rows": summary["rows"], "chunk": args.chunk, "data": data,
      "wall_sec": wall, "rss_before_mb": rss_start, "hwm_mb": hwm_mb(),
      "summary_rows_per_sec": summary["rows_per_sec"], "auc": summary["auc"],
      "logloss": summary["logloss"], "skipped_rows": summary["skipped_rows"],
      "chunks": chunks, "python": platform.python_version(),
      "commit": _commit(), "load_avg": os.getloadavg(),
  }
  result.update(verdict(chunks))
  return result


def verdict(chunks: list) -> dict:
  """The steadiness numbers over the *middle* chunks: the first holds the compilation,
  the last the run's tail (a short last batch is its own program: a compile or a
  cache load) and the final flush, so both are reported apart."""
  if len(chunks) < 4:
    return {}
  middle = chunks[1:-1]
  rates = [c["rows_per_sec"] for c in middle]
  second, before_last, last = middle[0], middle[-1], chunks[-1]
  rows_m = (before_last["end_row"] - second["end_row"]) / 1e6
  return {
      "middle_chunks": len(middle),
      "rows_per_sec_middle": {"min": min(rates), "max": max(rates),
                              "mean": sum(rates) / len(rates)},
      "before_last_over_second_rows_per_sec": before_last["rows_per_sec"] / second["rows_per_sec"],
      "rss_growth_mb": before_last["rss_mb"] - second["rss_mb"],
      "rss_growth_mb_per_million": (before_last["rss_mb"] - second["rss_mb"]) / max(rows_m, 1e-9),
      "first_rows_per_sec": chunks[0]["rows_per_sec"], "last_rows_per_sec": last["rows_per_sec"],
      "last_rss_mb": last["rss_mb"],
  }


def _commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def format_result(r: dict) -> str:
  lines = [f"{r['model']}: {r['rows']:,} rows in {r['wall_sec']:.1f} s (train_stream, incl. "
           f"compile and final checkpoint); data {r['data']['path']} "
           f"({r['data']['bytes'] / 2**30:.2f} GiB, {'reused' if r['data'].get('reused') else 'written'})",
           "", "| rows (M) | wall (s) | chunk rows/s | RSS at end (MB) | peak RSS in chunk (MB) | NE |",
           "|---:|---:|---:|---:|---:|---:|"]
  for c in r["chunks"]:
    ne = f"{c['ne']:.4f}" if c.get("ne") is not None else "–"
    lines.append(f"| {c['end_row'] / 1e6:.2f} | {c['t']:.1f} | {c['rows_per_sec']:,.0f} | "
                 f"{c['rss_mb']:,.0f} | {c['peak_rss_mb']:,.0f} | {ne} |")
  lines.append("")
  if "rss_growth_mb" in r:
    s, n = r["rows_per_sec_middle"], r["middle_chunks"]
    lines.append(f"rows/s over the {n} middle chunks: min {s['min']:,.0f}, mean {s['mean']:,.0f}, "
                 f"max {s['max']:,.0f}; chunk {n + 1} / chunk 2: "
                 f"{r['before_last_over_second_rows_per_sec']:.2f}; first chunk (compiles) "
                 f"{r['first_rows_per_sec']:,.0f}, last (tail batch, flush) "
                 f"{r['last_rows_per_sec']:,.0f}")
    lines.append(f"RSS: {r['rss_before_mb']:,.0f} MB before the run; from the end of chunk 2 to "
                 f"the end of chunk {n + 1} {r['rss_growth_mb']:+,.0f} MB "
                 f"({r['rss_growth_mb_per_million']:+.1f} MB per million rows); at the end "
                 f"{r['last_rss_mb']:,.0f} MB; process high-water mark {r['hwm_mb']:,.0f} MB")
  lines.append(f"progressive AUC {r['auc']:.4f}, log loss {r['logloss']:.4f}, "
               f"skipped rows {r['skipped_rows']}; commit {r['commit']}, load avg "
               + " / ".join(f"{x:.1f}" for x in r["load_avg"]))
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", type=int, default=20_000_000)
  p.add_argument("--chunk", type=int, default=1_000_000)
  p.add_argument("--model", default="lr")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data", default=None, help="TSV path (default: a temp dir; reused if present)")
  p.add_argument("--writers", type=int, default=2, help="processes writing the TSV")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--json", default=None)
  p.add_argument("--smoke", action="store_true", help="200k rows in chunks of 50k")
  args = p.parse_args(argv)
  if args.smoke:
    args.rows, args.chunk = 200_000, 50_000
  if args.data is None:
    args.data = os.path.join(tempfile.gettempdir(), f"rectrain-scale-{args.rows}-{args.seed}.tsv")
  result = run(args)
  print(format_result(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
