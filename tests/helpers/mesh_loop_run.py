"""Worker for tests/test_mesh_loop.py: small train_stream runs on forced CPU devices.

  python tests/helpers/mesh_loop_run.py OUT_DIR --devices 4 --case single
  python tests/helpers/mesh_loop_run.py OUT_DIR --devices 2 --case processes \
      --coordinator localhost:PORT --processes 2 --process-id P

``single`` (one process, 4 devices) writes ``base.npz`` (mesh (1, 1)),
``m41.npz``, ``m22.npz``, ``resume1.npz`` / ``resume2.npz`` (a (4, 1) run's
checkpoint after 8 batches resumed on mesh (1, 1) / (2, 1)), the same with
the id map (``idmap_base``, ``idmap_m41``, ``idmap_m22``, ``idmap_resume4``;
the (2, 2) and 4 -> 2 cases only with ``--full``)
and ``errors.json`` (the messages of refused configs). ``processes`` writes
``mp.npz`` and ``idmap_mp.npz`` from process 0 (mesh (-1, 1) over the
devices of all processes).
Run in its own process because the CPU device count is fixed at JAX start-up.
"""

import argparse
import json
import os
import shutil
import time

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--devices", type=int, default=4)
p.add_argument("--case", choices=("single", "processes"), default="single")
p.add_argument("--coordinator", default="")
p.add_argument("--processes", type=int, default=1)
p.add_argument("--process-id", type=int, default=0)
p.add_argument("--full", action="store_true", help="also the (2, 2) and 4 -> 2 cases")
args = p.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from rectrain.configs import apply_overrides, default_config  # noqa: E402
from rectrain.train.loop import train_stream  # noqa: E402

# 26 fields x 4100 buckets = 106,600 rows: not a multiple of 128, so the
# sharded tables carry padding rows (106,624).
SMALL = ["data.max_rows=8192", "data.batch_size=512", "data.cat_buckets=4100",
         "model.embed_dim=8", "model.mlp_dims=(32,)", "train.steps_per_dispatch=8",
         "train.progress=False", "metrics.window_rows=4096"]
NUM_ROWS = 26 * 4100


def config(*extra):
  c = default_config()
  apply_overrides(c, SMALL + list(extra))
  if args.coordinator:
    apply_overrides(c, [f"distributed.coordinator={args.coordinator}",
                        f"distributed.num_processes={args.processes}",
                        f"distributed.process_id={args.process_id}"])
  return c


def leaves(state, num_rows=NUM_ROWS):
  """Every leaf of the TrainState on the host, table rows cut to the real rows."""
  out = []
  for x in jax.tree_util.tree_leaves(state):
    if not x.is_fully_addressable:
      from jax.experimental import multihost_utils
      x = multihost_utils.process_allgather(x, tiled=True)
    x = np.asarray(x)
    out.append(x[:num_rows] if x.ndim >= 1 and x.shape[0] >= num_rows else x)
  return out


def dump(name, summary):
  state = summary["_state"]
  table = state.tables["embedding"]
  num_rows = summary["_idmap"].num_rows if "_idmap" in summary else NUM_ROWS
  arrays = dict(
      preds=summary["_predictions"], auc=summary["auc"], logloss=summary["logloss"],
      rows=summary["rows"], param_count=summary["param_count"],
      table_bytes=summary["table_bytes"],
      table_bytes_per_device=summary.get("table_bytes_per_device", summary["table_bytes"]),
      table_rows=table.shape[0],
      shard_rows=np.asarray([s.data.shape[0] for s in table.addressable_shards]),
      **{f"leaf{i}": x for i, x in enumerate(leaves(state, num_rows))},
      **({"idmap_hit_rate": summary["idmap_hit_rate"], "idmap_evicted": summary["idmap_evicted"]}
         if "_idmap" in summary else {}))
  if jax.process_index() == 0:
    np.savez(os.path.join(args.out, f"{name}.npz"), **arrays)


