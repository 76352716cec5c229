"""CTR models as Flax (linen) modules over externally held embedding tables.

Every model has the same interface:

* ``model.table_specs()`` (callable on an unbound module) names the tables it
  reads over the fused id space (see rectrain/models/tables.py): ``linear``
  (width 1, zeros at init) for first-order weights, ``embedding`` (width D).
* ``model.apply(variables, rows, dense_BxI, train=False) -> logits_B``, where
  ``rows[name]`` is ``(B, F, W)``: the already gathered rows of every declared
  table for the batch's ids, and ``dense_BxI`` the dense (integer) features
  (``I`` may be 0, e.g. when the integers are bucketised into extra fields).

The module holds only the dense parameters. Everything is float32: rows and
dense inputs are cast on entry.

Shape legend: B batch rows, F categorical fields, I dense features, D
embedding width, X = F * D + I width of the concatenated deep input, H hidden
width, P number of interacting pairs.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rectrain.models.layers import MLP, CrossNetwork, FirstOrder, dot_interaction, fm_second_order
from rectrain.models.tables import INITS, TableSpec

Array = jnp.ndarray

LINEAR = "linear"
EMBEDDING = "embedding"
DCN_STRUCTURES = ("stacked", "parallel")


# ---------------------------------------------------------------------------
# Hyperparameter and input checks.

def _fail(model, field, message):
  raise ValueError(f"{type(model).__name__} hyperparameter {field!r} "
                   f"(model config key {field!r}): {message}")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _validate_hparams(model) -> None:
  """Checks hyperparameters by name; errors name the field / config key."""
  for field in type(model).__dataclass_fields__:
    if field in ("parent", "name"):
      continue
    v = getattr(model, field)
    if field == "embed_dim":
      if not _is_int(v) or v < 1:
        _fail(model, field, f"must be a positive int, got {v!r}")
    elif field == "embed_init_scale":
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        _fail(model, field, f"must be a number >= 0, got {v!r}")
    elif field == "embed_init":
      if v not in INITS:
        _fail(model, field, f"must be one of {INITS}, got {v!r}")
    elif field.endswith("_dims"):
      if not isinstance(v, (tuple, list)) or not all(_is_int(w) and w >= 1 for w in v):
        _fail(model, field, f"must be a tuple of positive ints, got {v!r}")
    elif field in ("num_cross_layers", "cross_low_rank"):
      if not _is_int(v) or v < 0:
        _fail(model, field, f"must be an int >= 0, got {v!r}")
    elif field == "structure":
      if v not in DCN_STRUCTURES:
        _fail(model, field, f"must be one of {DCN_STRUCTURES}, got {v!r}")
    elif field == "dropout_rate":
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        _fail(model, field, f"must be a number in [0, 1), got {v!r}")
    elif field in ("batch_norm", "interaction_self"):
      if not isinstance(v, bool):
        _fail(model, field, f"must be a bool, got {v!r}")


def _unpack(model, rows: Dict[str, Array], dense_BxI: Array) -> Tuple[Dict[str, Array], Array]:
  """Checks ``rows`` against ``model.table_specs()``; casts to float32."""
  where = type(model).__name__
  if not isinstance(rows, dict):
    raise ValueError(f"{where}: rows must be a dict of table name -> (B, F, W), "
                     f"got {type(rows).__name__}")
  dense_BxI = jnp.asarray(dense_BxI, jnp.float32)
  if dense_BxI.ndim != 2:
    raise ValueError(f"{where}: dense_BxI must be 2-D (B, I), got shape {dense_BxI.shape}")
  batch = dense_BxI.shape[0]
  out, fields = {}, None
  for spec in model.table_specs():
    if spec.name not in rows:
      raise ValueError(f"{where}: rows has no table {spec.name!r} (got {sorted(rows)})")
    r = jnp.asarray(rows[spec.name], jnp.float32)
    if r.ndim != 3 or r.shape[0] != batch or r.shape[2] != spec.dim:
      raise ValueError(f"{where}: rows[{spec.name!r}] must have shape (B={batch}, F, "
                       f"W={spec.dim}), got {r.shape}")
    if fields is not None and r.shape[1] != fields:
      raise ValueError(f"{where}: rows[{spec.name!r}] has {r.shape[1]} fields, "
                       f"other tables have {fields}")
    fields = r.shape[1]
    out[spec.name] = r
  return out, dense_BxI


def _deep_input(emb_BxFxD: Array, dense_BxI: Array) -> Array:
  """``[flatten(emb), dense]``: (B, F * D + I)."""
  b, f, d = emb_BxFxD.shape
  return jnp.concatenate([emb_BxFxD.reshape(b, f * d), dense_BxI], axis=1)


class _CTRModel(nn.Module):
  """Shared validation. Subclasses define ``table_specs`` and ``__call__``."""

  def __post_init__(self):
    _validate_hparams(self)
    super().__post_init__()

  def _embedding_spec(self) -> TableSpec:
    return TableSpec(EMBEDDING, self.embed_dim, float(self.embed_init_scale), self.embed_init)


# ---------------------------------------------------------------------------
# Models.

class LR(_CTRModel):
  """Logistic regression over hashed fields.

  ``logit = b + sum_f w[x_f] + dense @ w_dense``, with ``w`` the width-1
  ``linear`` table (the FTRL-Proximal setting of McMahan et al. 2013, "Ad
  Click Prediction: a View from the Trenches").
  Dense parameters: ``1 + I``.
  """

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (TableSpec(LINEAR, 1, 0.0),)

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    return FirstOrder(name="first_order")(rows[LINEAR], dense_BxI)


class FM(_CTRModel):
  """Factorization machine (Rendle 2010, "Factorization Machines", eq. 1, 5).

  ``logit = LR + sum_{i<j} <v_i, v_j>
         = LR + 0.5 * sum_d ((sum_f v_fd)^2 - sum_f v_fd^2)``
  over the F field embeddings ``v_f`` (one-hot fields, so ``x_f = 1``). Dense
  features enter the linear part only. Dense parameters: ``1 + I``.
  """

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (TableSpec(LINEAR, 1, 0.0), self._embedding_spec())

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    first_B = FirstOrder(name="first_order")(rows[LINEAR], dense_BxI)
    return first_B + fm_second_order(rows[EMBEDDING])


class WideDeep(_CTRModel):
  """Wide & Deep (Cheng et al. 2016, "Wide & Deep Learning for Recommender Systems").

  ``logit = LR + w_out^T MLP([flatten(emb), dense])``: the wide part is the
  LR part (no hand-made cross-product features), the deep part an MLP over
  the concatenated field embeddings and dense features, joined by summing
  logits (eq. 3). The deep head has no bias (the wide part's ``b`` is the one
  bias). Dense parameters, with ``X = F D + I`` and ``mlp_dims = (H_1..H_L)``:
  ``1 + I + sum_k (H_{k-1} H_k + H_k) + H_L`` with ``H_0 = X``.
  """

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  mlp_dims: Sequence[int] = (400, 400, 400)
  batch_norm: bool = False
  dropout_rate: float = 0.0

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (TableSpec(LINEAR, 1, 0.0), self._embedding_spec())

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    wide_B = FirstOrder(name="first_order")(rows[LINEAR], dense_BxI)
    h_BxH = MLP(tuple(self.mlp_dims), batch_norm=self.batch_norm,
                dropout_rate=self.dropout_rate, name="mlp")(
                    _deep_input(rows[EMBEDDING], dense_BxI), train)
    deep_B = nn.Dense(1, use_bias=False, name="deep_out")(h_BxH)[:, 0]
    return wide_B + deep_B


class DeepFM(_CTRModel):
  """DeepFM (Guo et al. 2017, "DeepFM: A Factorization-Machine based Neural
  Network for CTR Prediction", eq. 1-4).

  ``logit = LR + sum_{i<j} <v_i, v_j> + w_out^T MLP([flatten(v), dense])``
  with the FM and deep parts sharing the field embeddings ``v``. The deep
  head has no bias. Dense parameters: as :class:`WideDeep`.
  """

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  mlp_dims: Sequence[int] = (400, 400, 400)
  batch_norm: bool = False
  dropout_rate: float = 0.0

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (TableSpec(LINEAR, 1, 0.0), self._embedding_spec())

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    emb_BxFxD = rows[EMBEDDING]
    first_B = FirstOrder(name="first_order")(rows[LINEAR], dense_BxI)
    h_BxH = MLP(tuple(self.mlp_dims), batch_norm=self.batch_norm,
                dropout_rate=self.dropout_rate, name="mlp")(
                    _deep_input(emb_BxFxD, dense_BxI), train)
    deep_B = nn.Dense(1, use_bias=False, name="deep_out")(h_BxH)[:, 0]
    return first_B + fm_second_order(emb_BxFxD) + deep_B


class DCNv2(_CTRModel):
  """DCN-V2 (Wang et al. 2021, "DCN V2: Improved Deep & Cross Network", eq. 1).

  ``x_0 = [flatten(emb), dense]`` (width X = F D + I);
  cross layers ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` (full rank), or
  ``x_0 * (U_l (V_l^T x_l) + b_l) + x_l`` when ``cross_low_rank = r > 0``.
  ``structure="stacked"``: ``logit = w^T MLP(x_L) + b``;
  ``structure="parallel"``: ``logit = w^T [x_L, MLP(x_0)] + b``.
  Dense parameters: ``L (X^2 + X)`` (or ``L (2 X r + X)``) for the cross
  layers, the MLP's, and the head (its input width + 1).
  """

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  num_cross_layers: int = 3
  cross_low_rank: int = 0
  structure: str = "stacked"
  mlp_dims: Sequence[int] = (400, 400, 400)
  batch_norm: bool = False
  dropout_rate: float = 0.0

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (self._embedding_spec(),)

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    x0_BxX = _deep_input(rows[EMBEDDING], dense_BxI)
    cross = CrossNetwork(self.num_cross_layers, self.cross_low_rank, name="cross")
    mlp = MLP(tuple(self.mlp_dims), batch_norm=self.batch_norm,
              dropout_rate=self.dropout_rate, name="mlp")
    if self.structure == "stacked":
      h_BxH = mlp(cross(x0_BxX), train)
    else:
      h_BxH = jnp.concatenate([cross(x0_BxX), mlp(x0_BxX, train)], axis=1)
    return nn.Dense(1, name="out")(h_BxH)[:, 0]


class DLRM(_CTRModel):
  """DLRM (Naumov et al. 2019, "Deep Learning Recommendation Model for
  Personalization and Recommendation Systems").

  With ``I > 0``: ``z_0 = MLP_bot(dense)`` (``bottom_mlp_dims`` then a final
  width-D layer, ReLU throughout as in the reference code);
  ``T = [z_0, v_1 .. v_F]`` (F + 1 vectors of width D);
  ``p = (<T_i, T_j>)_{i<j}`` (``i <= j`` with ``interaction_self``);
  ``logit = w^T MLP_top([z_0, p]) + b``.
  With ``I == 0`` there is no bottom MLP: ``T = [v_1 .. v_F]`` and the top
  MLP sees ``p`` alone.
  """

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  bottom_mlp_dims: Sequence[int] = (512, 256)
  top_mlp_dims: Sequence[int] = (512, 256)
  interaction_self: bool = False
  batch_norm: bool = False
  dropout_rate: float = 0.0

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (self._embedding_spec(),)

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    emb_BxFxD = rows[EMBEDDING]
    if dense_BxI.shape[1] > 0:
      z0_BxD = MLP(tuple(self.bottom_mlp_dims) + (self.embed_dim,), batch_norm=self.batch_norm,
                   dropout_rate=self.dropout_rate, name="bottom_mlp")(dense_BxI, train)
      vec_BxNxD = jnp.concatenate([z0_BxD[:, None, :], emb_BxFxD], axis=1)
      pairs_BxP = dot_interaction(vec_BxNxD, self.interaction_self)
      top_in = jnp.concatenate([z0_BxD, pairs_BxP], axis=1)
    else:
      top_in = dot_interaction(emb_BxFxD, self.interaction_self)
    if top_in.shape[1] == 0:
      raise ValueError("DLRM: nothing to interact (1 field, no dense features and "
                       "interaction_self=False)")
    h_BxH = MLP(tuple(self.top_mlp_dims), batch_norm=self.batch_norm,
                dropout_rate=self.dropout_rate, name="top_mlp")(top_in, train)
    return nn.Dense(1, name="out")(h_BxH)[:, 0]


class DNN(_CTRModel):
  """Embedding + MLP: ``logit = w^T MLP([flatten(emb), dense]) + b``.

  The plain deep CTR model of the one-epoch study (Zhang et al. 2022,
  "Towards Understanding the Overfitting Phenomenon of Deep Click-Through
  Rate Prediction Models").
  """

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  mlp_dims: Sequence[int] = (400, 400, 400)
  batch_norm: bool = False
  dropout_rate: float = 0.0

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (self._embedding_spec(),)

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False):
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    h_BxH = MLP(tuple(self.mlp_dims), batch_norm=self.batch_norm,
                dropout_rate=self.dropout_rate, name="mlp")(
                    _deep_input(rows[EMBEDDING], dense_BxI), train)
    return nn.Dense(1, name="out")(h_BxH)[:, 0]
