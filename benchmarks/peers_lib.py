"""The peer comparison protocol shared by ``quality.py`` and ``peers.py``.

One protocol for every system (rectrain, Vowpal Wabbit, DeepCTR-Torch):

1. ``rectrain synth --rows N --seed S`` writes the synthetic stream as Criteo
   TSV (label, I1..I13, C1..C26; time ordered, drifting). Its first 90% of
   lines become ``train.tsv``, the last 10% ``test.tsv``: the same two files
   for every system.
2. Each system runs as its own subprocess: one pass over ``train.tsv`` in
   file order, then the frozen model scores ``test.tsv`` and writes one
   prediction per line (``preds.npy``) plus its own timings (``result.json``).
   The parent measures the child's wall time and its peak RSS with
   ``/usr/bin/time -v`` (else ``os.wait4`` in a small launcher; see
   :func:`run_measured`).
3. :func:`heldout_metrics` computes AUC and log loss of every system from the
   labels of ``test.tsv`` and its predictions, so all are judged by the same
   code.

The runners are subcommands of this file, executed by the front-ends:

* ``rectrain``: with the repo's Python. ``rectrain.configs.default_config()``
  with only ``model.name`` (when not the default DeepFM: setting it resets
  the model section to that model's defaults) and the data source changed;
  ``train_stream(config, workdir=None)`` (no files, no checkpoint), then the
  final state's ``make_predict`` over ``test.tsv``.
* ``vw-convert``: Criteo TSV -> VW text (repo Python; timed on its own).
  ``{1,-1} |i I1:log1p(max(x,0)) ... |c C1_<hex> ... C26_<hex>``: the 13
  integers as log1p values in namespace ``i`` (missing ones omitted: rectrain
  maps them to 0 too), the 26 categoricals as field-prefixed tokens in
  namespace ``c`` (a missing value is the token ``Cj_``, its own feature as in
  rectrain's bucket 0). VW hashes them into ``2^b`` weights.
* ``vw``: in the side venv. The ``vowpalwabbit`` wheel ships the library
  (``pylibvw``), no ``vw`` executable, so the runner calls VW's own driver on
  the converted file: ``Workspace("--data train.vw --loss_function logistic
  --link logistic -b B -f model"); run_parser()`` (VW's C++ reader and
  parser thread; no per-line Python), then ``Workspace("-t -i model --data
  test.vw -p preds.txt")``. One pass, no cache file (so no holdout).
* ``deepctr``: in the side venv. pandas ``read_csv``; missing categoricals
  -> ``"-1"``, missing ints -> 0; each categorical field encoded with the
  values of the TRAIN split (``pd.factorize``, = ``LabelEncoder``), unseen
  test values -> the reserved index K; ints -> ``log1p(max(x, 0))`` (the
  transform rectrain applies, not DeepCTR's example MinMax). ``DeepFM`` with
  DeepCTR-Torch's defaults (``dnn_hidden_units=(256, 128)``,
  ``l2_reg_embedding=1e-5``, ...) except ``embedding_dim=16``; Adam lr 3e-3,
  batch 4096, 1 epoch, ``shuffle=False``. ``model.fit`` is timed apart from
  the preprocessing. The import-time PyPI version check of deepctr_torch (an
  HTTP request in a thread) is disabled so it does not count.

Side venv (:func:`ensure_side_venv`, created once and reused):
``<repo python> -m venv DIR`` (the same Python version as the repo's venv),
then a CPU-only torch, found in this order:

1. a ``torch-*+cpu-<python tag>-*.whl`` in a pip ``find-links`` directory
   (this project's machine: ``/opt/wheels/torch-2.13.0+cpu-cp311-...whl``),
   installed by path;
2. ``pip install torch --index-url https://download.pytorch.org/whl/cpu``;
3. PyPI's torch with ``--no-deps`` plus its non-NVIDIA dependencies
   (filelock, typing-extensions, sympy, networkx, jinja2, fsspec, setuptools);
   untested here (step 1 succeeds), and the check below refuses it if torch
   does not import without the CUDA libraries.

then ``pip install deepctr-torch==0.3.0 vowpalwabbit==9.11.9 pandas
requests`` (torch is already satisfied, so pip pulls no CUDA build;
deepctr_torch imports ``requests`` without declaring it). The install checks
that ``torch.version.cuda`` is None and that no ``nvidia-*`` package came in.

Rows/s: ``train rows/s`` = training rows / the in-process training time
(rectrain: ``train_stream``'s wall, model init and compile included; VW: the
training Workspace's creation and ``run_parser()``, reading and parsing
included, writing the model not; DeepCTR: ``model.fit``);
``steady rows/s`` = rectrain's ``summary["rows_per_sec"]`` (after the first,
compiling dispatch of 8 batches of 4096 rows: NaN below 32,769 training rows); ``rows/process s`` = training rows / the subprocess's
wall time (imports, reading, training, scoring the test split).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import signal
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
DEFAULT_VENV = os.path.expanduser("~/.cache/rectrain-peers-venv")
TRAIN_FRACTION = 0.9
LOGLOSS_EPS = 1e-7
NUM_INT, NUM_CAT = 13, 26
PEER_PACKAGES = ("deepctr-torch==0.3.0", "vowpalwabbit==9.11.9", "pandas", "requests")
TORCH_NON_NVIDIA_DEPS = ("filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec",
                         "setuptools")
DEEPCTR = {"batch_size": 4096, "lr": 3e-3, "embedding_dim": 16, "epochs": 1}


# ---------------------------------------------------------------------------
# Held-out metrics: one function for every system.


def heldout_metrics(labels, preds) -> dict:
  """Exact AUC and log loss of ``preds`` against 0/1 ``labels``.

  AUC = P(p_pos > p_neg) + P(p_pos = p_neg) / 2 (Mann-Whitney U over groups of
  equal predictions); log loss = mean -(y log q + (1-y) log(1-q)),
  q = clip(p, 1e-7, 1-1e-7). Also the base rate and PCOC = mean p / mean y.

  Raises:
    ValueError: on a length mismatch, labels not 0/1 or non-finite predictions.
  """
  y = np.asarray(labels, np.float64).reshape(-1)
  p = np.asarray(preds, np.float64).reshape(-1)
  if y.shape != p.shape:
    raise ValueError(f"heldout_metrics: {p.size} predictions for {y.size} labels")
  if not np.isin(y, (0.0, 1.0)).all():
    raise ValueError("heldout_metrics: labels must be 0 or 1")
  bad = ~np.isfinite(p)
  if bad.any():
    raise ValueError(f"heldout_metrics: {int(bad.sum())} non-finite predictions, "
                     f"first at row {int(np.flatnonzero(bad)[0])}")
  uniq, inverse = np.unique(p, return_inverse=True)
  pos_K = np.bincount(inverse, weights=y, minlength=uniq.size)
  neg_K = np.bincount(inverse, weights=1.0 - y, minlength=uniq.size)
  n_pos, n_neg = pos_K.sum(), neg_K.sum()
  if n_pos > 0 and n_neg > 0:
    auc = float(np.sum(pos_K * (np.cumsum(neg_K) - 0.5 * neg_K)) / (n_pos * n_neg))
  else:
    auc = math.nan
  q = np.clip(p, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
  logloss = float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))
  return {"auc": auc, "logloss": logloss, "rows": int(y.size),
          "base_rate": float(y.mean()), "pcoc": float(p.mean() / y.mean()) if n_pos else math.nan}


# ---------------------------------------------------------------------------
# Data: one generated file, split by line.


def rectrain_cli() -> list:
  """The ``rectrain`` command of the Python running this file."""
  exe = os.path.join(os.path.dirname(sys.executable), "rectrain")
  return [exe] if os.path.exists(exe) else [sys.executable, "-m", "rectrain.cli"]


def split_lines(src: str, train_path: str, test_path: str, num_train: int) -> tuple:
  """Copies the first ``num_train`` lines of ``src`` to ``train_path``, the rest to ``test_path``.

  Returns:
    (train lines, test labels as an int8 array).
  """
  labels = []
  n = 0
  with open(src, "rb") as f, open(train_path, "wb") as tr, open(test_path, "wb") as te:
    for line in f:
      if n < num_train:
        tr.write(line)
      else:
        te.write(line)
        labels.append(line[:1])
      n += 1
  if n <= num_train:
    raise ValueError(f"{src}: {n} lines, need more than {num_train} (the train split)")
  y = np.frombuffer(b"".join(labels), np.uint8) - ord("0")
  if not np.isin(y, (0, 1)).all():
    bad = int(np.flatnonzero(~np.isin(y, (0, 1)))[0])
    raise ValueError(f"{test_path}: line {bad + 1}: label is not 0 or 1")
  return num_train, y.astype(np.int8)


def make_data(rows: int, seed: int, data_dir: str) -> dict:
  """Writes (or reuses) ``data_dir/{train,test}.tsv`` and ``test_labels.npy``.

  Returns:
    the data record: paths, rows per split, the synth command, base rates.
  """
  os.makedirs(data_dir, exist_ok=True)
  meta_path = os.path.join(data_dir, "data.json")
  if os.path.exists(meta_path):
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("rows") == rows and meta.get("seed") == seed and all(
        os.path.exists(meta[k]) for k in ("train", "test", "test_labels")):
      meta["reused"] = True
      return meta
  full = os.path.join(data_dir, "all.tsv")
  cmd = rectrain_cli() + ["synth", "--rows", str(rows), "--seed", str(seed), "--out", full]
  t = time.perf_counter()
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
  synth_sec = time.perf_counter() - t
  train, test = os.path.join(data_dir, "train.tsv"), os.path.join(data_dir, "test.tsv")
  num_train, y = split_lines(full, train, test, int(rows * TRAIN_FRACTION))
  os.remove(full)
  labels = os.path.join(data_dir, "test_labels.npy")
  np.save(labels, y)
  meta = {"rows": rows, "seed": seed, "train": train, "test": test, "test_labels": labels,
          "train_rows": num_train, "test_rows": int(y.size), "test_base_rate": float(y.mean()),
          "synth_command": shlex.join(cmd), "synth_sec": synth_sec,
          "split": f"first {num_train} lines -> train.tsv, last {y.size} -> test.tsv"}
  with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2)
  meta["reused"] = False
  return meta


# ---------------------------------------------------------------------------
# Measured subprocesses.


# A tiny launcher that forks the command and reports its rusage: a child
# started straight from this (large) process would inherit this process's RSS
# high-water mark at exec (Linux copies the old mm's peak into the child's
# ru_maxrss, also through vfork), so the fork must happen in a small process,
# as /usr/bin/time does.
_SHIM = ("import json, os, sys\n"
         "pid = os.fork()\n"
         "if pid == 0:\n"
         "  os.execvp(sys.argv[2], sys.argv[2:])\n"
         "_, status, ru = os.wait4(pid, 0)\n"
         "with open(sys.argv[1], 'w') as f:\n"
         "  json.dump({'maxrss_kb': ru.ru_maxrss, 'user': ru.ru_utime, 'sys': ru.ru_stime}, f)\n"
         "sys.exit(os.waitstatus_to_exitcode(status))\n")
TIME_BIN = "/usr/bin/time"


def _parse_time_v(path: str) -> dict:
  """Peak RSS (kB), user and system seconds from ``/usr/bin/time -v`` output."""
  keys = {"Maximum resident set size (kbytes)": "maxrss_kb", "User time (seconds)": "user",
          "System time (seconds)": "sys"}
  out = {}
  with open(path) as f:
    for line in f:
      key, _, value = line.strip().rpartition(": ")
      if key in keys:
        out[keys[key]] = float(value)
  return out


def run_measured(cmd: list, log_path: str, timeout_s: float | None = None,
                 use_time: bool | None = None) -> dict:
  """Runs ``cmd`` with stdout+stderr to ``log_path``; its wall time and peak RSS.

  Peak RSS (and CPU time) of ``cmd`` alone, its waited-for descendants
  included: from ``/usr/bin/time -v`` when present (``use_time=None``), else
  from ``os.wait4`` in a small Python launcher (``_SHIM``). Wall time: around
  the launch.
  """
  use_time = os.path.exists(TIME_BIN) if use_time is None else use_time
  usage_path = log_path + (".time" if use_time else ".rusage")
  wrapper = ([TIME_BIN, "-v", "-o", usage_path] if use_time
             else [sys.executable, "-S", "-c", _SHIM, usage_path])
  with open(log_path, "wb") as log:
    t = time.perf_counter()
    # Own process group, so a timeout ends the launcher and the command it started.
    proc = subprocess.Popen(wrapper + list(cmd), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    wall = time.perf_counter() - t
  usage = {}
  if os.path.exists(usage_path):
    if use_time:
      usage = _parse_time_v(usage_path)
    else:
      with open(usage_path) as f:
        usage = json.load(f)
  return {"returncode": proc.returncode, "wall_sec": wall,
          "peak_rss_mb": usage.get("maxrss_kb", math.nan) / 1024,
          "user_sec": usage.get("user", math.nan), "sys_sec": usage.get("sys", math.nan),
          "command": shlex.join(cmd), "measured_with": "/usr/bin/time -v" if use_time else "wait4 launcher",
          "log": log_path}


def _tail(path: str, n: int = 15) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-n:])


def run_system(name: str, cmd: list, out_dir: str, labels: np.ndarray, train_rows: int,
               timeout_s: float | None = None) -> dict:
  """Runs one system's runner; its record with the held-out metrics of its predictions."""
  os.makedirs(out_dir, exist_ok=True)
  print(f"[peers] {name}: {shlex.join(cmd)}", flush=True)
  m = run_measured(cmd, os.path.join(out_dir, "log.txt"), timeout_s)
  rec = {"system": name, **m}
  if m["returncode"] != 0:
    rec["error"] = f"exit {m['returncode']}; log tail:\n{_tail(m['log'])}"
    print(f"[peers] {name} FAILED ({rec['error']})", flush=True)
    return rec
  with open(os.path.join(out_dir, "result.json")) as f:
    rec.update(json.load(f))
  rec.update(heldout_metrics(labels, np.load(os.path.join(out_dir, "preds.npy"))))
  rec["rows_per_process_sec"] = train_rows / m["wall_sec"]
  print(f"[peers] {name}: AUC {rec['auc']:.4f} logloss {rec['logloss']:.4f} "
        f"train {rec.get('train_rows_per_sec', float('nan')):,.0f} rows/s "
        f"wall {m['wall_sec']:.1f} s peak {m['peak_rss_mb']:,.0f} MB", flush=True)
  return rec


