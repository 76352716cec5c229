"""Train state and the jitted one-pass training step.

Shape legend: B batch rows, F categorical fields, I dense features, U padded
unique ids of a batch, W width of a table row, N rows of the fused table,
K batches per dispatch.

The step is progressive validation in one pass: the forward pass that gives the
gradient uses the parameters *before* this batch is learned, so its
predictions are honest out-of-sample predictions and are returned for metrics.

Embedding tables live outside the Flax module. Per step only the rows of the
batch's unique ids are gathered (``unique_U``, computed on the host), the
gradient is taken with respect to those rows (duplicates within the batch are
summed by the gather's transpose), a row-wise optimizer updates them with
their optimizer state, and they are scattered back. Padding ids equal N: they
gather zeros and their scatters are dropped. A step therefore costs O(U * W),
never O(N * W).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from rectrain.optim import SparseOptimizer, sparse_apply

PyTree = Any


class TrainState(NamedTuple):
  """Everything a run learns; a pytree (checkpointed as a whole)."""

  step: jax.Array               # int32 scalar: batches applied
  dense_params: PyTree          # Flax variables of the model
  dense_opt_state: PyTree       # optax state of the dense optimizer
  tables: Dict[str, jax.Array]  # name -> (N, W)
  table_opt_state: Dict[str, PyTree]  # name -> row-wise optimizer state (leading dim N)
  nonfinite: jax.Array          # int32 scalar: batches skipped for a non-finite loss


class StepOutput(NamedTuple):
  preds_B: jax.Array   # predicted probabilities before learning the batch
  loss: jax.Array      # weighted mean log loss of the batch (pre-update)
  applied: jax.Array   # bool: False when the batch was skipped as non-finite
  grad_norm_dense: Any = 0.0    # L2 norm of the dense gradient
  grad_norm_tables: Any = 0.0   # L2 norm of the touched rows' gradient


def init_train_state(dense_params, tables, dense_opt: optax.GradientTransformation,
                     sparse_opts: Dict[str, SparseOptimizer]) -> TrainState:
  """A fresh train state for given initial parameters."""
  missing = set(tables) - set(sparse_opts)
  if missing:
    raise ValueError(f"no sparse optimizer for tables {sorted(missing)}")
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      dense_params=dense_params,
      dense_opt_state=dense_opt.init(dense_params),
      tables=dict(tables),
      table_opt_state={k: sparse_opts[k].init(v) for k, v in tables.items()},
      nonfinite=jnp.zeros((), jnp.int32),
  )


def weighted_logloss(logits_B, label_B, weight_B):
  """sum_b w_b * BCE(logit_b, y_b) / number of rows with w_b > 0."""
  per_B = optax.sigmoid_binary_cross_entropy(logits_B, label_B)
  count = jnp.maximum(jnp.sum((weight_B > 0).astype(jnp.float32)), 1.0)
  return jnp.sum(per_B * weight_B) / count


def gather_rows(tables, unique_U):
  return {k: t.at[unique_U].get(mode="fill", fill_value=0) for k, t in tables.items()}


def make_forward(model) -> Callable:
  """(dense_params, rows_U, batch) -> logits_B, from the batch's gathered rows (a
  :class:`rectrain.models.pooling.PooledModel` pools its multi-hot columns first)."""

  pooled = getattr(model, "apply_batch", None)  # multi-hot fields: rectrain/models/pooling.py

  def forward(dense_params, rows_U, batch):
    rows_BxCxW = {k: v[batch["inverse"]] for k, v in rows_U.items()}
    if pooled is not None:
      return pooled(dense_params, rows_BxCxW, batch)
    return model.apply(dense_params, rows_BxCxW, batch["dense"])

  return forward


def _identity(tree):
  return tree


def _same_ids(num_local_rows, ids):
  return ids


class Placement(NamedTuple):
  """Where a step's tables and batch live: the one row accessor of every step and feature.

  The step (:func:`make_train_step`) and the features that read or write
  table rows (the id map's row reset, the serving copy, the async row
  history) only go through these, so they run unchanged on one device
  (:data:`LOCAL`) and inside ``shard_map`` on row-sharded tables
  (:data:`rectrain.train.sharding.SHARDED`).

  Attributes:
    local_ids: ``(local_rows, ids) -> ids``: global table row ids as ids into
      this device's rows (``local_rows`` of them), ``local_rows`` (padding:
      never read, never written) for rows another device holds.
    combine: sums a tree over the devices that hold parts of the tables.
    loss_scale: ``batch -> scalar``, this device's share of the global loss
      (the objective is ``loss_fn(local) * scale``), or None: the whole batch.
    reduce: sums a tree over the devices that hold parts of the batch.
  """
  local_ids: Callable = _same_ids
  combine: Callable = _identity
  loss_scale: Optional[Callable] = None
  reduce: Callable = _identity

  def rows(self, tables, unique_U):
    """``(rows_U, ids_U)``: the rows ``unique_U`` of every table (whole, on every
    device; padding reads zeros) and this device's local ids of them."""
    if not tables:
      return {}, unique_U
    ids_U = self.local_ids(next(iter(tables.values())).shape[0], unique_U)
    return self.combine(gather_rows(tables, ids_U)), ids_U


