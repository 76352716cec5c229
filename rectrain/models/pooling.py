"""Multi-hot fields pooled into a model's fields (EmbeddingBag semantics).

A batch with multi-hot fields (rectrain/data/hashing.py ``FieldLayout``) has
``cat`` / ``inverse`` of ``C`` columns: one per single-valued field, then
``L`` per multi-hot field, its values from the left and the unused slots the
padding id; ``lengths`` (B, M) holds each multi-hot field's number of values.
The models see ``F`` fields. :class:`PooledModel` wraps a model so that the
one forward pass (rectrain/train/step.py ``make_forward``) gathers the ``C``
columns' rows and pools each multi-hot field into one:

* ``sum``: ``sum_{l < len} e_l`` (an empty cell: zeros);
* ``mean``: the sum over ``max(len, 1)``;
* ``seq``: mean-pooled for the models without sequence input; a sequence
  model (``uses_sequences``, e.g. DIN) also gets the padded rows (B, L, W)
  and their mask.

Slots past ``len`` are masked by position, so whatever row the padding id
reaches (none on one device; a zero row past a sharded table's real rows)
adds nothing and gets a zero gradient.

Shape legend: B batch rows, C cat columns, F fields, M multi-hot fields, L
slots of one, W table width.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

import jax.numpy as jnp

Array = jnp.ndarray


class Sequence(NamedTuple):
  """One ``seq`` field for a sequence model: its rows, mask and field index."""

  rows: Dict[str, Array]   # table name -> (B, L, W)
  mask_BxL: Array          # 1.0 for a value, 0.0 for an unused slot
  field: int               # its index among the model's F fields


def pool_fields(rows: Dict[str, Array], lengths_BxM: Array, num_single: int,
                multi_hot: Tuple[Tuple[int, int, str], ...]):
  """``(fields, sequences)``: every table's (B, C, W) rows pooled to (B, F, W), and a
  :class:`Sequence` per ``seq`` field.

  ``multi_hot``: ``(first column, L, pool)`` per multi-hot field (the layout's
  ``FieldLayout.multi_hot``).
  """
  lengths_BxM = jnp.asarray(lengths_BxM, jnp.float32)
  pooled = {k: [v[:, :num_single]] for k, v in rows.items()}
  sequences = []
  for m, (start, width, pool) in enumerate(multi_hot):
    n_Bx1 = lengths_BxM[:, m:m + 1]
    mask_BxL = (jnp.arange(width, dtype=jnp.float32)[None, :] < n_Bx1).astype(jnp.float32)
    seq = {}
    for k, v in rows.items():
      seg_BxLxW = v[:, start:start + width] * mask_BxL[..., None]
      total_BxW = jnp.sum(seg_BxLxW, axis=1)
      if pool != "sum":
        total_BxW = total_BxW / jnp.maximum(n_Bx1, 1.0)
      pooled[k].append(total_BxW[:, None, :])
      seq[k] = seg_BxLxW
    if pool == "seq":
      sequences.append(Sequence(seq, mask_BxL, num_single + m))
  return {k: jnp.concatenate(v, axis=1) for k, v in pooled.items()}, tuple(sequences)


class PooledModel:
  """A model over ``F`` fields, fed a batch of ``C`` columns with multi-hot fields.

  ``init`` / ``table_specs`` are the model's (over the pooled ``F`` fields);
  ``apply_batch(variables, rows_BxCxW, batch)`` pools first
  (:func:`pool_fields`), which is what the step's forward calls. A model with
  ``uses_sequences`` gets ``sequences=`` too (at ``init``: zero rows of each
  sequence's length).
  """

  def __init__(self, model, layout):
    self.model = model
    self.num_single = layout.num_single
    self.multi_hot = layout.multi_hot
    self.field_names = tuple(layout.names)
    self.uses_sequences = bool(getattr(model, "uses_sequences", False))
    if self.uses_sequences:
      model.check_fields(self.field_names, [p for _, _, p in self.multi_hot])

  def __repr__(self):
    return f"PooledModel({self.model!r}, multi_hot={self.multi_hot})"

  def table_specs(self):
    return self.model.table_specs()

  def _kwargs(self, sequences) -> dict:
    return {"sequences": sequences, "field_names": self.field_names} if self.uses_sequences else {}

  def init(self, key, rows, dense_BxI, **kw):
    sequences = ()
    if self.uses_sequences:
      batch = next(iter(rows.values())).shape[0]
      sequences = tuple(
          Sequence({k: jnp.zeros((batch, width, v.shape[2]), jnp.float32) for k, v in rows.items()},
                   jnp.ones((batch, width), jnp.float32), self.num_single + m)
          for m, (_, width, pool) in enumerate(self.multi_hot) if pool == "seq")
    return self.model.init(key, rows, dense_BxI, **self._kwargs(sequences), **kw)

  def apply_batch(self, variables, rows, batch, **kw):
    fields, sequences = pool_fields(rows, batch["lengths"], self.num_single, self.multi_hot)
    return self.model.apply(variables, fields, batch["dense"], **self._kwargs(sequences), **kw)


def with_layout(model, layout):
  """``model`` as it reads batches of ``layout``: wrapped in :class:`PooledModel` when the
  layout has multi-hot fields, else unchanged. A sequence model needs a ``seq`` field."""
  if layout is not None and layout.multi_hot:
    return PooledModel(model, layout)
  if getattr(model, "uses_sequences", False):
    model.check_fields(tuple(layout.names) if layout is not None else (), [])
  return model
