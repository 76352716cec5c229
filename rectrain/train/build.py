"""Building a run's model, optimizers and train state from its config (shared by the protocols).

Moved out of rectrain/train/loop.py (which re-exports the public names).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from rectrain.models import build_model, count_params, init_tables
from rectrain.models.pooling import with_layout
from rectrain.optim import SparseOptimizer, get_optimizer
from rectrain.train.step import init_train_state



def _opt_kwargs(section) -> tuple[str, dict, dict]:
  """``(name, the factory's arguments, the chain keys)`` of an optimizer section."""
  d = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
  name = d.pop("name")
  warmup = d.pop("warmup_steps", 0)
  if warmup and "learning_rate" in d and not callable(d["learning_rate"]):
    # Linear warm-up from 0 to the learning rate over the first warmup_steps updates.
    d["learning_rate"] = optax.linear_schedule(0.0, float(d["learning_rate"]), int(warmup))
  chain = {k: d.pop(k) for k in ("clip_norm", "decoupled_weight_decay") if k in d}
  return name, d, chain


def chained(tx: optax.GradientTransformation, clip_norm: float = 0.0,
            decoupled_weight_decay: float = 0.0) -> optax.GradientTransformation:
  """``tx`` with the optimizer sections' chain keys around it (0 leaves a key off).

  ``clip_norm``: gradients clipped to this global L2 norm before ``tx``
  (``optax.clip_by_global_norm``; on a table, the norm of the touched rows'
  gradient, which is the whole table's). ``decoupled_weight_decay`` d: after
  ``tx``'s update, ``w <- w - d * w`` (AdamW-style, independent of the
  learning rate; on a table only touched rows decay, i.e. lazily).
  """
  for key, value in (("clip_norm", clip_norm), ("decoupled_weight_decay", decoupled_weight_decay)):
    if not isinstance(value, (int, float)) or value < 0:
      raise ValueError(f"{key} must be a number >= 0, got {value!r}")
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(float(clip_norm)), tx)
  if decoupled_weight_decay:
    tx = optax.chain(tx, optax.add_decayed_weights(-float(decoupled_weight_decay)))
  return tx


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
    name, kw, chain = _opt_kwargs(section)
    try:
      return chained(factory(name, **kw), **chain)
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
    sparse[table] = SparseOptimizer(build(get_optimizer, section, key))
  unknown = set(config.optim.tables.keys()) - set(table_names)
  if unknown:
    raise KeyError(f"config optim.tables names tables {sorted(unknown)} that the model "
                   f"does not have (it has {list(table_names)})")
  return dense_opt, sparse


def create_model_and_state(config, num_rows: int, num_fields: int, num_dense: int,
                           table_rows: int | None = None, layout=None):
  """Builds the model, its initial TrainState, the optimizers and the param count.

  ``table_rows > num_rows`` (a sharded run, :func:`rectrain.train.sharding.padded_rows`)
  appends zero rows to every table after initialising its ``num_rows`` real
  rows, so the real rows are the same as without padding; the param count
  counts the real rows. ``layout`` (the stream's ``FieldLayout``): with
  multi-hot fields the model comes wrapped to pool them
  (:func:`rectrain.models.pooling.with_layout`).
  """
  model = with_layout(build_model(config.model), layout)
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
