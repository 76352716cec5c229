"""DIN: target attention over a behaviour sequence (Zhou et al. 2018).

"Deep Interest Network for Click-Through Rate Prediction" (KDD 2018): the
user's behaviour sequence ``h_1..h_L`` (embeddings of the items they acted
on) is pooled with weights that depend on the candidate item ``t``:

    a_l = MLP_att([h_l, t, h_l - t, h_l * t])          (the activation unit, eq. 3)
    u   = sum_l a_l h_l                                  (no softmax: eq. 3's note)

and ``u`` takes the sequence field's place among the field embeddings that
feed the MLP. The paper's Dice activation is replaced by ReLU (PReLU and
Dice are its variants of it); the unused slots of a padded sequence have
weight 0.

The sequence is a schema field of role ``multi`` with pool ``seq``
(rectrain/data/schema.py), the candidate item a single-valued field named by
``target``. The sequence field has its own block of table rows (its hashes
are not those of the candidate's field), so the attention learns how the two
relate instead of comparing the same embedding.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from rectrain.models.ctr import EMBEDDING, _CTRModel, _deep_input, _fail, _unpack
from rectrain.models.layers import MLP
from rectrain.models.tables import TableSpec


class DIN(_CTRModel):
  """Deep Interest Network. Dense parameters: the activation unit (``4D -> att_dims
  -> 1``) and the MLP (``F * D + I -> mlp_dims -> 1``)."""

  embed_dim: int = 16
  embed_init_scale: float = 0.01
  embed_init: str = "truncated_normal"
  att_dims: Sequence[int] = (80, 40)
  mlp_dims: Sequence[int] = (200, 80)
  target: str = ""
  batch_norm: bool = False
  dropout_rate: float = 0.0

  uses_sequences = True  # fed the seq fields' padded rows (rectrain/models/pooling.py)

  def table_specs(self) -> Tuple[TableSpec, ...]:
    return (self._embedding_spec(),)

  def check_fields(self, names, pools) -> None:
    """Errors naming ``model.target`` / the schema unless the fields fit DIN."""
    if "seq" not in pools:
      raise ValueError("model din needs a behaviour sequence: a schema column of role multi "
                       "with pool seq (e.g. 'history:multi:seq:20:|')")
    single = tuple(names)[:len(names) - len(pools)]
    if self.target not in single:
      _fail(self, "target", f"must name the candidate item's single-valued field (one of "
                            f"{list(single)}), got {self.target!r}")

  @nn.compact
  def __call__(self, rows, dense_BxI, train: bool = False, sequences=(), field_names=()):
    if not sequences:
      raise ValueError("model din needs a behaviour sequence: a schema column of role multi "
                       "with pool seq (e.g. 'history:multi:seq:20:|')")
    rows, dense_BxI = _unpack(self, rows, dense_BxI)
    emb_BxFxD = rows[EMBEDDING]
    t_BxD = emb_BxFxD[:, list(field_names).index(self.target)]
    for k, seq in enumerate(sequences):
      h_BxLxD = seq.rows[EMBEDDING]
      t_BxLxD = jnp.broadcast_to(t_BxD[:, None, :], h_BxLxD.shape)
      x = jnp.concatenate([h_BxLxD, t_BxLxD, h_BxLxD - t_BxLxD, h_BxLxD * t_BxLxD], axis=-1)
      a = MLP(tuple(self.att_dims), name=f"attention_{k}")(x)
      a_BxL = nn.Dense(1, name=f"attention_{k}_out")(a)[..., 0] * seq.mask_BxL
      u_BxD = jnp.einsum("bl,bld->bd", a_BxL, h_BxLxD)
      emb_BxFxD = emb_BxFxD.at[:, seq.field].set(u_BxD)
    h_BxH = MLP(tuple(self.mlp_dims), batch_norm=self.batch_norm,
                dropout_rate=self.dropout_rate, name="mlp")(
                    _deep_input(emb_BxFxD, dense_BxI), train)
    return nn.Dense(1, name="out")(h_BxH)[:, 0]
