"""The default run configuration and config loading / overriding.

A run is described by one ``ml_collections.ConfigDict``. Experiment configs
(``experiments/<name>/config.py``) start from :func:`default_config` and
override what they study. ``--set key=value`` overrides any leaf; unknown keys
and values of the wrong type are errors naming the key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections

# Section defaults only: importing the config module loads no jax / flax / optax.
from rectrain.config_sections import (async_config_defaults, default_model_config,
                                      delayed_config_defaults, distributed_config_defaults,
                                      idmap_config_defaults, mesh_config_defaults)


# Per-model defaults of the optimizer sections and the embedding init scale,
# chosen by the tuning protocol of experiments/defaults (its README has the
# search space, the budget and the table these come from). _OPTIM_BASE: the
# starting point of the tuning (its trial 0), for a model without tuned values.
_OPTIM_BASE = {
    "dense": {"name": "adam", "learning_rate": 1e-3, "warmup_steps": 0},
    "sparse": {"name": "rowwise_adagrad", "learning_rate": 0.05,
               "initial_accumulator_value": 0.1},
    "bias": {"name": "adagrad", "learning_rate": 1.0},
}

MODEL_DEFAULTS = {
    # Tuned by experiments/defaults (12 TPE trials per model, FM and DeepFM 36): one pass over
    # the first 900,000 rows of the synthetic world of seed 100, objective the
    # NE of the frozen model on the next 100,000 rows (after the comment);
    # values rounded to 2 significant digits (runs/defaults/best.json).
    # DeepFM's MLP is the main job's. A model's optim.tables.linear (its LR
    # part) has its own learning rate: --set optim.sparse.learning_rate=...
    # leaves that table as it is.
    "lr": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.0059, 'warmup_steps': 0}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.2, 'initial_accumulator_value': 1.7e-06}, "bias": {'name': 'adagrad', 'learning_rate': 0.8}, "tables": {}},
      "model": {}},  # tuning held-out NE 0.84271
    "deepfm": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.0086, 'warmup_steps': 100}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.045, 'initial_accumulator_value': 3.6e-07}, "bias": {'name': 'adagrad', 'learning_rate': 0.2}, "tables": {'linear': {'name': 'rowwise_adagrad', 'learning_rate': 0.057, 'initial_accumulator_value': 3.6e-07}}},
      "model": {'embed_init_scale': 0.0027, 'mlp_dims': (256, 128)}},  # tuning held-out NE 0.83471 (36 trials)
    "fm": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.013, 'warmup_steps': 0}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.035, 'initial_accumulator_value': 9.5e-08}, "bias": {'name': 'adagrad', 'learning_rate': 0.096}, "tables": {'linear': {'name': 'rowwise_adagrad', 'learning_rate': 0.094, 'initial_accumulator_value': 9.5e-08}}},
      "model": {'embed_init_scale': 0.0019}},  # tuning held-out NE 0.84101 (36 trials)
    "wide_deep": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.00036, 'warmup_steps': 0}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.076, 'initial_accumulator_value': 1.7e-08}, "bias": {'name': 'adagrad', 'learning_rate': 0.32}, "tables": {'linear': {'name': 'rowwise_adagrad', 'learning_rate': 0.13, 'initial_accumulator_value': 1.7e-08}}},
      "model": {'embed_init_scale': 0.02}},  # tuning held-out NE 0.83975
    "dcnv2": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.0016, 'warmup_steps': 20}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.071, 'initial_accumulator_value': 1.8e-06}, "bias": {'name': 'adagrad', 'learning_rate': 0.069}, "tables": {}},
      "model": {'embed_init_scale': 0.004}},  # tuning held-out NE 0.83321
    "dlrm": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.0026, 'warmup_steps': 20}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.021, 'initial_accumulator_value': 7.1e-08}, "bias": {'name': 'adagrad', 'learning_rate': 1.0}, "tables": {}},
      "model": {'embed_init_scale': 0.047}},  # tuning held-out NE 0.83844
    "dnn": {"optim": {"dense": {'name': 'adam', 'learning_rate': 0.0058, 'warmup_steps': 0}, "sparse": {'name': 'rowwise_adagrad', 'learning_rate': 0.29, 'initial_accumulator_value': 4.2e-08}, "bias": {'name': 'adagrad', 'learning_rate': 0.33}, "tables": {}},
      "model": {'embed_init_scale': 0.019}},  # tuning held-out NE 0.83920
}
# DIN is not tuned (the tuning world has no behaviour sequences): it starts from DNN's
# tuned values, the closest model (embeddings into an MLP, no linear part).
MODEL_DEFAULTS["din"] = MODEL_DEFAULTS["dnn"]


def model_defaults(name: str) -> dict:
  """``{"optim": {section: dict}, "model": {key: value}}``: the tuned defaults of ``name``."""
  if name not in MODEL_DEFAULTS:
    default_model_config(name)  # raises the error naming the model
    return {"optim": _OPTIM_BASE, "model": {}}
  return MODEL_DEFAULTS[name]


def _set_model_defaults(config: ml_collections.ConfigDict, name: str,
                        previous: str | None = None) -> None:
  """Sets the optimizer sections to ``name``'s defaults.

  With ``previous`` (a model change), only the sections still equal to
  ``previous``'s defaults follow the new model; a section an experiment or
  the user changed stays as it is.
  """
  new = model_defaults(name)
  old = model_defaults(previous) if previous is not None else None
  followed = False
  for section, values in new["optim"].items():
    if old is not None and section in config.optim:
      if config.optim[section].to_dict() != old["optim"].get(section):
        continue
    config.optim[section] = ml_collections.ConfigDict(dict(values))
    followed = True
  if followed:  # the model's tuned init scale comes with its tuned optimizers
    for key, value in new["model"].items():
      config.model[key] = value


# The optimizer settings and first batch of rectrain's first wave (before the
# tuned defaults): the committed study tables were measured with these, so the
# study configs keep them until the studies are re-run on the new defaults.
FIRST_WAVE = {
    "dense": {"name": "adam", "learning_rate": 1e-3},
    "sparse": {"name": "rowwise_adagrad", "learning_rate": 0.05},
    "bias": {"name": ""},
}


def use_first_wave_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the first wave's optimizer sections (:data:`FIRST_WAVE`) and no first-batch
  warm-up (``train.warmup_batch=0``); returns ``config``."""
  for section, values in FIRST_WAVE.items():
    config.optim[section] = ml_collections.ConfigDict(dict(values))
  config.optim.tables = ml_collections.ConfigDict()
  config.train.warmup_batch = 0
  return config


