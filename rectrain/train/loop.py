"""The one-pass streaming loop (progressive validation) and the offline protocol.

For each batch of a time-ordered stream: predict, record metrics, then learn.
``steps_per_dispatch`` batches are stacked and run by one jitted ``lax.scan``;
the host prepares the next group (parse, hash, dedup ids) in a background
thread and computes the metrics of the previous group while the device trains
on the current one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import rectrain.metrics as metrics_lib  # noqa: E402
from rectrain.data import idmap as idmap_lib
from rectrain.data import make_stream
from rectrain.data.batch import DEVICE_KEYS
from rectrain.data.pipeline import prefetch, split_first_batch, with_unique
from rectrain.models import build_model, count_params, init_tables
from rectrain.optim import get_optimizer, get_sparse_optimizer
from rectrain.train import checkpoint as ckpt
from rectrain.train import faults
from rectrain.train.features import refuse_ignored
from rectrain.train.async_sim import AsyncState, make_async_train_step_from_config
from rectrain.train import distributed as dist
from rectrain.train import serving as serving_lib
from rectrain.train import sharding as sh
from rectrain.train.step import TrainState, init_train_state, make_multi_step, make_train_step

log = logging.getLogger(__name__)

HOST_KEYS = ("label", "weight", "time", "cat", "index", "true_prob", "idmap_counters")
# Seconds to sleep after each dispatch: a testing aid for the crash-and-resume
# test (it makes a run slow enough to be killed mid-stream). Never set in use.
_DEBUG_DELAY = float(os.environ.get("RECTRAIN_DEBUG_DISPATCH_DELAY", "0") or 0)


class NonFiniteLossError(FloatingPointError):
  """Raised when ``train.nonfinite == 'raise'`` and a batch's loss is not finite."""


def _opt_kwargs(section) -> tuple[str, dict]:
  d = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
  name = d.pop("name")
  warmup = d.pop("warmup_steps", 0)
  if warmup and "learning_rate" in d and not callable(d["learning_rate"]):
    # Linear warm-up from 0 to the learning rate over the first warmup_steps updates.
    d["learning_rate"] = optax.linear_schedule(0.0, float(d["learning_rate"]), int(warmup))
  return name, d


BIAS = "bias"


