"""Simulated asynchronous (stale-gradient) training in one process, as a train step.

W workers of a parameter server each compute a gradient on parameters they
pulled some updates ago. Let theta_t be the parameters after t applied updates.
The step applied at server step t (``state.train.step == t``) is

  g_t         = grad loss(theta_{t - tau_t}; batch_t)            (stale gradient)
  g_t         <- g_t + lambda_t * g_t * g_t * (theta_t - theta_{t - tau_t})   (optional DC)
  theta_{t+1} = optimizer(theta_t, g_t)                          (applied to the current params)

for the dense parameters AND the embedding rows the batch touches; tau_t comes
from one of rectrain.optim's staleness schedules: ``fixed`` (min(tau, t)),
``round_robin`` (W workers: min(t, W - 1)) or ``random`` (seeded, uniform or
geometric on {0..tau}, capped at t). tau = 0 is the synchronous step of
rectrain/train/step.py, and gives the same numbers. Delay compensation is
DC-ASGD (Zheng et al. 2017, ICML; constant lambda, or the adaptive
lambda / sqrt(EMA of g^2 + eps)); its math is rectrain.optim.delay's, applied by
the ``delay_compensation`` transform to the dense parameters and row-wise (lazily:
the mean square of a row changes only when the row is touched) to the rows.

Shape legend: B batch rows, F fields, U padded unique ids of a batch, W width
of a table row, N rows of the fused table, R = max tau, the history length,
K batches per dispatch.

How the stale parameters are kept (cost per step, memory):

* dense: a ring of the last R pre-update dense parameter pytrees
  (:class:`rectrain.optim.StaleParams`); O(P) per step, R * P memory.
* embedding rows: never a table snapshot. Each update s (= ``train.step``
  when it was applied) leaves an entry in a ring of R slots (slot s mod R):
  for every position p of its unique ids, the row's value before the update
  ``old_UxW[p]`` and a back pointer (``prev_step``, ``prev_pos``) to the row's
  previous update. Two int32 arrays of N (``last_step_N``, ``last_pos_N``)
  point at each row's latest update. The value of row i at theta_{t - tau} is
  the ``old`` value stored by the earliest update in [t - tau, t - 1] that
  touched i (found by following i's back pointers while they stay in the
  window), or the current value if none did. This is exact (bit for bit, no
  re-subtraction of deltas). Cost per step: O(U) to read the pointers, at most
  tau rounds of O(U) pointer gathers (a while loop that stops once no id of the
  batch has an older in-window update), O(U * W) to gather the old rows and to
  write the new entry; memory R * U * (2 + sum of widths) + 2 N words. A
  full-table ring would cost O(N * W) per step and R * N * W memory
  (26 * 2^17 rows * 16 * 4 B = 218 MB per snapshot; 14 GB for R = 64).
  Measured on CPU (DeepFM 400-400-400, embed 16, N = 26 * 2^17, B = 4096, U =
  B * 26, K = 8): 1.02x the synchronous step time at tau = 0, 1.06x at 16,
  1.25x at 64 (1.29x with adaptive DC); a full-table snapshot ring would add
  16.5 ms per step (0.19x) for the 208 MB embedding table alone, at any tau.

Progressive-validation predictions: ``StepOutput.preds_B`` are by default the
*stale* model's (theta_{t - tau_t}) predictions: they are what the worker that
handled the batch computed (and would have served) and come free with the
gradient's forward pass; they are still out-of-sample (theta_{t - tau} has not
seen batch t). ``predictions='current'`` reports theta_t's predictions
instead, at the cost of a second forward pass, to separate the effect of stale
serving from that of stale training. ``StepOutput.loss`` is always the stale
forward pass's loss (the one differentiated).

A batch whose loss or (compensated) gradients are not finite changes nothing
but ``nonfinite += 1``: no update, no history entry, so tau counts applied
updates, as the schedules' ``step`` does.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from rectrain.optim import (SparseOptimizer, StaleParams, delay_compensation as dc_transform,
                            fixed_staleness, random_staleness, round_robin_staleness,
                            stale_params_get, stale_params_init)
from rectrain.optim.delay import delay_compensation_math
from rectrain.optim.sparse import gather_rows, scatter_rows
from rectrain.train.step import (LOCAL, Placement, StepOutput, TrainState, all_finite,
                                 apply_gradients, make_forward, make_grad_fn, step_output,
                                 weighted_logloss)
from rectrain.train.transforms import RunState, StepTransform
from rectrain.config_sections import async_config_defaults  # noqa: F401 - defined there (no jax)

PyTree = Any

STALENESS = ("fixed", "round_robin", "random")
DC_MODES = ("none", "constant", "adaptive")
PREDICTIONS = ("stale", "current")
_DC_KEYS = ("lambda_", "adaptive", "mean_square_decay", "eps")


class RowHistory(NamedTuple):
  """The last R row updates as back-linked entries (see the module docstring).

  Attributes:
    last_step_N: int32, the update that last touched each row; -1 if none.
    last_pos_N: int32, the row's position in that update's ids.
    prev_step_RxU: int32, slot s mod R: for each position of update s's ids,
      the previous update of that row (-1 if none).
    prev_pos_RxU: int32, the row's position in that previous update.
    rows_RxUxW: ``{table: R x U x W}``, the rows' values before update s.
  """
  last_step_N: jax.Array
  last_pos_N: jax.Array
  prev_step_RxU: jax.Array
  prev_pos_RxU: jax.Array
  rows_RxUxW: Dict[str, jax.Array]


class AsyncHistory(NamedTuple):
  """What the simulation remembers: the state of the ``async_sim`` step transform
  (``RunState.features["async_sim"]``; a pytree, checkpointed with the run state).

  The train state of the current parameters theta_t is ``RunState.train``
  (``train.step`` = t counts applied updates).

  Attributes:
    dense_history: StaleParams ring of the last R pre-update dense params
      (``snapshots`` leaves R x ...); None when R = 0.
    row_history: :class:`RowHistory` of the last R row updates; None when R = 0.
    dc_dense: state of the dense ``delay_compensation`` transform (mean square
      when adaptive); None without delay compensation.
    dc_rows: ``{table: N x W}`` mean squares of adaptive DC; None otherwise.
    tau: int32, the staleness used by the last step.
  """
  dense_history: Optional[StaleParams]
  row_history: Optional["RowHistory"]
  dc_dense: Any
  dc_rows: Optional[Dict[str, jax.Array]]
  tau: jax.Array


NAME = "async_sim"  # the transform's name: its state is RunState.features[NAME]


def _max_tau(staleness: str, tau: int, workers: int) -> int:
  if staleness not in STALENESS:
    raise ValueError(f"async_sim staleness: must be one of {STALENESS}, got {staleness!r}")
  for name, v in (("tau", tau), ("workers", workers)):
    if isinstance(v, bool) or int(v) != v:
      raise ValueError(f"async_sim {name}: must be an int, got {v!r}")
  if int(tau) < 0:
    raise ValueError(f"async_sim tau: must be >= 0, got {tau!r}")
  if int(workers) < 1:
    raise ValueError(f"async_sim workers: must be >= 1, got {workers!r}")
  if staleness == "round_robin":
    if int(tau) not in (0, int(workers) - 1):
      raise ValueError(f"async_sim tau={tau}: with staleness='round_robin' the staleness is "
                       f"workers - 1 = {int(workers) - 1}; leave tau at 0 or set it to that")
    return int(workers) - 1
  return int(tau)


def _dc_options(delay_compensation) -> Optional[dict]:
  if delay_compensation is None:
    return None
  if not isinstance(delay_compensation, dict):
    raise ValueError(f"async_sim delay_compensation: must be None or a dict with keys "
                     f"{_DC_KEYS}, got {delay_compensation!r}")
  unknown = set(delay_compensation) - set(_DC_KEYS)
  if unknown:
    raise ValueError(f"async_sim delay_compensation: unknown keys {sorted(unknown)} "
                     f"(valid: {list(_DC_KEYS)})")
  opts = {"lambda_": 0.04, "adaptive": False, "mean_square_decay": 0.95, "eps": 1e-7}
  opts.update(delay_compensation)
  opts["adaptive"] = bool(opts["adaptive"])
  return opts


def _push_if(buf: StaleParams, value: PyTree, ok: jax.Array) -> StaleParams:
  """Writes ``value`` as the newest entry of the ring if ``ok``; else leaves it as is.

  O(size of one entry): when not ok the head stays and its slot is rewritten
  with its own content.
  """
  capacity = jax.tree.leaves(buf.snapshots)[0].shape[0]
  head = ((buf.head + ok.astype(jnp.int32)) % capacity).astype(jnp.int32)

  def write(s, v):
    old = jax.lax.dynamic_index_in_dim(s, head, 0, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(s, jnp.where(ok, v.astype(s.dtype), old), head, 0)

  return StaleParams(snapshots=jax.tree.map(write, buf.snapshots, value), head=head)


def row_history_init(tables: Dict[str, jax.Array], capacity: int, max_unique: int) -> RowHistory:
  num_rows = _num_rows(tables)
  return RowHistory(
      last_step_N=jnp.full((num_rows,), -1, jnp.int32),
      last_pos_N=jnp.zeros((num_rows,), jnp.int32),
      prev_step_RxU=jnp.full((capacity, max_unique), -1, jnp.int32),
      prev_pos_RxU=jnp.zeros((capacity, max_unique), jnp.int32),
      rows_RxUxW={k: jnp.zeros((capacity, max_unique, t.shape[1]), t.dtype)
                  for k, t in tables.items()})


def _last_update(hist: RowHistory, ids_U: jax.Array, placement: Placement):
  """``(step_U, pos_U)``: the update that last touched each id (-1: none) and the id's
  position in it; through ``placement`` (the per-row leaves may be row-sharded:
  each device reads the ids it holds, 0 elsewhere, and ``combine`` sums)."""
  local_U = placement.local_ids(hist.last_step_N.shape[0], ids_U)
  s_U = placement.combine((hist.last_step_N + 1).at[local_U].get(mode="fill", fill_value=0)) - 1
  p_U = placement.combine(hist.last_pos_N.at[local_U].get(mode="fill", fill_value=0))
  return s_U, p_U, local_U


def stale_rows(hist: RowHistory, ids_U: jax.Array, rows_now: Dict[str, jax.Array],
               step: jax.Array, tau: jax.Array,
               placement: Placement = LOCAL) -> Dict[str, jax.Array]:
  """Rows ``ids_U`` as they were before update ``step - tau`` (theta_{step - tau}).

  For each id, follows its chain of updates backwards from its latest one
  while the update is in the window [step - tau, step - 1]; the oldest one
  reached stored the row's value at theta_{step - tau}. Ids with no update in
  the window keep ``rows_now``.

  Args:
    hist: ``AsyncHistory.row_history``.
    ids_U: the batch's unique ids, padded with N (any order).
    rows_now: ``{table: U x W}`` current rows at ``ids_U``.
    step: int32, the number of updates applied so far (t).
    tau: int32, 0 <= tau <= min(t, R).
    placement: where the per-row leaves live (rectrain/train/step.py).
  """
  capacity = hist.prev_step_RxU.shape[0]
  lo = step - tau
  s_U, p_U, _ = _last_update(hist, ids_U, placement)
  none_U = jnp.full_like(s_U, -1)

  def in_window(s):
    return (s >= lo) & (s >= 0)

  def cond(carry):
    i, s, _, _, _ = carry
    return (i < capacity) & jnp.any(in_window(s))

  def body(carry):
    i, s, p, best_s, best_p = carry
    hit = in_window(s)
    best_s, best_p = jnp.where(hit, s, best_s), jnp.where(hit, p, best_p)
    slot = s % capacity
    s_prev, p_prev = hist.prev_step_RxU[slot, p], hist.prev_pos_RxU[slot, p]
    return i + 1, jnp.where(hit, s_prev, -1), jnp.where(hit, p_prev, 0), best_s, best_p

  _, _, _, best_s, best_p = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), s_U, p_U, none_U, jnp.zeros_like(p_U)))
  found_U = best_s >= 0
  slot_U = best_s % capacity
  return {name: jnp.where(found_U[:, None], hist.rows_RxUxW[name][slot_U, best_p], now_UxW)
          for name, now_UxW in rows_now.items()}


def push_rows(hist: RowHistory, ids_U: jax.Array, rows_now: Dict[str, jax.Array],
              step: jax.Array, ok: jax.Array, placement: Placement = LOCAL) -> RowHistory:
  """Records update ``step`` (rows ``ids_U`` had values ``rows_now``) if ``ok``; O(U * W)."""
  capacity, width_u = hist.prev_step_RxU.shape
  num_rows = hist.last_step_N.shape[0]   # this device's rows
  slot = step % capacity

  def write(ring, new):
    old = jax.lax.dynamic_index_in_dim(ring, slot, 0, keepdims=False)
    return jax.lax.dynamic_update_index_in_dim(ring, jnp.where(ok, new.astype(ring.dtype), old),
                                               slot, 0)

  prev_s, prev_p, local_U = _last_update(hist, ids_U, placement)
  ids_w = jnp.where(ok, local_U, num_rows)
  return RowHistory(
      last_step_N=hist.last_step_N.at[ids_w].set(step, mode="drop"),
      last_pos_N=hist.last_pos_N.at[ids_w].set(jnp.arange(width_u, dtype=jnp.int32),
                                               mode="drop"),
      prev_step_RxU=write(hist.prev_step_RxU, prev_s),
      prev_pos_RxU=write(hist.prev_pos_RxU, prev_p),
      rows_RxUxW={k: write(v, rows_now[k]) for k, v in hist.rows_RxUxW.items()})


def make_async_train_step(model, dense_opt: optax.GradientTransformation,
                          sparse_opts: Dict[str, SparseOptimizer], staleness: str = "fixed",
                          tau: int = 0, workers: int = 1,
                          delay_compensation: Optional[dict] = None, seed: int = 0, *,
                          max_unique: Optional[int] = None, predictions: str = "stale",
                          distribution: str = "uniform", geometric_p: float = 0.5,
                          loss_fn: Callable = weighted_logloss, train_dense: bool = True,
                          train_tables: bool = True,
                          placement: Placement = LOCAL) -> tuple[Callable, Callable]:
  """Stale-gradient training step (model in the module docstring).

  Args:
    model: a rectrain model (``table_specs``, ``apply``).
    dense_opt: optax optimizer of the dense parameters (as for make_train_step).
    sparse_opts: row-wise optimizer per table.
    staleness: ``fixed`` (tau_t = min(tau, t)), ``round_robin`` (W = ``workers``
      workers: tau_t = min(t, W - 1); ``tau`` must be 0 or W - 1) or
      ``random`` (tau_t ~ ``distribution`` on {0..tau} from
      ``jax.random.PRNGKey(seed)`` folded with t, capped at t).
    tau: the (maximum) staleness for ``fixed`` / ``random``.
    workers: number of workers for ``round_robin`` (unused otherwise).
    delay_compensation: None, or a dict with keys ``lambda_``, ``adaptive``,
      ``mean_square_decay``, ``eps`` (missing keys: 0.04, False, 0.95, 1e-7).
    seed: seed of the ``random`` schedule.
    max_unique: U, the padded length of ``batch["unique"]`` (the loop's
      default is batch_size * num_fields); may be given to ``init_fn`` instead.
    predictions: ``stale`` (reported predictions of theta_{t - tau_t}) or
      ``current`` (of theta_t; one more forward pass).
    distribution, geometric_p: of the ``random`` schedule.
    loss_fn: ``(logits_B, label_B, weight_B) -> scalar``.
    train_dense, train_tables: False freezes that group, as in make_train_step.
    placement: :data:`rectrain.train.step.LOCAL` (one device) or
      :data:`rectrain.train.sharding.SHARDED` (inside ``shard_map``): every
      row read and write goes through it (the histories indexed by the
      batch's distinct ids are the same on every device).

  Returns:
    ``(init_fn, step_fn)``: ``init_fn(train_state, max_unique=None) ->
    RunState`` (the history under ``features["async_sim"]``) and
    ``step_fn(run_state, batch) -> (run_state, StepOutput)`` (not jitted;
    wrap it with ``make_multi_step`` or jax.jit);
    the StepOutput's gradient norms are those of the applied (stale, and
    compensated if DC is on) gradients.
    ``batch["unique"]`` must hold distinct ids padded with N.
  """
  max_tau = _max_tau(staleness, tau, workers)
  dc_opts = _dc_options(delay_compensation)
  if predictions not in PREDICTIONS:
    raise ValueError(f"async_sim predictions: must be one of {PREDICTIONS}, got {predictions!r}")
  if staleness == "fixed":
    schedule = fixed_staleness(max_tau)
  elif staleness == "round_robin":
    schedule = round_robin_staleness(int(workers))
  else:
    schedule = random_staleness(jax.random.PRNGKey(int(seed)), max_tau, distribution, geometric_p)
  dc = dc_transform(**dc_opts) if dc_opts is not None else None

  forward = make_forward(model)
  grads = make_grad_fn(model, loss_fn, placement)  # the one objective and gradient (train/step.py)

  def init_history(train_state: TrainState, max_unique_: Optional[int] = None) -> AsyncHistory:
    width_u = max_unique_ if max_unique_ is not None else max_unique
    missing = set(train_state.tables) - set(sparse_opts)
    if missing:
      raise ValueError(f"async_sim: no sparse optimizer for tables {sorted(missing)}")
    dense_history = row_history = dc_dense = dc_rows = None
    if max_tau > 0:
      if width_u is None or int(width_u) < 1:
        raise ValueError("async_sim: max_unique (the padded length U of batch['unique']) is "
                         f"needed when the staleness can exceed 0, got {width_u!r}")
      width_u = int(width_u)
      dense_history = stale_params_init(train_state.dense_params, max_tau)
      row_history = row_history_init(train_state.tables, max_tau, width_u)
    if dc is not None:
      dc_dense = dc.init(train_state.dense_params)
      if dc_opts["adaptive"]:
        dc_rows = {k: jnp.zeros_like(t) for k, t in train_state.tables.items()}
    return AsyncHistory(dense_history=dense_history, row_history=row_history,
                        dc_dense=dc_dense, dc_rows=dc_rows, tau=jnp.zeros((), jnp.int32))

  def step_fn(run: RunState, batch) -> tuple[RunState, StepOutput]:
    state, astate = run.train, run.feature(NAME)
    unique_U = batch["unique"]
    num_rows = _num_rows(state.tables)   # this device's rows
    rows_now_U, local_U = placement.rows(state.tables, unique_U)

    if max_tau > 0:
      hist_u = astate.row_history.prev_step_RxU.shape[1]
      if unique_U.shape[0] != hist_u:
        raise ValueError(f"async_sim: batch['unique'] has length {unique_U.shape[0]} but the "
                         f"async state was initialised with max_unique={hist_u}")
      tau_t = jnp.asarray(schedule(state.step), jnp.int32)
      past = stale_params_get(astate.dense_history, tau_t - 1)
      dense_stale = jax.tree.map(lambda p, now: jnp.where(tau_t > 0, p, now),
                                 past, state.dense_params)
      rows_stale_U = stale_rows(astate.row_history, unique_U, rows_now_U, state.step, tau_t,
                                placement)
    else:
      tau_t = jnp.zeros((), jnp.int32)
      dense_stale, rows_stale_U = state.dense_params, rows_now_U

    loss, logits_B, g_dense, g_rows = grads(dense_stale, rows_stale_U, batch)

    new_dc_dense, ms_rows_new = astate.dc_dense, None
    if dc is not None:
      g_dense, new_dc_dense = dc.update(g_dense, astate.dc_dense, state.dense_params,
                                        stale_params=dense_stale)
      ms_rows = (placement.combine(gather_rows(astate.dc_rows, local_U))
                 if dc_opts["adaptive"] else None)
      g_rows_dc, ms_rows_new = {}, {}
      for name, g in g_rows.items():
        g_rows_dc[name], ms_rows_new[name] = delay_compensation_math(
            g, rows_now_U[name], rows_stale_U[name],
            ms_rows[name] if ms_rows is not None else None,
            dc_opts["lambda_"], dc_opts["adaptive"], dc_opts["mean_square_decay"],
            dc_opts["eps"])
      g_rows = g_rows_dc

    ok = all_finite(loss, g_dense, g_rows)
    keep = lambda new, old: jnp.where(ok, new, old)
    new_train = apply_gradients(state, g_dense, g_rows, local_U, ok, dense_opt, sparse_opts,
                                train_dense, train_tables)
    # Padding id where the batch is skipped: nothing is scattered (as in apply_gradients).
    ids_U = jnp.where(ok & train_tables, local_U, num_rows)
    dense_history, row_history = astate.dense_history, astate.row_history
    if max_tau > 0:
      dense_history = _push_if(dense_history, state.dense_params, ok)
      row_history = push_rows(row_history, unique_U, rows_now_U, state.step, ok, placement)
    dc_dense = new_dc_dense
    if dc is not None:
      dc_dense = jax.tree.map(keep, new_dc_dense, astate.dc_dense)
    dc_rows = astate.dc_rows
    if dc_rows is not None:
      dc_rows = {k: scatter_rows(v, ids_U, ms_rows_new[k]) for k, v in dc_rows.items()}

    if predictions == "current":
      logits_B = forward(state.dense_params, rows_now_U, batch)
    new_astate = AsyncHistory(dense_history=dense_history, row_history=row_history,
                              dc_dense=dc_dense, dc_rows=dc_rows, tau=tau_t)
    return (run._replace(train=new_train).with_feature(NAME, new_astate),
            step_output(logits_B, loss, ok, g_dense, g_rows))

  def init_fn(train_state: TrainState, max_unique_: Optional[int] = None) -> RunState:
    return RunState(train_state, {NAME: init_history(train_state, max_unique_)})

  return init_fn, step_fn


def async_transform(init_fn: Callable, step_fn: Callable) -> StepTransform:
  """The simulation as the step transform ``async_sim``, from the ``(init_fn, step_fn)`` of
  :func:`make_async_train_step` or :func:`make_async_train_step_from_config`. It
  computes the update at stale parameters itself, so it comes first in a chain."""
  return StepTransform(NAME, wrap=lambda inner: step_fn,
                       init=lambda train: init_fn(train).feature(NAME), replaces_step=True)


def _num_rows(tables) -> int:
  return next(iter(tables.values())).shape[0] if tables else 0


def make_async_train_step_from_config(model, dense_opt, sparse_opts, cfg, max_unique: int,
                                      key: str = "train.async_sim",
                                      placement: Placement = LOCAL) -> tuple[Callable, Callable]:
  """``make_async_train_step`` from an ``async_config_defaults()``-shaped config.

  Errors name ``key.<field>``.
  """
  defaults = async_config_defaults()
  given = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  unknown = set(given) - set(defaults.keys())
  if unknown:
    raise ValueError(f"config {key}: unknown keys {sorted(unknown)} "
                     f"(valid: {sorted(defaults.keys())})")
  c = defaults.to_dict()
  c.update(given)
  if c["delay_compensation"] not in DC_MODES:
    raise ValueError(f"config {key}.delay_compensation: must be one of {DC_MODES}, "
                     f"got {c['delay_compensation']!r}")
  dc = None
  if c["delay_compensation"] != "none":
    dc = {"lambda_": c["lambda_"], "adaptive": c["delay_compensation"] == "adaptive",
          "mean_square_decay": c["mean_square_decay"], "eps": c["eps"]}
  try:
    return make_async_train_step(
        model, dense_opt, sparse_opts, staleness=c["staleness"], tau=c["tau"],
        workers=c["workers"], delay_compensation=dc, seed=c["seed"], max_unique=max_unique,
        predictions=c["predictions"], distribution=c["distribution"],
        geometric_p=c["geometric_p"], placement=placement)
  except ValueError as e:
    raise ValueError(f"config {key}: {e}") from None
