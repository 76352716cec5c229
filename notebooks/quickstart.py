# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: stream a CTR model, read its windows, tune one learning rate
#
# **Question.** How does a new user train a model on a time-ordered stream with
# rectrain's Python API, look at how it learns over time, and pick a learning
# rate without writing a search loop?
#
# The run below is DeepFM with rectrain's defaults on the built-in synthetic
# stream (drifting, new ids arriving, known true click probabilities), one
# pass with progressive validation: every batch is scored before the model
# learns from it, so every window's metrics are honest out-of-sample numbers.
# `RECTRAIN_SMOKE=1` shrinks everything (the tests run it that way).

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import pandas as pd

from rectrain.configs import apply_overrides, default_config
from rectrain.experiment import read_windows
from rectrain.train.loop import train_stream
from rectrain.tune import tune

SMOKE = os.environ.get("RECTRAIN_SMOKE") == "1"
ROWS = 16_384 if SMOKE else 300_000
OUT = tempfile.mkdtemp() if SMOKE else os.path.join(
    os.environ.get("RECTRAIN_ROOT", ".."), "runs", "quickstart")

# %% [markdown]
# A run is one `ml_collections.ConfigDict`; `apply_overrides` takes the same
# `key=value` strings as `rectrain run --set`.

# %%
config = apply_overrides(default_config(), [
    f"data.max_rows={ROWS}", "metrics.window_rows=" + ("4096" if SMOKE else "25000"),
    "metrics.time_windows=", "train.progress=False"])
if SMOKE:
    apply_overrides(config, ["data.batch_size=512", "data.cat_buckets=2048", "model.mlp_dims=(16,)"])
print(config.model.name, config.model.mlp_dims, dict(config.optim.sparse), dict(config.optim.bias))

# %% [markdown]
# Train: one pass over the stream. The summary holds the progressive metrics
# of the whole run and the Bayes ceiling (the true probabilities scored on the
# same rows: the best any model can do).

# %%
run_dir = os.path.join(OUT, "deepfm")
summary = train_stream(config, workdir=run_dir, resume=False)
print({k: round(summary[k], 4) for k in ("auc", "logloss", "ne", "pcoc", "bayes_auc")})

# %% [markdown]
# Every closed window is a line of `metrics.jsonl`; `read_windows` loads them.

# %%
windows = pd.DataFrame(read_windows(run_dir, "rows"))
windows[["end_row", "auc", "logloss", "ne", "pcoc"]].round(4)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(windows["end_row"], windows["ne"], marker="o")
axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
axes[0].set(xlabel="rows streamed", ylabel="NE (window)", title="NE < 1: better than the base rate")
axes[1].plot(windows["end_row"], windows["auc"], marker="o")
axes[1].set(xlabel="rows streamed", ylabel="AUC (window)", title="progressive AUC")
fig.tight_layout()
plt.show()

# %% [markdown]
# Tune the table learning rate: four trials of `rectrain tune` (Optuna) on a
# shorter prefix, objective = progressive NE. The study lives in
# `OUT/tune/study.db`, so re-running this cell resumes instead of starting over;
# `best_set.txt` holds the `--set` line of the best trial.

# %%
prefix = ["data.max_rows=" + ("8192" if SMOKE else "100000"), "metrics.window_rows=" +
          ("2048" if SMOKE else "25000"), "metrics.time_windows=", "train.progress=False"]
if SMOKE:
    prefix += ["data.batch_size=512", "data.cat_buckets=2048", "model.mlp_dims=(16,)"]
result = tune({"optim.sparse.learning_rate": "grid:0.01,0.03,0.1,0.3"}, os.path.join(OUT, "tune"),
              overrides=prefix, trials=4, sampler="grid", prune=False, log=None)
trials = pd.DataFrame(result["trials"]).sort_values("optim.sparse.learning_rate")
trials[["optim.sparse.learning_rate", "state", "value", "auc", "pcoc"]].round(4)

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.semilogx(trials["optim.sparse.learning_rate"], trials["value"], marker="o")
ax.set(xlabel="optim.sparse.learning_rate", ylabel="progressive NE (prefix)",
       title="one learning rate, four trials")
plt.show()
print("best:", open(os.path.join(OUT, "tune", "best_set.txt")).read().strip().splitlines()[-1])

# %% [markdown]
# ## Findings
#
# Numbers of the committed run (300,000 rows, commit aadb1c5's defaults, 2-core CPU):
#
# * **The defaults learn from the first window on.** DeepFM's progressive NE is
#   0.976 in the first 25,000-row window (already better than predicting the
#   base rate) and falls to 0.878 by row 300,000; AUC 0.616 -> 0.737, PCOC
#   within 0.90-1.03 in every window. Over the run: AUC 0.705, log loss 0.522,
#   NE 0.908, PCOC 0.992; the Bayes ceiling on the same rows is AUC 0.847, so
#   a one-pass model of 300k rows is far from what the world allows.
# * **The table learning rate matters by orders of magnitude, one way.** On a
#   100,000-row prefix the progressive NE is 0.936 at 0.01, 0.940 at 0.03,
#   1.022 at 0.1 (worse than the base rate) and 2.60 at 0.3 (diverged, PCOC
#   0.82). Too high is far costlier than too low.
# * **A prefix is not the protocol.** This four-point search picks 0.01; the
#   default (0.045) came from 36 trials judged on 100,000 *held-out* rows after
#   a 900,000-row pass (experiments/defaults), where early-learning rates lose.
#   Tune on the objective you will report.
