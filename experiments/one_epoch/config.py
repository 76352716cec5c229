"""The one-epoch phenomenon: held-out AUC peaks after epoch 1, then drops.

Zhang et al., CIKM 2022, "Towards Understanding the Overfitting Phenomenon of
Deep Click-Through Rate Prediction Models": an embedding + MLP CTR model
trained for several epochs over a fixed training set reaches its best
held-out AUC at the end of the first epoch and degrades at the start of the
second, while logistic regression does not; they tie it to a sudden change of
the MLP parameters at the start of epoch 2 and to sparse ids / fast optimizers.

Every point runs :func:`rectrain.train.loop.train_offline` (``offline.epochs >
0``): K epochs over the same rows in the same order, the held-out metrics
``offline.evals_per_epoch`` times per epoch, and per evaluation point the
progressive training metrics, the mean gradient norm and the L2 parameter
change of the embedding tables and of the dense (MLP) parameters.

Base: DNN (embedding 16 + MLP (64,) + output), Adam 1e-3 on the MLP, row-wise
AdaGrad 0.05 on the tables (rectrain's defaults), on the synthetic stream in a
static world (``drift.strength = 0``, so a drop cannot come from the test rows
being later in time): 131,072 training rows (rows 0..131,071), 32,768 held-out
rows (the next ones), 4,096 hash buckets per field, batches of 1,024, 3
epochs, 8 evaluations per epoch. ``seed`` seeds both the synthetic world and
the model.

Groups (the part of the label before ``:``):

* ``main``      DNN, DeepFM (MLP (64,)) and the control, LR with FTRL; seeds 0-2.
* ``optimizer`` the whole model on Adam, AdaGrad or SGD (2 epochs, seed 0).
* ``lr``        both learning rates x0.2 and x5 (2 epochs, seed 0).
* ``buckets``   256 / 1,024 / 65,536 hash buckets per field (2 epochs, seed 0);
                4,096 is ``main: DNN``.
* ``remedy``    between epochs: re-initialise the tables (MEDA), freeze the tables
                (= fine-tune only the MLP; ``freeze`` and ``dense_only`` are the
                same code path), train only the tables (3 epochs, seed 0).
* ``criteo``    DNN and LR on the real Criteo sample ``tests/data/criteo_dac_head4222.tsv``:
                first 3,200 rows train, last 1,022 rows held out (:func:`criteo_split`
                writes the two files to a temporary directory); DNN seeds 0-2, LR seed 0
                (LR starts from zero weights and the rows are fixed: every seed is the same run).

Commands (see README.md for the measured runtime and the table):

  rectrain sweep experiments/one_epoch --drop-checkpoints
  rectrain table runs/one_epoch --metrics best_auc,best_epoch,auc,logloss

Smoke (seconds; tests/test_study_one_epoch.py runs it): ``--arg smoke``.
"""

import os
import tempfile

from rectrain.configs import default_config, use_first_wave_defaults
from rectrain.experiment import LR_FTRL, experiment_section
from rectrain.models import default_model_config

SEEDS = (0, 1, 2)
TRAIN_ROWS = 131_072
EVAL_ROWS = 32_768
CRITEO_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tests", "data", "criteo_dac_head4222.tsv")
CRITEO_TRAIN_ROWS = 3_200


def criteo_split(sample: str = CRITEO_SAMPLE, train_rows: int = CRITEO_TRAIN_ROWS,
                 dest: str | None = None) -> tuple[str, str, int]:
  """Writes the first ``train_rows`` lines of ``sample`` and the rest to two files.

  The files go to ``dest`` (default ``<tmp>/rectrain_one_epoch``) and are
  rewritten only when their content differs. Returns ``(train_path,
  test_path, test_rows)``.
  """
  if not os.path.isfile(sample):
    raise FileNotFoundError(f"experiments/one_epoch: Criteo sample not found: {sample}")
  with open(sample, "rb") as f:
    lines = f.read().splitlines(keepends=True)
  if len(lines) <= train_rows:
    raise ValueError(f"{sample}: {len(lines)} lines, need more than train_rows={train_rows}")
  dest = dest or os.path.join(tempfile.gettempdir(), "rectrain_one_epoch")
  os.makedirs(dest, exist_ok=True)
  paths = (os.path.join(dest, "criteo_train.tsv"), os.path.join(dest, "criteo_test.tsv"))
  for path, part in zip(paths, (lines[:train_rows], lines[train_rows:])):
    data = b"".join(part)
    if not (os.path.isfile(path) and open(path, "rb").read() == data):
      tmp = path + f".{os.getpid()}.tmp"
      with open(tmp, "wb") as f:
        f.write(data)
      os.replace(tmp, path)
  return paths[0], paths[1], len(lines) - train_rows