def bias_labels(dense_params):
  """``"bias"`` for the model's global intercept, ``"dense"`` for the rest.

  The intercept is ``first_order/bias`` (the LR part's ``b`` of LR, FM, W&D,
  DeepFM) or, in a model without an LR part (DCNv2, DLRM, DNN), the output
  layer's bias ``out/bias``.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dense_params))
  has_first_order = any(path[-2:] == ("first_order", "bias") for path in flat)
  intercept = ("first_order", "bias") if has_first_order else ("out", "bias")
  return flax.traverse_util.unflatten_dict(
      {p: BIAS if p[-2:] == intercept else "dense" for p in flat})


def build_optimizers(config, table_names):
  """The dense optax optimizer and one sparse optimizer per table, from config.optim.

  With ``optim.bias.name`` set, the model's intercept (:func:`bias_labels`)
  learns with that optimizer, the other dense parameters with
  ``optim.dense``; ``name=""`` leaves it to ``optim.dense``.
  """
  def build(factory, section, key):
    name, kw = _opt_kwargs(section)
    try:
      return factory(name, **kw)
    except (TypeError, ValueError, KeyError) as e:
      raise ValueError(f"config {key}: {e}") from None

  def table_section(table):
    key = f"optim.tables.{table}" if table in config.optim.tables else "optim.sparse"
    return key, config.optim.tables.get(table, config.optim.sparse)

  dense_opt = build(get_optimizer, config.optim.dense, "optim.dense")
  bias = config.optim.get("bias", None)
  if bias is not None and bias.get("name", ""):
    bias_opt = build(get_optimizer, bias, "optim.bias")
    dense_opt = optax.multi_transform({BIAS: bias_opt, "dense": dense_opt}, bias_labels)
  sparse = {}
  for table in table_names:
    key, section = table_section(table)
    sparse[table] = build(get_sparse_optimizer, section, key)
  unknown = set(config.optim.tables.keys()) - set(table_names)
  if unknown:
    raise KeyError(f"config optim.tables names tables {sorted(unknown)} that the model "
                   f"does not have (it has {list(table_names)})")
  return dense_opt, sparse


def create_model_and_state(config, num_rows: int, num_fields: int, num_dense: int,
                           table_rows: int | None = None):
  """Builds the model, its initial TrainState, the optimizers and the param count.

  ``table_rows > num_rows`` (a sharded run, :func:`rectrain.train.sharding.padded_rows`)
  appends zero rows to every table after initialising its ``num_rows`` real
  rows, so the real rows are the same as without padding; the param count
  counts the real rows.
  """
  model = build_model(config.model)
  specs = model.table_specs()
  key = jax.random.PRNGKey(config.seed)
  k_tables, k_dense = jax.random.split(key)
  tables = init_tables(k_tables, specs, num_rows)
  if table_rows is not None and table_rows != num_rows:
    if table_rows < num_rows:
      raise ValueError(f"create_model_and_state: table_rows={table_rows} < num_rows={num_rows}")
    tables = {k: jnp.pad(t, ((0, table_rows - num_rows), (0, 0))) for k, t in tables.items()}
  rows = {s.name: jnp.zeros((2, num_fields, s.dim), jnp.float32) for s in specs}
  dense_params = model.init(k_dense, rows, jnp.zeros((2, num_dense), jnp.float32))
  dense_opt, sparse_opts = build_optimizers(config, [s.name for s in specs])
  state = init_train_state(dense_params, tables, dense_opt, sparse_opts)
  params = count_params(model, num_rows, num_fields, num_dense)
  return model, state, dense_opt, sparse_opts, params


def _grouped(batches: Iterator[dict], k: int, done: int = 0) -> Iterator[tuple[int, dict]]:
  """Stacks up to ``k`` consecutive batches; yields (count, stacked); an input
  fault ends it with a group marked ``faults.FAULT`` (rectrain/train/faults.py)."""
  return faults.grouped(batches, k, _stack, done)


def _stack(batches: list[dict]) -> dict:
  keys = [k for k in batches[0] if np.ndim(batches[0][k]) > 0]
  return {k: np.stack([b[k] for b in batches]) for k in keys}


def _skip(batches: Iterator[dict], n: int) -> Iterator[dict]:
  for i, b in enumerate(batches):
    if i >= n:
      yield b


class _Progress:
  """tqdm progress bar with rows/s and the running AUC / log loss."""

  def __init__(self, enabled: bool, total: int | None, initial: int):
    self.bar = None
    if enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, unit="row", unit_scale=True,
                      dynamic_ncols=True, mininterval=0.5, desc="train")

  def update(self, rows: int, running: dict):
    if self.bar is None:
      return
    self.bar.update(rows)
    self.bar.set_postfix(auc=f"{running.get('auc', float('nan')):.4f}",
                         logloss=f"{running.get('logloss', float('nan')):.4f}",
                         refresh=False)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def train_stream(config: ml_collections.ConfigDict, workdir: str | None = None,
                 stream=None, resume: bool = True, keep_predictions: bool = False,
                 on_window: Callable[[dict], None] | None = None) -> dict:
  """Runs one pass over the configured stream with progressive validation.

  ``config.serving`` (rectrain/train/serving.py): predictions come from a
  served copy of the parameters refreshed from the live ones every
  ``sync_tables_s`` / ``sync_dense_s`` seconds of event time (0 = the live
  model serves, the default; ``freeze_after_s`` stops the refreshes).
  ``train.learn=False`` scores without learning (e.g. a warm-started, frozen
  model on later days). ``train.warm_start.path`` starting with ``@`` names a
  path relative to the parent of ``workdir`` (a sibling run of a sweep), and
  ``{seed}`` in it is replaced by ``config.seed``, so one config serves every
  seed: ``@old_seed{seed}/checkpoints/000000000512``.

  Args:
    config: a run config (see rectrain/configs.py).
    workdir: where config.json, metrics.jsonl, summary.json and checkpoints go;
      None keeps everything in memory (no checkpoints).
    stream: an already built stream (else ``make_stream(config.data, seed)``).
    resume: continue from the latest checkpoint in ``workdir`` if there is one.
    keep_predictions: also return the predictions of every real row, in
      stream order, under ``"_predictions"`` (for tests and analysis).
    on_window: called with every closed metrics window (the dict written to
      metrics.jsonl, e.g. ``{"window": "rows", "end_row": ..., "ne": ...}``)
      as soon as it closes; an exception it raises ends the run (the tuner
      prunes trials this way).

  ``config.idmap.enabled``: the stream yields raw ids and the collision-free
  map (rectrain/data/idmap.py) assigns table rows in the input pipeline
  instead of hashing; the step first resets the rows (re)assigned in the
  batch; the map's state is saved with every checkpoint (``idmap.npz``); its
  statistics go to metrics.jsonl (``"idmap"`` windows) and the summary.

  ``config.mesh.shape`` with more than one device (rectrain/train/sharding.py):
  the tables (and their row-wise optimizer state) are row-sharded over every
  device of the mesh, padded to ``padded_rows`` (the padding rows are never
  used), the batch is split over the ``data`` axis and the step is the
  ``shard_map`` step; predictions and metrics are the same as on one device
  up to float32 summation order. ``config.distributed`` (or the
  ``RECTRAIN_COORDINATOR`` environment, rectrain/train/distributed.py) starts
  several processes: each places its interleaved share of every global batch,
  every process computes the same metrics, process 0 writes the files. The
  returned ``"_state"`` then keeps the padded, sharded tables (rows
  ``[:num_rows]`` are the table); a checkpoint restores on any device count.

  Returns:
    the summary dict (also written to ``workdir/summary.json``), with the
    final (live) state under the key ``"_state"`` and, with the id map, the
    map under ``"_idmap"`` (neither serialised).
  """
  from rectrain.configs import validate
  validate(config)
  refuse_ignored(config, "stream")
  t_start = time.perf_counter()
  mesh = _run_mesh(config)  # None: one device, the unsharded step
  is_main = jax.process_index() == 0
  use_idmap = _idmap_enabled(config)
  if stream is None:
    stream = make_stream(config.data, seed=config.seed, raw_ids=use_idmap)
  im = idmap_lib.from_config(config.idmap, stream.layout, config.data.batch_size) if use_idmap else None
  num_rows = stream.num_rows if im is None else im.num_rows
  num_fields = stream.layout.num_fields
  num_dense = stream.num_dense
  table_rows = num_rows if mesh is None else sh.padded_rows(num_rows, mesh)
  model, state, dense_opt, sparse_opts, params = create_model_and_state(
      config, num_rows, num_fields, num_dense, table_rows=table_rows)
  learn = bool(config.train.get("learn", True))
  if mesh is None:
    step_fn = make_train_step(model, dense_opt, sparse_opts, train_dense=learn, train_tables=learn)
  else:  # async / id map / serving / learn=False are refused by _run_mesh
    step_fn = sh.make_sharded_train_step(model, dense_opt, sparse_opts)
  if config.train.async_sim.enabled:
    # Simulated asynchronous training: gradients computed at stale parameters.
    async_init, step_fn = make_async_train_step_from_config(
        model, dense_opt, sparse_opts, config.train.async_sim,
        max_unique=config.data.batch_size * num_fields)  # = with_unique's default U
    state = async_init(state)  # before restore: it is the checkpoint template
  if im is not None:  # reset (re)assigned rows and their optimizer state before each step
    step_fn = idmap_lib.with_row_reset(step_fn, model.table_specs(), sparse_opts,
                                       jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
  serving = config.get("serving", None)
  schedules = None
  if serving_lib.serving_enabled(serving):  # predictions from a served copy, synced on event time
    stale = serving_lib.stale_groups(serving)
    step_fn = serving_lib.make_serving_step(step_fn, model, *stale)
    state = serving_lib.init_serving_state(state, *stale)  # before restore: the checkpoint template
    schedules = _sync_schedules(serving)
  device_keys = DEVICE_KEYS + (idmap_lib.RESET_KEYS if im is not None else ())
  if mesh is None:
    multi = make_multi_step(step_fn)
    place = None
  else:  # before restore: the sharded state is the checkpoint template
    state = sh.shard_state(state, mesh, table_rows)
    multi = sh.make_sharded_multi_step(step_fn, mesh, state, table_rows, device_keys)
    place = _batch_placer(mesh, device_keys)

  window = _make_windows(config, stream)
  overall = metrics_lib.MetricAccumulator()
  # Streams that know the true click probability (synthetic) get the Bayes
  # ceiling measured on exactly the rows the model was evaluated on.
  ceiling = metrics_lib.MetricAccumulator()
  batches_done = 0
  rows_done = 0
  im_windows = _IdMapWindows(config.metrics.window_rows) if im is not None else None
  metrics_file = None
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    if is_main:
      with faults.writing(workdir, "config.json"), open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
  resumed_from = None
  resumed_final = False
  next_row = 0  # stream rows trained (the index after the last trained row)
  by_file = False  # resumed at a per-file position: nothing to skip
  path = ckpt.latest_checkpoint(workdir) if workdir and resume else None
  if path:
    if ("serving" in _meta_of(path)) != (schedules is not None):
      raise ValueError(f"{path}: checkpoint written with serving "
                       f"{'on' if schedules is None else 'off'} but config.serving has it "
                       f"{'off' if schedules is None else 'on'}; use another workdir")
    state, meta = _restore(path, state, num_rows, table_rows, mesh)
    batches_done, rows_done = meta["batches"], meta["rows"]
    next_row = int(meta.get("stream_rows", 0))
    by_file = _resume_by_file(stream, config, meta, next_row)
    resumed_final = bool(meta.get("final"))
    if schedules is not None:
      schedules = _sync_schedules(serving, meta["serving"])
    overall = metrics_lib.MetricAccumulator.from_state(meta["overall"])
    ceiling = metrics_lib.MetricAccumulator.from_state(meta["ceiling"])
    window = metrics_lib.WindowedMetrics.from_state(meta["windows"])
    if im is not None:
      im, im_windows = _idmap_restore(path, meta, config.metrics.window_rows)
    resumed_from = path
    if is_main:
      _truncate_jsonl(os.path.join(workdir, "metrics.jsonl"), meta["metrics_lines"])
  elif config.train.warm_start.path:
    state = _warm_start(state, _warm_start_path(config.train.warm_start.path, workdir, config.seed),
                        config.train.warm_start.parts)
  if workdir and is_main:
    with faults.writing(workdir, "metrics.jsonl"):
      metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a")
  metrics_lines = _count_lines(workdir)

  k = config.train.steps_per_dispatch
  slice_fields = [s for s in config.metrics.slice_fields.split(",") if s]
  slice_cols = [stream.layout.names.index(s) for s in slice_fields]

  source = iter(stream)
  if config.train.get("warmup_batch", 0) and not by_file:  # the first batch in small, padded sub-batches
    source = split_first_batch(source, config.data.batch_size, config.train.warmup_batch)
  source = _skip(source, 0 if by_file else batches_done)
  if im is None:
    source = with_unique(source, table_rows)  # padding id: table_rows (= num_rows on one device)
    groups = _grouped(source, k, batches_done)
  else:  # skipped batches were seen by the restored map: remap after the skip
    groups = idmap_lib.with_state_snapshots(
        _grouped(idmap_lib.with_idmap(source, im), k, batches_done), im,
        config.train.checkpoint_every if workdir else 0, batches_done)
  groups = prefetch(groups, config.data.prefetch)
  total = config.data.max_rows or None
  progress = _Progress(config.train.progress and is_main, total, rows_done)

  def record(pending):
    nonlocal metrics_lines, rows_done, nonfinite_rows, next_row
    n, host, out = pending
    next_row = max(next_row, int(host["index"].max(initial=-1)) + 1)
    if mesh is None:
      preds = np.asarray(out.preds_B).reshape(-1)
      applied = np.asarray(out.applied)
    else:
      preds = _preds_to_host(out.preds_B).reshape(-1)
      applied = _replicated_to_host(out.applied)
    if keep_predictions:
      kept_predictions.append(preds[host["weight"].reshape(-1) > 0])
    if config.train.nonfinite == "raise" and not applied.all():
      bad = int(np.argmin(applied))
      raise NonFiniteLossError(
          f"non-finite loss at batch {batches_done - n + bad} (stream rows from "
          f"{int(host['index'][bad].max(initial=-1))}); set train.nonfinite=skip to skip")
    labels = host["label"].reshape(-1)
    weights = host["weight"].reshape(-1)
    bad_preds = ~np.isfinite(preds)
    if bad_preds.any():  # a non-finite (skipped) batch: its rows are left out of the metrics
      nonfinite_rows += int((weights[bad_preds] > 0).sum())
      weights = np.where(bad_preds, 0.0, weights).astype(np.float32)
      preds = np.where(bad_preds, 0.5, preds)
    times = host["time"].reshape(-1)
    slices = {name: host["cat"][..., col].reshape(-1) for name, col in zip(slice_fields, slice_cols)}
    overall.update(labels, preds, weights)
    if "true_prob" in host:
      ceiling.update(labels, host["true_prob"].reshape(-1), weights)
    closed = window.update(labels, preds, weights, time=times, slices=slices or None)
    for w in closed:
      if metrics_file:
        _write_line(metrics_file, w, workdir)
        metrics_lines += 1
      if on_window is not None:
        on_window(w)
    if im_windows is not None:
      rows_B = (weights.reshape(n, -1) > 0).sum(axis=1)
      for rec in im_windows.update(host["idmap_counters"], rows_B, rows_done):
        if metrics_file:
          _write_line(metrics_file, rec, workdir)
          metrics_lines += 1
    real = int((weights > 0).sum())
    rows_done += real
    progress.update(real, overall.result())

  nonfinite_rows = 0
  kept_predictions = []
  pending = None
  t_first = None
  rows_at_first = rows_done
  dispatches = 0
  saved_at = batches_done  # a checkpoint holds this many batches (none: 0)

  def checkpoint(group, final=False):
    nonlocal saved_at
    if metrics_file and not metrics_file.closed:
      with faults.writing(workdir, "metrics.jsonl"):
        metrics_file.flush()
    im_meta, im_files = _idmap_checkpoint(im_windows, group, batches_done)
    path = _save_checkpoint(workdir, batches_done, state, {
        "batches": batches_done, "rows": rows_done, "overall": overall.state(), "ceiling": ceiling.state(),
        "windows": window.state(), "metrics_lines": metrics_lines, "table_rows": table_rows,
        "stream_rows": next_row, "stream_files": _files_before(stream, next_row),
        **({"final": True} if final else {}), **im_meta, **_serving_meta(schedules)},
        keep=config.train.keep_checkpoints, extra_files=im_files)
    saved_at = batches_done
    return path

  fault = None
  try:
    for n, group in groups:
      fault = group.pop(faults.FAULT, None)
      if n == 0:
        break
      device_batch = {key: group[key] for key in device_keys}
      if schedules is not None:
        for key, schedule in zip(serving_lib.SYNC_KEYS, schedules):
          device_batch[key] = schedule.flags(group["time"], group["weight"])
      if place is not None:
        device_batch = place(device_batch)
      state, out = multi(state, device_batch)
      batches_done += n
      dispatches += 1
      faults.kill_point("dispatch")
      if pending is not None:
        record(pending)
      pending = (n, {key: group[key] for key in HOST_KEYS if key in group}, out)
      if _DEBUG_DELAY:
        time.sleep(_DEBUG_DELAY)
      if t_first is None:
        jax.block_until_ready(out.preds_B)
        t_first = time.perf_counter()
        record(pending)
        pending = None
        rows_at_first = rows_done
      every = config.train.checkpoint_every
      if workdir and every and batches_done // every != (batches_done - n) // every:
        if pending is not None:
          record(pending)
          pending = None
        checkpoint(group)
    if pending is not None:
      record(pending)
    jax.block_until_ready(state)
    if fault is not None:  # everything read before an input fault is trained: keep it
      saved = None
      if workdir and batches_done > saved_at:
        saved = checkpoint(group if im is None else {"_idmap_state": group.get("_idmap_state")})
      elif workdir and batches_done:
        saved = faults.newest_checkpoint(workdir)
      raise faults.input_fault(fault, saved, rows_done)
  finally:
    progress.close()
    if fault is not None and metrics_file:
      metrics_file.close()
  t_end = time.perf_counter()

  # The last windows are counted in the final checkpoint's metrics_lines: a run
  # resumed from it (killed before summary.json) keeps them and writes none again.
  final_lines = metrics_file if not resumed_final else None
  for w in window.finalize_windows():
    if final_lines:
      _write_line(metrics_file, w, workdir)
      metrics_lines += 1
    if on_window is not None:
      on_window(w)
  for rec in (im_windows.final_records(rows_done) if im_windows is not None else []):
    if final_lines:
      _write_line(metrics_file, rec, workdir)
      metrics_lines += 1
  if metrics_file:
    with faults.writing(workdir, "metrics.jsonl"):
      metrics_file.close()
  if workdir and not resumed_final:
    checkpoint({"_idmap_state": im.state()} if im is not None else {}, final=True)

  served = state
  state = state.live if isinstance(state, serving_lib.ServingState) else state
  result = overall.result()
  bayes = ceiling.result() if ceiling.result()["rows"] else {}
  report = stream.report()
  steady_rows = rows_done - rows_at_first
  steady_time = (t_end - t_first) if t_first else float("nan")
  summary = {
      "model": config.model.name,
      "rows": rows_done,
      "auc": result["auc"],
      "logloss": result["logloss"],
      "ne": result["ne"],
      "pcoc": result["pcoc"],
      "base_rate": result["base_rate"],
      "bayes_auc": bayes.get("auc"),
      "bayes_logloss": bayes.get("logloss"),
      "bayes_ne": bayes.get("ne"),
      "rows_per_sec": steady_rows / steady_time if steady_time and steady_rows > 0 else float("nan"),
      "wall_time_sec": t_end - t_start,
      "batches": batches_done,
      "nonfinite_batches": int(state.nonfinite if mesh is None
                               else _replicated_to_host(state.nonfinite)),
      "nonfinite_prediction_rows": nonfinite_rows,
      "skipped_rows": int(sum(report.get("skipped", {}).values())),
      "skipped_by_reason": dict(report.get("skipped", {})),
      "rows_read": report.get("rows_read"),
      "params": params,
      "param_count": params["total"],
      "variation": window.variation(),
      "resumed_from": resumed_from,
      "table_bytes": _table_bytes(state),
  }
  if mesh is not None:
    summary["table_bytes"], summary["table_bytes_per_device"] = _sharded_table_bytes(
        state, table_rows, num_rows)
    summary["mesh"] = {"shape": [int(mesh.shape[a]) for a in sh.AXES],
                       "devices": sh.mesh_size(mesh), "processes": jax.process_count(),
                       "table_rows": table_rows}
  if im is not None:
    summary.update(_idmap_summary(im, im_windows))
  if schedules is not None:
    summary["serving"] = {"table_syncs": schedules[0].syncs, "dense_syncs": schedules[1].syncs,
                          "tables_served_copy": bool(served.served_tables),
                          "dense_served_copy": bool(served.served_dense)}
  if workdir and is_main:
    with faults.writing(workdir, "summary.json"), open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(_jsonable(summary), f, indent=2)
  summary["_state"] = state.train if isinstance(state, AsyncState) else state
  if im is not None:
    summary["_idmap"] = im
  if keep_predictions:
    summary["_predictions"] = (np.concatenate(kept_predictions) if kept_predictions
                               else np.zeros((0,), np.float32))
  return summary


# ---------------------------------------------------------------------------
# Several devices and processes (config.mesh, config.distributed) in the streaming loop.


def _run_mesh(config):
  """The run's device mesh from ``config.mesh`` (after the ``jax.distributed`` start-up).

  Returns None for one device (the unsharded step). Errors name the config
  keys that do not fit a sharded run.
  """
  section = config.get("distributed", None)
  if not jax.distributed.is_initialized():
    dist.initialize(section.to_dict() if section is not None else None)
  section = config.get("mesh", None)
  shape = tuple(int(x) for x in section.shape) if section is not None else (1, 1)
  processes = jax.process_count()
  if shape == (1, 1) and processes == 1:
    return None
  mesh = sh.make_mesh(shape)
  devices = sh.mesh_size(mesh)
  if processes > 1:
    if devices != len(jax.devices()):
      raise ValueError(f"config mesh.shape={shape}: a run of {processes} processes must use "
                       f"all their {len(jax.devices())} devices (e.g. mesh.shape=(-1, 1))")
    if mesh.shape["data"] % processes:
      raise ValueError(f"config mesh.shape={shape}: the data axis ({mesh.shape['data']}) must "
                       f"be a multiple of the {processes} processes")
  elif devices == 1:
    return None
  data = mesh.shape["data"]
  if config.data.batch_size % data:
    raise ValueError(f"config data.batch_size={config.data.batch_size} is not divisible by the "
                     f"{data} data shards of mesh.shape={shape}")
  refused = []
  if config.train.async_sim.enabled:
    refused.append("train.async_sim.enabled=True")
  if serving_lib.serving_enabled(config.get("serving", None)):
    refused.append("serving.sync_tables_s / sync_dense_s / freeze_after_s (a served copy)")
  if _idmap_enabled(config):
    refused.append("idmap.enabled=True")
  if not config.train.get("learn", True):
    refused.append("train.learn=False")
  if config.train.warm_start.path:
    refused.append("train.warm_start.path")
  if refused:
    raise ValueError(f"config mesh.shape={shape} ({devices} devices) does not work with "
                     f"{'; '.join(refused)} yet: set mesh.shape=(1, 1) or turn these off")
  return mesh


def _batch_placer(mesh, keys):
  """``place(stacked host batches) -> device arrays`` sharded over ``data``.

  With several processes each places rows ``p::H`` of every global batch
  (:func:`rectrain.train.distributed.host_rows`); ``unique`` (of the whole
  batch, the same on every host) is replicated.
  """
  shardings = sh.batch_shardings(mesh, keys, stacked=True)
  hosts, me = jax.process_count(), jax.process_index()

  def place(batches):
    if hosts > 1:
      batches = {k: v if k == "unique" else v[:, me::hosts] for k, v in batches.items()}
    return dist.put_local(batches, shardings)

  return place


def _preds_to_host(preds_KxB) -> np.ndarray:
  """Sharded predictions ``(K, B)`` as a host array in stream row order.

  With ``H`` processes the global batch holds process ``p``'s rows ``p::H``
  at ``[p B/H, (p+1) B/H)``; this undoes that interleave.
  """
  hosts = jax.process_count()
  if hosts == 1:
    return np.asarray(preds_KxB)
  full_KxB = dist.gather_rows_to_host(preds_KxB)
  k, b = full_KxB.shape
  return full_KxB.reshape(k, hosts, b // hosts).transpose(0, 2, 1).reshape(k, b)


def _replicated_to_host(x) -> np.ndarray:
  """A replicated array (possibly spanning other processes' devices) on the host."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _sharded_table_bytes(state, table_rows: int, num_rows: int) -> tuple[int, int]:
  """(bytes of the real rows of the tables + row-wise optimizer state, bytes on one device)."""
  total = per_device = 0
  for x in jax.tree_util.tree_leaves((state.tables, state.table_opt_state)):
    row_leaf = x.ndim >= 1 and x.shape[0] == table_rows
    total += x.nbytes // table_rows * num_rows if row_leaf else x.nbytes
    per_device += x.addressable_shards[0].data.nbytes
  return int(total), int(per_device)


def _restore(path: str, state, num_rows: int, table_rows: int, mesh):
  """Restores checkpoint ``path`` onto ``state``'s shardings; returns (state, meta).

  A checkpoint written with another device count has its tables padded to
  another ``table_rows`` (meta key ``table_rows``; absent = ``num_rows``): its
  row leaves are restored whole, cut or zero-padded to this run's rows (only
  padding rows, never used, differ) and sharded on this run's mesh.
  """
  saved = int(_meta_of(path).get("table_rows", num_rows))
  if saved == table_rows:
    return ckpt.restore_checkpoint(path, state)
  if not isinstance(state, TrainState) or saved < num_rows:
    raise ValueError(f"{path}: checkpoint tables have {saved} rows; this run needs "
                     f"{table_rows} rows ({num_rows} real) and a plain train state: "
                     "another data.cat_buckets, serving or async setting?")
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def abstract(tree):
    return jax.tree_util.tree_map(
        lambda x: (jax.ShapeDtypeStruct((saved,) + x.shape[1:], x.dtype, sharding=local)
                   if x.ndim >= 1 and x.shape[0] == table_rows else x), tree)

  def fit(tree):
    def one(x):
      if x.ndim < 1 or x.shape[0] != saved:
        return x
      if saved > table_rows:
        return x[:table_rows]
      return jnp.pad(x, [(0, table_rows - saved)] + [(0, 0)] * (x.ndim - 1))
    return jax.tree_util.tree_map(one, tree)

  like = state._replace(tables=abstract(state.tables),
                        table_opt_state=abstract(state.table_opt_state))
  restored, meta = ckpt.restore_checkpoint(path, like)
  restored = restored._replace(tables=fit(restored.tables),
                               table_opt_state=fit(restored.table_opt_state))
  if mesh is not None:
    restored = sh.shard_state(restored, mesh, table_rows)
  return restored, meta


def _files_before(stream, row: int):
  """The stream's per-file position at ``row`` (None for streams without files)."""
  return stream.files_before(row) if hasattr(stream, "files_before") else None


def _resume_by_file(stream, config, meta: dict, row: int) -> bool:
  """Starts ``stream`` at a checkpoint's per-file position (finished files are not
  read again); False (the loop re-reads and skips the batches) where it cannot."""
  files = meta.get("stream_files")
  if (files is None or not hasattr(stream, "resume_at") or row <= 0
      or row % config.data.batch_size or config.data.shuffle_buffer):
    return False
  try:
    stream.resume_at(row, files)
  except ValueError as e:
    log.warning("resuming by re-reading the stream from its start: %s", e)
    return False
  return True


def _write_line(f, record: dict, workdir: str) -> None:
  """One metrics.jsonl line; a write fault is an OutputError (faults.writing)."""
  with faults.writing(workdir, "metrics.jsonl"):
    f.write(json.dumps(_jsonable(record)) + "\n")
  faults.kill_point("metrics")


def _save_checkpoint(workdir: str, batches: int, state, meta: dict, keep: int,
                     extra_files=None) -> str:
  """:func:`rectrain.train.checkpoint.save_checkpoint`, also for several processes.

  With several processes every process writes its shards (orbax) and process
  0 the directory, ``meta.json`` (last) and the pruning of old checkpoints.
  """
  if jax.process_count() == 1:
    return ckpt.save_checkpoint(workdir, batches, state, meta, keep=keep, extra_files=extra_files)
  import shutil
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  if extra_files:
    raise ValueError("several processes: checkpoints with extra files are not supported")
  path = os.path.join(ckpt._dir(workdir), f"{batches:012d}")
  main = jax.process_index() == 0
  if main:
    if os.path.exists(path):
      shutil.rmtree(path)
    os.makedirs(path)
  multihost_utils.sync_global_devices(f"rectrain checkpoint {batches} dir")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(path, "state"), state)
  checkpointer.wait_until_finished()
  multihost_utils.sync_global_devices(f"rectrain checkpoint {batches} state")
  if main:
    ckpt.write_meta(path, meta)
    for old in ckpt._complete(workdir)[:-keep] if keep > 0 else []:
      shutil.rmtree(old, ignore_errors=True)
  multihost_utils.sync_global_devices(f"rectrain checkpoint {batches} meta")
  return path


