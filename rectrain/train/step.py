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

from typing import Any, Callable, Dict, NamedTuple

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
  """(dense_params, rows_U, batch) -> logits_B, from the batch's gathered rows."""

  def forward(dense_params, rows_U, batch):
    rows_BxFxW = {k: v[batch["inverse"]] for k, v in rows_U.items()}
    return model.apply(dense_params, rows_BxFxW, batch["dense"])

  return forward


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
                    train_tables: bool = True) -> Callable:
  """Returns ``step(state, batch) -> (state, StepOutput)`` (not jitted).

  ``batch`` holds device arrays ``label``, ``weight``, ``dense``, ``unique``,
  ``inverse`` (see rectrain/data/batch.py). A batch whose loss or gradients
  are not finite leaves the state untouched except ``nonfinite += 1``.
  ``train_dense=False`` / ``train_tables=False`` freeze the dense parameters /
  the tables (and their optimizer states), e.g. to fine-tune one group only.
  """
  forward = make_forward(model)

  def objective(dense_params, rows_U, batch):
    logits_B = forward(dense_params, rows_U, batch)
    return loss_fn(logits_B, batch["label"], batch["weight"]), logits_B

  grad_fn = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)

  def step(state: TrainState, batch) -> tuple[TrainState, StepOutput]:
    unique_U = batch["unique"]
    rows_U = gather_rows(state.tables, unique_U)
    (loss, logits_B), (g_dense, g_rows) = grad_fn(state.dense_params, rows_U, batch)

    finite = [jnp.isfinite(loss)]
    finite += [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves((g_dense, g_rows))]
    ok = jnp.all(jnp.stack(finite))

    new_state = apply_gradients(state, g_dense, g_rows, unique_U, ok, dense_opt, sparse_opts,
                                train_dense, train_tables)
    return new_state, StepOutput(jax.nn.sigmoid(logits_B), loss, ok,
                                 optax.tree.norm(g_dense), optax.tree.norm(g_rows))

  return step


def make_multi_step(step: Callable, donate: bool = True) -> Callable:
  """Jits ``K`` steps per dispatch with ``lax.scan``; donates the state.

  Returns ``multi(state, batches) -> (state, StepOutput with leading K)`` where
  every leaf of ``batches`` has a leading axis K.
  """

  def multi(state, batches):
    return jax.lax.scan(step, state, batches)

  return jax.jit(multi, donate_argnums=(0,) if donate else ())


def make_predict(model) -> Callable:
  """Jitted ``predict(dense_params, tables, batch) -> probabilities_B`` (no learning)."""
  forward = make_forward(model)

  def predict(dense_params, tables, batch):
    rows_U = gather_rows(tables, batch["unique"])
    return jax.nn.sigmoid(forward(dense_params, rows_U, batch))

  return jax.jit(predict)