# ---------------------------------------------------------------------------
# Commands of the runners.


def rectrain_overrides(model: str, train_path: str, extra=()) -> list:
  """``--set`` overrides of the default config: the model and the data source only."""
  from_default = [] if model == "deepfm" else [f"model.name={model}"]  # deepfm: keep the default MLP
  return from_default + ["data.source=criteo", f"data.path={train_path}", "data.max_rows=0",
                         "train.progress=False", "metrics.window_rows=0", *extra]


def rectrain_command(model: str, data: dict, out_dir: str, extra=(), cache: str = "0") -> list:
  cmd = [sys.executable, THIS, "rectrain", "--train", data["train"], "--test", data["test"],
         "--out", out_dir, "--model", model, "--compile-cache", cache]
  for item in extra:
    cmd += ["--set", item]
  return cmd


def vw_convert_command(src: str, dst: str) -> list:
  return [sys.executable, THIS, "vw-convert", "--src", src, "--dst", dst]


def vw_command(venv: str, train_vw: str, test_vw: str, bits: int, out_dir: str) -> list:
  return [venv_python(venv), THIS, "vw", "--train", train_vw, "--test", test_vw,
          "--bits", str(bits), "--out", out_dir]


def deepctr_command(venv: str, data: dict, out_dir: str, lr: float | None = None) -> list:
  return [venv_python(venv), THIS, "deepctr", "--train", data["train"], "--test", data["test"],
          "--out", out_dir] + ([] if lr is None else ["--lr", repr(float(lr))])