def default_config() -> ml_collections.ConfigDict:
  """The main job: DeepFM on the synthetic Criteo-schema stream, one pass."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"   # synthetic | criteo | table | hf
  c.data.path = ""              # criteo, table: file(s), comma separated; hf: dataset name or files
  c.data.schema = ""            # table: a dataset card (rectrain/data/schema.py) or a spec
  c.data.format = ""            # table: tsv | csv | parquet ("" = the card's)
  c.data.header = ""            # table: auto | yes | no ("" = the card's)
  c.data.label = ""             # table: the label column, NAME or NAME:THRESHOLD ("" = the card's)
  c.data.batch_size = 4096
  c.data.cat_buckets = 1 << 18  # per categorical field
  c.data.int_mode = "log1p"     # log1p (dense inputs) | categorical (bucketised ids)
  c.data.int_buckets = 512
  c.data.max_rows = 1_000_000   # rows to stream; 0 = the whole source
  c.data.shuffle_buffer = 0     # 0 keeps time order
  c.data.bad_lines = "skip"     # skip (counted) | error
  c.data.prefetch = 4           # groups of batches prepared ahead in a background thread
  c.data.start_row = 0           # synthetic: first row of the stream (e.g. held-out rows)
  # Random split by row index (rectrain/data/split.py); with a split, max_rows
  # counts rows OF THE SPLIT and shuffle_buffer shuffles the split's rows.
  c.data.split = ""              # "" = every row | train | valid | test
  c.data.split_ratios = (7, 2, 1)  # train:valid:test shares
  c.data.split_seed = 0          # seed of the row -> split hash
  c.data.synthetic = _synthetic_defaults()

  c.model = default_model_config("deepfm")
  c.model.mlp_dims = (256, 128)  # DeepCTR's default DNN: the main job finishes in about a minute on 2 cores

  # optim.dense: the MLP / cross / interaction weights; optim.sparse: every
  # table, row-wise (optim.tables.<table> overrides one table, e.g.
  # {"linear": {"name": "ftrl", ...}}); optim.bias: the model's global
  # intercept (the LR part's bias, or the output bias of models without one):
  # one scalar that must follow the base rate from the first batches on needs
  # a far larger step than an MLP weight; name "" = with optim.dense. Each
  # section takes any argument of its optimizer (rectrain's own or any optax
  # alias, for tables as for dense parameters) plus warmup_steps (a linear
  # learning-rate warm-up), clip_norm (global-norm gradient clipping) and
  # decoupled_weight_decay (w -= d * w per update). The values are the model's tuned defaults
  # (MODEL_DEFAULTS, experiments/defaults).
  c.optim = ml_collections.ConfigDict()
  c.optim.tables = ml_collections.ConfigDict()
  _set_model_defaults(c, "deepfm")

  c.train = ml_collections.ConfigDict()
  c.train.steps_per_dispatch = 8   # batches per jitted lax.scan
  # The padded length U of a batch's unique ids (the rows the step gathers and
  # scatters) is the smallest of B F j / L, j = 1..L, that holds every group of
  # batches so far (it only grows: one compiled program per size reached);
  # 1 = always B F. Results do not depend on it (padding ids touch no row). The
  # stream and offline protocols use it; with train.async_sim (whose row history
  # has a fixed width) and in the delayed-feedback runner U is always B F.
  c.train.unique_ladder = 8
  c.train.nonfinite = "skip"       # skip (counted) | raise
  # The stream's first batch is learned in sub-batches of 64, 64, 128, ...,
  # B/2 rows (padded to B), so only its first 64 rows are scored by the
  # untrained model (rectrain/data/pipeline.split_first_batch); 0 = off.
  c.train.warmup_batch = 64
  c.train.checkpoint_every = 0     # batches; 0 = only at the end
  c.train.keep_checkpoints = 2
  c.train.progress = True
  # Simulated asynchronous training (rectrain/train/async_sim.py); off = synchronous.
  c.train.async_sim = async_config_defaults()
  c.train.warm_start = ml_collections.ConfigDict(
      {"path": "", "parts": "all"})  # parts: all | embeddings | dense

  # Collision-free id -> row map (rectrain/data/idmap.py) instead of hashing;
  # off = hashed buckets. The loop resets a (re)assigned row's embedding and
  # optimizer state in the step, at most max_admit_per_batch rows per batch
  # (a static shape; more new ids wait for their next sighting; 0 = no cap).
  c.idmap = idmap_config_defaults()
  c.idmap.max_admit_per_batch = 4096

  # Serving copy (rectrain/train/serving.py): predictions come from a served
  # copy of the parameters refreshed from the live ones every sync_*_s seconds
  # of event time, tables and dense separately; 0 = the live model serves (no
  # copy), inf (--set ...=1e999) = synced at the first batch only (a frozen
  # model); freeze_after_s > 0: no refresh after that event time. train.learn=False
  # scores without learning (e.g. a warm-started model on later days).
  c.serving = ml_collections.ConfigDict(
      {"sync_tables_s": 0.0, "sync_dense_s": 0.0, "freeze_after_s": 0.0})
  c.train.learn = True

  # Delayed feedback (rectrain/train/delayed.py): delayed.method set (pretrained |
  # oracle | vanilla | fnw | fnc | esdfm | defer | multihead) runs the seed +
  # incremental protocol over the label-delay joiner instead of the plain
  # stream; "" = off (the default).
  c.delayed = delayed_config_defaults()
  c.delayed.method = ""

  # Scale-out (rectrain/train/sharding.py, rectrain/train/distributed.py):
  # the (data, model) device mesh, tables row-sharded over all its devices;
  # (1, 1) = one device. distributed.coordinator (or RECTRAIN_COORDINATOR)
  # starts jax.distributed for several processes / hosts.
  c.mesh = mesh_config_defaults()
  c.distributed = distributed_config_defaults()

  # Offline protocol (rectrain.train.loop.train_offline): K epochs, held-out eval.
  c.offline = ml_collections.ConfigDict()
  c.offline.epochs = 0             # 0 = streaming (one pass, progressive validation)
  c.offline.evals_per_epoch = 4
  c.offline.between_epochs = "none"  # none | reinit | freeze | dense_only | tables_only
  # data keys overridden for the held-out stream ("" path = data.path)
  c.offline.eval_data = ml_collections.ConfigDict({"start_row": 0, "max_rows": 0, "path": ""})

  c.metrics = ml_collections.ConfigDict()
  c.metrics.window_rows = 100_000      # count windows of N rows; 0 = none
  c.metrics.time_windows = "hour,day"  # event-time windows where the stream has time
  c.metrics.slice_fields = ""          # e.g. "C1,C9": metrics per value of these fields
  c.metrics.slice_top_k = 5
  return c


def _synthetic_defaults() -> ml_collections.ConfigDict:
  try:
    from rectrain.data.synthetic import default_config as synth_default
  except ImportError:  # pragma: no cover - only while the module is absent
    return ml_collections.ConfigDict()
  return synth_default()


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads ``get_config(arg)`` from a python file, or from ``DIR/config.py``."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location("_rectrain_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path}: defines no get_config()")
  return module.get_config(arg) if arg is not None else module.get_config()


def _parse_value(text: str, old):
  if isinstance(old, str):
    return text
  lowered = text.strip().lower()
  if (isinstance(old, bool) or old is None) and lowered in ("true", "false"):
    return lowered == "true"   # --set x=true as well as x=True
  if lowered in ("none", "null") and not isinstance(old, str):
    return None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  return value


def _optimizer_sections(config) -> dict:
  """``id(section) -> (key, sparse)`` of every optimizer section of ``config.optim``."""
  optim = config.get("optim", None)
  if optim is None:
    return {}
  out = {}
  if "dense" in optim:
    out[id(optim.dense)] = ("optim.dense", False)
  if "sparse" in optim:
    out[id(optim.sparse)] = ("optim.sparse", True)
  if "bias" in optim:
    out[id(optim.bias)] = ("optim.bias", False)
  for name, section in optim.get("tables", {}).items():
    if isinstance(section, ml_collections.ConfigDict):
      out[id(section)] = (f"optim.tables.{name}", True)
  return out


def optimizer_keys(section, sparse: bool) -> list:
  """The keys an optimizer section may hold: ``name``, the optimizer's own
  arguments and the chain keys (``warmup_steps``, ``clip_norm``,
  ``decoupled_weight_decay``; rectrain.train.build.chained)."""
  from rectrain.optim.registry import CHAIN_KEYS, optimizer_arguments
  return ["name"] + optimizer_arguments(section["name"], sparse) + list(CHAIN_KEYS)


def _check_optimizer_key(section, key: str, leaf: str, sparse: bool) -> None:
  if key.startswith("optim.bias.") and not section.get("name", ""):
    if leaf != "name":
      raise KeyError(f"config key {key!r}: optim.bias.name is '' (the intercept learns with "
                     "optim.dense), so optim.bias takes no other key")
    return
  try:
    accepted = optimizer_keys(section, sparse)
  except ValueError as e:
    raise ValueError(f"config key {key!r}: {e}") from None
  if leaf not in accepted:
    raise KeyError(f"config key {key!r}: optimizer {section['name']!r} takes no {leaf!r}; "
                   f"its keys are {accepted}")


def _table_section(config, key: str):
  """``optim.tables.T`` for an override of ``optim.tables.T.<leaf>``: created as a
  copy of ``optim.sparse`` when the table has no section yet."""
  parts = key.split(".")
  if len(parts) >= 4 and parts[0] == "optim" and parts[1] == "tables":
    tables = config.optim.tables
    if parts[2] not in tables:
      tables[parts[2]] = ml_collections.ConfigDict(config.optim.sparse.to_dict())


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Applies ``key=value`` overrides.

  ``model.name=X`` resets the model section to X's defaults, and
  ``optim.<section>.name=X`` resets that optimizer section to ``{name: X,
  learning_rate: <as before>}``; both happen before the other overrides. An
  optimizer section takes any argument of its optimizer (``optim.sparse.beta=1``
  for FTRL); a key the optimizer does not take is an error listing its keys.
  """
  overrides = list(overrides)
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"override {item!r}: expected key=value")
  # Changing the model or an optimizer swaps its whole section first.
  for item in overrides:
    key, _, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if key == "model.name":
      previous = config.model.get("name", None)
      config.model = default_model_config(value)
      _set_model_defaults(config, value, previous)
    elif key.startswith("optim.") and key.endswith(".name"):
      _table_section(config, key)
      parent = _section_of(config, key)
      optimizer = _optimizer_sections(config).get(id(parent))
      if optimizer is None:
        continue
      learning_rate = parent.get("learning_rate", None)
      for leaf in list(parent.keys()):
        del parent[leaf]
      parent["name"] = value
      if optimizer[0] == "optim.bias" and not value:
        continue  # the intercept learns with optim.dense
      if learning_rate is not None:
        parent["learning_rate"] = learning_rate
      _check_optimizer_key(parent, key, "name", optimizer[1])
  for item in overrides:
    key, _, text = item.partition("=")
    key = key.strip()
    if key == "model.name":
      continue
    _table_section(config, key)
    parent = _section_of(config, key)
    leaf = key.split(".")[-1]
    optimizer = _optimizer_sections(config).get(id(parent))
    if optimizer is not None:
      if leaf == "name":
        continue
      _check_optimizer_key(parent, key, leaf, optimizer[1])
      if leaf not in parent:
        parent[leaf] = _parse_value(text, None)
        continue
    if leaf not in parent:
      if parent is config.optim.tables or _is_within(config.optim.tables, parent):
        parent[leaf] = _parse_value(text, None)
        continue
      raise KeyError(f"unknown config key {key!r}")
    old = parent[leaf]
    value = _parse_value(text, old)
    try:
      parent[leaf] = value
    except TypeError as e:
      raise ValueError(f"config key {key!r}: cannot set {value!r} ({e})") from None
  return config