# ---------------------------------------------------------------------------
# Serving copy (rectrain/train/serving.py) and warm start in the streaming loop.


def _sync_schedules(serving, saved: dict | None = None):
  """The host-side sync schedules (tables, dense) of ``config.serving``; ``saved``: from a checkpoint."""
  out = []
  for group in ("tables", "dense"):
    state = (saved or {}).get(group, {})
    # The config key that asks for this group's served copy ("" = the group is live).
    where = (f"serving.sync_{group}_s" if serving[f"sync_{group}_s"]
             else "serving.freeze_after_s" if serving.freeze_after_s else "")
    out.append(serving_lib.SyncSchedule(serving[f"sync_{group}_s"], serving.freeze_after_s,
                                        key=state.get("key"), syncs=state.get("syncs", 0),
                                        where=where))
  return tuple(out)


def _serving_meta(schedules) -> dict:
  if schedules is None:
    return {}
  return {"serving": {"tables": schedules[0].state(), "dense": schedules[1].state()}}


def _meta_of(path: str) -> dict:
  """The meta.json of checkpoint ``path``."""
  with open(os.path.join(path, "meta.json")) as f:
    return json.load(f)


def _warm_start_path(path: str, workdir: str | None, seed: int) -> str:
  """``{seed}`` -> the run's seed; ``@NAME/...`` -> ``<parent of workdir>/NAME/...`` (a sibling run)."""
  resolved = path.replace("{seed}", str(seed))
  if not resolved.startswith("@"):
    return resolved
  if not workdir:
    raise ValueError(f"config train.warm_start.path={path!r}: a path starting with '@' is "
                     "relative to the parent of the run directory, but this run has no workdir")
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), resolved[1:])


