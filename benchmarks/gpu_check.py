"""The accelerator check of issue 17: DeepFM and DLRM rows/s with the tables on the device.

  bash benchmarks/gpu_check.sh            # on a lent GPU: < 5 minutes
  bash benchmarks/gpu_check.sh --smoke    # anywhere (CPU): tiny sizes, seconds

Measures, in one run, on ``jax.devices()[0]``:

1. Training rows/s of the jitted K-step ``lax.scan`` (tables, optimizer state
   and batches on the device; host dedup done beforehand, as the pipeline
   does) for DeepFM and DLRM at batches 8,192 .. 65,536 (embedding dim 16,
   DeepFM's MLP 256-128, rectrain's tuned optimizers).
2. The step time of DeepFM at batch 8,192 with a 2^16-row and a 2^26-row
   fused table (same batch stream, ids hashed into more rows): a row-wise
   step must not depend on the table size.
3. Whether the device's results equal the CPU's: the same batches through the
   same steps from the same initial state on ``jax.devices("cpu")[0]``; the
   largest difference of the predictions of the last group and of the final
   state (float32; a GPU's TF32 matmuls and another summation order give
   small differences, so the check reports the numbers, bit identity and
   "equal" within a tolerance of 1e-3 in probability).

Precision: float32 only. rectrain has no bfloat16 compute path yet, so the
bf16 option of the issue is not offered (the script says so in its output).
Results print as a table and go to ``--json`` (default ``$OUT/gpu_check.json``
when ``$OUT`` is set, else ``gpu_check.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402

from rectrain.data.batch import DEVICE_KEYS  # noqa: E402
from rectrain.train.loop import create_model_and_state  # noqa: E402
from rectrain.train.step import make_multi_step, make_train_step  # noqa: E402

FULL = {"batches": (8192, 16384, 32768, 65536), "num_batches": 16, "reps": 3,
        "table_log2": (16, 26), "table_batch": 8192, "models": ("deepfm", "dlrm"),
        "equal_batches": 8, "equal_batch": 4096}
SMOKE = {"batches": (256,), "num_batches": 8, "reps": 1, "table_log2": (10, 14),
         "table_batch": 256, "models": ("deepfm", "dlrm"), "equal_batches": 8,
         "equal_batch": 256}
TOLERANCE = 1e-3   # max |probability| difference accepted as "equal" across devices (TF32)


def _groups(batches, device):
  k = tt.K
  return [{key: jax.device_put(np.stack([b[key] for b in batches[i:i + k]]), device)
           for key in DEVICE_KEYS} for i in range(0, len(batches) - k + 1, k)]


def _run_on(device, name, batches, stream):
  """(predictions of the last group, final state) of the steps on ``device`` from the seed's
  init."""
  config = tt.model_config(name, stream.layout.buckets[0])
  with jax.default_device(device):
    model, state, dense_opt, sparse_opts, _ = create_model_and_state(
        config, stream.num_rows, stream.layout.num_fields, stream.num_dense)
    multi = make_multi_step(make_train_step(model, dense_opt, sparse_opts))
    out = None
    for g in _groups(batches, device):
      state, out = multi(state, g)
    return np.asarray(out.preds_B), jax.device_get(state)


def equality(name, size):
  batches, stream = tt.make_batches(size["equal_batches"], 1 << 12, seed=2,
                                    batch=size["equal_batch"])
  dev, cpu = jax.devices()[0], jax.devices("cpu")[0]
  preds_d, state_d = _run_on(dev, name, batches, stream)
  preds_c, state_c = _run_on(cpu, name, batches, stream)
  params = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(jax.tree_util.tree_leaves(state_d), jax.tree_util.tree_leaves(state_c))
               if np.issubdtype(np.asarray(a).dtype, np.floating))
  diff = float(np.max(np.abs(preds_d.astype(np.float64) - preds_c)))
  return {"model": name, "device": str(dev), "max_pred_diff": diff, "max_state_diff": params,
          "bit_identical": bool(diff == 0.0 and params == 0.0), "equal": diff <= TOLERANCE}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, seconds)")
  parser.add_argument("--models", default=None, help="comma-separated (default deepfm,dlrm)")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  size = dict(SMOKE if args.smoke else FULL)
  if args.models:
    size["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
  out_path = args.json or os.path.join(os.environ.get("OUT", "."), "gpu_check.json")
  dev = jax.devices()[0]
  result = {"device": str(dev), "platform": dev.platform, "jax": jax.__version__,
            "smoke": args.smoke, "precision": "float32 (no bf16 compute path in rectrain yet)",
            "throughput": [], "table_size": [], "equality": []}
  print(f"device: {dev} ({dev.platform}), jax {jax.__version__}; float32 only "
        "(rectrain has no bf16 compute path yet)", flush=True)
  t0 = time.perf_counter()
  for batch in size["batches"]:
    batches, stream = tt.make_batches(size["num_batches"], 1 << 17, seed=0, batch=batch)
    for name in size["models"]:
      r = tt.time_training(name, batches, stream, size["reps"])
      r["batch"] = batch
      result["throughput"].append(r)
      print(f"{name:7s} batch {batch:>6,d}: {r['rows_per_sec']:>12,.0f} rows/s  "
            f"step {r['step_ms']:8.3f} ms", flush=True)
    del batches
  for log2 in size["table_log2"]:
    batches, stream = tt.make_batches(size["num_batches"], (1 << log2) // 26, seed=1,
                                      batch=size["table_batch"])
    r = tt.time_training("deepfm", batches, stream, size["reps"])
    r["table_rows"] = stream.num_rows
    result["table_size"].append(r)
    print(f"deepfm table {stream.num_rows:>12,d} rows: step {r['step_ms']:.3f} ms", flush=True)
    del batches
  small, large = result["table_size"]
  result["step_time_ratio_large_over_small"] = large["step_ms"] / small["step_ms"]
  print(f"step time ratio {large['table_rows']:,d} / {small['table_rows']:,d} rows: "
        f"{result['step_time_ratio_large_over_small']:.2f}", flush=True)
  for name in size["models"]:
    e = equality(name, size)
    result["equality"].append(e)
    print(f"{name:7s} {dev.platform} vs cpu: max |prediction diff| {e['max_pred_diff']:.3g}, "
          f"max |state diff| {e['max_state_diff']:.3g}, bit-identical {e['bit_identical']}, "
          f"equal within {TOLERANCE:g}: {e['equal']}", flush=True)
  result["wall_time_sec"] = time.perf_counter() - t0
  with open(out_path, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {out_path} ({result['wall_time_sec']:.0f} s)")
  return 0 if all(e["equal"] for e in result["equality"]) else 1


if __name__ == "__main__":
  sys.exit(main())
