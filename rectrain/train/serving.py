"""A served copy of the model, refreshed from the live (training) model on a schedule.

In production the model that answers requests is not the one being trained:
the trainer pushes its parameters to the serving fleet every so often, and
Monolith (Liu et al. 2022, "Monolith: Real Time Recommendation System With
Collisionless Embedding Table") syncs the sparse parameters (embedding rows
touched since the last sync) every few seconds or minutes and the dense
parameters far less often. This module simulates that inside the jitted
training step: progressive-validation predictions come from the SERVED
parameters, while training updates the LIVE ones.

Schedule (event time, two groups synced separately): with interval ``P > 0``
the sync points are ``0, P, 2P, ...``; with ``P = 0`` every batch is a sync
point; with ``P = inf`` only the first batch is; with ``freeze_after_s = T >
0`` there are no sync points after ``T``. A sync before batch ``b`` happens
when batch ``b``'s last event time ``t_b`` (max over its real rows) has passed
a sync point that the previous batches had not:

  key(b) = floor(min(t_b, T) / P)   (P > 0; min(t_b, T) for P = 0; 0 for P = inf)
  sync before b  <=>  b is the first batch or key(b) > key(b - 1)

and copies the live parameters (those after all batches before ``b``) into the
served copy. Every batch before ``b`` has ``t < `` the crossed sync point, so
the served model never holds a row at or after its sync point: a row at time
``t`` is predicted by the live model as of the last sync point ``<= t``, up to
batch granularity (rows of the same batch before the sync point are predicted
by the model synced before the batch, which has not seen them either). The
host computes the flags (:class:`SyncSchedule`, exact float64 times) and
passes them to the device step as ``batch["sync_tables"]`` and
``batch["sync_dense"]`` (K,) bools.

How the served copy is kept (cost per step; N rows, W row width, U unique
rows of a batch, P_d dense parameters):

* dense parameters: a full copy, selected with ``jnp.where(sync, live,
  served)`` every step: O(P_d) per step (the dense parameters are small).
* tables: copy-on-write, never a full-table copy. ``served_tables`` is a
  second table and ``saved_at_N`` an int32 per row; ``syncs`` counts table
  syncs. Invariant: the served value of row r is ``served_tables[r]`` if
  ``saved_at_N[r] == syncs`` and the live value otherwise. A sync is
  ``syncs += 1`` (O(1): every row falls back to its live value, which IS its
  value at the sync). Before the step updates the batch's unique rows, each
  row not yet saved since the last sync gets its pre-update live value saved
  (``served[r] <- live[r]``, ``saved_at_N[r] <- syncs``), so later updates in
  the interval do not leak into the served copy. Cost: O(U * W) per step
  (a gather of the served rows and a scatter of the saved ones) and O(1) per
  sync, independent of N and of the interval; memory one extra table (no
  optimizer state) and N int32. A ``jnp.where`` over the whole table would
  instead cost O(N * W) per step (where evaluates both branches), and a
  ``lax.cond`` copy O(N * W) per sync.
* predictions: one extra forward pass per step (the live forward pass is the
  one differentiated).

Measured (experiments/stale_models/bench_serving.py, CPU, DeepFM embed 16,
MLP 256-128, N = 26 * 2^17, B = 4096): 1.23-1.29x the live step time, the
same whether syncing every batch or every 64; a full-table ``where`` copy
instead: 1.86-2.17x, growing with N.

Interval 0 for both groups and no freeze is the live model serving: the loop
does not wrap the step at all (bit for bit today's behaviour). Training is
never affected: the live state is updated exactly as without serving.

``StepOutput.preds_B`` are the served model's predictions; ``loss`` stays the
live forward pass's (the one differentiated). Works with the asynchronous
simulator (its updates touch the batch's unique rows too); not with the id
map (a re-assigned row would be served the evicted id's embedding).
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rectrain.train.step import LOCAL, Placement, TrainState, make_forward
from rectrain.train.transforms import RunState, StepTransform

PyTree = Any
SYNC_KEYS = ("sync_tables", "sync_dense")


class ServedCopy(NamedTuple):
  """The served copy: the state of the ``serving`` step transform
  (``RunState.features["serving"]``; a pytree, checkpointed with the run state)."""

  served_dense: PyTree              # dense parameters of the served model ({} when live)
  served_tables: Dict[str, jax.Array]  # name -> (N, W): rows saved since the last sync ({} when live)
  saved_at_N: jax.Array             # (N,) int32: table-sync count at which the row was saved, -1
                                    # never; (1,) unused when the tables are live (orbax saves no empty arrays)
  syncs: jax.Array                  # int32 scalar: table syncs so far


NAME = "serving"  # the transform's name: its state is RunState.features[NAME]


def serving_enabled(section) -> bool:
  """Whether a ``config.serving`` section asks for a served copy (else the live model serves)."""
  if section is None:
    return False
  return bool(section.get("sync_tables_s", 0.0) or section.get("sync_dense_s", 0.0)
              or section.get("freeze_after_s", 0.0))


def stale_groups(section) -> tuple[bool, bool]:
  """(tables stale, dense stale): a group needs a served copy unless it is live (P = 0, no freeze)."""
  freeze = bool(section.get("freeze_after_s", 0.0))
  return (freeze or bool(section.get("sync_tables_s", 0.0)),
          freeze or bool(section.get("sync_dense_s", 0.0)))


def init_served_copy(train: TrainState, stale_tables: bool, stale_dense: bool) -> ServedCopy:
  """The served copy of a train state (equal to it; the first batch syncs anyway)."""
  num_rows = next(iter(train.tables.values())).shape[0] if train.tables else 0
  return ServedCopy(
      served_dense=jax.tree_util.tree_map(jnp.copy, train.dense_params) if stale_dense else {},
      served_tables=({k: jnp.zeros_like(v) for k, v in train.tables.items()}
                     if stale_tables else {}),
      saved_at_N=jnp.full((num_rows if stale_tables else 1,), -1, jnp.int32),
      syncs=jnp.zeros((), jnp.int32))


def serving_transform(model, stale_tables: bool, stale_dense: bool,
                      placement: Placement = LOCAL) -> StepTransform:
  """The step transform ``serving``: predictions come from the served copy.

  The wrapped step reads ``batch["sync_tables"]`` and ``batch["sync_dense"]``
  (bool scalars per batch; see :class:`SyncSchedule`), syncs, predicts the
  batch with the served parameters, saves the batch's rows copy-on-write and
  calls the inner step with the rest of the batch. Pure, so it goes under
  ``lax.scan`` / ``jit``. Every row read and write goes through ``placement``
  (rectrain/train/step.py), so on row-sharded tables each device keeps the
  served copy of the rows it holds.
  """
  forward = make_forward(model)

  def wrap(step):
    def served_step(state: RunState, batch):
      train, copy = state.train, state.feature(NAME)
      live_rows_U, local_U = placement.rows(train.tables, batch["unique"])
      served_dense, served_tables, saved_at_N, syncs = copy
      if stale_dense:
        served_dense = jax.tree_util.tree_map(
            lambda live, old: jnp.where(batch["sync_dense"], live, old),
            train.dense_params, served_dense)
      rows_U = live_rows_U
      if stale_tables:
        syncs = syncs + batch["sync_tables"].astype(jnp.int32)
        # Rows another device holds read "not saved" and zeros here; combine sums.
        saved_U = placement.combine(
            (saved_at_N.at[local_U].get(mode="fill", fill_value=-1) == syncs).astype(jnp.int32)) > 0
        old_rows_U = placement.combine(
            {k: t.at[local_U].get(mode="fill", fill_value=0) for k, t in served_tables.items()})
        rows_U = {k: jnp.where(saved_U[:, None], old_rows_U[k], live_rows_U[k]) for k in live_rows_U}
        # Copy-on-write: the served value of each row the step may change.
        served_tables = {k: served_tables[k].at[local_U].set(rows_U[k], mode="drop")
                         for k in served_tables}
        saved_at_N = saved_at_N.at[local_U].set(syncs, mode="drop")
      logits_B = forward(served_dense if stale_dense else train.dense_params, rows_U, batch)
      state, out = step(state, batch)
      out = out._replace(preds_B=jax.nn.sigmoid(logits_B))
      return state.with_feature(NAME, ServedCopy(served_dense, served_tables, saved_at_N, syncs)), out

    return served_step

  return StepTransform(NAME, wrap=wrap, keys=SYNC_KEYS,
                       init=lambda train: init_served_copy(train, stale_tables, stale_dense))


class SyncSchedule:
  """Host-side sync flags of one parameter group from batches' event times (float64).

  ``interval_s``: 0 = every batch, ``inf`` = the first batch only, else the
  sync points ``k * interval_s``; ``freeze_after_s > 0``: no sync point after
  it. ``key`` (the state) is the key of the last sync, None before the first
  batch; ``syncs`` counts them. See the module docstring for the rule.
  ``where`` (the config key that asks for the schedule) names errors; ``""``
  marks a live group, whose flags are all False.
  """

  def __init__(self, interval_s: float, freeze_after_s: float = 0.0, key: float | None = None,
               syncs: int = 0, where: str = "serving"):
    self.interval = float(interval_s)
    self.freeze = float(freeze_after_s) if freeze_after_s else math.inf
    self.key = key
    self.syncs = int(syncs)
    self.where = where

  def state(self) -> dict:
    return {"key": self.key, "syncs": self.syncs}

  def _key(self, t: float) -> float:
    t = min(t, self.freeze)
    if self.interval == 0:
      return t
    if math.isinf(self.interval):
      return 0.0
    return float(math.floor(t / self.interval))

  def flags(self, time_KxB, weight_KxB) -> np.ndarray:
    """(K,) bool: sync before each of K batches. Batches without real rows never sync."""
    time_KxB = np.asarray(time_KxB, np.float64)
    real_KxB = np.asarray(weight_KxB) > 0
    out = np.zeros(time_KxB.shape[0], bool)
    if not self.where:
      return out
    for i in range(time_KxB.shape[0]):
      times = time_KxB[i][real_KxB[i]]
      if times.size == 0:
        continue
      if not np.all(np.isfinite(times)):
        raise ValueError(f"config {self.where}: the served copy is synced on event time, but this "
                         "stream has rows without an event time (time = NaN, e.g. Criteo logs); "
                         "use a stream with event time or set the serving intervals to 0")
      key = self._key(float(times.max()))
      if self.key is None or key > self.key:
        out[i] = True
        self.key = key
        self.syncs += 1
    return out