def run(name, *extra, workdir=None):
  t0 = time.perf_counter()
  summary = train_stream(config(*extra), workdir=workdir, keep_predictions=True)
  dump(name, summary)
  print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
  return summary


os.makedirs(args.out, exist_ok=True)
# The collision-free id map (small enough to evict): one device, a mesh, a resume.
IDMAP = ["idmap.enabled=True", "idmap.capacity=2000"]
# Step features and the offline protocol over two processes against one device.
ASYNC = ["train.async_sim.enabled=True", "train.async_sim.tau=2", "optim.dense.learning_rate=1e-3"]
SERVING = ["serving.sync_tables_s=3600", "serving.sync_dense_s=1800"]
OFFLINE = ["data.max_rows=4096", "offline.epochs=2", "offline.evals_per_epoch=2",
           "offline.between_epochs=reinit", "offline.eval_data.start_row=8192",
           "offline.eval_data.max_rows=2048"]


def run_offline(name, *extra):
  from rectrain.train.loop import train_offline
  s = train_offline(config(*OFFLINE, *extra))
  if jax.process_index() == 0:
    np.savez(os.path.join(args.out, f"{name}.npz"),
             test_logloss=np.asarray([p["test"]["logloss"] for p in s["points"]]))

if args.case == "processes":
  run("mp", "mesh.shape=(-1,1)", "train.checkpoint_every=8",
      workdir=os.path.join(args.out, "mp_run"))
  run("idmap_mp", "mesh.shape=(-1,1)", "train.checkpoint_every=8", *IDMAP,
      workdir=os.path.join(args.out, "idmap_mp_run"))
  if args.full:
    run("async_mp", "mesh.shape=(-1,1)", *ASYNC)
    run("serving_mp", "mesh.shape=(-1,1)", *SERVING)
    run_offline("offline_mp", "mesh.shape=(-1,1)")
  jax.distributed.shutdown()
else:
  run("base")
  work = os.path.join(args.out, "m41_run")
  run("m41", "mesh.shape=(4,1)", "train.checkpoint_every=8", "train.keep_checkpoints=10",
      workdir=work)
  if args.full:
    run("m22", "mesh.shape=(2,2)")
  # resume the (4, 1) run from its checkpoint after 8 of 16 batches on fewer devices
  for devices in ((1, 2) if args.full else (1,)):
    again = os.path.join(args.out, f"resume{devices}_run")
    shutil.copytree(work, again)
    for name in os.listdir(os.path.join(again, "checkpoints")):
      if int(name) > 8:
        shutil.rmtree(os.path.join(again, "checkpoints", name))
    run(f"resume{devices}", f"mesh.shape=({devices},1)", workdir=again)
  run("idmap_base", *IDMAP)
  if args.full:
    run("async_base", *ASYNC)
    run("serving_base", *SERVING)
    run_offline("offline_base")
  work = os.path.join(args.out, "idmap_m41_run")
  run("idmap_m41", "mesh.shape=(4,1)", "train.checkpoint_every=8", "train.keep_checkpoints=10",
      *IDMAP, workdir=work)
  if args.full:
    run("idmap_m22", "mesh.shape=(2,2)", *IDMAP)
  again = os.path.join(args.out, "idmap_resume4_run")   # the map's state restored on 4 devices
  shutil.copytree(work, again)
  for name in os.listdir(os.path.join(again, "checkpoints")):
    if int(name) > 8:
      shutil.rmtree(os.path.join(again, "checkpoints", name))
  run("idmap_resume4", "mesh.shape=(4,1)", *IDMAP, workdir=again)
  errors = {}
  for key, extra in (("batch", ["mesh.shape=(4,1)", "data.batch_size=510"]),):
    try:
      train_stream(config(*extra))
      errors[key] = ""
    except ValueError as e:
      errors[key] = str(e)
  with open(os.path.join(args.out, "errors.json"), "w") as f:
    json.dump(errors, f)