# ---------------------------------------------------------------------------
# Runners (executed as subprocesses).


def _write_result(out_dir: str, preds, result: dict) -> None:
  os.makedirs(out_dir, exist_ok=True)
  np.save(os.path.join(out_dir, "preds.npy"), np.asarray(preds, np.float64))
  with open(os.path.join(out_dir, "result.json"), "w") as f:
    json.dump(result, f, indent=2, default=float)


def _count_lines(path: str) -> int:
  with open(path, "rb") as f:
    return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def run_rectrain(args) -> None:
  """Trains the default config on ``--train`` (one pass), scores ``--test`` frozen.

  With ``--compile-cache DIR`` JAX's persistent compilation cache is on, as
  the ``rectrain`` command line turns it on by default.
  """
  os.environ["RECTRAIN_COMPILE_CACHE"] = args.compile_cache
  from rectrain.cli import compile_cache
  compile_cache()
  import jax
  from rectrain import configs
  from rectrain.data import make_stream
  from rectrain.data.batch import DEVICE_KEYS
  from rectrain.data.pipeline import prefetch, with_unique
  from rectrain.models import build_model
  from rectrain.train.loop import train_stream
  from rectrain.train.step import make_predict

  config = configs.default_config()
  overrides = rectrain_overrides(args.model, args.train, args.set or ())
  configs.apply_overrides(config, overrides)
  t = time.perf_counter()
  summary = train_stream(config, workdir=None)
  train_sec = time.perf_counter() - t
  state = summary.pop("_state")

  t = time.perf_counter()
  test_data = configs.default_config().data
  test_data.update(config.data.to_dict())
  test_data.path = args.test
  stream = make_stream(test_data, seed=config.seed)
  predict = make_predict(build_model(config.model))
  num_test = _count_lines(args.test)
  preds = np.full((num_test,), np.nan)
  for batch in prefetch(with_unique(iter(stream), stream.num_rows), 4):
    p = np.asarray(predict(state.dense_params, state.tables, {k: batch[k] for k in DEVICE_KEYS}))
    keep = batch["index"] >= 0
    preds[batch["index"][keep]] = p[keep]
  skipped = int(sum(stream.report().get("skipped", {}).values()))
  if skipped or summary["skipped_rows"]:
    raise ValueError(f"rectrain skipped {summary['skipped_rows']} train / {skipped} test lines")
  predict_sec = time.perf_counter() - t
  model = config.model
  dims = "-".join(map(str, model.get("mlp_dims", ()))) or None
  settings = (f"default config: {model.name}" + (f" MLP {dims}" if dims else "")
              + (f", dim {model.embed_dim}" if "embed_dim" in model else "")
              + f", tables {config.optim.sparse.name} {config.optim.sparse.learning_rate}"
              + (f", dense {config.optim.dense.name} {config.optim.dense.learning_rate}"
                 if model.name != "lr" else "")
              + f", batch {config.data.batch_size}, 2^{int(math.log2(config.data.cat_buckets))}"
                " buckets/field")
  _write_result(args.out, preds, {
      "settings": settings, "overrides": overrides, "train_rows": summary["rows"],
      "train_sec": train_sec, "train_rows_per_sec": summary["rows"] / train_sec,
      "steady_rows_per_sec": summary["rows_per_sec"], "predict_sec": predict_sec,
      "progressive_auc": summary["auc"], "progressive_logloss": summary["logloss"],
      "param_count": summary["param_count"], "jax_device": str(jax.devices()[0]),
      "nonfinite_batches": summary["nonfinite_batches"]})