LOCAL = Placement()


def make_grad_fn(model, loss_fn: Callable = weighted_logloss,
                 placement: Placement = LOCAL) -> Callable:
  """The objective and its gradient, defined once for every step.

  Returns ``grads(dense_params, rows_U, batch) -> (loss, logits_B, g_dense,
  g_rows)``: the loss of the (global) batch at the given parameters (the
  step's own, or stale ones in the async simulation), this device's logits,
  and the gradients w.r.t. the dense parameters and the gathered rows
  (duplicates within the batch summed by the gather's transpose), summed
  over ``placement``'s devices.
  """
  forward = make_forward(model)

  def objective(dense_params, rows_U, batch, scale):
    logits_B = forward(dense_params, rows_U, batch)
    loss = loss_fn(logits_B, batch["label"], batch["weight"])
    return (loss if scale is None else loss * scale), logits_B

  value_and_grad = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)

  def grads(dense_params, rows_U, batch):
    scale = None if placement.loss_scale is None else placement.loss_scale(batch)
    (loss, logits_B), (g_dense, g_rows) = value_and_grad(dense_params, rows_U, batch, scale)
    return placement.reduce(loss), logits_B, placement.reduce(g_dense), placement.reduce(g_rows)

  return grads


def all_finite(loss, *trees) -> jax.Array:
  """True when the loss and every leaf of ``trees`` are finite (else the step is skipped)."""
  finite = [jnp.isfinite(loss)]
  finite += [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(trees)]
  return jnp.all(jnp.stack(finite))


def step_output(logits_B, loss, ok, g_dense, g_rows) -> "StepOutput":
  return StepOutput(jax.nn.sigmoid(logits_B), loss, ok, optax.tree.norm(g_dense),
                    optax.tree.norm(g_rows))


