"""The offline protocol: K epochs over a fixed training stream, held-out evaluation points.

Moved out of rectrain/train/loop.py (which re-exports the public names).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import rectrain.metrics as metrics_lib  # noqa: E402
from rectrain.data import make_stream
from rectrain.data.batch import device_keys
from rectrain.data.pipeline import prefetch, with_unique
from rectrain.models import init_tables
from rectrain.train.features import refuse_ignored
from rectrain.train import sharding as sh
from rectrain.train.loop_mesh import (_batch_placer, _preds_to_host, _replicated_to_host,
                                      _run_mesh)
from rectrain.train.step import LOCAL, make_multi_step, make_train_step
from rectrain.train.build import create_model_and_state
from rectrain.train.loop_io import UniqueLadder, _Progress, _jsonable, _stack, warm_started

log = logging.getLogger(__name__)


def evaluate(predict, dense_params, tables, stream, num_rows: int, place=None,
             to_host=np.asarray) -> dict:
  """Metrics of the model (no learning) on every batch of ``stream``.

  On a mesh ``place`` puts a host batch on the devices (the padding id
  ``num_rows`` is the padded table's) and ``to_host`` brings the sharded
  predictions back in row order.
  """
  acc = metrics_lib.MetricAccumulator()
  keys = device_keys(getattr(stream, "layout", None))
  for batch in prefetch(with_unique(iter(stream), num_rows), 4):
    device_batch = {k: batch[k] for k in keys}
    if place is not None:
      device_batch = {k: v[0] for k, v in place({k: v[None] for k, v in device_batch.items()}).items()}
    preds = to_host(predict(dense_params, tables, device_batch))
    acc.update(batch["label"], preds, batch["weight"])
  return acc.result()


def _eval_data_config(config):
  data = ml_collections.ConfigDict(config.data.to_dict())
  for key, value in config.offline.eval_data.items():
    if key not in data:
      raise KeyError(f"config offline.eval_data.{key}: not a data key")
    if key == "path" and not value:
      continue  # "" = the training data's path
    data[key] = value
  return data


def _tree_diff_norm(a, b) -> float:
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.sum((x - y) ** 2), a, b))
  return float(_replicated_to_host(jnp.sqrt(sum(leaves)))) if leaves else 0.0


def train_offline(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
  """Trains ``offline.epochs`` epochs on one stream, evaluating on another.

  The training stream is ``config.data`` (re-read each epoch, same order);
  the evaluation stream is ``config.data`` with ``config.offline.eval_data``
  overrides (e.g. ``start_row`` past the training rows, or another ``path``).
  ``offline.evals_per_epoch`` evaluation points are spread evenly over each
  epoch (by batches; ``data.max_rows`` must be set). Each point records the
  held-out metrics, the progressive training metrics since the previous point,
  the mean gradient norm and the parameter change (L2) of the embedding
  tables and of the dense parameters since the previous point.

  Between epochs, ``offline.between_epochs`` may apply a remedy: ``reinit``
  (re-initialise tables and their optimizer state, as MEDA), ``freeze``
  (freeze tables after epoch 1), ``dense_only`` / ``tables_only`` (after epoch
  1 train only the dense part / only the tables).

  ``train.warm_start.path`` starts the model from a checkpoint's parameters
  (``train.warm_start.parts``, as the streaming loop does; e.g. fine-tuning
  a streamed model for epochs), before the first evaluation point.

  Returns a dict with ``points`` (list of records, also written to
  ``workdir/offline.jsonl``) and the final state under ``"_state"``.
  """
  from rectrain.configs import validate
  from rectrain.train.step import make_predict
  validate(config)
  refuse_ignored(config, "offline")
  off = config.offline
  if off.epochs < 1:
    raise ValueError(f"config offline.epochs={off.epochs}: must be >= 1")
  if not config.data.max_rows:
    raise ValueError("config data.max_rows must be set for the offline protocol")
  if off.between_epochs not in ("none", "reinit", "freeze", "dense_only", "tables_only"):
    raise ValueError(f"config offline.between_epochs={off.between_epochs!r}: must be none, "
                     "reinit, freeze, dense_only or tables_only")
  eval_config = _eval_data_config(config)
  if not eval_config.max_rows:
    raise ValueError("config offline.eval_data.max_rows must be set (rows of the held-out stream)")
  mesh = _run_mesh(config)  # None: one device
  train_data = make_stream(config.data, seed=config.seed)
  eval_data = make_stream(eval_config, seed=config.seed)
  num_rows = train_data.num_rows
  table_rows = num_rows if mesh is None else sh.padded_rows(num_rows, mesh)
  model, state, dense_opt, sparse_opts, params = create_model_and_state(
      config, num_rows, train_data.layout.num_fields, train_data.num_dense, table_rows=table_rows,
      layout=train_data.layout)
  keys = device_keys(train_data.layout)
  state, warm_report = warm_started(config, state, workdir, num_rows)
  placement = LOCAL if mesh is None else sh.SHARDED
  variants = {}
  if mesh is None:
    predict, place, preds_to_host, to_host = make_predict(model), None, np.asarray, np.asarray
  else:  # the tables row-sharded over every device, the batch split over data
    state = sh.shard_state(state, mesh, table_rows)
    predict = sh.make_sharded_predict(model, mesh, state, table_rows, keys)
    place = _batch_placer(mesh, keys)
    preds_to_host, to_host = _preds_to_host, _replicated_to_host

  def multi_for(train_dense, train_tables):
    key = (train_dense, train_tables)
    if key not in variants:
      step = make_train_step(model, dense_opt, sparse_opts, train_dense=train_dense,
                             train_tables=train_tables, placement=placement)
      variants[key] = (make_multi_step(step) if mesh is None else
                       sh.make_sharded_multi_step(step, mesh, state, table_rows, keys))
    return variants[key]

  def evaluate_now():
    return evaluate(predict, state.dense_params, state.tables, eval_data, table_rows, place,
                    lambda p: preds_to_host(p[None])[0])

  ladder = UniqueLadder(config.train.get("unique_ladder", 1))  # U grows over all epochs
  batches_per_epoch = -(-config.data.max_rows // config.data.batch_size)
  k = config.train.steps_per_dispatch
  marks = sorted({round(batches_per_epoch * (i + 1) / off.evals_per_epoch)
                  for i in range(off.evals_per_epoch)})
  points = []
  writes = bool(workdir) and jax.process_index() == 0  # several processes: process 0 writes
  if writes:
    os.makedirs(workdir, exist_ok=True)
  out_file = open(os.path.join(workdir, "offline.jsonl"), "w") if writes else None
  if writes:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  def snapshot(s):
    return (jax.tree_util.tree_map(jnp.copy, s.tables), jax.tree_util.tree_map(jnp.copy, s.dense_params))

  def record(epoch, batch_in_epoch, train_acc, gnorms, prev):
    test = evaluate_now()
    tables_prev, dense_prev = prev
    point = {
        "epoch": epoch + batch_in_epoch / batches_per_epoch,
        "batches": batch_in_epoch, "test": test, "train": train_acc.result(),
        "grad_norm_dense": float(np.mean(gnorms[0])) if gnorms[0] else float("nan"),
        "grad_norm_tables": float(np.mean(gnorms[1])) if gnorms[1] else float("nan"),
        "change_dense": _tree_diff_norm(state.dense_params, dense_prev),
        "change_tables": _tree_diff_norm(state.tables, tables_prev),
    }
    points.append(point)
    if out_file:
      out_file.write(json.dumps(_jsonable(point)) + "\n")
      out_file.flush()
    log.info("epoch %.2f test auc %.4f logloss %.4f", point["epoch"],
             test["auc"], test["logloss"])

  started = time.time()
  initial_test = evaluate_now()
  points.append({"epoch": 0.0, "batches": 0, "test": initial_test})
  progress = _Progress(config.train.progress, off.epochs * batches_per_epoch * config.data.batch_size, 0)
  try:
    for epoch in range(off.epochs):
      train_dense, train_tables = True, True
      if epoch >= 1:
        if off.between_epochs == "reinit":
          fresh = init_tables(jax.random.PRNGKey(config.seed + 1000 + epoch),
                              model.table_specs(), num_rows)
          if table_rows != num_rows:  # padding rows, as create_model_and_state adds them
            fresh = {k: jnp.pad(t, ((0, table_rows - num_rows), (0, 0))) for k, t in fresh.items()}
          state = state._replace(tables=fresh, table_opt_state={
              name: sparse_opts[name].init(t) for name, t in fresh.items()})
          if mesh is not None:
            state = sh.shard_state(state, mesh, table_rows)
        elif off.between_epochs in ("freeze", "dense_only"):
          train_tables = False
        elif off.between_epochs == "tables_only":
          train_dense = False
      multi = multi_for(train_dense, train_tables)
      train_acc = metrics_lib.MetricAccumulator()
      gnorms = ([], [])
      prev = snapshot(state)
      done = 0
      source = with_unique(_take_batches(iter(train_data), batches_per_epoch), table_rows)
      for n, group in prefetch(_grouped_until(source, k, marks, ladder), config.data.prefetch):
        device_batch = {key: group[key] for key in keys}
        state, out = multi(state, device_batch if place is None else place(device_batch))
        done += n
        train_acc.update(group["label"].reshape(-1), preds_to_host(out.preds_B).reshape(-1),
                         group["weight"].reshape(-1))
        gnorms[0].extend(to_host(out.grad_norm_dense).tolist())
        gnorms[1].extend(to_host(out.grad_norm_tables).tolist())
        progress.update(int((group["weight"] > 0).sum()), train_acc.result())
        if done in marks:
          record(epoch, done, train_acc, gnorms, prev)
          train_acc = metrics_lib.MetricAccumulator()
          gnorms = ([], [])
          prev = snapshot(state)
      if done < batches_per_epoch:
        raise ValueError(
            f"config data.max_rows={config.data.max_rows}: the training stream ended after "
            f"{done} of the {batches_per_epoch} batches of epoch {epoch + 1}; set "
            "data.max_rows to at most the rows the source has")
  finally:
    progress.close()
    if out_file:
      out_file.close()
  wall = time.time() - started
  trained = int(off.epochs * config.data.max_rows)
  final = points[-1]["test"]
  best = max(points[1:] or points, key=lambda p: p["test"]["auc"])
  result = {"points": points, "params": params, "batches_per_epoch": batches_per_epoch,
            # The record's headline numbers: held-out metrics after the last epoch.
            **{k: final.get(k) for k in ("auc", "logloss", "ne", "pcoc", "base_rate")},
            "best_auc": best["test"]["auc"], "best_epoch": best["epoch"],
            "rows": trained, "wall_time_sec": wall, "rows_per_sec": trained / max(wall, 1e-9),
            "param_count": params["total"]}
  if warm_report is not None:
    result["warm_start"] = warm_report
  if mesh is not None:
    result["mesh"] = {"shape": [int(mesh.shape[a]) for a in sh.AXES],
                      "devices": sh.mesh_size(mesh), "processes": jax.process_count(),
                      "table_rows": table_rows}
  if writes:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(_jsonable({**result, "model": config.model.name}), f, indent=2)
  result["_state"] = state
  return result


def _take_batches(batches, n):
  for i, b in enumerate(batches):
    if i >= n:
      return
    yield b


def _grouped_until(batches, k, marks, stack=_stack):
  """Groups of up to ``k`` batches that never straddle an evaluation mark."""
  buf, done = [], 0
  marks = set(marks)
  for b in batches:
    buf.append(b)
    done += 1
    if len(buf) == k or done in marks:
      yield len(buf), stack(buf)
      buf = []
  if buf:
    yield len(buf), stack(buf)