def get_config(arg=None):
  """The base config (DNN on the static synthetic stream); ``arg="smoke"`` shrinks it."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"experiments/one_epoch: unknown argument {arg!r} (use smoke or none)")
  c = use_first_wave_defaults(default_config())  # as the committed table was measured
  c.experiment = experiment_section(name="one_epoch")
  c.data.source = "synthetic"
  c.data.max_rows = TRAIN_ROWS
  c.data.batch_size = 1024
  c.data.cat_buckets = 4096
  c.data.synthetic.drift.strength = 0.0   # a static world: test rows differ only by sampling
  c.model = default_model_config("dnn")
  c.model.mlp_dims = (64,)
  c.offline.epochs = 3
  c.offline.evals_per_epoch = 8
  c.offline.eval_data.start_row = TRAIN_ROWS  # the rows right after the training rows
  c.offline.eval_data.max_rows = EVAL_ROWS
  c.offline.eval_data.path = ""               # criteo points: the held-out file
  c.train.steps_per_dispatch = 8
  c.train.progress = False
  if arg == "smoke":
    c.data.max_rows = 8192
    c.data.batch_size = 512
    c.data.cat_buckets = 1024
    c.model.mlp_dims = (16,)
    c.offline.epochs = 2
    c.offline.evals_per_epoch = 4
    c.offline.eval_data.start_row = 8192
    c.offline.eval_data.max_rows = 4096
    c.train.steps_per_dispatch = 4
    c.data.synthetic.table_ranks = 4096      # smaller generator tables: faster stream set-up
    c.data.synthetic.block_rows = 4096
    c.data.synthetic.calibration_rows = 4096
  return c


def _model(name, smoke):
  mlp = (16,) if smoke else (64,)
  if name == "dnn":
    return {"model.name": "dnn", "model.mlp_dims": mlp}
  if name == "deepfm":
    return {"model.name": "deepfm", "model.mlp_dims": mlp}
  if name == "lr":
    return {"model.name": "lr", "optim.tables.linear": dict(LR_FTRL)}
  raise ValueError(f"experiments/one_epoch: unknown model {name!r}")


def _criteo(smoke):
  train, test, test_rows = criteo_split()
  return {"data.source": "criteo", "data.path": train, "data.max_rows": CRITEO_TRAIN_ROWS,
          "data.batch_size": 256, "offline.evals_per_epoch": 2 if smoke else 4,
          "offline.eval_data.start_row": 0, "offline.eval_data.path": test,
          "offline.eval_data.max_rows": test_rows, "train.steps_per_dispatch": 1}


# Whole-model optimizers: (dense, tables). Learning rates from short probes on
# seed 0 (epoch-1 AUC close to the base); AdaGrad and SGD with Keras' defaults
# (lr 1e-3, accumulator 0.1) barely move the embeddings in one epoch.
OPTIMIZERS = {
    "Adam": ({"name": "adam", "learning_rate": 1e-3}, {"name": "adam", "learning_rate": 1e-3}),
    "AdaGrad": ({"name": "adagrad", "learning_rate": 0.01, "initial_accumulator_value": 1e-6},
                {"name": "adagrad", "learning_rate": 0.05, "initial_accumulator_value": 1e-6}),
    "SGD": ({"name": "sgd", "learning_rate": 0.2}, {"name": "sgd", "learning_rate": 50.0}),
}
LR_SCALES = (0.2, 5.0)
BUCKETS = (256, 1024, 65_536)
REMEDIES = {"reinit": "re-init embeddings (MEDA)",
            "freeze": "freeze embeddings (MLP only)",
            "tables_only": "embeddings only"}


def get_sweep(arg=None):
  """The points of the study (see the module docstring).

  Smoke: seed 0; DNN and LR, 256 buckets, the MEDA remedy, DNN on Criteo.
  """
  smoke = arg == "smoke"
  base = get_config(arg)
  seeds = (0,) if smoke else SEEDS
  factor_epochs = {"offline.epochs": 2}
  points = []
  for name, label, model_seeds in (("dnn", "DNN", seeds), ("deepfm", "DeepFM", seeds),
                                   ("lr", "LR (FTRL)", seeds)):
    if smoke and name == "deepfm":
      continue
    points += [dict(_model(name, smoke), seed=s, **{"experiment.label": f"main: {label}"})
               for s in model_seeds]
  for name in (() if smoke else tuple(OPTIMIZERS)):
    dense, tables = OPTIMIZERS[name]
    points.append({"optim.dense": dict(dense), "optim.sparse": dict(tables), **factor_epochs,
                   "experiment.label": f"optimizer: {name} (all)", "seed": 0})
  if not smoke:
    for scale in LR_SCALES:
      points.append({"optim.dense.learning_rate": base.optim.dense.learning_rate * scale,
                     "optim.sparse.learning_rate": base.optim.sparse.learning_rate * scale,
                     **factor_epochs, "experiment.label": f"lr: x{scale:g}", "seed": 0})
  for buckets in ((256,) if smoke else BUCKETS):
    points.append({"data.cat_buckets": buckets, **factor_epochs,
                   "experiment.label": f"buckets: {buckets}", "seed": 0})
  for remedy in (("reinit",) if smoke else tuple(REMEDIES)):
    points.append({"offline.between_epochs": remedy,
                   "experiment.label": f"remedy: {REMEDIES[remedy]}", "seed": 0})
  # On the Criteo file the seed changes only the initialisation; LR starts from
  # zero weights, so its runs would be identical across seeds: one seed.
  criteo_models = (("dnn", "DNN", seeds),) + (() if smoke else (("lr", "LR (FTRL)", (0,)),))
  for name, label, model_seeds in criteo_models:
    points += [dict(_model(name, smoke), **_criteo(smoke), seed=s,
                    **{"experiment.label": f"criteo: {label}"}) for s in model_seeds]
  return points
