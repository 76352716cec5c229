"""A/B of the training core: this tree against an earlier commit, in one run.

  python benchmarks/core_ab.py --baseline COMMIT [--rounds 3] [--rows 200000] [--out DIR]

Issue 15 (the core as composable parts) must not lower throughput. Each round
runs, in separate processes and alternating the order, for the baseline (the
commit extracted with ``git archive`` and put first on ``PYTHONPATH``) and for
this tree:

* ``step``: DeepFM (the main job's model: MLP 256-128, embedding dim 16,
  batch 4096, 8 batches per ``lax.scan`` dispatch) training rows/s on
  pre-generated synthetic batches (the best of 3 passes over 12 dispatches);
* ``main``: the main job (``rectrain run`` defaults) on the first ``--rows``
  rows of the synthetic stream: steady rows/s, wall time, AUC and log loss
  (which must be equal: the restructuring keeps the summary bit-identical).

Prints the medians over rounds and every round's values; writes
``OUT/core_ab.json``. Shared machines vary: only numbers of the same run
compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside the tree under test (its rectrain first on sys.path).
WORKER = r'''
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from rectrain import configs
from rectrain.data.batch import DEVICE_KEYS, add_unique
from rectrain.data.synthetic import SyntheticStream
from rectrain.train.loop import create_model_and_state, train_stream
from rectrain.train.step import make_multi_step, make_train_step
what, rows = sys.argv[1], int(sys.argv[2])
if what == "step":
  B, K, G = 4096, 8, 12
  stream = SyntheticStream(batch_size=B, cat_buckets=1 << 18, seed=0, num_rows_total=B * K * G)
  batches = [{k: v for k, v in add_unique(b, stream.num_rows).items() if k in DEVICE_KEYS}
             for b in stream]
  c = configs.default_config()
  configs.apply_overrides(c, ["model.name=deepfm", f"data.cat_buckets={1 << 18}",
                              "model.embed_dim=16", "model.mlp_dims=(256,128)"])
  model, state, dense_opt, sparse_opts, _ = create_model_and_state(
      c, stream.num_rows, stream.layout.num_fields, stream.num_dense)
  multi = make_multi_step(make_train_step(model, dense_opt, sparse_opts))
  groups = [{k: jnp.asarray(np.stack([b[k] for b in batches[i:i + K]])) for k in DEVICE_KEYS}
            for i in range(0, len(batches) - K + 1, K)]
  state, out = multi(state, groups[0])
  jax.block_until_ready(out)
  best = float("inf")
  for _ in range(3):
    t = time.perf_counter()
    for g in groups:
      state, out = multi(state, g)
    jax.block_until_ready(state)
    best = min(best, time.perf_counter() - t)
  print(json.dumps({"rows_per_sec": len(groups) * K * B / best, "module": configs.__file__}))
else:
  c = configs.default_config()
  configs.apply_overrides(c, [f"data.max_rows={rows}", "train.progress=False"])
  t = time.perf_counter()
  s = train_stream(c)
  print(json.dumps({"rows_per_sec": s["rows_per_sec"], "wall_s": time.perf_counter() - t,
                    "auc": s["auc"], "logloss": s["logloss"], "module": configs.__file__}))
'''


def extract(commit: str, dst: str) -> str:
  full = subprocess.run(["git", "-C", REPO, "rev-parse", commit], check=True,
                        capture_output=True, text=True).stdout.strip()
  os.makedirs(dst, exist_ok=True)
  archive = subprocess.run(["git", "-C", REPO, "archive", full], check=True,
                           capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", dst], input=archive, check=True)
  return full


def run_worker(tree: str, what: str, rows: int) -> dict:
  env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  r = subprocess.run([sys.executable, "-c", WORKER, what, str(rows)], env=env,
                     capture_output=True, text=True, cwd=tree)
  if r.returncode != 0:
    raise SystemExit(f"core_ab: the {what} worker of {tree} failed: {r.stderr.strip()[-2000:]}")
  out = json.loads(r.stdout.strip().splitlines()[-1])
  if not os.path.realpath(out.pop("module")).startswith(os.path.realpath(tree) + os.sep):
    raise SystemExit(f"core_ab: the worker for {tree} imported rectrain from elsewhere")
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--baseline", required=True, help="the commit to compare with")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--rows", type=int, default=200_000)
  p.add_argument("--out", default=None)
  args = p.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix="rectrain-core-ab-")
  try:
    base_commit = extract(args.baseline, os.path.join(tmp, "baseline"))
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "rectrain"],
                                capture_output=True, text=True).stdout.strip())
    trees = {"baseline": os.path.join(tmp, "baseline"), "this tree": REPO}
    rounds = []
    for i in range(args.rounds):
      order = list(trees) if i % 2 == 0 else list(trees)[::-1]
      rec = {}
      for what in ("step", "main"):
        for name in order:
          rec[f"{name}|{what}"] = run_worker(trees[name], what, args.rows)
          print(f"round {i + 1} {name:9s} {what}: {rec[f'{name}|{what}']}", flush=True)
      rounds.append(rec)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  med = {key: statistics.median(r[key]["rows_per_sec"] for r in rounds) for key in rounds[0]}
  print(f"\nbaseline {base_commit[:10]} vs this tree {head[:10]}{' (+ uncommitted)' if dirty else ''}, "
        f"median of {args.rounds} rounds")
  print("| measurement | baseline rows/s | this tree rows/s | ratio |")
  print("|---|---:|---:|---:|")
  for what, label in (("step", "DeepFM step (batch 4096, 8 per dispatch)"),
                      ("main", f"main job, first {args.rows:,} rows (steady)")):
    b, t = med[f"baseline|{what}"], med[f"this tree|{what}"]
    print(f"| {label} | {b:,.0f} | {t:,.0f} | {t / b:.2f} |")
  same = all(r["baseline|main"]["auc"] == r["this tree|main"]["auc"]
             and r["baseline|main"]["logloss"] == r["this tree|main"]["logloss"] for r in rounds)
  print(f"main job AUC / log loss identical in every round: {same} "
        f"({rounds[0]['this tree|main']['auc']:.10f} / {rounds[0]['this tree|main']['logloss']:.10f})")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "core_ab.json"), "w") as f:
      json.dump({"baseline": base_commit, "head": head, "dirty": dirty, "rounds": rounds,
                 "medians": med, "identical_summary": same}, f, indent=1)


if __name__ == "__main__":
  main()
