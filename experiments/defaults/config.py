"""How rectrain's per-model defaults are chosen: the tuning protocol.

Tuning (``rectrain tune``, Optuna TPE, seed 0): for each model, 12 trials
(FM and DeepFM 36: :data:`MORE_TRIALS`),
one pass over the first 900,000 rows of the synthetic stream of world seed 100
(``--arg MODEL,untuned``: the optimizer sections and embedding init scale
before tuning, rectrain.configs._OPTIM_BASE); objective = NE of the frozen
final model on the next 100,000 rows (``holdout_rows``), no pruning (the
progressive windows rank trials differently from the held-out NE). Trial 0 is
the untuned starting point, trial 1 the previous defaults (16-trial TPE on the
progressive NE of the first 200,000 rows, which chose rates that learn fast
early and lose on held-out rows), trial 2 those with an initial accumulator of
1e-6. Search space (:func:`search_space`): the
table learning rate and initial accumulator of row-wise AdaGrad, the
intercept's learning rate; for LR and FM the dense rate (of their 13
numeric-input weights, the only dense weights besides the intercept); for models with embeddings the embedding init scale; for models with an MLP the dense Adam learning rate and its warm-up;
for models with a linear (LR-part) table its own learning rate
(``optim.tables.linear``).

Report (``--arg MODEL,report``): the chosen defaults on other worlds and more
rows: seeds 1, 2, 3, 500,000 rows each, progressive validation, against the
first-wave defaults (``--arg MODEL,report,first_wave``).

  python experiments/defaults/tune_defaults.py            # tune all models, then report
  rectrain tune experiments/defaults --arg deepfm --param ... --dir runs/defaults/tune_deepfm

The chosen values are in rectrain/configs.py (MODEL_DEFAULTS); README.md has
the table.
"""

import ml_collections

from rectrain.configs import _OPTIM_BASE, default_config, use_first_wave_defaults
from rectrain.models import default_model_config
from rectrain.experiment import experiment_section

MODELS = ("lr", "fm", "wide_deep", "deepfm", "dcnv2", "dlrm", "dnn")
TUNE_SEED = 100
TUNE_ROWS = 900_000
HOLDOUT_ROWS = 100_000
REPORT_SEEDS = (1, 2, 3)
REPORT_ROWS = 500_000
TRIALS = 12
# Second round: FM and DeepFM lost to LR after 12 trials (tuning NE .8510 and
# .8491 vs .8427), FM with its numeric-input rate not searched; they get 36.
MORE_TRIALS = {"fm": 36, "deepfm": 36}


def trials(model: str) -> int:
  """The tuning budget of ``model`` (trials of its study)."""
  return MORE_TRIALS.get(model, TRIALS)
EMBEDDING_MODELS = ("fm", "wide_deep", "deepfm", "dcnv2", "dlrm", "dnn")
MLP_MODELS = ("wide_deep", "deepfm", "dcnv2", "dlrm", "dnn")
LINEAR_TABLE_MODELS = ("fm", "wide_deep", "deepfm")


def search_space(model: str) -> dict:
  """``{config key: rectrain tune SPEC}`` searched for ``model``."""
  space = {
      "optim.sparse.learning_rate": "loguniform:0.01:1",
      # Down to 1e-8: a batch-mean gradient of a rare row is ~1e-4, so an
      # accumulator of 1e-4 or more damps its first steps (LR held-out AUC
      # 0.7538 at 6.3e-4 vs 0.7664 at 1e-6 on the seed-100 file).
      "optim.sparse.initial_accumulator_value": "loguniform:1e-8:1",
      "optim.bias.learning_rate": "loguniform:0.05:3",
  }
  if model in ("lr", "fm"):  # optim.dense = the 13 numeric-input weights (MLP models: below)
    space["optim.dense.learning_rate"] = "loguniform:1e-4:1e-1"
  if model in EMBEDDING_MODELS:
    space["model.embed_init_scale"] = "loguniform:1e-3:0.1"
  if model in MLP_MODELS:
    space["optim.dense.learning_rate"] = "loguniform:1e-4:1e-2"
    space["optim.dense.warmup_steps"] = "choice:0,20,100"
  if model in LINEAR_TABLE_MODELS:  # last: the section starts as a copy of optim.sparse
    space["optim.tables.linear.learning_rate"] = "loguniform:0.01:1"
  return space


def get_config(arg=None):
  """``arg = "MODEL"`` (tuning), ``"MODEL,report"``, ``"MODEL,report,first_wave"``, ``"MODEL,smoke"``."""
  parts = (arg or "deepfm").split(",")
  model, flags = parts[0], set(parts[1:])
  if model not in MODELS or not flags <= {"report", "first_wave", "untuned", "smoke"}:
    raise ValueError(f"experiments/defaults: unknown argument {arg!r}; use MODEL[,untuned], "
                     f"MODEL,report[,first_wave] or MODEL,smoke with MODEL in {MODELS}")
  c = default_config()
  from rectrain.configs import apply_overrides
  if model != "deepfm":
    apply_overrides(c, [f"model.name={model}"])  # the model's defaults (the main job's DeepFM)
  if "first_wave" in flags:
    use_first_wave_defaults(c)
  if "untuned" in flags:  # the tuning's starting point (its trial 0): before MODEL_DEFAULTS
    for section, values in _OPTIM_BASE.items():
      c.optim[section] = ml_collections.ConfigDict(dict(values))
    c.optim.tables = ml_collections.ConfigDict()
    if "embed_init_scale" in c.model:
      c.model.embed_init_scale = default_model_config(model).embed_init_scale
  c.experiment = experiment_section(name="defaults")
  c.data.source = "synthetic"
  c.data.batch_size = 4096
  c.metrics.window_rows = 50_000
  c.metrics.time_windows = ""
  c.train.progress = False
  if "report" in flags:
    c.data.max_rows = REPORT_ROWS
  else:
    c.seed = TUNE_SEED
    c.data.max_rows = TUNE_ROWS
  if "smoke" in flags:
    c.data.max_rows = 8192
    c.data.batch_size = 512
    c.data.cat_buckets = 2048
    c.metrics.window_rows = 2048
    if model in MLP_MODELS:
      for key in ("mlp_dims", "bottom_mlp_dims", "top_mlp_dims"):
        if key in c.model:
          c.model[key] = (16,)
  return c

