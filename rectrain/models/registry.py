"""Model construction from configs, and parameter counts.

A model config is an ``ml_collections.ConfigDict`` with ``name`` (one of
:data:`MODELS`) and the model's hyperparameters, which are exactly the fields
of its Flax module (see rectrain/models/ctr.py). Missing keys take the module
defaults; unknown names and keys are errors naming them.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rectrain.config_sections import default_model_config  # noqa: F401 - no jax there
from rectrain.models.ctr import DCNv2, DeepFM, DLRM, DNN, FM, LR, WideDeep
from rectrain.models.din import DIN

MODELS = {
    "lr": LR,
    "fm": FM,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "dcnv2": DCNv2,
    "dlrm": DLRM,
    "dnn": DNN,
    "din": DIN,
}


def _model_class(name) -> type:
  if name not in MODELS:
    raise ValueError(f"model config key 'name': unknown model {name!r}; "
                     f"expected one of {sorted(MODELS)}")
  return MODELS[name]


def _hparam_defaults(cls) -> Dict[str, object]:
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in ("parent", "name"):
      continue
    out[f.name] = f.default
  return out


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The (unbound) Flax module described by ``config``.

  Raises:
    ValueError: no or unknown ``config.name``, a key that is not a
      hyperparameter of that model, or a bad hyperparameter value (each error
      names the key).
  """
  items = dict(config.items()) if hasattr(config, "items") else None
  if items is None:
    raise ValueError(f"model config must be a ConfigDict or dict, got {type(config).__name__}")
  if "name" not in items:
    raise ValueError(f"model config has no key 'name'; expected one of {sorted(MODELS)}")
  name = items.pop("name")
  cls = _model_class(name)
  defaults = _hparam_defaults(cls)
  for key in items:
    if key not in defaults:
      raise ValueError(f"model config key {key!r}: not a hyperparameter of {name!r} "
                       f"(valid keys: {sorted(defaults)})")
  kwargs = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in items.items()}
  return cls(**kwargs)


def example_inputs(model: nn.Module, num_fields: int, num_dense: int,
                   batch_size: int = 1) -> Tuple[Dict[str, jax.Array], jax.Array]:
  """Zero ``(rows, dense_BxI)`` of the right shapes, e.g. for ``model.init``."""
  rows = {s.name: jnp.zeros((batch_size, num_fields, s.dim), jnp.float32)
          for s in model.table_specs()}
  return rows, jnp.zeros((batch_size, num_dense), jnp.float32)


def _size(tree) -> int:
  return int(sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree)))


def count_params(model: nn.Module, num_rows: int, num_fields: int,
                 num_dense: int) -> Dict[str, int]:
  """Parameter counts, without allocating anything.

  Returns ``{"dense": n, "sparse": n, "total": n, "table/<name>": n, ...,
  "state": n}``: ``dense`` counts the module's ``params`` (from
  ``jax.eval_shape`` of ``model.init``), ``table/<name>`` is
  ``num_rows * dim`` for every declared table, ``sparse`` their sum,
  ``total = dense + sparse``, and ``state`` the non-trainable variables
  (batch-norm statistics; 0 without batch norm).
  """
  rows = {s.name: jax.ShapeDtypeStruct((1, num_fields, s.dim), jnp.float32)
          for s in model.table_specs()}
  dense = jax.ShapeDtypeStruct((1, num_dense), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), rows, dense)
  dense_n = _size(variables.get("params", {}))
  state_n = _size({k: v for k, v in variables.items() if k != "params"})
  out = {"dense": dense_n}
  sparse_n = 0
  for spec in model.table_specs():
    out[f"table/{spec.name}"] = int(num_rows) * spec.dim
    sparse_n += int(num_rows) * spec.dim
  out["sparse"] = sparse_n
  out["total"] = dense_n + sparse_n
  out["state"] = state_n
  return out
