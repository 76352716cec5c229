"""Optimizers by name, dense (optax) and sparse (row-wise)."""

from __future__ import annotations

import inspect

import optax

# from-imports resolve the submodules through sys.modules: the package
# attributes ``rectrain.optim.adagrad`` etc. are the functions, not the modules.
from rectrain.optim.adagrad import (adagrad, adagrad_sparse, rowwise_adagrad,
                                    rowwise_adagrad_sparse)
from rectrain.optim.lazy_adam import adam_sparse
from rectrain.optim.adamom import adamom, adamom_sparse
from rectrain.optim.ftrl import ftrl, ftrl_sparse
from rectrain.optim.ogd import ogd, ogd_sparse, sgd_sparse
from rectrain.optim.sparse import SPARSE_NAMES, SparseOptimizer

# name -> (dense factory, sparse factory); the two share their per-coordinate math.
_OWN = {
    "rowwise_adagrad": (rowwise_adagrad, rowwise_adagrad_sparse),
    "adagrad": (adagrad, adagrad_sparse),
    "ogd": (ogd, ogd_sparse),
    "ftrl": (ftrl, ftrl_sparse),
    "adamom": (adamom, adamom_sparse),
    "sgd": (optax.sgd, sgd_sparse),    # sparse == optax.sgd (no momentum)
    "adam": (optax.adam, adam_sparse),  # sparse: lazy Adam, == optax.adam when all rows touched
}


def _call(factory, where: str, name: str, kwargs: dict):
  params = inspect.signature(factory).parameters
  unknown = sorted(k for k in kwargs if k not in params)
  if unknown:
    raise TypeError(f"{where}({name!r}): unknown argument(s) {unknown}; "
                    f"accepted: {sorted(params)}")
  return factory(**kwargs)


def get_sparse_optimizer(name: str, **kwargs) -> SparseOptimizer:
  """The row-wise optimizer ``name`` (one of ``SPARSE_NAMES``), built with ``kwargs``."""
  if name not in _OWN:
    raise ValueError(f"get_sparse_optimizer: unknown optimizer {name!r}; "
                     f"choose one of {list(SPARSE_NAMES)}")
  return _call(_OWN[name][1], "get_sparse_optimizer", name, kwargs)


def get_optimizer(name: str, **kwargs) -> optax.GradientTransformation:
  """The dense optax transform ``name``: rectrain's own (same math as the sparse
  optimizer of that name) or, failing that, any ``optax.<name>`` alias."""
  if name in _OWN:
    return _call(_OWN[name][0], "get_optimizer", name, kwargs)
  factory = getattr(optax, name, None)
  if factory is None or not callable(factory) or name.startswith("_"):
    raise ValueError(f"get_optimizer: unknown optimizer {name!r}; choose one of "
                     f"{sorted(_OWN)} or an optax alias such as 'adamw'")
  return _call(factory, "get_optimizer", name, kwargs)


# Keys every optimizer section of a config takes besides the factory's own
# arguments (rectrain.train.loop.build_optimizers turns them into a schedule).
SCHEDULE_KEYS = ("warmup_steps",)


def optimizer_arguments(name: str, sparse: bool) -> list[str]:
  """The keyword arguments the (``sparse``: row-wise) optimizer ``name`` accepts.

  Raises:
    ValueError: ``name`` is not an optimizer (or has no row-wise form).
  """
  if sparse:
    if name not in _OWN:
      raise ValueError(f"unknown row-wise optimizer {name!r}; choose one of {list(SPARSE_NAMES)}")
    factory = _OWN[name][1]
  elif name in _OWN:
    factory = _OWN[name][0]
  else:
    factory = getattr(optax, name, None)
    if factory is None or not callable(factory) or name.startswith("_"):
      raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OWN)} or an optax "
                       "alias such as 'adamw'")
  params = inspect.signature(factory).parameters
  return sorted(k for k, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