def _section_of(config, key: str):
  """The section holding the leaf of dotted ``key`` (errors name the key)."""
  parent = config
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    if not isinstance(parent, ml_collections.ConfigDict) or part not in parent:
      raise KeyError(f"unknown config key {'.'.join(parts[:i + 1])!r} (in {key!r})")
    parent = parent[part]
  if not isinstance(parent, ml_collections.ConfigDict):
    raise KeyError(f"config key {key!r}: {'.'.join(parts[:-1])!r} is not a section")
  return parent


def _is_within(section, node) -> bool:
  if node is section:
    return True
  for v in section.values():
    if isinstance(v, ml_collections.ConfigDict) and _is_within(v, node):
      return True
  return False


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the values the trainer relies on; errors name the key."""
  choices = {
      "data.source": (config.data.source, ("synthetic", "criteo", "table", "hf")),
      "data.int_mode": (config.data.int_mode, ("log1p", "categorical")),
      "data.bad_lines": (config.data.bad_lines, ("skip", "error")),
      "train.nonfinite": (config.train.nonfinite, ("skip", "raise")),
      "train.warm_start.parts": (config.train.warm_start.parts, ("all", "embeddings", "dense")),
  }
  for key, (value, allowed) in choices.items():
    if value not in allowed:
      raise ValueError(f"config {key}={value!r}: must be one of {allowed}")
  positive = {
      "data.batch_size": config.data.batch_size,
      "train.steps_per_dispatch": config.train.steps_per_dispatch,
      "data.prefetch": config.data.prefetch,
      "train.unique_ladder": config.train.get("unique_ladder", 1),
  }
  for key, value in positive.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"config {key}={value!r}: must be a positive integer")
  for key in ("data.max_rows", "train.checkpoint_every", "metrics.window_rows",
              "train.warmup_batch"):
    value = config[key.split(".")[0]][key.split(".")[1]]
    if not isinstance(value, int) or value < 0:
      raise ValueError(f"config {key}={value!r}: must be an integer >= 0")
  # The step applies the model deterministically (no dropout rng, no mutable
  # batch statistics); refuse settings it would silently ignore.
  if config.model.get("batch_norm", False):
    raise ValueError("config model.batch_norm=True is not supported by the training step yet")
  if config.model.get("dropout_rate", 0.0):
    raise ValueError("config model.dropout_rate > 0 is not supported by the training step yet")
  if config.data.source in ("criteo", "table", "hf") and not config.data.path:
    raise ValueError(f"config data.path is required for data.source={config.data.source!r}")
  # The schema keys: honoured by data.source=table (all) and hf (schema, label); never ignored.
  honoured = {"table": ("schema", "format", "header", "label"), "hf": ("schema", "label")}.get(
      config.data.source, ())
  ignored = [k for k in ("schema", "format", "header", "label")
             if config.data.get(k, "") and k not in honoured]
  if ignored:
    raise ValueError(f"config {', '.join('data.' + k for k in ignored)}: not used by "
                     f"data.source={config.data.source!r} (data.source='table' reads files by a "
                     "schema; 'hf' takes data.schema and data.label)")
  if config.data.source == "hf" and config.data.get("label", "") and not config.data.get(
      "schema", ""):
    raise ValueError("config data.label: needs data.schema with data.source='hf' (the Criteo "
                     "columns' label is fixed)")
  if config.data.source == "table":
    if not config.data.get("schema", ""):
      raise ValueError("config data.schema is required for data.source='table' (a dataset "
                       "card such as avazu or criteo_kaggle, or a spec 'name:role,...')")
    from rectrain.data.schema import schema_of  # no jax
    try:
      schema_of(config.data)
    except ValueError as e:
      msg = str(e)
      raise ValueError(msg if msg.startswith("config ") else
                       f"config data.schema={config.data.schema!r}: {msg}") from None
  _validate_split(config)
  _validate_serving(config)
  _validate_optim(config)


def _validate_optim(config: ml_collections.ConfigDict) -> None:
  """Every optimizer section names an optimizer and holds only keys it takes."""
  for section_id, (key, sparse) in _optimizer_sections(config).items():
    section = next(s for s in _sections(config.optim) if id(s) == section_id)
    if "name" not in section:
      raise ValueError(f"config {key} has no 'name' (the optimizer)")
    for leaf in section.keys():
      _check_optimizer_key(section, f"{key}.{leaf}", leaf, sparse)
    steps = section.get("warmup_steps", 0)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
      raise ValueError(f"config {key}.warmup_steps={steps!r}: must be an integer >= 0")


def _sections(node):
  yield node
  for v in node.values():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _sections(v)


def _validate_serving(config: ml_collections.ConfigDict) -> None:
  """serving.* (intervals >= 0 or inf, freeze >= 0) and train.learn."""
  import math
  serving = config.get("serving", None) or {}
  for key in ("sync_tables_s", "sync_dense_s", "freeze_after_s"):
    value = serving.get(key, 0.0)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if not ok or (key == "freeze_after_s" and math.isinf(value)):
      allowed = "a number >= 0" if key == "freeze_after_s" else "a number >= 0 or inf"
      raise ValueError(f"config serving.{key}={value!r}: must be {allowed} (seconds of event time)")
  learn = config.train.get("learn", True)
  if not isinstance(learn, bool):
    raise ValueError(f"config train.learn={learn!r}: must be True or False")
  if not learn and config.train.async_sim.enabled:
    raise ValueError("config train.learn=False with train.async_sim.enabled=True: "
                     "the asynchronous simulator always learns")
  stale = any(serving.get(k, 0.0) for k in ("sync_tables_s", "sync_dense_s", "freeze_after_s"))
  if stale and config.get("idmap", {}).get("enabled", False):
    raise ValueError("config serving.* with idmap.enabled=True: a served copy is not supported "
                     "with the id map (a re-assigned row would serve the evicted id's "
                     "embedding); set the serving intervals to 0 or idmap.enabled=False")


_SPLIT_DEFAULTS = {"split": "", "split_ratios": (7, 2, 1), "split_seed": 0}


def _validate_split(config: ml_collections.ConfigDict) -> None:
  """data.split / split_ratios / split_seed, and their offline.eval_data overrides."""
  from rectrain.data.split import SPLITS, check_ratios
  eval_data = config.get("offline", {}).get("eval_data", None) or {}
  scopes = [{}]
  if any(k in eval_data for k in _SPLIT_DEFAULTS):
    scopes.append(eval_data)
  for scope in scopes:
    def get(k):
      if k in scope:
        return f"offline.eval_data.{k}", scope[k]
      return f"data.{k}", config.data.get(k, _SPLIT_DEFAULTS[k])
    (split_key, split), (ratios_key, ratios), (seed_key, seed) = (
        get("split"), get("split_ratios"), get("split_seed"))
    if split not in ("",) + SPLITS:
      raise ValueError(f"config {split_key}={split!r}: must be '' (every row) or one of {SPLITS}")
    ratios = check_ratios(ratios, key=f"config {ratios_key}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
      raise ValueError(f"config {seed_key}={seed!r}: must be an integer >= 0")
    if split and ratios[SPLITS.index(split)] == 0:
      raise ValueError(f"config {split_key}={split!r}: its share in {ratios_key}="
                       f"{tuple(ratios)!r} is 0, so the split is empty")
