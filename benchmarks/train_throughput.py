"""Training throughput of rectrain on this machine, with the roofline beside it.

  python benchmarks/train_throughput.py [--quick] [--e2e-rows 1000000]

Measures, in one run:

1. The matmul speed of this machine (GFLOP/s of a jitted float32 matmul of
   the MLP's shape), and for LR, DeepFM and DCNv2 (batch 4096, embedding dim
   16) the training rows/s of the jitted lax.scan step on pre-generated
   batches, next to the *roofline*: the rows/s the step's FLOPs (XLA cost
   analysis of the compiled step) would allow at the measured matmul speed.
2. The step time with a 2^16-row and a 2^24-row table for the same batches:
   a row-wise step must not depend on the table size (goal ratio <= 1.3).
3. End to end (``--e2e-rows``): ``rectrain run`` on a Criteo-format TSV written
   by ``rectrain synth`` — parse, hash, dedup, train, metrics — for LR and
   DeepFM, the numbers to compare with Vowpal Wabbit and DeepCTR-Torch.

Results are printed as a table and as JSON (``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from rectrain import configs
from rectrain.data.batch import DEVICE_KEYS, add_unique
from rectrain.data.synthetic import SyntheticStream, write_tsv
from rectrain.train.loop import create_model_and_state, train_stream
from rectrain.train.loop_io import UniqueLadder
from rectrain.train.step import make_multi_step, make_train_step

B = 4096
K = 8


def matmul_gflops(m=B, k=512, n=512, reps=30) -> float:
  a = jnp.ones((m, k), jnp.float32)
  w = jnp.ones((k, n), jnp.float32)
  f = jax.jit(lambda a, w: jnp.tanh(a @ w) @ w.T)  # two matmuls, no fusion away
  f(a, w).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a, w)
  out.block_until_ready()
  dt = (time.perf_counter() - t) / reps
  return 2 * 2 * m * k * n / dt / 1e9


def make_batches(num_batches: int, cat_buckets: int, seed=0,
                 batch: int = B) -> tuple[list[dict], object]:
  stream = SyntheticStream(batch_size=batch, cat_buckets=cat_buckets, seed=seed,
                           num_rows_total=num_batches * batch)
  out = []
  for b in stream:
    add_unique(b, stream.num_rows)
    out.append({k: b[k] for k in DEVICE_KEYS + ("num_unique",)})
  return out, stream


def model_config(name: str, cat_buckets: int):
  c = configs.default_config()
  configs.apply_overrides(c, [f"model.name={name}", f"data.cat_buckets={cat_buckets}"])
  if "embed_dim" in c.model:
    c.model.embed_dim = 16
  if name == "deepfm":
    c.model.mlp_dims = (256, 128)  # DeepCTR-Torch's default DNN, as in its benchmark
  return c


def time_training(name: str, batches: list[dict], stream, reps: int, config=None) -> dict:
  """Best-of-``reps`` rows/s of the jitted K-step scan over ``batches`` (after a compile)."""
  batch = stream.batch_size
  config = model_config(name, stream.layout.buckets[0]) if config is None else config
  model, state, dense_opt, sparse_opts, params = create_model_and_state(
      config, stream.num_rows, stream.layout.num_fields, stream.num_dense)
  step = make_train_step(model, dense_opt, sparse_opts)
  multi = make_multi_step(step)
  # stacked as the loop stacks them: unique cut to train.unique_ladder's size
  ladder = UniqueLadder(config.train.get("unique_ladder", 1))
  stacked = [ladder(batches[i:i + K]) for i in range(0, len(batches) - K + 1, K)]
  groups = [{k: jnp.asarray(g[k]) for k in DEVICE_KEYS} for g in stacked]
  single = {k: v[0] for k, v in groups[0].items()}
  cost = jax.jit(step).lower(state, single).compile().cost_analysis()
  if isinstance(cost, list):
    cost = cost[0]
  flops = float(cost.get("flops", float("nan")))
  state, out = multi(state, groups[0])  # compile
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for g in groups:
      state, out = multi(state, g)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  dt = min(times)
  rows = len(groups) * K * batch
  return {"model": name, "rows_per_sec": rows / dt, "step_ms": dt / (len(groups) * K) * 1e3,
          "flops_per_row": flops / batch, "params": params["total"],
          "unique_sizes": ladder.sizes}


def end_to_end(name: str, path: str, rows: int) -> dict:
  config = model_config(name, 1 << 18)
  overrides = ["data.source=criteo", f"data.path={path}", f"data.max_rows={rows}",
               "train.progress=False", "metrics.window_rows=0"]
  if name == "lr":
    overrides += ["optim.sparse.name=ftrl", "optim.sparse.learning_rate=0.05"]
  configs.apply_overrides(config, overrides)
  summary = train_stream(config, workdir=None)
  return {"model": name, "rows": summary["rows"], "rows_per_sec": summary["rows_per_sec"],
          "auc": summary["auc"], "logloss": summary["logloss"],
          "wall_time_sec": summary["wall_time_sec"]}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
  parser.add_argument("--e2e-rows", type=int, default=1_000_000)
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  num_batches = 16 if args.quick else 48
  reps = 2 if args.quick else 3
  result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "jax": jax.__version__, "device": str(jax.devices()[0])}

  gflops = matmul_gflops()
  result["matmul_gflops"] = gflops
  print(f"matmul: {gflops:.1f} GFLOP/s")

  batches, stream = make_batches(num_batches, 1 << 17)
  rows = []
  for name in ("lr", "deepfm", "dcnv2"):
    r = time_training(name, batches, stream, reps)
    r["roofline_rows_per_sec"] = gflops * 1e9 / r["flops_per_row"]
    r["fraction_of_roofline"] = r["rows_per_sec"] / r["roofline_rows_per_sec"]
    rows.append(r)
    print(f"{name:8s} {r['rows_per_sec']:>10,.0f} rows/s  step {r['step_ms']:.2f} ms  "
          f"{r['flops_per_row'] / 1e6:.3f} MFLOP/row  roofline {r['roofline_rows_per_sec']:,.0f} "
          f"rows/s ({r['fraction_of_roofline']:.0%})")
  result["training"] = rows

  # Table-size independence: same batch stream, ids hashed into 2^16 vs 2^24 rows.
  size_rows = []
  for log2 in (16, 24):
    per_field = (1 << log2) // 26
    b, s = make_batches(num_batches // 2, per_field, seed=1)
    r = time_training("deepfm", b, s, reps)
    r["table_rows"] = s.num_rows
    size_rows.append(r)
    print(f"deepfm table {s.num_rows:>11,d} rows: step {r['step_ms']:.2f} ms")
  ratio = size_rows[1]["step_ms"] / size_rows[0]["step_ms"]
  result["table_size"] = {"rows": size_rows, "step_time_ratio_2^24_over_2^16": ratio}
  print(f"step time ratio 2^24 / 2^16 table: {ratio:.2f}")
  del batches

  if args.e2e_rows:
    path = os.path.join(tempfile.gettempdir(), f"rectrain_bench_{args.e2e_rows}.tsv")
    if not os.path.exists(path):
      write_tsv(path, num_rows=args.e2e_rows, seed=0)
    e2e = [end_to_end(name, path, args.e2e_rows) for name in ("lr", "deepfm")]
    for r in e2e:
      print(f"end to end {r['model']:7s} {r['rows_per_sec']:>10,.0f} rows/s  AUC {r['auc']:.4f}  "
            f"logloss {r['logloss']:.4f}  ({r['rows']:,} rows, {r['wall_time_sec']:.1f} s)")
    result["end_to_end"] = e2e
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