def _warm_start(state, path: str, parts: str):
  """Warm start of the live TrainState inside a serving / async wrapper."""
  if isinstance(state, serving_lib.ServingState):
    stale = (bool(state.served_tables), bool(state.served_dense))
    return serving_lib.init_serving_state(_warm_start(state.live, path, parts), *stale)
  if isinstance(state, AsyncState):
    return state._replace(train=ckpt.warm_start(state.train, path, parts)[0])
  return ckpt.warm_start(state, path, parts)[0]


# ---------------------------------------------------------------------------
# Collision-free id map (rectrain/data/idmap.py) in the streaming loop.


def _idmap_enabled(config) -> bool:
  section = config.get("idmap", None)
  return bool(section is not None and section.get("enabled", False))


class _IdMapWindows:
  """The id map's statistics per row window and over the whole run.

  A batch counts in the row window (``metrics.window_rows`` rows of weight >
  0) of its last real row, so the ``"idmap"`` records of metrics.jsonl line up
  with the ``"rows"`` windows when ``window_rows`` is a multiple of the batch
  size (else a window's record holds whole batches). ``window_rows = 0``: one
  record for the whole run. Each record is ``{"window": "idmap", "index",
  "slice": None, "start_row", "end_row", "partial", **idmap.window_summary}``.
  """

  def __init__(self, window_rows: int, state: dict | None = None):
    self.window_rows = int(window_rows)
    num = len(idmap_lib.COUNTER_NAMES)
    state = state or {"index": 0, "start_row": 0, "pending": [], "total": [0] * num,
                      "batches": 0}
    self.index, self.start_row = int(state["index"]), int(state["start_row"])
    self.pending = [list(map(int, c)) for c in state["pending"]]
    self.total = np.asarray(state["total"], np.int64)
    self.batches = int(state["batches"])

  def state(self) -> dict:
    return {"index": self.index, "start_row": self.start_row, "pending": self.pending,
            "total": self.total.tolist(), "batches": self.batches}

  def _record(self, end_row: int) -> dict:
    return {"window": "idmap", "index": self.index, "slice": None, "start_row": self.start_row,
            "end_row": end_row,
            "partial": not self.window_rows or end_row - self.start_row < self.window_rows,
            **idmap_lib.window_summary(np.asarray(self.pending, np.int64))}

  def update(self, counters_NxC, rows_N, rows_before: int) -> list[dict]:
    """Adds the counters of N batches (``rows_N`` real rows each); returns closed records."""
    closed = []
    end = int(rows_before)
    occupied = idmap_lib.COUNTER_NAMES.index("occupied")
    for c, r in zip(np.asarray(counters_NxC, np.int64), np.asarray(rows_N)):
      if self.window_rows and r > 0:
        index = (end + int(r) - 1) // self.window_rows
        if index > self.index:
          if self.pending:
            closed.append(self._record(end))
          self.index, self.start_row, self.pending = index, end, []
      end += int(r)
      self.pending.append(c.tolist())
      self.total += c
      self.total[occupied] = c[occupied]    # a gauge: its last value
      self.batches += 1
    return closed

  def final_records(self, rows_done: int) -> list[dict]:
    """The record of the last, unclosed window (the state is left unchanged)."""
    return [self._record(int(rows_done))] if self.pending else []

  def summary(self) -> dict:
    out = idmap_lib.window_summary(self.total[None, :])
    out["batches"] = self.batches
    return out


