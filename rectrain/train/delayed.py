"""Delayed feedback: the seed + incremental runner, its config and models.

A conversion (label) arrives some time after its impression. A label-delay
join (rectrain/data/delay_join.py) decides when a sample is emitted for
training and with which observed label; the loss corrections of FNW, FNC,
ES-DFM, DEFER and the multi-head tower (their notation and sources) are in
rectrain/train/delayed_losses.py, the runner's metrics in
rectrain/train/delayed_metrics.py; this module re-exports both and runs the
protocol (:func:`train_delayed`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import rectrain.metrics as metrics_lib
from rectrain.data.batch import DEVICE_KEYS, add_unique
from rectrain.models.multihead import MultiHeadTower, serve_probability
from rectrain.models.tables import init_tables
from rectrain.train import sharding as sh
from rectrain.config_sections import delayed_config_defaults  # noqa: F401 - defined there (no jax)
from rectrain.train.delayed_losses import (  # noqa: F401 - re-exported
    P_MAX, aux_targets, aux_targets_from_kinds, defer_loss, defer_weights, esdfm_loss,
    esdfm_weights, fnc_calibrate, fnc_seed_loss, fnw_loss, fnw_weights, head_targets,
    multihead_loss, plain_loss, real_negative_prob)
from rectrain.train.delayed_metrics import (  # noqa: F401 - re-exported
    StreamMetrics, average_precision, window_metrics)

METHODS = ("pretrained", "oracle", "vanilla", "fnw", "fnc", "esdfm", "defer", "multihead")
# The join mode each method is defined on (vanilla may use any mode).
METHOD_JOIN = {"pretrained": "oracle", "oracle": "oracle", "vanilla": "fast", "fnw": "fast",
               "fnc": "fast", "esdfm": "esdfm", "defer": "defer", "multihead": "snapshots"}
JOIN_MODES = ("oracle", "wait", "fast", "esdfm", "defer", "snapshots")


# ---------------------------------------------------------------------------
# Config.


def resolve_delayed_config(config) -> ml_collections.ConfigDict:
  """``config.delayed`` over the defaults, validated (errors name ``delayed.<key>``)."""
  c = delayed_config_defaults()
  given = config.get("delayed", None) if hasattr(config, "get") else None
  if given is not None:
    _merge(c, given, "delayed.")
  if c.method not in METHODS:
    raise ValueError(f"config delayed.method={c.method!r}: must be one of {METHODS}"
                     + (" (the delayed-feedback runner needs a method; '' means off)"
                        if not c.method else ""))
  mode = c.join_mode or METHOD_JOIN[c.method]
  if mode not in JOIN_MODES:
    raise ValueError(f"config delayed.join_mode={c.join_mode!r}: must be '' or one of {JOIN_MODES}")
  if c.method not in ("vanilla", "pretrained") and mode != METHOD_JOIN[c.method]:
    raise ValueError(f"config delayed.join_mode={mode!r}: method {c.method!r} needs "
                     f"join mode {METHOD_JOIN[c.method]!r}")
  c.join_mode = mode
  for key in ("wait_s", "attribution_s", "window_s"):
    if not (float(c[key]) > 0 and math.isfinite(float(c[key]))):
      raise ValueError(f"config delayed.{key}={c[key]!r}: must be a finite number > 0")
  if float(c.seed_days) < 0 or float(c.incremental_days) < 0:
    raise ValueError("config delayed.seed_days and delayed.incremental_days must be >= 0")
  s = [float(v) for v in c.snapshot_s]
  if not s or any(v <= 0 for v in s) or any(b <= a for a, b in zip(s, s[1:])):
    raise ValueError(f"config delayed.snapshot_s={tuple(c.snapshot_s)!r}: must be increasing "
                     f"positive seconds")
  longest = max(float(c.attribution_s), s[-1] if c.method == "multihead" else 0.0)
  if float(c.seed_days) * 86400.0 < longest:
    logging.getLogger(__name__).warning(
        "config delayed.seed_days=%s is shorter than the longest emission delay (%.0f s, "
        "delayed.attribution_s / snapshot_s): the first incremental windows lack the late "
        "emissions of impressions before the stream began, which biases them (DEFER most)",
        c.seed_days, longest)
  if c.multihead.train_heads not in ("mature", "newest"):
    raise ValueError(f"config delayed.multihead.train_heads={c.multihead.train_heads!r}: "
                     f"must be 'mature' or 'newest'")
  if c.aux.rn_source not in ("aux", "model"):
    raise ValueError(f"config delayed.aux.rn_source={c.aux.rn_source!r}: must be 'aux' or 'model'")
  return c


def _merge(base, update, where):
  for key in update.keys():
    if key not in base:
      raise ValueError(f"config {where}{key}: unknown key (valid: {sorted(base.keys())})")
    if isinstance(base[key], ml_collections.ConfigDict):
      _merge(base[key], update[key], f"{where}{key}.")
    else:
      base[key] = update[key]


def method_configs(config, methods: Sequence[str] = METHODS) -> Dict[str, ml_collections.ConfigDict]:
  """One config per method (a copy of ``config`` with ``delayed.method`` set), for a study."""
  out = {}
  for m in methods:
    c = ml_collections.ConfigDict(config.to_dict())
    if "delayed" not in c:
      c.delayed = delayed_config_defaults()
    c.delayed.method = m
    c.delayed.join_mode = ""
    out[m] = c
  return out


# ---------------------------------------------------------------------------
# Models and steps.

LOSSES = {"vanilla": plain_loss, "oracle": plain_loss, "fnc": plain_loss, "pretrained": plain_loss,
          "fnw": fnw_loss, "esdfm": esdfm_loss, "defer": defer_loss, "multihead": multihead_loss}


def tower_from_model_config(model_cfg, num_heads: int) -> MultiHeadTower:
  """A :class:`MultiHeadTower` with ``config.model``'s embedding and MLP hyperparameters.

  ``deepfm`` maps to ``linear=True, fm=True``, ``wide_deep`` and ``lr`` to
  ``linear=True``, ``fm`` to both (no MLP), anything else (``dnn``, ...) to the
  plain embedding + MLP tower.
  """
  name = model_cfg.name
  kw: Dict[str, Any] = dict(num_heads=int(num_heads),
                            linear=name in ("lr", "fm", "wide_deep", "deepfm"),
                            fm=name in ("fm", "deepfm"))
  for key in ("embed_dim", "embed_init_scale", "embed_init"):
    if key in model_cfg:
      kw[key] = model_cfg[key]
  kw["mlp_dims"] = tuple(model_cfg.mlp_dims) if "mlp_dims" in model_cfg else ()
  return MultiHeadTower(**kw)


def create_tower_and_state(config, tower: MultiHeadTower, num_rows: int, num_fields: int,
                           num_dense: int, seed: int, table_rows: int | None = None):
  """Like :func:`rectrain.train.loop.create_model_and_state`, for a given tower module
  (``table_rows > num_rows``: zero padding rows appended, for a sharded run)."""
  from rectrain.train.build import build_optimizers
  from rectrain.train.step import init_train_state
  specs = tower.table_specs()
  k_tables, k_dense = jax.random.split(jax.random.PRNGKey(seed))
  tables = init_tables(k_tables, specs, num_rows)
  if table_rows is not None and table_rows != num_rows:
    tables = {k: jnp.pad(t, ((0, table_rows - num_rows), (0, 0))) for k, t in tables.items()}
  rows = {s.name: jnp.zeros((2, num_fields, s.dim), jnp.float32) for s in specs}
  dense_params = tower.init(k_dense, rows, jnp.zeros((2, num_dense), jnp.float32))
  dense_opt, sparse_opts = build_optimizers(config, [s.name for s in specs])
  state = init_train_state(dense_params, tables, dense_opt, sparse_opts)
  return state, dense_opt, sparse_opts


def serve_rule(model, kind: str = "sigmoid") -> Callable:
  """``serve(placement, dense_params, tables, batch) -> prob_B`` (not jitted).

  ``kind``: ``sigmoid`` (one logit), ``fnc`` (FNC calibration of the
  sigmoid), ``heads`` (multi-head: sum of the heads' probabilities), ``raw``
  (the sigmoid of every output, e.g. ``(B, K)``). ``placement``: where the
  tables live (rectrain/train/step.py).
  """
  from rectrain.train.delayed_devices import forward_with
  if kind not in ("sigmoid", "fnc", "heads", "raw"):
    raise ValueError(f"make_serve: unknown kind {kind!r}")
  logits_of = forward_with(model)

  def serve(placement, dense_params, tables, batch):
    logits = logits_of(placement, dense_params, tables, batch)
    if kind == "heads":
      return serve_probability(logits)
    prob = jax.nn.sigmoid(logits)
    return fnc_calibrate(prob) if kind == "fnc" else prob

  return serve


def make_serve(model, kind: str = "sigmoid") -> Callable:
  """Jitted ``serve(dense_params, tables, batch) -> prob_B`` on one device (see :func:`serve_rule`)."""
  from rectrain.train.step import LOCAL
  rule = serve_rule(model, kind)
  return jax.jit(lambda dense_params, tables, batch: rule(LOCAL, dense_params, tables, batch))


def _stack(batches: List[dict]) -> dict:
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def _train_batches(multi, state, batches: Iterable[dict], k: int):
  """Runs ``multi`` over ``batches`` in groups of ``k`` (then singly); returns state, losses."""
  losses, buf = [], []
  from rectrain.train.delayed_devices import scalar_to_host
  for b in batches:
    buf.append(b)
    if len(buf) == k:
      state, out = multi(state, _stack(buf))
      losses.append(scalar_to_host(out.loss))
      buf = []
  for b in buf:
    state, out = multi(state, _stack([b]))
    losses.append(scalar_to_host(out.loss))
  return state, losses


def _device(batch: Mapping[str, np.ndarray], label: np.ndarray) -> dict:
  out = {k: batch[k] for k in DEVICE_KEYS if k != "label"}
  out["label"] = np.asarray(label, np.float32)
  return out


def _features(batch):
  return {k: batch[k] for k in ("dense", "unique", "inverse")}


# ---------------------------------------------------------------------------
# The runner.


def _stream(config, rows: int):
  from rectrain.data import make_stream
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.max_rows = int(rows)
  return make_stream(data, seed=config.seed)


def _join_config(dc, mode: str, batch_size: int):
  from rectrain.data.delay_join import JoinConfig
  return JoinConfig(mode=mode, wait_s=float(dc.wait_s), attribution_s=float(dc.attribution_s),
                    snapshot_s=tuple(float(s) for s in dc.snapshot_s),
                    scatter_rows=int(dc.scatter_rows), batch_size=int(batch_size))


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.floating, float)):
    return float(obj) if math.isfinite(float(obj)) else None
  if isinstance(obj, (np.integer, np.bool_)):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  return obj


def _add_counts(total: Dict[str, Any], counts: Mapping[str, Any]) -> None:
  for key, value in (counts or {}).items():
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
      total[key] = total.get(key, 0) + value


class _Phase:
  """Metrics and counts of one phase (seed or incremental)."""

  def __init__(self):
    self.metrics = StreamMetrics()
    self.bayes = metrics_lib.MetricAccumulator()
    self.counts: Dict[str, Any] = {}
    self.kinds: Dict[str, int] = {}
    self.pcocs: List[float] = []
    self.windows = 0

  def result(self) -> Dict[str, Any]:
    res = self.metrics.result()
    pc = np.asarray(self.pcocs, np.float64)
    b = self.bayes.result()
    return {"rows": res["rows"], "auc": res["auc"], "pr_auc": res["pr_auc"],
            "logloss": res["logloss"], "ne": res["ne"], "pcoc": res["pcoc"],
            "base_rate": res["base_rate"], "mean_pred": res["mean_pred"],
            "pcoc_windows": {"windows": int(pc.size),
                             "mean": float(pc.mean()) if pc.size else math.nan,
                             "std": float(pc.std(ddof=1)) if pc.size > 1 else math.nan,
                             "min": float(pc.min()) if pc.size else math.nan,
                             "max": float(pc.max()) if pc.size else math.nan},
            "bayes_auc": b["auc"] if b["rows"] else None,
            "bayes_logloss": b["logloss"] if b["rows"] else None,
            "bayes_pcoc": b["pcoc"] if b["rows"] else None,
            "windows": self.windows, "join_counts": self.counts, "emitted_by_kind": self.kinds}


def _mean_loss(losses) -> float:
  return float(np.mean([float(x) for l in losses for x in np.asarray(l).reshape(-1)]))


def train_delayed(config: ml_collections.ConfigDict, workdir: str | None = None) -> Dict[str, Any]:
  """Seed + incremental training on a label-delay join, evaluated test-then-train.

  One pass of the joiner (``delayed.join_mode``, or the method's) over the
  synthetic stream, in windows of ``delayed.window_s`` seconds of event time.
  In every window the impressions of the window are first predicted by the
  current model and scored against their TRUE labels, then the model learns:

  1. Seed (windows that start before ``delayed.seed_days``): complete labels.
     The model learns the window's impressions with their true labels (the
     multi-head tower with every head mature; FNC the fast-emit distribution
     of these labels, :func:`fnc_seed_loss`, since it serves ``q / (1 - q)``)
     and the ES-DFM / DEFER auxiliary (dp, rn) model learns
     :func:`aux_targets` on them. The joiner's emissions are not used.
  2. Incremental (the later windows, ``delayed.incremental_days`` or up to
     ``data.max_rows``): the model learns the samples the joiner emitted
     during the window, with the method's loss (``pretrained`` does not
     learn; DEFER's aux model keeps learning from the second emissions,
     :func:`aux_targets_from_kinds`, unless ``delayed.aux.online`` is off).
     These include late emissions (delayed positives, DEFER's second
     emissions) of impressions of the seed days, as a join running
     continuously would give, so the emitted stream is stationary from the
     first incremental window on, provided the seed phase is at least as
     long as the longest emission delay (``delayed.attribution_s``, and the
     last of ``delayed.snapshot_s`` for the multi-head tower); with a
     shorter one the first incremental windows lack the late emissions of
     impressions before the stream began.

  ``train.warm_start.path`` starts the model from a checkpoint's parameters
  (``train.warm_start.parts``; the auxiliary model starts fresh), and
  ``train.learn=False`` learns nothing in either phase (a frozen, typically
  warm-started model scored on the same windows: the no-update baseline).

  This is the protocol of Yang et al. (2021: pre-train on complete
  days, then stream) and of /work/shared/docs/domain.md, section 2.

  Writes ``config.json``, ``metrics.jsonl`` (one line per window, both
  phases) and ``summary.json`` to ``workdir`` when given.

  Returns:
    summary dict: method, join mode, rows per phase, the incremental phase's
    ``auc``, ``pr_auc``, ``logloss``, ``ne``, ``pcoc``, ``base_rate``,
    ``mean_pred``, ``pcoc_windows`` (mean/std/min/max over windows), ``rows``
    (scored in the incremental phase), ``rows_per_sec`` (seed and incremental
    impressions over the wall time), ``param_count``, the seed
    phase's metrics under ``seed``, joiner counts, emitted rows per kind,
    steps, run time; the final train state under ``"_state"`` (and the aux
    model's under ``"_aux_state"``), not serialised.
  """
  from rectrain.configs import validate
  from rectrain.data.delay_join import LabelJoiner
  from rectrain.train.build import create_model_and_state
  from rectrain.train.delayed_devices import Devices, scalar_to_host
  from rectrain.train.features import refuse_ignored
  from rectrain.train.loop_io import warm_started
  from rectrain.train.loop_mesh import _run_mesh
  validate(config)
  refuse_ignored(config, "delayed")
  dc = resolve_delayed_config(config)
  from_table = config.data.source == "table"  # a real delay column (a schema's label_time)
  if from_table:
    from rectrain.data.schema import schema_of
    if schema_of(config.data).label_time is None:
      raise ValueError(f"config data.schema={config.data.schema!r}: the delayed-feedback runner "
                       "needs a label_time column (e.g. the criteo_conversion_logs card)")
  elif config.data.source != "synthetic":
    raise ValueError(f"config data.source={config.data.source!r}: the delayed-feedback runner "
                     f"needs label delays: data.source='synthetic', or 'table' with a schema "
                     f"that has a label_time column")
  t_start = time.perf_counter()
  method = dc.method
  if from_table:  # phases by event time from the first window; rows as they come
    seed_rows = inc_rows = None
    stream_rows = int(config.data.max_rows)
  else:
    rows_per_day = float(config.data.synthetic.rows_per_day)
    seed_rows = int(round(float(dc.seed_days) * rows_per_day))
    if float(dc.incremental_days) > 0:
      inc_rows = int(round(float(dc.incremental_days) * rows_per_day))
    else:
      inc_rows = int(config.data.max_rows) - seed_rows
    if inc_rows <= 0:
      raise ValueError(f"config data.max_rows={config.data.max_rows} leaves no incremental rows "
                       f"after delayed.seed_days={dc.seed_days} ({seed_rows} rows); raise "
                       f"data.max_rows or set delayed.incremental_days")
    stream_rows = seed_rows + inc_rows
  batch_size = int(config.data.batch_size)
  k = int(config.train.steps_per_dispatch)
  learn = bool(config.train.get("learn", True))

  mesh = _run_mesh(config)  # None: one device
  stream = _stream(config, stream_rows)
  if getattr(stream.layout, "multi_hot", ()):
    raise ValueError(f"config data.schema: multi-hot fields "
                     f"{list(stream.layout.names[stream.layout.num_single:])} are not "
                     "implemented in the delayed-feedback protocol (the stream and offline "
                     "protocols take them)")
  num_rows, num_fields, num_dense = stream.num_rows, stream.layout.num_fields, stream.num_dense
  table_rows = num_rows if mesh is None else sh.padded_rows(num_rows, mesh)
  devices = Devices(mesh, table_rows)
  snapshot_s = tuple(float(s) for s in dc.snapshot_s)
  if method == "multihead":
    model = tower_from_model_config(config.model, len(snapshot_s))
    state, dense_opt, sparse_opts = create_tower_and_state(
        config, model, num_rows, num_fields, num_dense, int(config.seed), table_rows)
    serve_kind, seed_loss = "heads", multihead_loss
  else:
    model, state, dense_opt, sparse_opts, _ = create_model_and_state(
        config, num_rows, num_fields, num_dense, table_rows=table_rows)
    serve_kind = "fnc" if method == "fnc" else "sigmoid"
    seed_loss = fnc_seed_loss if method == "fnc" else plain_loss
  # A warm start copies the checkpoint's tables (and dense parameters where their paths and
  # shapes agree: the multi-head tower shares only the tables with a plain model); the
  # ES-DFM / DEFER auxiliary model starts fresh.
  state, warm_report = warm_started(config, state, workdir, num_rows)
  state = devices.place_state(state)
  serve = devices.serve(serve_rule(model, serve_kind), state)
  seed_multi = devices.multi(model, dense_opt, sparse_opts, seed_loss, state)
  inc_multi = seed_multi if LOSSES[method] is seed_loss else devices.multi(
      model, dense_opt, sparse_opts, LOSSES[method], state)
  main_prob = devices.serve(serve_rule(model, "sigmoid"), state) if method == "esdfm" else None

  use_aux = method in ("esdfm", "defer")
  aux_state = aux_multi = aux_serve = None
  if use_aux:
    aux_model = MultiHeadTower(num_heads=2, embed_dim=int(dc.aux.embed_dim),
                               mlp_dims=tuple(dc.aux.mlp_dims), linear=True, fm=False)
    aux_state, aux_opt, aux_sparse = create_tower_and_state(
        config, aux_model, num_rows, num_fields, num_dense, int(config.seed) + 1, table_rows)
    aux_state = devices.place_state(aux_state)
    aux_multi = devices.multi(aux_model, aux_opt, aux_sparse, multihead_loss, aux_state)
    aux_serve = devices.serve(serve_rule(aux_model, "raw"), aux_state)

  def seed_labels(b):
    y = b["label"]  # impressions carry the true label
    if method == "multihead":
      y_k, m_k = head_targets(y, _delay(b), None, snapshot_s, all_mature=True)
      return np.concatenate([y_k, m_k], axis=1)
    return y

  def inc_labels(b):
    y = b["label"]
    if method == "multihead":
      y_k, m_k = head_targets(y, b["delay"], b["kind"], snapshot_s, dc.multihead.train_heads)
      return np.concatenate([y_k, m_k], axis=1)
    if not use_aux:
      return y
    aux_p = np.asarray(aux_serve(aux_state.dense_params, aux_state.tables, _features(b)))
    f_dp = aux_p[:, 0]
    if method == "defer":
      return np.stack([y, f_dp], axis=1)
    if dc.aux.rn_source == "aux":
      f_rn = aux_p[:, 1]
    else:
      f_rn = real_negative_prob(
          np.asarray(main_prob(state.dense_params, state.tables, _features(b))), f_dp)
    return np.stack([y, f_dp, f_rn], axis=1)

  metrics_file = None
  writes = bool(workdir) and jax.process_index() == 0  # several processes: process 0 writes
  if writes:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "w")
  phases = {"seed": _Phase(), "incremental": _Phase()}
  seed_steps = 0
  t_seed_end = None
  try:
    joiner = LabelJoiner(stream, _join_config(dc, dc.join_mode, batch_size))
    seed_end_s = end_s = None
    for w in joiner.windows(float(dc.window_s)):
      if seed_end_s is None:  # the synthetic stream starts at 0; a real one at its first window
        t0 = float(w.start) if from_table else 0.0
        seed_end_s = t0 + float(dc.seed_days) * 86400.0
        end_s = (seed_end_s + float(dc.incremental_days) * 86400.0
                 if from_table and float(dc.incremental_days) > 0 else math.inf)
      if float(w.start) >= end_s:
        break
      name = "seed" if float(w.start) < seed_end_s else "incremental"
      ph = phases[name]
      if name == "incremental" and t_seed_end is None:
        t_seed_end = time.perf_counter()
        seed_steps = int(scalar_to_host(state.step))
      record = {"phase": name, "window": ph.windows, "start": float(w.start), "end": float(w.end)}
      # Test: the impressions of the window, TRUE labels, the model before this window.
      impressions = [add_unique(dict(b), table_rows) for b in w.impressions]
      if impressions:
        probs = [np.asarray(serve(state.dense_params, state.tables, _features(b)))
                 for b in impressions]
        y = np.concatenate([b["label"] for b in impressions])
        wt = np.concatenate([b["weight"] for b in impressions])
        p = np.concatenate(probs)
        ph.metrics.update(y, p, wt)
        record.update(window_metrics(y, p, wt))
        if math.isfinite(record["pcoc"]):
          ph.pcocs.append(record["pcoc"])
        if all("true_prob" in b for b in impressions):
          tp = np.concatenate([b["true_prob"] for b in impressions]).astype(np.float64)
          ph.bayes.update(y, np.nan_to_num(tp, nan=0.5), wt)
      # Train.
      if name == "seed":
        if impressions and learn:
          batches = [_device(b, seed_labels(b)) for b in impressions]
          state, losses = _train_batches(seed_multi, state, batches, k)
          record["train_loss"] = _mean_loss(losses)
          if use_aux:
            aux_batches = []
            for b in impressions:
              y_a, m_a = aux_targets(b["label"], _delay(b), float(dc.wait_s))
              aux_batches.append(_device(b, np.concatenate([y_a, m_a], axis=1)))
            aux_state, aux_losses = _train_batches(aux_multi, aux_state, aux_batches, k)
            record["aux_loss"] = _mean_loss(aux_losses)
      else:
        emitted = [add_unique(dict(b), table_rows) for b in w.emitted]
        n_emit, n_pos = 0, 0.0
        for b in emitted:
          real = b["weight"] > 0
          n_emit += int(real.sum())
          n_pos += float(b["label"][real].sum())
          if "kind" in b:
            for kind, c in zip(*np.unique(b["kind"][real], return_counts=True)):
              ph.kinds[str(int(kind))] = ph.kinds.get(str(int(kind)), 0) + int(c)
        record.update(emitted=n_emit, emitted_positives=n_pos)
        if learn and method != "pretrained" and emitted:
          losses = []
          for g in range(0, len(emitted), k):  # labels may use the current state (ES-DFM rn)
            group = [_device(b, inc_labels(b)) for b in emitted[g:g + k]]
            state, part = _train_batches(inc_multi, state, group, k)
            losses += part
          record["train_loss"] = _mean_loss(losses)
          if method == "defer" and dc.aux.online:
            aux_batches = []
            for b in emitted:
              if np.any((b["kind"] > 0) & (b["weight"] > 0)):
                y_a, m_a = aux_targets_from_kinds(b["kind"])
                aux_batches.append(_device(b, np.concatenate([y_a, m_a], axis=1)))
            if aux_batches:
              aux_state, aux_losses = _train_batches(aux_multi, aux_state, aux_batches, k)
              record["aux_loss"] = _mean_loss(aux_losses)
      record["counts"] = dict(w.counts or {})
      _add_counts(ph.counts, w.counts)
      ph.windows += 1
      if metrics_file:
        metrics_file.write(json.dumps(_jsonable(record)) + "\n")
  finally:
    if metrics_file:
      metrics_file.close()
  jax.block_until_ready(state)
  t_end = time.perf_counter()
  if t_seed_end is None:
    t_seed_end, seed_steps = t_end, int(scalar_to_host(state.step))
  if from_table:
    seed_rows, inc_rows = (int(phases[n].metrics.result()["rows"]) for n in ("seed", "incremental"))
    if not inc_rows:
      raise ValueError(f"config delayed.seed_days={dc.seed_days}: {config.data.path} has no "
                       f"impressions after the seed days ({seed_rows} rows before); lower it")
  summary = {"method": method, "join_mode": dc.join_mode, "model": config.model.name,
             "seed_rows": seed_rows, "incremental_rows": inc_rows}
  summary.update(phases["incremental"].result())
  summary.update(seed=phases["seed"].result(), seed_steps=seed_steps,
                 steps=int(scalar_to_host(state.step)),
                 nonfinite_batches=int(scalar_to_host(state.nonfinite)),
                 seed_time_sec=t_seed_end - t_start, incremental_time_sec=t_end - t_seed_end,
                 wall_time_sec=t_end - t_start, delayed=dc.to_dict(),
                 rows_per_sec=(seed_rows + inc_rows) / max(t_end - t_start, 1e-9),
                 param_count=_param_count(state, num_rows))
  if warm_report is not None:
    summary["warm_start"] = warm_report
  if mesh is not None:
    summary["mesh"] = {"shape": [int(mesh.shape[a]) for a in sh.AXES],
                       "devices": sh.mesh_size(mesh), "processes": jax.process_count(),
                       "table_rows": table_rows}
  if writes:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(_jsonable(summary), f, indent=2)
  summary["_state"] = state
  if use_aux:
    summary["_aux_state"] = aux_state
  return summary


def _param_count(state, num_rows: int) -> int:
  """Parameters of the served model: dense parameters and the tables' ``num_rows`` real
  rows (no optimizer state, no padding rows of a sharded run)."""
  dense = sum(np.size(x) for x in jax.tree_util.tree_leaves(state.dense_params))
  return int(dense + sum(num_rows * t.shape[1] for t in state.tables.values()))


def _delay(batch) -> np.ndarray:
  if "delay" not in batch:
    raise ValueError("train_delayed: the joiner's impression batches have no 'delay' key; the "
                     "seed phase needs the true delays (multihead, esdfm, defer)")
  return batch["delay"]