def criteo_to_vw_line(line: str) -> str:
  """One Criteo TSV line as a VW example (see the module docstring)."""
  f = line.rstrip("\n").split("\t")
  if len(f) != 1 + NUM_INT + NUM_CAT:
    raise ValueError(f"{len(f)} columns, expected {1 + NUM_INT + NUM_CAT}")
  values = ((j, int(v)) for j, v in enumerate(f[1:1 + NUM_INT], 1) if v)
  ints = " ".join(f"I{j}:{math.log1p(x):.6g}" for j, x in values if x > 0)  # 0: no feature
  cats = " ".join(f"C{j}_{v}" for j, v in enumerate(f[1 + NUM_INT:], 1))
  return f"{'1' if f[0] == '1' else '-1'} |i {ints} |c {cats}\n"


def run_vw_convert(args) -> None:
  t = time.perf_counter()
  n = 0
  with open(args.src) as src, open(args.dst, "w") as dst:
    for n, line in enumerate(src, 1):
      try:
        dst.write(criteo_to_vw_line(line))
      except ValueError as e:
        raise ValueError(f"{args.src}: line {n}: {e}") from None
  print(f"converted {n} lines in {time.perf_counter() - t:.1f} s")


def run_vw(args) -> None:
  """VW logistic regression: its own reader on the converted file, then frozen scoring."""
  from vowpalwabbit import Workspace
  import importlib.metadata as md

  model = os.path.join(args.out, "model.vw")
  preds_txt = os.path.join(args.out, "preds.txt")
  os.makedirs(args.out, exist_ok=True)
  train_args = (f"--data {args.train} --loss_function logistic --link logistic -b {args.bits} "
                f"-f {model}")
  t = time.perf_counter()
  ws = Workspace(train_args)
  ws.run_parser()  # the whole pass: VW's reader, parser thread and learner
  train_sec = time.perf_counter() - t
  train_loss = ws.get_sum_loss() / max(ws.get_weighted_examples(), 1)
  rows = int(ws.get_weighted_examples())
  t = time.perf_counter()
  ws.finish()  # writes the model (-f)
  save_sec = time.perf_counter() - t
  test_args = f"-t -i {model} --data {args.test} -p {preds_txt}"
  t = time.perf_counter()
  ws = Workspace(test_args)
  ws.run_parser()
  ws.finish()
  preds = np.loadtxt(preds_txt, dtype=np.float64, ndmin=1)
  predict_sec = time.perf_counter() - t
  _write_result(args.out, preds, {
      "settings": f"--loss_function logistic --link logistic -b {args.bits}, 1 pass, "
                  "namespaces i (13 log1p ints), c (26 field-prefixed cats)",
      "vw_train_args": train_args, "vw_test_args": test_args, "train_rows": rows,
      "train_sec": train_sec, "train_rows_per_sec": rows / train_sec, "save_model_sec": save_sec,
      "predict_sec": predict_sec, "progressive_logloss": train_loss, "vowpalwabbit": md.version("vowpalwabbit")})


