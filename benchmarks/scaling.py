"""Scale-out: per-device table memory, bytes crossing devices per step, rows/s vs device count.

  python benchmarks/scaling.py [--devices 1,2,4,8] [--rows 65536] [--batch 4096]
      [--loop --loop-rows 131072]

On a CPU-only machine it forces ``--xla_force_host_platform_device_count`` to
the largest count asked for (the "devices" then share the same cores, so the
rows/s column measures overhead, not speed-up). On a GPU/TPU machine it uses
the real devices. For each device count D it builds the sharded DeepFM step
(rectrain/train/sharding.py), reads from the compiled HLO every collective
(all-reduce, all-gather, all-to-all, reduce-scatter, collective-permute) and
the bytes of its operands, and from the placed state the table bytes each
device holds, then times the step. The baseline is D=1 of the same run.

``--loop`` also times the whole streaming loop (``train_stream`` with
``mesh.shape=(D, 1)``: host pipeline, placement, step, metrics on the
gathered predictions) on ``--loop-rows`` rows per device count; D=1 is the
unsharded path of the main job, and AUC / log loss must agree across D.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", default="1,2,4")
  p.add_argument("--rows", type=int, default=65536, help="stream rows timed per device count")
  p.add_argument("--batch", type=int, default=4096)
  p.add_argument("--buckets", type=int, default=1 << 16, help="cat_buckets per field")
  p.add_argument("--mlp", default="256,128")
  p.add_argument("--loop", action="store_true", help="also time train_stream per device count")
  p.add_argument("--loop-rows", type=int, default=131072,
                 help="rows per loop run; rows/s is timed after the first dispatch of 8 "
                      "batches, so give at least 16 batches")
  return p.parse_args()


ARGS = _parse()
COUNTS = [int(x) for x in ARGS.devices.split(",")]
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={max(COUNTS)}").strip()

import jax  # noqa: E402

from rectrain.configs import apply_overrides, default_config  # noqa: E402
from rectrain.data import make_stream  # noqa: E402
from rectrain.data.batch import DEVICE_KEYS  # noqa: E402
from rectrain.data.pipeline import with_unique  # noqa: E402
from rectrain.train import sharding as sh  # noqa: E402
from rectrain.train.loop import _grouped, create_model_and_state  # noqa: E402

def run(d: int, config, stream, batches_np):
  mesh = sh.make_mesh((d, 1), jax.devices()[:d])
  rows = sh.padded_rows(stream.num_rows, mesh)
  model, state, dopt, sopts, params = create_model_and_state(
      config, rows, stream.layout.num_fields, stream.num_dense)
  state = sh.shard_state(state, mesh, rows)
  multi = sh.make_sharded_multi_step(sh.make_sharded_train_step(model, dopt, sopts), mesh,
                                     state, rows, DEVICE_KEYS)
  first = sh.put_batches(batches_np[0][1], mesh)
  hlo = multi.lower(state, first).compile().as_text()
  per_step = sh.collective_bytes(hlo)  # the scan body (a while loop) appears once in the HLO
  table_bytes = sum(t.nbytes for t in jax.tree_util.tree_leaves((state.tables, state.table_opt_state)))
  dev0 = jax.devices()[0]
  on_dev0 = sum(s.data.nbytes for t in jax.tree_util.tree_leaves((state.tables, state.table_opt_state))
                for s in t.addressable_shards if s.device == dev0)
  state, out = multi(state, first)  # compile + warm up
  jax.block_until_ready(out.preds_B)
  t0 = time.perf_counter()
  n = 0
  for _, g in batches_np[1:]:
    state, out = multi(state, sh.put_batches(g, mesh))
    n += g["label"].size
  jax.block_until_ready(out.preds_B)
  dt = time.perf_counter() - t0
  return dict(devices=d, table_mb=table_bytes / 2**20, per_device_mb=on_dev0 / 2**20,
              collective_mb_per_step=sum(per_step.values()) / 2**20,
              by_kind={k: v / 2**20 for k, v in per_step.items() if v},
              rows_per_sec=n / dt)


def run_loop(d: int) -> dict:
  """train_stream on mesh (d, 1): steady rows/s (after the first dispatch) and the metrics."""
  from rectrain.train.loop import train_stream
  config = default_config()
  apply_overrides(config, [f"data.max_rows={ARGS.loop_rows}", f"data.batch_size={ARGS.batch}",
                           f"data.cat_buckets={ARGS.buckets}", f"model.mlp_dims=({ARGS.mlp},)",
                           f"mesh.shape=({d},1)", "train.progress=False"])
  s = train_stream(config)
  return dict(devices=d, rows_per_sec=s["rows_per_sec"], wall=s["wall_time_sec"], auc=s["auc"],
              logloss=s["logloss"],
              per_device_mb=s.get("table_bytes_per_device", s["table_bytes"]) / 2**20)


def main() -> int:
  config = default_config()
  apply_overrides(config, [f"data.max_rows={ARGS.rows}", f"data.batch_size={ARGS.batch}",
                           f"data.cat_buckets={ARGS.buckets}", f"model.mlp_dims=({ARGS.mlp},)"])
  stream = make_stream(config.data, 0)
  big = max(COUNTS)
  if len(jax.devices()) < big:
    print(f"only {len(jax.devices())} devices", file=sys.stderr)
    return 2
  print(f"devices: {jax.devices()[0].platform} x{len(jax.devices())} "
        f"({jax.devices()[0].device_kind}); DeepFM mlp ({ARGS.mlp}), batch {ARGS.batch}, "
        f"{stream.num_rows:,} table rows x dim {config.model.embed_dim}")
  results = []
  batches = {}
  for d in COUNTS:
    # the padding id of ``unique`` is the padded table size (the same for powers of two)
    rows_d = sh.padded_rows(stream.num_rows, sh.make_mesh((d, 1), jax.devices()[:d]))
    if rows_d not in batches:
      batches[rows_d] = [(n, {k: g[k] for k in DEVICE_KEYS})
                         for n, g in _grouped(with_unique(iter(stream), rows_d), 4)]
    results.append(run(d, config, stream, batches[rows_d]))
  base = results[0]["rows_per_sec"]
  print("| devices | table+opt MB (all) | MB on device 0 | fraction | collective MB/step | "
        "rows/s | ratio vs 1st |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['devices']} | {r['table_mb']:.1f} | {r['per_device_mb']:.1f} | "
          f"{r['per_device_mb'] / r['table_mb']:.3f} | {r['collective_mb_per_step']:.2f} "
          f"{r['by_kind']} | {r['rows_per_sec']:,.0f} | {r['rows_per_sec'] / base:.2f} |")
  if ARGS.loop:
    loops = [run_loop(d) for d in COUNTS]
    base = loops[0]["rows_per_sec"]
    print(f"\ntrain_stream, {ARGS.loop_rows:,} rows per device count:")
    print("| devices | table+opt MB on device 0 | rows/s (loop) | ratio vs 1st | wall s | AUC | "
          "log loss |")
    print("|---|---|---|---|---|---|---|")
    for r in loops:
      print(f"| {r['devices']} | {r['per_device_mb']:.1f} | {r['rows_per_sec']:,.0f} | "
            f"{r['rows_per_sec'] / base:.2f} | {r['wall']:.1f} | {r['auc']:.5f} | "
            f"{r['logloss']:.5f} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
