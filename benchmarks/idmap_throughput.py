"""Throughput of the collision-free id map (rectrain/data/idmap.py) vs hashing alone.

Command:

  /work/venv/bin/python benchmarks/idmap_throughput.py --rows 1000000

Pre-generates ``--rows`` rows of the synthetic stream (Criteo-like
vocabularies, churn and vocabulary growth, 26 categorical fields) with raw ids
in batches of ``--batch-size``, then measures on those batches, rows/s of:

  a. hashing alone: ``hash_fields_to_buckets`` of the raw ids (what every
     stream does today) plus the field offsets;
  b. the same plus ``add_unique`` (the host-side dedup the step needs): the
     hashed pipeline's host work per batch;
  c. ``IdMap.remap_batch`` (lookup, admission, expiry, eviction, reset list,
     and the dedup keys ``unique``/``inverse``, so it replaces b) for several
     configurations;

and reports the hashed table's collision rate (fraction of distinct ids that
share their row with another id, per window of ``--window`` rows) next to the
map's occupancy, admissions, evictions and expiries. Last, the device cost of
the row reset (:func:`rectrain.train.idmap_reset.reset_rows`, jitted, embedding dim
16 + the width-1 linear table, row-wise AdaGrad state) per batch for a few
padded lengths R. Each host figure is the best of ``--repeat`` passes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from rectrain.data import hashing, idmap
from rectrain.data.batch import add_unique
from rectrain.data.synthetic import SyntheticStream
from rectrain.train import idmap_reset


def _batches(rows: int, batch_size: int, seed: int):
  stream = SyntheticStream(batch_size=batch_size, cat_buckets=1 << 18, seed=seed,
                           num_rows_total=rows, raw_ids=True)
  keep = ("raw_ids", "raw_missing", "time", "index", "weight", "label")
  return stream.layout, [{k: b[k] for k in keep} for b in stream]


def _best(fn, repeat: int) -> float:
  best = float("inf")
  for _ in range(repeat):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def bench_hash(layout, batches, with_dedup: bool):
  fields = range(layout.num_fields)
  off = layout.offsets[:-1, None]

  def run():
    for b in batches:
      bucket_FxB = hashing.hash_fields_to_buckets(b["raw_ids"].T, fields, layout.buckets)
      bucket_FxB[b["raw_missing"].T] = 0
      bucket_FxB += off
      cat = bucket_FxB.T.astype(np.int32)
      if with_dedup:
        add_unique({"cat": cat}, layout.num_rows)
  return run


def bench_idmap(layout, batches, kw, out: dict):
  def run():
    m = idmap.IdMap(layout, **kw)   # allocation (O(N), once per run) is not timed
    counters = []
    t = time.perf_counter()
    for b in batches:
      counters.append(m.remap_batch(b)["idmap_counters"])
    out["seconds"] = min(out.get("seconds", float("inf")), time.perf_counter() - t)
    out["summary"] = idmap.window_summary(np.stack(counters))
    out["occupancy"] = m.occupancy()["fraction"]
  return run


def collision_rates(layout, batches, window_rows: int):
  fields = range(layout.num_fields)
  cc = idmap.CollisionCounter()
  rates, rows = [], 0
  for b in batches:
    bucket = hashing.hash_fields_to_buckets(b["raw_ids"].T, fields, layout.buckets)
    bucket[b["raw_missing"].T] = 0
    cat = bucket.T + layout.offsets[:-1]
    cc.update(b["raw_ids"], b["raw_missing"], cat, b["index"] >= 0)
    rows += int((b["index"] >= 0).sum())
    if rows >= window_rows:
      rates.append(cc.result()["collision_rate"])
      rows = 0
  return rates


def bench_reset(num_rows: int, sizes, repeat: int = 5):
  import jax
  import jax.numpy as jnp
  from rectrain.models.tables import TableSpec, init_tables
  from rectrain.optim import get_sparse_optimizer
  specs = [TableSpec("linear", 1, 0.0), TableSpec("embedding", 16, 0.01)]
  opts = {s.name: get_sparse_optimizer("rowwise_adagrad", learning_rate=0.05) for s in specs}
  tables = init_tables(jax.random.PRNGKey(0), specs, num_rows)
  state = {k: opts[k].init(v) for k, v in tables.items()}
  key = jax.random.PRNGKey(1)
  fn = jax.jit(lambda t, s, r, g: idmap_reset.reset_rows(t, s, r, g, specs, opts, key),
               donate_argnums=(0, 1))
  out = {}
  rng = np.random.default_rng(0)
  for size in sizes:
    rows = jnp.asarray(np.sort(rng.choice(num_rows, size, replace=False)).astype(np.int32))
    gen = jnp.ones(size, jnp.int32)
    tables, state = fn(tables, state, rows, gen)
    jax.block_until_ready(tables)
    best = float("inf")
    for _ in range(repeat):
      t = time.perf_counter()
      tables, state = fn(tables, state, rows, gen)
      jax.block_until_ready(tables)
      best = min(best, time.perf_counter() - t)
    out[size] = best
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", type=int, default=1_000_000)
  p.add_argument("--batch-size", type=int, default=4096)
  p.add_argument("--repeat", type=int, default=2)
  p.add_argument("--window", type=int, default=100_000)
  p.add_argument("--json", default="")
  args = p.parse_args()

  t = time.perf_counter()
  layout, batches = _batches(args.rows, args.batch_size, seed=0)
  gen_s = time.perf_counter() - t
  rows = sum(int((b["index"] >= 0).sum()) for b in batches)
  print(f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"numpy {np.__version__}; {rows} synthetic rows in {len(batches)} batches of "
        f"{args.batch_size}, 26 fields (generated in {gen_s:.1f} s)")
  results = {"rows": rows, "batch_size": args.batch_size}

  def report(name, seconds, extra=""):
    results[name] = {"seconds": seconds, "rows_per_sec": rows / seconds}
    print(f"  {name:<58} {seconds:7.2f} s {rows / seconds:>12,.0f} rows/s {extra}")

  report("a. hash (hash_fields_to_buckets + offsets)",
         _best(bench_hash(layout, batches, False), args.repeat))
  report("b. hash + add_unique", _best(bench_hash(layout, batches, True), args.repeat))
  day = 86400.0
  configs = {
      "lru, min_count=1, cap 2^18/field": dict(policy="lru"),
      "lru, min_count=2 (sketch 4x2^20), ttl 6 h, cap 2^18": dict(
          policy="lru", min_count=2, ttl=day / 4),
      "lru, min_count=1, cap 2^16/field (evicting)": dict(policy="lru"),
      "lfu, min_count=1, cap 2^16/field (evicting)": dict(policy="lfu"),
  }
  small = hashing.FieldLayout(layout.names, (1 << 16,) * layout.num_fields)
  for name, kw in configs.items():
    lay = small if "2^16" in name else layout
    info = {}
    _best(bench_idmap(lay, batches, kw, info), args.repeat)
    secs = info["seconds"]
    s = info["summary"]
    extra = (f"occupancy {info['occupancy']:.3f}, admitted {s['admitted']:,}, rejected "
             f"{s['rejected']:,}, evicted {s['evicted']:,}, expired {s['expired']:,}, "
             f"hit rate {s['hit_rate']:.4f}")
    report("c. idmap " + name, secs, extra)
    results["c. idmap " + name]["summary"] = s
  rates = collision_rates(layout, batches, args.window)
  results["hashed_collision_rate"] = rates
  print(f"hashed table (2^18 buckets/field) collision rate per {args.window:,}-row window: "
        f"mean {np.mean(rates):.4f}, min {np.min(rates):.4f}, max {np.max(rates):.4f} "
        f"(the id map: 0 by construction)")
  reset = bench_reset(layout.num_rows, (1024, 8192, args.batch_size * 26))
  results["reset_seconds"] = reset
  for size, secs in reset.items():
    print(f"  device reset of R={size:>6} rows (dim 16 + linear, AdaGrad state, CPU): "
          f"{secs * 1e3:7.2f} ms per batch")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2, default=float)


if __name__ == "__main__":
  main()