def _read_criteo_pandas(path: str):
  import pandas as pd
  names = (["label"] + [f"I{j}" for j in range(1, NUM_INT + 1)]
           + [f"C{j}" for j in range(1, NUM_CAT + 1)])
  dtype = {"label": np.float32, **{f"I{j}": np.float64 for j in range(1, NUM_INT + 1)},
           **{f"C{j}": str for j in range(1, NUM_CAT + 1)}}
  return pd.read_csv(path, sep="\t", header=None, names=names, dtype=dtype)


def run_deepctr(args) -> None:
  """DeepCTR-Torch DeepFM: defaults except dim 16, Adam 3e-3, batch 4096, 1 epoch, no shuffle."""
  t_pre = time.perf_counter()
  import requests

  def offline(*a, **k):
    raise OSError("network disabled by the benchmark")

  requests.get = offline  # deepctr_torch's import-time version check
  import importlib.metadata as md
  import pandas as pd
  import torch
  from deepctr_torch.inputs import DenseFeat, SparseFeat, get_feature_names
  from deepctr_torch.models import DeepFM

  train, test = _read_criteo_pandas(args.train), _read_criteo_pandas(args.test)
  sparse = [f"C{j}" for j in range(1, NUM_CAT + 1)]
  dense = [f"I{j}" for j in range(1, NUM_INT + 1)]
  columns = []
  for c in sparse:
    codes, uniques = pd.factorize(train[c].fillna("-1"), sort=True)
    k = len(uniques)
    test_codes = pd.Index(uniques).get_indexer(test[c].fillna("-1"))
    train[c] = codes
    test[c] = np.where(test_codes < 0, k, test_codes)  # k = unseen in train
    columns.append(SparseFeat(c, vocabulary_size=k + 1, embedding_dim=DEEPCTR["embedding_dim"]))
  for c in dense:
    for df in (train, test):
      df[c] = np.log1p(np.maximum(df[c].fillna(0.0).to_numpy(), 0.0))
  columns += [DenseFeat(c, 1) for c in dense]
  names = get_feature_names(columns)
  x_train = {n: train[n].to_numpy() for n in names}
  x_test = {n: test[n].to_numpy() for n in names}
  y_train = train["label"].to_numpy()
  model = DeepFM(columns, columns, task="binary", device="cpu")
  lr = float(getattr(args, "lr", None) or DEEPCTR["lr"])
  model.compile(torch.optim.Adam(model.parameters(), lr=lr), "binary_crossentropy")
  preprocess_sec = time.perf_counter() - t_pre
  t = time.perf_counter()
  model.fit(x_train, y_train, batch_size=DEEPCTR["batch_size"], epochs=DEEPCTR["epochs"],
            verbose=0, shuffle=False)
  train_sec = time.perf_counter() - t
  t = time.perf_counter()
  preds = model.predict(x_test, batch_size=DEEPCTR["batch_size"]).reshape(-1)
  predict_sec = time.perf_counter() - t
  rows = len(y_train)
  _write_result(args.out, preds, {
      "settings": (f"DeepFM defaults (DNN 256-128), dim {DEEPCTR['embedding_dim']}, Adam "
                   f"{lr:g}, batch {DEEPCTR['batch_size']}, 1 epoch, shuffle=False, "
                   "log1p ints, train-split vocabularies"),
      "train_rows": rows, "preprocess_sec": preprocess_sec, "train_sec": train_sec,
      "train_rows_per_sec": rows / train_sec, "predict_sec": predict_sec,
      "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
      "deepctr_torch": md.version("deepctr-torch"),
      "vocabulary": int(sum(c.vocabulary_size for c in columns if isinstance(c, SparseFeat)))})


# ---------------------------------------------------------------------------
# Side venv with the peers.