def apply_gradients(state: TrainState, g_dense, g_rows, unique_U, ok, dense_opt,
                    sparse_opts: Dict[str, SparseOptimizer], train_dense: bool = True,
                    train_tables: bool = True) -> TrainState:
  """Applies dense and row-wise gradients; a batch with ``ok == False`` only counts.

  ``g_rows[name]`` is the gradient w.r.t. the rows ``unique_U`` of table
  ``name``. A skipped batch (or a frozen group) keeps parameters and optimizer
  state: dense leaves are selected with ``where``, and the tables scatter
  nothing because every id becomes the (dropped) padding id (their optimizers'
  global leaves, the step count, are kept too).
  """
  keep = lambda new, old: jnp.where(ok & train_dense, new, old)
  updates, new_opt = dense_opt.update(g_dense, state.dense_opt_state, state.dense_params)
  new_dense = optax.apply_updates(state.dense_params, updates)
  new_dense = jax.tree_util.tree_map(keep, new_dense, state.dense_params)
  new_opt = jax.tree_util.tree_map(keep, new_opt, state.dense_opt_state)

  num_rows = next(iter(state.tables.values())).shape[0] if state.tables else 0
  applied = ok & train_tables
  ids_U = jnp.where(applied, unique_U, num_rows)
  new_tables, new_table_opt = {}, {}
  for name, table in state.tables.items():
    new_tables[name], new_table_opt[name] = sparse_apply(
        sparse_opts[name], table, state.table_opt_state[name], ids_U, g_rows[name],
        applied=applied)
  return TrainState(
      step=state.step + ok.astype(jnp.int32),
      dense_params=new_dense,
      dense_opt_state=new_opt,
      tables=new_tables,
      table_opt_state=new_table_opt,
      nonfinite=state.nonfinite + (~ok).astype(jnp.int32),
  )


def make_train_step(model, dense_opt: optax.GradientTransformation,
                    sparse_opts: Dict[str, SparseOptimizer],
                    loss_fn: Callable = weighted_logloss, train_dense: bool = True,
                    train_tables: bool = True, placement: Placement = LOCAL) -> Callable:
  """Returns ``step(state, batch) -> (state, StepOutput)`` (not jitted): the one step.

  ``batch`` holds device arrays ``label``, ``weight``, ``dense``, ``unique``,
  ``inverse`` (see rectrain/data/batch.py). A batch whose loss or gradients
  are not finite leaves the state untouched except ``nonfinite += 1``.
  ``train_dense=False`` / ``train_tables=False`` freeze the dense parameters /
  the tables (and their optimizer states), e.g. to fine-tune one group only.
  ``placement`` says where the tables and the batch live (:data:`LOCAL`: one
  device; :data:`rectrain.train.sharding.SHARDED`: row-sharded tables and a
  data-parallel batch inside ``shard_map``); the objective, gradient,
  finiteness check and update are the same (:func:`make_grad_fn`,
  :func:`all_finite`, :func:`apply_gradients`).
  """
  grads = make_grad_fn(model, loss_fn, placement)

  def step(state: TrainState, batch) -> tuple[TrainState, StepOutput]:
    rows_U, ids_U = placement.rows(state.tables, batch["unique"])
    loss, logits_B, g_dense, g_rows = grads(state.dense_params, rows_U, batch)
    ok = all_finite(loss, g_dense, g_rows)
    new_state = apply_gradients(state, g_dense, g_rows, ids_U, ok, dense_opt, sparse_opts,
                                train_dense, train_tables)
    return new_state, step_output(logits_B, loss, ok, g_dense, g_rows)

  return step


def make_multi_step(step: Callable, donate: bool = True) -> Callable:
  """Jits ``K`` steps per dispatch with ``lax.scan``; donates the state.

  Returns ``multi(state, batches) -> (state, StepOutput with leading K)`` where
  every leaf of ``batches`` has a leading axis K.
  """

  def multi(state, batches):
    return jax.lax.scan(step, state, batches)

  return jax.jit(multi, donate_argnums=(0,) if donate else ())


def make_predict_fn(model, placement: Placement = LOCAL) -> Callable:
  """``predict(dense_params, tables, batch) -> probabilities_B`` (not jitted, no learning)."""
  forward = make_forward(model)

  def predict(dense_params, tables, batch):
    rows_U, _ = placement.rows(tables, batch["unique"])
    return jax.nn.sigmoid(forward(dense_params, rows_U, batch))

  return predict


def make_predict(model) -> Callable:
  """Jitted ``predict(dense_params, tables, batch) -> probabilities_B`` (no learning)."""
  return jax.jit(make_predict_fn(model))
