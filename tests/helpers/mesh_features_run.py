"""Worker of tests/test_mesh_features.py: on 4 forced CPU devices, warm start and
train.learn=False on mesh (4, 1) against one device; writes results.json."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from rectrain import configs  # noqa: E402
from rectrain.train.loop import train_stream  # noqa: E402

out = sys.argv[1]
SMALL = ["data.max_rows=4096", "data.batch_size=512", "data.cat_buckets=1000", "model.name=fm",
         "model.embed_dim=4", "train.steps_per_dispatch=2", "train.progress=False",
         "metrics.window_rows=2048"]


def run(name, *extra, workdir=True):
  c = configs.apply_overrides(configs.default_config(), SMALL + list(extra))
  s = train_stream(c, workdir=os.path.join(out, name) if workdir else None, keep_predictions=True)
  return s


results = {}
run("seed1", "seed=1")                      # 1 device: the checkpoint to start from
run("seed4", "seed=1", "mesh.shape=(4,1)")  # 4 devices: the same, sharded (padded tables)
for src in ("seed1", "seed4"):
  for mesh in ("(1,1)", "(4,1)"):
    for learn in ("True", "False"):
      s = run(f"w_{src}_{mesh}_{learn}", f"train.warm_start.path={os.path.join(out, src)}",
              f"mesh.shape={mesh}", f"train.learn={learn}", "data.start_row=4096", workdir=False)
      key = f"{src}|{mesh}|{learn}"
      results[key] = {"auc": s["auc"], "logloss": s["logloss"], "rows": s["rows"]}
      np.save(os.path.join(out, key.replace("|", "_") + ".npy"), s["_predictions"])
with open(os.path.join(out, "results.json"), "w") as f:
  json.dump(results, f)
