"""Worker of tests/test_multihot.py: multi-hot and sequence fields on 4 forced CPU
devices against one (DeepFM with a mean-pooled field, DIN with its sequence, the
async simulation on DeepFM); writes results.json and the predictions (.npy)."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multihot_data import SCHEMA, write_multihot_tsv  # noqa: E402

from rectrain import configs  # noqa: E402
from rectrain.train.loop import train_stream  # noqa: E402

out = sys.argv[1]
path = write_multihot_tsv(os.path.join(out, "mh.tsv"), rows=2048)
BASE = ["data.source=table", f"data.path={path}", f"data.schema={SCHEMA.format(pool='mean')}",
        "data.batch_size=256", "data.cat_buckets=1001", "data.max_rows=0", "model.embed_dim=4",
        "train.steps_per_dispatch=2", "train.progress=False", "metrics.window_rows=1024"]
RUNS = {"deepfm": ["model.name=deepfm", "model.mlp_dims=(8,)"],
        "din": ["model.name=din", "model.target=item", "model.att_dims=(8,)", "model.mlp_dims=(8,)"],
        "async": ["model.name=deepfm", "model.mlp_dims=(8,)", "train.async_sim.staleness=fixed",
                  "train.async_sim.tau=2"]}
results = {}
for name, extra in RUNS.items():
  for mesh in ("(1,1)", "(4,1)"):
    c = configs.apply_overrides(configs.default_config(), BASE + extra + [f"mesh.shape={mesh}"])
    s = train_stream(c, keep_predictions=True)
    np.save(os.path.join(out, f"{name}_{mesh}.npy"), s["_predictions"])
    results[f"{name}|{mesh}"] = {"auc": s["auc"], "logloss": s["logloss"], "rows": s["rows"],
                                 "devices": (s.get("mesh") or {}).get("devices", 1)}
with open(os.path.join(out, "results.json"), "w") as f:
  json.dump(results, f)