def _idmap_restore(path: str, meta: dict, window_rows: int):
  """The map and its statistics saved with checkpoint ``path``."""
  state_path = os.path.join(path, "idmap.npz")
  if "idmap_windows" not in meta or not os.path.isfile(state_path):
    raise FileNotFoundError(f"{path}: this checkpoint has no id map (idmap.npz / meta key "
                            "idmap_windows); it was written with idmap.enabled=False")
  im = idmap_lib.IdMap.from_state(idmap_lib.load_state(state_path))
  return im, _IdMapWindows(window_rows, meta["idmap_windows"])


def _idmap_checkpoint(im_windows, group: dict, batches_done: int):
  """(meta entries, extra files) of a checkpoint after ``group``; ({}, None) without a map."""
  if im_windows is None:
    return {}, None
  snapshot = group.get("_idmap_state")
  if snapshot is None:
    raise RuntimeError(f"id map: no state snapshot for the checkpoint at batch {batches_done}")
  return ({"idmap_windows": im_windows.state()},
          {"idmap.npz": lambda p: idmap_lib.save_state(p, snapshot)})


def _idmap_summary(im, im_windows) -> dict:
  """Summary entries of a run with the id map (flat, so result tables can show them)."""
  stats = im_windows.summary()
  state_bytes = sum(int(np.asarray(v).nbytes) for v in im.state().values())
  return {"idmap": {**stats, "num_rows": im.num_rows, **im.occupancy()},
          "idmap_hit_rate": stats["hit_rate"], "idmap_occupied": stats["occupied"],
          "idmap_admitted": stats["admitted"], "idmap_evicted": stats["evicted"],
          "idmap_expired": stats["expired"], "idmap_state_bytes": state_bytes}


