"""Worker for tests/test_sharding.py: a few sharded DeepFM steps, dumped to an .npz.

  python tests/helpers/sharded_run.py OUT.npz --devices D --mesh DATA,MODEL
      [--coordinator host:port --processes H --process-id P] [--set key=value ...]

Run in its own process because the CPU device count is fixed at JAX start-up.
"""

import argparse
import os
import sys

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--devices", type=int, default=4)
p.add_argument("--mesh", default="-1,1")
p.add_argument("--coordinator", default="")
p.add_argument("--processes", type=int, default=1)
p.add_argument("--process-id", type=int, default=0)
p.add_argument("--plain", action="store_true", help="the unsharded step (make_train_step)")
p.add_argument("--set", action="append", default=[])
p.add_argument("--save-after", type=int, default=0, help="save a checkpoint after N batches and stop")
p.add_argument("--resume", default="", help="checkpoint dir to restore, then continue")
args = p.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rectrain.train import distributed as dist  # noqa: E402

dist.initialize({"coordinator": args.coordinator, "num_processes": args.processes,
                 "process_id": args.process_id})

from rectrain.configs import apply_overrides, default_config  # noqa: E402
from rectrain.data import make_stream  # noqa: E402
from rectrain.data.batch import DEVICE_KEYS, add_unique  # noqa: E402
from rectrain.train import sharding as sh  # noqa: E402
from rectrain.train.loop import create_model_and_state  # noqa: E402
from rectrain.train.step import make_multi_step, make_train_step  # noqa: E402

config = default_config()
apply_overrides(config, ["data.max_rows=4096", "data.batch_size=512", "data.cat_buckets=2048",
                         "model.mlp_dims=(32,)"] + args.set)
stream = make_stream(config.data, seed=0)
mesh = sh.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
rows = sh.padded_rows(stream.num_rows, mesh)
model, state, dopt, sopts, _ = create_model_and_state(
    config, rows, stream.layout.num_fields, stream.num_dense)
H, pid = jax.process_count(), jax.process_index()
preds = []
if args.plain:
  multi = make_multi_step(make_train_step(model, dopt, sopts))
else:
  state = sh.shard_state(state, mesh, rows)
  multi = sh.make_sharded_multi_step(sh.make_sharded_train_step(model, dopt, sopts), mesh,
                                     state, rows, DEVICE_KEYS)
  shardings = sh.batch_shardings(mesh, DEVICE_KEYS, stacked=True)
from rectrain.train import checkpoint as ckpt  # noqa: E402
done = 0
if args.resume:
  state, meta = ckpt.restore_checkpoint(ckpt.latest_checkpoint(args.resume), state)
  done = meta["batches"]
collectives = None
for i, batch in enumerate(stream):
  if i < done:
    continue
  if args.plain:
    b = add_unique(batch, rows)
    group = {k: b[k][None] for k in DEVICE_KEYS}
  else:
    local = dist.global_unique(dist.host_rows(batch, pid, H), rows) if H > 1 else add_unique(batch, rows)
    group = dist.put_local({k: local[k][None] for k in DEVICE_KEYS}, shardings)
  if collectives is None and not args.plain:
    collectives = sh.collective_bytes(multi.lower(state, group).compile().as_text())
  state, out = multi(state, group)
  p_ = dist.gather_rows_to_host(out.preds_B)[0]
  if H > 1:  # back to the stream's row order: global row b*H + p sits at p*(B/H) + b
    p_ = p_.reshape(H, -1).T.reshape(-1)
  preds.append(p_)
  if args.save_after and i + 1 == args.save_after:
    ckpt.save_checkpoint(os.path.dirname(args.out), i + 1, state, {"batches": i + 1})
    break
from jax.experimental import multihost_utils  # noqa: E402
leaves = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) if H > 1 else np.asarray(x)
          for x in jax.tree_util.tree_leaves(state)]
shard_rows = [s.data.shape[0] for s in state.tables["embedding"].addressable_shards]
if pid == 0:
  np.savez(args.out, preds=np.stack(preds), shard_rows=np.asarray(shard_rows),
           table_rows=np.asarray(state.tables["embedding"].shape[0]),
           table_bytes=np.asarray(sum(x.nbytes for x in jax.tree_util.tree_leaves(
               (state.tables, state.table_opt_state)))),
           collective_bytes=np.asarray(sum((collectives or {}).values())),
           **{f"leaf{i}": x for i, x in enumerate(leaves)})
if H > 1:
  jax.distributed.shutdown()