def venv_python(venv: str) -> str:
  return os.path.join(venv, "bin", "python")


def _pip_find_links(python: str) -> list:
  out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
  dirs = []
  for line in out.splitlines():
    key, _, value = line.partition("=")
    if key.endswith("find-links"):
      dirs += [d.removeprefix("file://") for d in value.strip().strip("'\"").split()]
  return dirs


def _run_logged(cmd: list, log, steps: list) -> int:
  steps.append(shlex.join(cmd))
  log.write(f"$ {shlex.join(cmd)}\n")
  log.flush()
  return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def _check_venv(python: str) -> dict | None:
  code = ("import json, importlib.metadata as m, torch, vowpalwabbit, pandas, requests; "
          "bad = [d.metadata['Name'] for d in m.distributions() "
          "if d.metadata['Name'].lower().startswith('nvidia')]; "
          "print(json.dumps({'torch': torch.__version__, 'torch_cuda': torch.version.cuda, "
          "'deepctr-torch': m.version('deepctr-torch'), 'vowpalwabbit': m.version('vowpalwabbit'), "
          "'pandas': pandas.__version__, 'nvidia_packages': bad}))")
  r = subprocess.run([python, "-c", code], capture_output=True, text=True)
  if r.returncode != 0:
    return None
  return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_side_venv(venv: str) -> dict:
  """Creates (once) the side venv with CPU torch, DeepCTR-Torch and VW; its record.

  Raises:
    RuntimeError: when no CPU-only torch could be installed (log in ``venv/install.log``).
  """
  record_path = os.path.join(venv, "rectrain-peers.json")
  python = venv_python(venv)
  if os.path.exists(record_path) and _check_venv(python):
    with open(record_path) as f:
      record = json.load(f)
    record["reused"] = True
    return record
  os.makedirs(venv, exist_ok=True)
  steps = []
  with open(os.path.join(venv, "install.log"), "w") as log:
    print(f"[peers] building the side venv {venv} (log: {venv}/install.log)", flush=True)
    # This interpreter's Python (the repo venv's base), so the wheel tags below match.
    if _run_logged([sys.executable, "-m", "venv", venv], log, steps):
      raise RuntimeError(f"{sys.executable} -m venv {venv} failed; see {venv}/install.log")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted(w for d in _pip_find_links(python) for w in glob.glob(
        os.path.join(d, f"torch-*+cpu-{tag}-{tag}-*x86_64.whl" if platform.machine() == "x86_64"
                     else f"torch-*+cpu-{tag}-{tag}-*.whl")))
    how = None
    if wheels and _run_logged(pip + [wheels[-1]], log, steps) == 0:
      how = f"local CPU wheel {wheels[-1]}"
    if how is None and _run_logged(pip + ["--timeout", "20", "--retries", "1", "torch", "--index-url",
                                          "https://download.pytorch.org/whl/cpu"], log, steps) == 0:
      how = "https://download.pytorch.org/whl/cpu"
    if how is None and _run_logged(pip + ["--no-deps", "torch"], log, steps) == 0 and \
        _run_logged(pip + list(TORCH_NON_NVIDIA_DEPS), log, steps) == 0:
      how = "PyPI torch --no-deps + its non-NVIDIA dependencies (runs on CPU)"
    if how is None:
      raise RuntimeError(f"no CPU-only torch could be installed; see {venv}/install.log")
    if _run_logged(pip + list(PEER_PACKAGES), log, steps):
      raise RuntimeError(f"pip install {' '.join(PEER_PACKAGES)} failed; see {venv}/install.log")
  versions = _check_venv(python)
  if versions is None or versions["torch_cuda"] or versions["nvidia_packages"]:
    raise RuntimeError(f"side venv {venv}: torch is not CPU-only or does not import: {versions}")
  record = {"venv": venv, "torch_from": how, "install_commands": steps, "versions": versions}
  with open(record_path, "w") as f:
    json.dump(record, f, indent=2)
  record["reused"] = False
  return record


# ---------------------------------------------------------------------------
# Machine, versions, tables.


def machine_info() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  mem = None
  try:
    with open("/proc/meminfo") as f:
      mem = int(next(l for l in f if l.startswith("MemTotal")).split()[1]) / 2**20
  except (OSError, StopIteration):
    pass
  return {"nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem, "platform": platform.platform(),
          "python": platform.python_version(), "load_avg": os.getloadavg()}


