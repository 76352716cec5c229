"""Optimizers by name: one optax transform each, applied densely or row-wise.

``get_optimizer(name)`` is the optax transform; ``get_sparse_optimizer(name)``
is the same transform applied to table rows (:mod:`rectrain.optim.sparse`).
Names are rectrain's own optimizers (below) or any optax alias (``adamw``,
``lion``, ...), row-wise as densely.
"""

from __future__ import annotations

import inspect

import optax

# from-imports resolve the submodules through sys.modules: the package
# attributes ``rectrain.optim.adagrad`` etc. are the functions, not the modules.
from rectrain.optim.adagrad import adagrad, rowwise_adagrad
from rectrain.optim.adamom import adamom
from rectrain.optim.ftrl import ftrl
from rectrain.optim.ogd import ogd
from rectrain.optim.sparse import SparseOptimizer, rowwise

# name -> the optax factory (dense and row-wise alike).
_OWN = {
    "rowwise_adagrad": rowwise_adagrad,
    "adagrad": adagrad,
    "ogd": ogd,
    "ftrl": ftrl,
    "adamom": adamom,
    "sgd": optax.sgd,    # row-wise: w <- w - lr g on the touched rows
    "adam": optax.adam,  # row-wise: lazy Adam (FBGEMM / TF LazyAdam), global bias correction
}
SPARSE_NAMES = tuple(_OWN)

# The row-wise forms by their old names (each is the optax factory, row-wise).
rowwise_adagrad_sparse = rowwise(rowwise_adagrad)
adagrad_sparse = rowwise(adagrad)
ogd_sparse = rowwise(ogd)
ftrl_sparse = rowwise(ftrl)
adamom_sparse = rowwise(adamom)
sgd_sparse = rowwise(optax.sgd)
adam_sparse = rowwise(optax.adam)


def _call(factory, where: str, name: str, kwargs: dict):
  params = inspect.signature(factory).parameters
  unknown = sorted(k for k in kwargs if k not in params)
  if unknown:
    raise TypeError(f"{where}({name!r}): unknown argument(s) {unknown}; "
                    f"accepted: {sorted(params)}")
  return factory(**kwargs)


def _factory(name: str, where: str):
  if name in _OWN:
    return _OWN[name]
  factory = getattr(optax, name, None)
  if factory is None or not callable(factory) or name.startswith("_"):
    raise ValueError(f"{where}: unknown optimizer {name!r}; choose one of "
                     f"{sorted(_OWN)} or an optax alias such as 'adamw'")
  return factory


def get_optimizer(name: str, **kwargs) -> optax.GradientTransformation:
  """The optax transform ``name``: rectrain's own or, failing that, any ``optax.<name>`` alias."""
  return _call(_factory(name, "get_optimizer"), "get_optimizer", name, kwargs)


def get_sparse_optimizer(name: str, **kwargs) -> SparseOptimizer:
  """The transform ``name`` (as :func:`get_optimizer`) applied to table rows."""
  return SparseOptimizer(
      _call(_factory(name, "get_sparse_optimizer"), "get_sparse_optimizer", name, kwargs))


# Keys every optimizer section of a config takes besides the factory's own
# arguments (rectrain.train.build.build_optimizers chains them around it):
# warmup_steps (a linear warm-up of learning_rate), clip_norm (gradients
# clipped to this global L2 norm first; 0: off) and decoupled_weight_decay
# (w <- w - d * w after each update, AdamW-style; 0: off).
SCHEDULE_KEYS = ("warmup_steps",)
CHAIN_KEYS = ("warmup_steps", "clip_norm", "decoupled_weight_decay")


def optimizer_arguments(name: str, sparse: bool = False) -> list[str]:
  """The keyword arguments the optimizer ``name`` accepts (dense and row-wise alike).

  Raises:
    ValueError: ``name`` is not an optimizer.
  """
  del sparse  # the same transform either way
  try:
    factory = _factory(name, "optimizer")
  except ValueError:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OWN)} or an optax "
                     "alias such as 'adamw'") from None
  params = inspect.signature(factory).parameters
  return sorted(k for k, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
