"""Features as named step transforms over the one step, their states keyed by name.

The step (:func:`rectrain.train.step.make_train_step`) maps ``(TrainState,
batch)`` to ``(TrainState, StepOutput)``. A feature that changes what a step
does on the device (the async simulation, the id map's row reset, the
serving copy) is a :class:`StepTransform`: ``init(train) -> state`` makes its
state from the fresh train state and ``wrap(step) -> step`` turns a step over
:class:`RunState` into another. :func:`chain` composes them the way
``optax.named_chain`` composes gradient transforms: the run state is the train
state plus ``features = {name: state}``, every transform reads and writes its
own entry, and nothing is unwrapped with ``isinstance``. A transform declares
the batch keys it reads (``keys``); the step it wraps does not see them.

Order: the first transform is the innermost. A transform with
``replaces_step`` (the async simulation: its update is taken at stale
parameters, so it computes the update itself from the one objective and
gradient, :func:`rectrain.train.step.make_grad_fn`) must come first.

Host-side parts of a feature (sync flags before a dispatch, metric records
after an output, checkpoint meta, summary entries) are a :class:`Hook`
(rectrain/train/hooks.py).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

from rectrain.train.step import StepOutput, TrainState

PyTree = Any
Step = Callable[["RunState", Dict[str, Any]], Tuple["RunState", StepOutput]]


class RunState(NamedTuple):
  """The train state and the states of the step transforms (a pytree, checkpointed whole).

  Attributes:
    train: the parameters and optimizer states (the same with any feature).
    features: transform name -> its state, in the order of :func:`chain`
      (transforms without state have no entry).
  """

  train: TrainState
  features: Dict[str, PyTree]

  @property
  def step(self):
    return self.train.step

  @property
  def nonfinite(self):
    return self.train.nonfinite

  def feature(self, name: str) -> PyTree:
    return self.features[name]

  def with_feature(self, name: str, value: PyTree) -> "RunState":
    return self._replace(features={**self.features, name: value})


class StepTransform(NamedTuple):
  """One feature of the device step.

  Attributes:
    name: the key of its state in ``RunState.features`` (unique in a chain).
    wrap: ``step -> step`` over :class:`RunState`.
    init: ``TrainState -> state``, or None: the transform keeps no state.
    keys: batch keys the wrapped step reads; they are removed from the
      batch before the inner step is called.
    replaces_step: the wrapped step computes the update itself and never
      calls the inner step (only allowed first in a chain).
  """

  name: str
  wrap: Callable[[Step], Step]
  init: Optional[Callable[[TrainState], PyTree]] = None
  keys: Tuple[str, ...] = ()
  replaces_step: bool = False


def lift(train_step: Callable) -> Step:
  """``train_step(TrainState, batch)`` as a step over :class:`RunState`."""

  def step(state: RunState, batch):
    train, out = train_step(state.train, batch)
    return state._replace(train=train), out

  return step


def _hiding(step: Step, keys: Sequence[str]) -> Step:
  if not keys:
    return step

  def inner(state, batch):
    return step(state, {k: v for k, v in batch.items() if k not in keys})

  return inner


def chain(train_step: Callable, transforms: Sequence[StepTransform]):
  """Composes ``train_step`` with ``transforms`` (the first is the innermost).

  Returns:
    ``(init, step)``: ``init(train) -> RunState`` with every transform's
    state, and the composed ``step(RunState, batch) -> (RunState, out)``.
  """
  names = [t.name for t in transforms]
  if len(set(names)) != len(names):
    raise ValueError(f"step transforms: names must be unique, got {names}")
  for i, t in enumerate(transforms):
    if t.replaces_step and i:
      raise ValueError(f"step transform {t.name!r} computes the update itself and must come "
                       f"first, but comes after {names[:i]}")
  step = lift(train_step)
  for t in transforms:
    step = t.wrap(_hiding(step, t.keys))

  def init(train: TrainState) -> RunState:
    return RunState(train, {t.name: t.init(train) for t in transforms if t.init is not None})

  return init, step

