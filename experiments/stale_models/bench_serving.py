"""Step-time overhead of the served copy (rectrain/train/serving.py) on this machine.

  python experiments/stale_models/bench_serving.py [--quick]

Times the jitted ``lax.scan`` training step (K = 8 batches per dispatch, on
pre-generated synthetic batches, best of a few repeats) of DeepFM:

* ``live``: the plain step (serving intervals 0: what the loop runs by default);
* ``served, rare syncs``: the serving step with both groups stale, a sync
  every 64 batches (copy-on-write rows, a second forward pass);
* ``served, sync every batch``: the same with a sync before every batch;
* ``naive full copy``: for comparison only (not in the library), a served
  table kept by ``jnp.where(sync, live, served)`` over the whole table every
  step, which is what a straightforward in-scan copy costs.

Two sizes: the study's (batch 1,024, 26 x 2^15 rows, embedding 8, MLP 64-32)
and the main job's (batch 4,096, 26 x 2^17 rows, embedding 16, MLP 256-128).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rectrain import configs
from rectrain.data.batch import DEVICE_KEYS, add_unique
from rectrain.data.synthetic import SyntheticStream
from rectrain.train import serving
from rectrain.train.loop import create_model_and_state
from rectrain.train.step import make_multi_step, make_train_step
from rectrain.train.transforms import chain

K = 8
SIZES = {
    "study": {"batch": 1024, "buckets": 1 << 15, "embed_dim": 8, "mlp": (64, 32)},
    "main job": {"batch": 4096, "buckets": 1 << 17, "embed_dim": 16, "mlp": (256, 128)},
}


def naive_full_copy_step(step):
  """A served table by a full-table select every step (for comparison only)."""

  def wrapped(state, batch):
    live, served_tables = state
    inner = {k: v for k, v in batch.items() if k not in serving.SYNC_KEYS}
    served_tables = {k: jnp.where(batch["sync_tables"], live.tables[k], v)
                     for k, v in served_tables.items()}
    live, out = step(live, inner)
    return (live, served_tables), out

  return wrapped


def time_variant(size: dict, variant: str, num_batches: int, reps: int) -> float:
  stream = SyntheticStream(batch_size=size["batch"], cat_buckets=size["buckets"], seed=0,
                           num_rows_total=num_batches * size["batch"])
  batches = [add_unique(b, stream.num_rows) for b in stream]
  config = configs.default_config()
  configs.apply_overrides(config, ["model.name=deepfm", f"model.embed_dim={size['embed_dim']}",
                                   f"model.mlp_dims={size['mlp']}"])
  model, state, dense_opt, sparse_opts, _ = create_model_and_state(
      config, stream.num_rows, stream.layout.num_fields, stream.num_dense)
  step = make_train_step(model, dense_opt, sparse_opts)
  every = {"served, rare syncs": 64, "served, sync every batch": 1, "naive full copy": 64}.get(variant)
  if variant.startswith("served"):
    init, step = chain(step, [serving.serving_transform(model, True, True)])
    state = init(state)
  elif variant == "naive full copy":
    step = naive_full_copy_step(step)
    state = (state, {k: jnp.copy(v) for k, v in state.tables.items()})
  multi = make_multi_step(step)
  groups = []
  for i in range(0, num_batches - K + 1, K):
    g = {k: jnp.asarray(np.stack([b[k] for b in batches[i:i + K]])) for k in DEVICE_KEYS}
    if every:
      flags = jnp.asarray([(i + j) % every == 0 for j in range(K)])
      g["sync_tables"], g["sync_dense"] = flags, flags
    groups.append(g)
  state, out = multi(state, groups[0])   # compile
  jax.block_until_ready(out)
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    for g in groups:
      state, out = multi(state, g)
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - t)
  return best / (len(groups) * K) * 1e3


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  num_batches, reps = (16, 2) if args.quick else (48, 3)
  results = []
  for size_name, size in SIZES.items():
    base = None
    for variant in ("live", "served, rare syncs", "served, sync every batch", "naive full copy"):
      ms = time_variant(size, variant, num_batches, reps)
      base = base or ms
      results.append({"size": size_name, "variant": variant, "step_ms": ms, "ratio": ms / base})
      print(f"{size_name:9s} {variant:26s} {ms:8.2f} ms/step  x{ms / base:.2f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
