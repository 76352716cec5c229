"""Which run protocol honours which config feature: nothing is silently ignored.

A run is one of three protocols: the streaming loop (``train_stream``), the
offline epochs (``train_offline``, ``offline.epochs > 0``) and the
delayed-feedback runner (``train_delayed``, ``delayed.method`` set). Each
config feature below is *on* when its keys leave their off value. A protocol
that does not honour a feature that is on refuses the config with one error
naming the keys, instead of training without it (a run on one device that
says nothing, a ``"mesh": null`` in summary.json).

The streaming loop honours every feature on any mesh (the step and the
features that wrap it read and write rows through one placement,
rectrain/train/step.py); what a mesh itself needs (a batch divisible by the
data axis, all devices of every process) is checked where it is built
(``rectrain.train.loop_mesh._run_mesh``).
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Tuple


def _section(config, name):
  return config.get(name, None)


def _mesh_on(config) -> bool:
  mesh = _section(config, "mesh")
  shape = tuple(int(x) for x in mesh.shape) if mesh is not None else (1, 1)
  dist = _section(config, "distributed")
  coordinator = (dist.get("coordinator", "") if dist is not None else "") or os.environ.get(
      "RECTRAIN_COORDINATOR", "")
  return shape != (1, 1) or bool(coordinator)


def _serving_on(config) -> bool:
  serving = _section(config, "serving")
  return serving is not None and any(
      float(serving.get(k, 0.0)) for k in ("sync_tables_s", "sync_dense_s", "freeze_after_s"))


def _get(config, dotted: str, default=None):
  node = config
  for part in dotted.split("."):
    if node is None or part not in node:
      return default
    node = node[part]
  return node


# name -> (the keys, as the error names them; is the feature on in config?)
FEATURES: Dict[str, Tuple[str, Callable]] = {
    "mesh": ("mesh.shape / distributed.coordinator (several devices or processes)", _mesh_on),
    "async_sim": ("train.async_sim.enabled", lambda c: bool(_get(c, "train.async_sim.enabled"))),
    "serving": ("serving.sync_tables_s / sync_dense_s / freeze_after_s (a served copy)",
                _serving_on),
    "idmap": ("idmap.enabled", lambda c: bool(_get(c, "idmap.enabled"))),
    "learn": ("train.learn=False", lambda c: not _get(c, "train.learn", True)),
    "warm_start": ("train.warm_start.path", lambda c: bool(_get(c, "train.warm_start.path"))),
    "checkpoints": ("train.checkpoint_every (the offline and delayed protocols write no "
                    "checkpoints)", lambda c: int(_get(c, "train.checkpoint_every", 0) or 0) > 0),
    "offline": ("offline.epochs", lambda c: bool(_get(c, "offline.epochs", 0))),
    "delayed": ("delayed.method", lambda c: bool(_get(c, "delayed.method", ""))),
}

# The features each protocol honours (its own selector included).
HONOURED = {
    "stream": frozenset({"mesh", "async_sim", "serving", "idmap", "learn", "warm_start",
                         "checkpoints"}),
    "offline": frozenset({"offline", "mesh", "warm_start"}),
    "delayed": frozenset({"delayed", "mesh", "warm_start", "learn"}),
}

# Why a protocol refuses a feature, as the error says it. "No meaning": the
# feature is a property of a time-ordered stream that the protocol does not
# have. "Not implemented": meaningful, but this protocol does not carry it yet.
WHY_NOT = {
    ("offline", "async_sim"): "not implemented for the offline epochs",
    ("offline", "serving"): "no meaning: the offline protocol serves no stream in event time "
                            "(it scores a held-out stream at evaluation points)",
    ("offline", "idmap"): "not implemented for the offline epochs",
    ("offline", "learn"): "no meaning: epochs that learn nothing are one evaluation; run the "
                          "stream protocol with train.learn=False",
    ("offline", "checkpoints"): "not implemented: offline runs write no checkpoints and do not "
                                "resume",
    ("offline", "delayed"): "the offline and delayed protocols are two runners; choose one",
    ("delayed", "async_sim"): "not implemented for the delayed-feedback runner",
    ("delayed", "serving"): "not implemented for the delayed-feedback runner (it scores each "
                            "window with the live model)",
    ("delayed", "idmap"): "not implemented for the delayed-feedback runner",
    ("delayed", "checkpoints"): "not implemented: the delayed-feedback runner writes no "
                                "checkpoints and does not resume",
    ("delayed", "offline"): "the offline and delayed protocols are two runners; choose one",
    ("stream", "offline"): "offline.epochs selects the offline protocol (train_offline)",
    ("stream", "delayed"): "delayed.method selects the delayed-feedback runner (train_delayed)",
}


# The config's top-level sections every protocol reads (the stream, the model,
# its optimizers, the metrics); every other section belongs to a feature above
# (tests/test_features.py checks that a new section is one or the other).
COMMON_SECTIONS = frozenset({"seed", "data", "model", "optim", "metrics", "train", "experiment"})
FEATURE_SECTIONS = frozenset({"mesh", "distributed", "serving", "idmap", "offline", "delayed"})


def active_features(config) -> list:
  """The names of the features of :data:`FEATURES` that are on in ``config``."""
  return [name for name, (_, on) in FEATURES.items() if on(config)]


def refuse_ignored(config, protocol: str) -> None:
  """Raises ``ValueError`` naming every feature that is on but ``protocol`` ignores."""
  ignored = [n for n in active_features(config) if n not in HONOURED[protocol]]
  if ignored:
    keys = "; ".join(f"{FEATURES[n][0]} ({WHY_NOT.get((protocol, n), 'not implemented')})"
                     for n in ignored)
    raise ValueError(f"config: the {protocol} protocol does not support {keys}; turn them off "
                     f"for this protocol")
