"""Worker of tests/test_mesh_features.py: on 4 forced CPU devices, warm start,
train.learn=False, the async simulation and the serving copy on mesh (4, 1)
against one device, and a resume of each of the last two on 4 devices from its
first checkpoint; the offline and delayed protocols warm-started from a 4-device
checkpoint (the delayed one also frozen) on both meshes; writes results.json and
the predictions (.npy)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shutil  # noqa: E402

import numpy as np  # noqa: E402

from rectrain import configs  # noqa: E402
from rectrain.train.loop import train_offline, train_stream  # noqa: E402

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

# Features that wrap the step, on 1 and 4 devices, and resumed on 4 devices.
FEATURES = {
    "async": ["train.async_sim.enabled=True", "train.async_sim.tau=2",
              "train.async_sim.delay_compensation=adaptive", "optim.dense.learning_rate=1e-3"],
    "serving": ["serving.sync_tables_s=3600", "serving.sync_dense_s=1800"],
}
for feature, extra in FEATURES.items():
  for mesh in ("(1,1)", "(4,1)"):
    name = f"{feature}_{mesh}"
    s = run(name, f"mesh.shape={mesh}", "train.checkpoint_every=4", "train.keep_checkpoints=10",
            *extra)
    results[name] = {"auc": s["auc"], "logloss": s["logloss"], "rows": s["rows"]}
    np.save(os.path.join(out, name + ".npy"), s["_predictions"])
  work, again = os.path.join(out, f"{feature}_(4,1)"), os.path.join(out, f"{feature}_resumed")
  shutil.copytree(work, again)   # as if killed after the first checkpoint
  first = min(os.listdir(os.path.join(again, "checkpoints")))
  for name in os.listdir(os.path.join(again, "checkpoints")):
    if name != first:
      shutil.rmtree(os.path.join(again, "checkpoints", name))
  os.remove(os.path.join(again, "summary.json"))
  c = configs.apply_overrides(configs.default_config(), SMALL + ["mesh.shape=(4,1)",
                              "train.checkpoint_every=4", "train.keep_checkpoints=10", *extra])
  s = train_stream(c, workdir=again, keep_predictions=True)
  results[f"{feature}_resumed"] = {"auc": s["auc"], "logloss": s["logloss"], "rows": s["rows"],
                                   "resumed_from": os.path.basename(s["resumed_from"] or "")}
  np.save(os.path.join(out, f"{feature}_resumed.npy"), s["_predictions"])
# The offline protocol (2 epochs, tables re-initialised between them).
for mesh in ("(1,1)", "(4,1)"):
  c = configs.apply_overrides(configs.default_config(), SMALL + [
      f"mesh.shape={mesh}", "offline.epochs=2", "offline.evals_per_epoch=2",
      "offline.between_epochs=reinit", "offline.eval_data.start_row=4096",
      "offline.eval_data.max_rows=2048", f"train.warm_start.path={os.path.join(out, 'seed4')}"])
  s = train_offline(c)
  results[f"offline_{mesh}"] = {"test_logloss": [p["test"]["logloss"] for p in s["points"]],
                                "test_auc": [p["test"]["auc"] for p in s["points"]],
                                "mesh": s.get("mesh"), "warm_start": s["warm_start"]}
# The delayed-feedback protocol (ES-DFM: the main and the auxiliary model).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_delayed import small_config as delayed_config  # noqa: E402
from rectrain.train.delayed import train_delayed  # noqa: E402

# Its warm start: a streaming run of the same model on 4 devices (padded tables).
src = delayed_config("vanilla", rows=10_000)
src.delayed.method = ""
train_stream(configs.apply_overrides(src, ["mesh.shape=(4,1)"]), workdir=os.path.join(out, "dsrc4"))
for mesh in ("(1,1)", "(4,1)"):
  for method, learn in (("esdfm", "True"), ("vanilla", "False")):
    c = delayed_config(method, rows=20_000)
    configs.apply_overrides(c, [f"mesh.shape={mesh}", f"train.learn={learn}",
                                f"train.warm_start.path={os.path.join(out, 'dsrc4')}"])
    s = train_delayed(c)
    results[f"delayed_{method}_{mesh}"] = {
        k: s.get(k) for k in ("auc", "logloss", "steps", "param_count", "rows", "mesh",
                              "warm_start")}
with open(os.path.join(out, "results.json"), "w") as f:
  json.dump(results, f)
