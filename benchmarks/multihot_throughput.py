"""Cost of multi-hot fields per touched row, beside single-valued ones, in one run.

  python benchmarks/multihot_throughput.py [--reps 3] [--batches 48] [--json PATH]

Two layouts with the same number of model fields (F = 26, 2^18 rows each,
batch 4096, ids Zipf-distributed per field):

* ``single``: 26 single-valued fields (Criteo's shape);
* ``multi``: 20 single-valued fields and 6 multi-hot fields of 8 slots, each
  row holding 1..8 values (mean 4.5) in each, mean-pooled.

For LR and DeepFM (MLP 256-128, dim 16) it measures the jitted step (8 steps
per ``lax.scan`` dispatch, best of ``--reps``) and the host dedup
(``add_unique``), and reports them per batch, per present value, per unique
row and per slot (a padded slot is gathered and masked, so it costs like a
value). The issue's target: a batch with multi-hot fields costs the same per
touched row as a single-valued one.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rectrain import configs
from rectrain.data.batch import add_unique, device_keys
from rectrain.data.hashing import FieldLayout
from rectrain.train.build import create_model_and_state
from rectrain.train.step import make_multi_step, make_train_step

B, K, BUCKETS, L = 4096, 8, 1 << 18, 8


def layouts():
  single = FieldLayout(tuple(f"c{i}" for i in range(26)), (BUCKETS,) * 26)
  multi = FieldLayout(tuple(f"c{i}" for i in range(20)) + tuple(f"m{i}" for i in range(6)),
                      (BUCKETS,) * 26, (0,) * 20 + (L,) * 6, ("",) * 20 + ("mean",) * 6)
  return {"single": single, "multi": multi}


def make_batches(layout: FieldLayout, n: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  off = layout.offsets
  out = []
  for _ in range(n):
    cols, lengths = [], []
    for f in range(layout.num_single):
      cols.append(off[f] + 1 + rng.zipf(1.2, size=(B, 1)) % (BUCKETS - 1))
    for m, (_, width, _) in enumerate(layout.multi_hot):
      f = layout.num_single + m
      n_vals = rng.integers(1, width + 1, size=B)
      ids = off[f] + 1 + rng.zipf(1.2, size=(B, width)) % (BUCKETS - 1)
      ids[np.arange(width)[None, :] >= n_vals[:, None]] = layout.num_rows
      cols.append(ids)
      lengths.append(n_vals)
    b = {"cat": np.concatenate(cols, axis=1).astype(np.int32),
         "label": (rng.random(B) < 0.25).astype(np.float32),
         "weight": np.ones(B, np.float32), "dense": np.zeros((B, 0), np.float32)}
    if lengths:
      b["lengths"] = np.stack(lengths, axis=1).astype(np.float32)
    out.append(b)
  return out


def measure(name: str, model: str, layout: FieldLayout, batches: list, reps: int) -> dict:
  t = time.perf_counter()
  for b in batches:
    add_unique(b, layout.num_rows)
  dedup_s = (time.perf_counter() - t) / len(batches)
  c = configs.apply_overrides(configs.default_config(), [f"model.name={model}"])
  if model == "deepfm":
    c.model.mlp_dims = (256, 128)
  m, state, dense_opt, sparse_opts, _ = create_model_and_state(
      c, layout.num_rows, layout.num_fields, 0, layout=layout)
  multi = make_multi_step(make_train_step(m, dense_opt, sparse_opts))
  keys = device_keys(layout)
  groups = [{k: jnp.asarray(np.stack([b[k] for b in batches[i:i + K]])) for k in keys}
            for i in range(0, len(batches) - K + 1, K)]
  state, out = multi(state, groups[0])
  jax.block_until_ready(out)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for g in groups:
      state, out = multi(state, g)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t)
  step_s = min(times) / (len(groups) * K)
  present = float(np.mean([(b["cat"] < layout.num_rows).sum() for b in batches]))
  unique = float(np.mean([int(b["num_unique"]) for b in batches]))
  slots = B * layout.num_columns
  return {"layout": name, "model": model, "step_ms": step_s * 1e3, "dedup_ms": dedup_s * 1e3,
          "values_per_batch": present, "unique_rows_per_batch": unique, "slots_per_batch": slots,
          "step_ns_per_value": step_s / present * 1e9, "step_ns_per_unique_row": step_s / unique * 1e9,
          "step_ns_per_slot": step_s / slots * 1e9, "dedup_ns_per_value": dedup_s / present * 1e9}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batches", type=int, default=48)
  parser.add_argument("--models", default="lr,deepfm")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  results = []
  for model in args.models.split(","):
    for name, layout in layouts().items():
      results.append(measure(name, model, layout, make_batches(layout, args.batches), args.reps))
  head = ("model", "layout", "step ms", "values", "unique rows", "slots", "ns/value",
          "ns/unique row", "ns/slot", "dedup ms", "dedup ns/value")
  print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  for r in results:
    print(f"| {r['model']} | {r['layout']} | {r['step_ms']:.2f} | {r['values_per_batch']:,.0f} | "
          f"{r['unique_rows_per_batch']:,.0f} | {r['slots_per_batch']:,} | "
          f"{r['step_ns_per_value']:.1f} | {r['step_ns_per_unique_row']:.1f} | "
          f"{r['step_ns_per_slot']:.1f} | {r['dedup_ms']:.2f} | {r['dedup_ns_per_value']:.1f} |")
  for model in args.models.split(","):
    s, m = [r for r in results if r["model"] == model]
    print(f"{model}: multi / single per unique row {m['step_ns_per_unique_row'] / s['step_ns_per_unique_row']:.2f}, "
          f"per value {m['step_ns_per_value'] / s['step_ns_per_value']:.2f}, "
          f"per slot {m['step_ns_per_slot'] / s['step_ns_per_slot']:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"results": results, "jax": jax.__version__}, f, indent=2)


if __name__ == "__main__":
  main()
