"""Criteo-log parsing throughput: rectrain's CriteoStream vs pyarrow vs a Python loop.

Command (the numbers in benchmarks/README_data.md come from it):

  /work/venv/bin/python benchmarks/data_throughput.py --rows 1000000

It writes (once; reused if present with the same row count) a synthetic
Criteo-format TSV with realistic missing rates to ``/tmp`` and measures, in one
run, rows per second of:

  a. ``CriteoStream``: parse + validate + field-salted hash + fixed-shape
     batches, full iteration (the file is read ahead in one thread while
     ``--workers`` threads parse newline-aligned chunks with pyarrow, decode
     and hash);
  a'. the same with ``with_unique`` on top (host-side dedup per batch);
  b. pyarrow's raw streaming CSV read of the same file, every column as a
     string (the practical limit), single-threaded and with pyarrow's threads;
  c. a plain Python ``csv``-module loop doing the same parse + hash per row
     (timed on a prefix, the naive baseline);
  d. ``TableStream`` (rectrain/data/table.py) with the ``criteo_kaggle`` card on
     the same rows as TSV, CSV and parquet (``--formats``), each against
     pyarrow's raw single-threaded read of that file (d').

Each figure is the best of ``--repeat`` runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from rectrain.data import hashing
from rectrain.data.criteo import COLUMN_NAMES, CriteoStream
from rectrain.data.pipeline import with_unique

# Approximate missing rates of I1..I13 and C1..C26 in Criteo Kaggle train.txt.
_INT_MISSING = (0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0005, 0.04, 0.45, 0.04, 0.77, 0.22)
_CAT_MISSING = (0.0,) * 19 + (0.44, 0.44, 0.0, 0.76, 0.0, 0.44, 0.44)
_CAT_VOCAB = (1460, 580, 1_000_000, 300_000, 300, 24, 12_000, 630, 3, 90_000, 5_700,
              800_000, 3_200, 27, 14_000, 600_000, 10, 5_600, 2_200, 4, 700_000, 18,
              15, 140_000, 105, 100_000)


def write_synthetic_criteo(path: str, num_rows: int, seed: int = 0,
                           chunk: int = 250_000) -> None:
  """Writes a Criteo-format TSV (label, I1..I13, C1..C26) with numpy + pyarrow.

  Integers are geometric-like counts (some fields with -1 .. -3 values), the
  categoricals Zipf-distributed ids of per-field vocabularies rendered as 8
  hex digits; empty fields at the missing rates above. Vectorised: columns are
  built as arrays and written with ``pyarrow.csv.write_csv``.
  """
  rng = np.random.default_rng(seed)
  opts = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
  with open(path, "wb") as f:
    for start in range(0, num_rows, chunk):
      n = min(chunk, num_rows - start)
      cols = [pa.array(rng.binomial(1, 0.25, n).astype(np.int64)).cast(pa.string())]
      for j, miss in enumerate(_INT_MISSING):
        scale = rng.choice([1.0, 10.0, 1000.0, 50_000.0])
        v = np.floor(rng.exponential(scale, n) * rng.random(n) * 2).astype(np.int64)
        if j == 1:
          v = v - 3
        mask = rng.random(n) < miss
        cols.append(pa.array(v, mask=mask).cast(pa.string()))
      for j, (miss, vocab) in enumerate(zip(_CAT_MISSING, _CAT_VOCAB)):
        ids = np.minimum(rng.zipf(1.3, n), vocab).astype(np.uint64)
        raw = (hashing.splitmix64(ids * np.uint64(97) + np.uint64(j)) & np.uint64(0xFFFFFFFF))
        # 8 lowercase hex digits per value, as one fixed-width bytes buffer.
        nib = (raw[:, None] >> (np.arange(7, -1, -1, dtype=np.uint64) * np.uint64(4))) & np.uint64(15)
        txt = np.frombuffer(b"0123456789abcdef", np.uint8)[nib.astype(np.int64)]
        mask = rng.random(n) < miss
        offsets = np.arange(n + 1, dtype=np.int32) * 8
        arr = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(txt.tobytes()))
        cols.append(pc_if_missing(arr, mask))
      table = pa.table(cols, names=list(COLUMN_NAMES))
      pacsv.write_csv(table, f, write_options=opts)


def pc_if_missing(arr: pa.Array, mask: np.ndarray) -> pa.Array:
  """``arr`` with nulls (written as empty fields) where ``mask``."""
  import pyarrow.compute as pc
  return pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), arr)


def naive_python(path: str, num_rows: int, buckets: int) -> int:
  """Per-row csv-module loop: parse, validate, hash (the naive baseline)."""
  salts = [int(hashing.field_salt(f)) for f in range(hashing.NUM_CAT_FIELDS)]
  mask64 = (1 << 64) - 1

  def mix(x):
    z = (x + 0x9E3779B97F4A7C15) & mask64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask64
    return z ^ (z >> 31)

  offsets = [f * buckets for f in range(hashing.NUM_CAT_FIELDS)]
  rows = 0
  labels, cats, denses = [], [], []
  with open(path, newline="") as f:
    for rec in csv.reader(f, delimiter="\t"):
      if rows >= num_rows:
        break
      if len(rec) != 40:
        continue
      label = int(rec[0])
      dense = [float(np.log1p(max(int(v), 0))) if v else 0.0 for v in rec[1:14]]
      cat = []
      for j, v in enumerate(rec[14:]):
        cat.append(offsets[j] + (1 + mix(int(v, 16) ^ salts[j]) % (buckets - 1) if v else 0))
      labels.append(label)
      denses.append(dense)
      cats.append(cat)
      rows += 1
  return rows


def _time(fn):
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--path", default=None, help="TSV to write/read (default /tmp/criteo_synth_<rows>.tsv)")
  parser.add_argument("--rows", type=int, default=1_000_000)
  parser.add_argument("--naive_rows", type=int, default=100_000)
  parser.add_argument("--batch_size", type=int, default=4096)
  parser.add_argument("--buckets", type=int, default=1 << 20)
  parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs")
  parser.add_argument("--workers", type=int, default=2, help="CriteoStream parse threads")
  parser.add_argument("--formats", default="tsv,csv,parquet",
                      help="also time TableStream (rectrain/data/table.py, the criteo_kaggle "
                           "card) on the same rows as each of these formats against pyarrow's "
                           "raw read of that file ('' = skip)")
  args = parser.parse_args(argv)
  path = args.path or f"/tmp/criteo_synth_{args.rows}.tsv"
  if not os.path.exists(path):
    _, dt = _time(lambda: write_synthetic_criteo(path, args.rows))
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {dt:.1f} s")

  results = {}
  stream = CriteoStream(path, batch_size=args.batch_size, cat_buckets=args.buckets,
                        workers=args.workers)

  def run_stream():
    n = 0
    for b in stream:
      n += int(b["weight"].sum())
    return n

  def run_stream_unique():
    n = 0
    for b in with_unique(iter(stream), stream.num_rows, workers=args.workers):
      n += int(b["num_unique"] > 0) * int(b["weight"].sum())
    return n

  def run_arrow(threads):
    def fn():
      names = list(COLUMN_NAMES)
      reader = pacsv.open_csv(
          path, read_options=pacsv.ReadOptions(column_names=names, use_threads=threads,
                                               block_size=1 << 22),
          parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
          convert_options=pacsv.ConvertOptions(
              column_types={c: pa.string() for c in names}, check_utf8=False))
      return sum(b.num_rows for b in reader)
    return fn

  for name, fn in [("a  CriteoStream (parse+hash+batch)", run_stream),
                   ("a' CriteoStream + with_unique", run_stream_unique),
                   ("b  pyarrow raw read, 1 thread", run_arrow(False)),
                   ("b' pyarrow raw read, threads", run_arrow(True))]:
    runs = [_time(fn) for _ in range(args.repeat)]
    rows, dt = min(runs, key=lambda r: r[1])
    results[name] = (rows, dt)
    print(f"{name:38s} {rows:>9d} rows {dt:7.2f} s {rows / dt:>12,.0f} rows/s", flush=True)
  rows, dt = min((_time(lambda: naive_python(path, args.naive_rows, args.buckets))
                  for _ in range(args.repeat)), key=lambda r: r[1])
  results["c  python csv loop (prefix)"] = (rows, dt)
  print(f"{'c  python csv loop (prefix)':38s} {rows:>9d} rows {dt:7.2f} s {rows / dt:>12,.0f} rows/s")
  if args.formats:
    _formats(path, args, results)
  rate = {k: r / t for k, (r, t) in results.items()}
  a = rate["a  CriteoStream (parse+hash+batch)"]
  print(f"\na / b  (vs pyarrow 1 thread): {a / rate['b  pyarrow raw read, 1 thread']:.2f}")
  print(f"a / b' (vs pyarrow threads):  {a / rate['b' + chr(39) + ' pyarrow raw read, threads']:.2f}")
  print(f"a / c  (vs python loop):      {a / rate['c  python csv loop (prefix)']:.1f}")
  for fmt in (args.formats.split(",") if args.formats else []):
    t, raw = rate[f"d  TableStream {fmt} (criteo_kaggle card)"], rate[f"d' pyarrow raw read {fmt}"]
    print(f"TableStream {fmt} / pyarrow raw {fmt} read: {t / raw:.2f}")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}, pyarrow {pa.__version__}, numpy {np.__version__}")
  return results


def _formats(path: str, args, results: dict) -> None:
  """TableStream per format vs pyarrow's raw read of the same file (1 thread)."""
  import pyarrow.parquet as pq
  from rectrain.data.schema import get_schema
  from rectrain.data.table import TableStream
  names = list(COLUMN_NAMES)
  files = {"tsv": path}
  table = None
  for fmt in args.formats.split(","):
    if fmt == "tsv":
      continue
    out = f"{path}.{fmt}"
    files[fmt] = out
    if os.path.exists(out):
      continue
    if table is None:
      table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=names),
                             parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                             convert_options=pacsv.ConvertOptions(
                                 column_types={c: pa.string() for c in names}))
    if fmt == "csv":
      pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False,
                                                     quoting_style="none"))
    elif fmt == "parquet":
      pq.write_table(table, out, row_group_size=1 << 17)
    else:
      raise SystemExit(f"--formats: unknown format {fmt!r} (tsv, csv, parquet)")

  for fmt in args.formats.split(","):
    f = files[fmt]
    stream = TableStream(f, args.batch_size, get_schema("criteo_kaggle", format=fmt),
                         cat_buckets=args.buckets, workers=args.workers)

    def run_table():
      return sum(int(b["weight"].sum()) for b in stream)

    def run_raw():
      if fmt == "parquet":
        return sum(b.num_rows for b in pq.ParquetFile(f).iter_batches(batch_size=1 << 16))
      reader = pacsv.open_csv(
          f, read_options=pacsv.ReadOptions(column_names=names, use_threads=False,
                                            block_size=1 << 22),
          parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",",
                                           quote_char=False if fmt == "tsv" else '"'),
          convert_options=pacsv.ConvertOptions(
              column_types={c: pa.string() for c in names}, check_utf8=False))
      return sum(b.num_rows for b in reader)

    for name, fn in ((f"d  TableStream {fmt} (criteo_kaggle card)", run_table),
                     (f"d' pyarrow raw read {fmt}", run_raw)):
      rows, dt = min((_time(fn) for _ in range(args.repeat)), key=lambda r: r[1])
      results[name] = (rows, dt)
      print(f"{name:38s} {rows:>9d} rows {dt:7.2f} s {rows / dt:>12,.0f} rows/s", flush=True)


if __name__ == "__main__":
  main()
