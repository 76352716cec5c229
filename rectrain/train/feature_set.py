"""The step transforms and hooks a run config asks for: the one place that maps config
sections to features (rectrain/train/transforms.py, rectrain/train/hooks.py).

A new feature is a module with its step transform and / or hook, a config
section, and one entry here; the loop (rectrain/train/loop.py) runs whatever
this returns and does not change.
"""

from __future__ import annotations

import jax

from rectrain.train import serving as serving_lib
from rectrain.train.async_sim import async_transform, make_async_train_step_from_config
from rectrain.train.hooks import IdMapHook, ServingHook
from rectrain.train.idmap_reset import row_reset_transform


def stream_features(config, model, dense_opt, sparse_opts, num_columns: int, placement, im=None):
  """``(transforms, hooks)`` of the streaming loop, innermost transform first.

  ``train.async_sim`` (gradients at stale parameters; computes the update
  itself, so first), the id map's row reset (``im``, the map of an
  ``idmap.enabled`` run) and the serving copy (``config.serving``; outermost:
  it predicts before the inner steps change anything).
  """
  transforms, hooks = [], []
  if config.train.async_sim.enabled:
    transforms.append(async_transform(*make_async_train_step_from_config(
        model, dense_opt, sparse_opts, config.train.async_sim,
        max_unique=config.data.batch_size * num_columns,  # = with_unique's default U
        placement=placement)))
  if im is not None:  # reset (re)assigned rows and their optimizer state before each step
    transforms.append(row_reset_transform(
        model.table_specs(), sparse_opts, jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
        placement))
    hooks.append(IdMapHook(im, config.metrics.window_rows))
  serving = config.get("serving", None)
  if serving_lib.serving_enabled(serving):  # predictions from a served copy, synced on event time
    transforms.append(serving_lib.serving_transform(model, *serving_lib.stale_groups(serving),
                                                    placement=placement))
    hooks.append(ServingHook(serving))
  return transforms, hooks


def check_features(path: str, meta: dict, transforms, hooks) -> None:
  """Refuses (one line naming both) a checkpoint written with other features than this run's.

  ``meta``: checkpoint ``path``'s meta.json.
  """
  want_t, want_h = [t.name for t in transforms], sorted(h.name for h in hooks)
  if "transforms" not in meta:  # format 3: a bare train state, meta keys per feature
    had = sorted(k for k in ("serving", "idmap_windows") if k in meta)
    if want_t or want_h or had:
      raise ValueError(
          f"{path}: checkpoint format {meta.get('checkpoint_format', 1)} holds a bare train state "
          f"(features in it: {had or 'none'}); this run has step transforms {want_t or 'none'} "
          f"and hooks {want_h or 'none'}, which need format 4: start the run in a new workdir, "
          "or take its weights with train.warm_start.path")
    return
  got_t, got_h = list(meta["transforms"]), sorted(meta.get("hooks", {}))
  if (got_t, got_h) != (want_t, want_h):
    raise ValueError(f"{path}: checkpoint written with step transforms {got_t or 'none'} and "
                     f"hooks {got_h or 'none'}, but this config has {want_t or 'none'} and "
                     f"{want_h or 'none'} (train.async_sim, idmap, serving); use another workdir")