def main_versions() -> dict:
  import importlib.metadata as md
  out = {}
  for p in ("jax", "jaxlib", "flax", "optax", "numpy", "pyarrow"):
    try:
      out[p] = md.version(p)
    except md.PackageNotFoundError:
      pass
  git = lambda *a: subprocess.run(["git", "-C", REPO, *a], capture_output=True, text=True).stdout.strip()
  out["rectrain_commit"] = git("rev-parse", "HEAD")
  out["rectrain_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
  return out


def fmt(value, spec: str = ",.0f") -> str:
  """``value`` formatted, or an en dash when missing / NaN."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  return format(value, spec)


def markdown_table(header: list, rows: list, align: str | None = None) -> str:
  """A markdown table; ``align`` one letter per column (l / r), default l then r."""
  align = align or "l" + "r" * (len(header) - 1)
  sep = ["---" if a == "l" else "---:" for a in align]
  lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def ratio(a, b) -> float:
  return a / b if a is not None and b and not math.isnan(a) and not math.isnan(b) else math.nan


# ---------------------------------------------------------------------------
# The whole comparison.


def add_common_args(parser: argparse.ArgumentParser, default_bits: str) -> None:
  parser.add_argument("--rows", type=int, default=None,
                      help="rows of the generated file (default 1,000,000; --smoke 20,000)")
  parser.add_argument("--seed", type=int, default=0, help="seed of rectrain synth")
  parser.add_argument("--out", default=None, help="directory for the JSON, the table and the runs")
  parser.add_argument("--data-dir", default=None,
                      help="where train.tsv / test.tsv go (default /tmp/rectrain-peers/data_<rows>_<seed>;"
                           " reused when present)")
  parser.add_argument("--venv", default=DEFAULT_VENV, help="side venv with VW and DeepCTR-Torch")
  parser.add_argument("--skip-peers", action="store_true", help="only rectrain")
  parser.add_argument("--skip-deepctr", action="store_true",
                      help="no DeepCTR-Torch run (VW still runs unless --skip-peers)")
  parser.add_argument("--models", default="",
                      help="comma-separated rectrain models instead of the front-end's list "
                           "(e.g. lr)")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny run: 20,000 rows, 2^14 buckets/field for rectrain, VW -b 18")
  parser.add_argument("--vw-bits", default=default_bits,
                      help="comma-separated VW -b values, one VW run each (the first one is the ratios')")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per system")
  parser.add_argument("--deepctr-lr", default="",
                      help=f"comma-separated Adam rates of DeepCTR-Torch, one run each "
                           f"(default {DEEPCTR['lr']}, tuned on world 100: benchmarks/README.md)")


def run_comparison(args, rectrain_models: list, name: str, cold_runs: bool = False) -> dict:
  """Data, side venv, every system in turn; the JSON record (without tables).

  ``cold_runs``: each rectrain model also runs once on an empty compilation cache.
  """
  if getattr(args, "models", ""):
    rectrain_models = [m for m in args.models.split(",") if m]
  rows = args.rows or (20_000 if args.smoke else 1_000_000)
  out = os.path.abspath(args.out or f"/tmp/rectrain-peers/{name}_{rows}")
  os.makedirs(out, exist_ok=True)
  data_dir = args.data_dir or f"/tmp/rectrain-peers/data_{rows}_{args.seed}"
  args.venv = os.path.abspath(os.path.expanduser(args.venv))
  record = {"front_end": name, "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "protocol": ("one pass over the first 90% of the lines in file (time) order, the frozen "
                         "model on the last 10%; each system its own subprocess"),
            "machine": machine_info(), "versions": main_versions()}
  data = make_data(rows, args.seed, data_dir)
  record["data"] = data
  labels = np.load(data["test_labels"])
  train_rows = data["train_rows"]
  extra = ["data.cat_buckets=16384"] if args.smoke else []
  bits = [18] if args.smoke else [int(b) for b in str(args.vw_bits).split(",") if b]
  systems = []
  if not args.skip_peers:
    record["side_venv"] = ensure_side_venv(args.venv)
    record["versions"].update({k: v for k, v in record["side_venv"]["versions"].items()
                               if k != "nvidia_packages"})
    vw_dir = os.path.join(out, "vw_data")
    os.makedirs(vw_dir, exist_ok=True)
    conv = {}
    for split in ("train", "test"):
      dst = os.path.join(vw_dir, f"{split}.vw")
      conv[split] = run_measured(vw_convert_command(data[split], dst),
                                 os.path.join(vw_dir, f"convert_{split}.log"), args.timeout)
      if conv[split]["returncode"]:
        raise RuntimeError(f"VW conversion failed: {_tail(conv[split]['log'])}")
    record["vw_conversion"] = conv
    for b in bits:
      rec = run_system(f"VW LR -b {b}", vw_command(args.venv, os.path.join(vw_dir, "train.vw"),
                                                   os.path.join(vw_dir, "test.vw"), b,
                                                   os.path.join(out, f"vw_b{b}")),
                       os.path.join(out, f"vw_b{b}"), labels, train_rows, args.timeout)
      rec.update(kind="vw", bits=b, convert_sec=conv["train"]["wall_sec"] + conv["test"]["wall_sec"])
      systems.append(rec)
  # rectrain as its command line runs it: with the compilation cache (a fresh
  # one here). With cold_runs, each model first runs on the empty cache (what a
  # first run of a configuration costs), then again on the filled one (every
  # later run); the ratios use the second.
  cache = os.path.join(out, "jax_cache")
  shutil.rmtree(cache, ignore_errors=True)
  for m in rectrain_models:
    runs = [("cold", f"rectrain {m} (compile cache cold)"), ("", f"rectrain {m}")] if cold_runs \
        else [("", f"rectrain {m}")]
    for tag, label in runs:
      d = os.path.join(out, f"rectrain_{m}" + (f"_{tag}" if tag else ""))
      rec = run_system(label, rectrain_command(m, data, d, extra, cache), d, labels, train_rows,
                       args.timeout)
      rec.update(kind="rectrain" + (f"_{tag}" if tag else ""), model=m,
                 compile_cache="cold" if tag else ("warm" if cold_runs else "on"))
      systems.append(rec)
  if not args.skip_peers and not getattr(args, "skip_deepctr", False):
    rates = [float(x) for x in str(getattr(args, "deepctr_lr", "") or "").split(",") if x]
    for lr in rates or [None]:  # None: DEEPCTR["lr"]
      tag = "" if lr is None or len(rates) < 2 else f" Adam {lr:g}"
      d = os.path.join(out, "deepctr_deepfm" + (f"_lr{lr:g}" if tag else ""))
      rec = run_system("DeepCTR-Torch DeepFM" + tag, deepctr_command(args.venv, data, d, lr), d,
                       labels, train_rows, args.timeout)
      rec.update(kind="deepctr", model="deepfm", lr=lr or DEEPCTR["lr"])
      systems.append(rec)
  record["systems"] = systems
  record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
  record["machine"]["load_avg_end"] = os.getloadavg()
  record["out"] = out
  return record


def find(systems: list, kind: str, model: str | None = None) -> dict | None:
  """The first successful system of ``kind`` (and ``model``)."""
  for s in systems:
    if s.get("kind") == kind and "error" not in s and (model is None or s.get("model") == model):
      return s
  return None


def speed_ratios(systems: list) -> dict:
  """rectrain LR vs VW and rectrain DeepFM vs DeepCTR-Torch (NaN where a side is missing)."""
  lr, vw = find(systems, "rectrain", "lr"), find(systems, "vw")
  dfm, dct = find(systems, "rectrain", "deepfm"), find(systems, "deepctr")
  g = lambda s, k: s.get(k) if s else math.nan
  return {
      "lr_vs_vw_steady_rows_per_sec": ratio(g(lr, "steady_rows_per_sec"), g(vw, "train_rows_per_sec")),
      "lr_vs_vw_train_rows_per_sec": ratio(g(lr, "train_rows_per_sec"), g(vw, "train_rows_per_sec")),
      "lr_vs_vw_rows_per_process_sec": ratio(g(lr, "rows_per_process_sec"), g(vw, "rows_per_process_sec")),
      "lr_wall_over_vw_wall": ratio(g(lr, "wall_sec"), g(vw, "wall_sec")),
      "lr_wall_over_vw_wall_plus_conversion": ratio(
          g(lr, "wall_sec"), g(vw, "wall_sec") + g(vw, "convert_sec") if vw else math.nan),
      "deepfm_vs_deepctr_steady_rows_per_sec": ratio(g(dfm, "steady_rows_per_sec"),
                                                     g(dct, "train_rows_per_sec")),
      "deepfm_vs_deepctr_train_rows_per_sec": ratio(g(dfm, "train_rows_per_sec"),
                                                    g(dct, "train_rows_per_sec")),
      "deepfm_vs_deepctr_rows_per_process_sec": ratio(g(dfm, "rows_per_process_sec"),
                                                      g(dct, "rows_per_process_sec")),
      "deepfm_wall_over_deepctr_wall": ratio(g(dfm, "wall_sec"), g(dct, "wall_sec")),
  }


def header_lines(record: dict) -> list:
  m, d, v = record["machine"], record["data"], record["versions"]
  peers = (f", vowpalwabbit {v['vowpalwabbit']}, deepctr-torch {v['deepctr-torch']}, torch {v['torch']}"
           if "torch" in v else "")
  return [f"{d['train_rows']:,} train / {d['test_rows']:,} test rows (`{d['synth_command']}`, "
          f"split by line 90/10); {m['nproc']} x {m['cpu']}, load avg "
          f"{m['load_avg'][0]:.1f} -> {m['load_avg_end'][0]:.1f}; jax {v.get('jax')}{peers}; "
          f"rectrain {v['rectrain_commit'][:10]}{' (dirty)' if v['rectrain_dirty'] else ''}."]


def _nan_to_none(obj):
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: _nan_to_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_nan_to_none(v) for v in obj]
  return obj


def write_outputs(record: dict, table: str) -> None:
  """Prints ``table`` and writes ``result.json`` + ``table.md`` under ``record["out"]``."""
  record["table_md"] = table
  print("\n" + table)
  with open(os.path.join(record["out"], "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(record["out"], "result.json"), "w") as f:
    json.dump(_nan_to_none(record), f, indent=2, default=float)
  print(f"\nwrote {record['out']}/result.json and table.md")


# ---------------------------------------------------------------------------


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="runners of the peer comparison (see the docstring)")
  sub = parser.add_subparsers(dest="command", required=True)
  r = sub.add_parser("rectrain")
  r.add_argument("--model", required=True)
  r.add_argument("--set", action="append")
  r.add_argument("--compile-cache", default="0",
                 help="JAX compilation cache directory, as RECTRAIN_COMPILE_CACHE (0: off)")
  c = sub.add_parser("vw-convert")
  c.add_argument("--src", required=True)
  c.add_argument("--dst", required=True)
  v = sub.add_parser("vw")
  v.add_argument("--bits", type=int, required=True)
  d = sub.add_parser("deepctr")
  d.add_argument("--lr", type=float, default=None, help=f"Adam rate (default {DEEPCTR['lr']})")
  for p in (r, v, d):
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  {"rectrain": run_rectrain, "vw-convert": run_vw_convert, "vw": run_vw,
   "deepctr": run_deepctr}[args.command](args)


if __name__ == "__main__":
  main()