def _table_bytes(state) -> int:
  """Bytes of the embedding tables and their row-wise optimizer state."""
  train = state.train if isinstance(state, AsyncState) else state
  return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(
      (train.tables, train.table_opt_state))))


def _make_windows(config, stream):
  time_windows = [t for t in config.metrics.time_windows.split(",") if t]
  return metrics_lib.WindowedMetrics(
      window_rows=config.metrics.window_rows, time_windows=time_windows,
      slice_top_k=config.metrics.slice_top_k)


def _count_lines(workdir):
  if not workdir:
    return 0
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for _ in f)


def _truncate_jsonl(path: str, lines: int) -> None:
  """Drops lines written after the checkpoint we resume from."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for _, line in zip(range(lines), f)]
  with open(path, "w") as f:
    f.writelines(kept)


def _jsonable(obj: Any):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    v = float(obj)
    return v if np.isfinite(v) else None
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  return obj


# ---------------------------------------------------------------------------
# Offline protocol: K epochs over a fixed training stream, held-out evaluation.


def evaluate(predict, dense_params, tables, stream, num_rows: int) -> dict:
  """Metrics of the model (no learning) on every batch of ``stream``."""
  acc = metrics_lib.MetricAccumulator()
  for batch in prefetch(with_unique(iter(stream), num_rows), 4):
    preds = np.asarray(predict(dense_params, tables, {k: batch[k] for k in DEVICE_KEYS}))
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
  return float(jnp.sqrt(sum(leaves))) if leaves else 0.0


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
  train_data = make_stream(config.data, seed=config.seed)
  eval_data = make_stream(eval_config, seed=config.seed)
  num_rows = train_data.num_rows
  model, state, dense_opt, sparse_opts, params = create_model_and_state(
      config, num_rows, train_data.layout.num_fields, train_data.num_dense)
  predict = make_predict(model)
  variants = {}

  def multi_for(train_dense, train_tables):
    key = (train_dense, train_tables)
    if key not in variants:
      variants[key] = make_multi_step(make_train_step(
          model, dense_opt, sparse_opts, train_dense=train_dense, train_tables=train_tables))
    return variants[key]

  batches_per_epoch = -(-config.data.max_rows // config.data.batch_size)
  k = config.train.steps_per_dispatch
  marks = sorted({round(batches_per_epoch * (i + 1) / off.evals_per_epoch)
                  for i in range(off.evals_per_epoch)})
  points = []
  if workdir:
    os.makedirs(workdir, exist_ok=True)
  out_file = open(os.path.join(workdir, "offline.jsonl"), "w") if workdir else None
  if workdir:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  def snapshot(s):
    return (jax.tree_util.tree_map(jnp.copy, s.tables), jax.tree_util.tree_map(jnp.copy, s.dense_params))

  def record(epoch, batch_in_epoch, train_acc, gnorms, prev):
    test = evaluate(predict, state.dense_params, state.tables, eval_data, num_rows)
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
  initial_test = evaluate(predict, state.dense_params, state.tables, eval_data, num_rows)
  points.append({"epoch": 0.0, "batches": 0, "test": initial_test})
  progress = _Progress(config.train.progress, off.epochs * batches_per_epoch * config.data.batch_size, 0)
  try:
    for epoch in range(off.epochs):
      train_dense, train_tables = True, True
      if epoch >= 1:
        if off.between_epochs == "reinit":
          fresh = init_tables(jax.random.PRNGKey(config.seed + 1000 + epoch),
                              model.table_specs(), num_rows)
          state = state._replace(tables=fresh, table_opt_state={
              name: sparse_opts[name].init(t) for name, t in fresh.items()})
        elif off.between_epochs in ("freeze", "dense_only"):
          train_tables = False
        elif off.between_epochs == "tables_only":
          train_dense = False
      multi = multi_for(train_dense, train_tables)
      train_acc = metrics_lib.MetricAccumulator()
      gnorms = ([], [])
      prev = snapshot(state)
      done = 0
      source = with_unique(_take_batches(iter(train_data), batches_per_epoch), num_rows)
      for n, group in prefetch(_grouped_until(source, k, marks), config.data.prefetch):
        state, out = multi(state, {key: group[key] for key in DEVICE_KEYS})
        done += n
        train_acc.update(group["label"].reshape(-1), np.asarray(out.preds_B).reshape(-1),
                         group["weight"].reshape(-1))
        gnorms[0].extend(np.asarray(out.grad_norm_dense).tolist())
        gnorms[1].extend(np.asarray(out.grad_norm_tables).tolist())
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
  if workdir:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(_jsonable({**result, "model": config.model.name}), f, indent=2)
  result["_state"] = state
  return result


def _take_batches(batches, n):
  for i, b in enumerate(batches):
    if i >= n:
      return
    yield b


def _grouped_until(batches, k, marks):
  """Groups of up to ``k`` batches that never straddle an evaluation mark."""
  buf, done = [], 0
  marks = set(marks)
  for b in batches:
    buf.append(b)
    done += 1
    if len(buf) == k or done in marks:
      yield len(buf), _stack(buf)
      buf = []
  if buf:
    yield len(buf), _stack(buf)
