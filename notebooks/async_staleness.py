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
# # Stale gradients: how much staleness can streaming CTR training take, and does delay compensation help?
#
# **Question.** In an asynchronous parameter server, a worker computes its
# gradient on parameters it pulled tau updates ago, and the server applies it
# to the current ones. Zheng et al. (ICML 2017, *Asynchronous Stochastic
# Gradient Descent with Delay Compensation*) correct the stale gradient with a
# first-order Taylor term and a cheap diagonal Hessian approximation,
#
# $$g_{dc} = g + \lambda\, g \odot g \odot (\theta_t - \theta_{t-\tau}),$$
#
# with a constant $\lambda$ (DC-ASGD-c, $\lambda = 0.04$) or an adaptive
# $\lambda_t = \lambda_0 / \sqrt{\mathrm{EMA}(g^2) + \epsilon}$ (DC-ASGD-a,
# $\lambda_0 = 2$), and report that it recovers most of the accuracy ASGD loses
# on CIFAR-10 and ImageNet with SGD. Here we ask the same on a one-pass CTR
# stream with a DeepFM-size model: progressive AUC and log loss of synchronous
# training vs ASGD vs DC-ASGD-c vs DC-ASGD-a for staleness
# tau in {0, 1, 4, 16, 64}; and, since rectrain's default optimizers
# (Adam on the MLP, row-wise AdaGrad on the embedding rows) are not the paper's
# SGD, whether smaller learning rates or plain SGD change the picture.
#
# Staleness is simulated exactly in one process by `rectrain.train.async_sim`
# (config section `train.async_sim`): the gradient of batch t is taken at
# theta_{t - tau} for the dense parameters *and* the embedding rows the batch
# touches, and applied to theta_t (`staleness = fixed`: tau_t = min(tau, t));
# tau = 0 is the synchronous step bit for bit. Each batch is scored by the
# model that computed its gradient (theta_{t - tau}, the predictions that
# worker would have served) before any update learns from it. The runs are the
# points of `experiments/async_staleness/config.py` (see its docstring and
# `experiments/async_staleness/README.md`).

# %%
import json
import math
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from rectrain.experiment import (aggregate, format_table, load_runs, point_config,
                                 read_windows, run_sweep)

SMOKE = os.environ.get("RECTRAIN_SMOKE") == "1"
ROOT = Path(os.environ["RECTRAIN_ROOT"]) if os.environ.get("RECTRAIN_ROOT") else next(
    p for p in [Path.cwd(), *Path.cwd().parents] if (p / "experiments").is_dir())
EXP = ROOT / "experiments" / "async_staleness"
ARG = "smoke" if SMOKE else None
OUT = Path(tempfile.mkdtemp(prefix="async_staleness_")) if SMOKE else ROOT / "runs" / "async_staleness"
base = point_config(str(EXP), ARG, [])
steps = base.data.max_rows // base.data.batch_size
print(f"SMOKE={SMOKE}  runs -> {OUT}")
print(f"synthetic stream: {base.data.max_rows:,} rows, batch {base.data.batch_size} "
      f"-> {steps} server updates; {base.data.cat_buckets:,} buckets/field; "
      f"windows of {base.metrics.window_rows:,} rows")
print(f"model: {base.model.name} embed_dim={base.model.embed_dim} mlp={tuple(base.model.mlp_dims)}; "
      f"dense optimizer {base.optim.dense.to_dict()}, table optimizer {base.optim.sparse.to_dict()}")

# %% [markdown]
# ## Runs
#
# One sweep, run in this process (finished runs in `OUT` are skipped, so a
# re-execution only redraws). Three families, each with seeds 0 and 1 (the
# seed draws the synthetic world, the stream and the initialisation):
#
# * **default**: rectrain's default optimizers (Adam 1e-3 dense, row-wise
#   AdaGrad 0.05 tables): sync, and ASGD / DC-ASGD-c (lambda 0.04) /
#   DC-ASGD-a (lambda_0 2, EMA decay 0.95) at tau = 1, 4, 16, 64;
# * **lr/10**: both learning rates divided by 10: sync, ASGD at tau = 4, 16,
#   64, DC-ASGD-a at 16 and 64;
# * **SGD**: plain SGD (lr 0.1, no momentum, as in the paper) on the dense
#   parameters, tables as default: sync and ASGD at tau = 4.

# %%
from rectrain.experiment import load_sweep
from rectrain.experiment import _config_dict, _flatten  # noqa: E402  (config diff of finished runs)


def added_keys_only(point):
  """True if a finished run's recorded config differs from the point's config only by keys
  added to rectrain's default config after it ran (which the run never saw); raises otherwise."""
  record = OUT / point.name / "run.json"
  if not record.is_file():
    return True
  old = _flatten(json.loads(record.read_text())["config"])
  new = _flatten(_config_dict(point_config(str(EXP), ARG, point.overrides)))
  changed = sorted(k for k in old if k != "train.progress" and old[k] != new.get(k, "<absent>"))
  if changed:
    raise ValueError(f"{OUT / point.name}: finished with a different config {changed}; "
                     "remove it to re-run")
  return True


# Finished runs are reused when only newly added config keys differ (see above).
reuse = all(added_keys_only(p) for p in load_sweep(str(EXP), ARG))
t0 = time.perf_counter()
statuses = run_sweep(str(EXP), str(OUT), arg=ARG, overrides=["train.progress=False"], in_process=True,
                     drop_checkpoints=True, ignore_changed=reuse)
sweep_seconds = time.perf_counter() - t0
failed = [s for s in statuses if s["status"] == "failed"]
assert not failed, failed
ran = [s for s in statuses if s["status"] == "done"]
print(f"{len(statuses)} points: {len(ran)} run now in {sweep_seconds:.0f} s, "
      f"{len(statuses) - len(ran)} already finished")
hist = json.loads((OUT / "sweep.json").read_text())["history"]
full = [h for h in hist if len(h["ran"]) == len(statuses)]
if full:
  print(f"the sweep that ran all {len(statuses)} points took {full[0]['seconds']:.0f} s "
        f"(finished {full[0]['finished_at']})")

# %%
runs = load_runs([str(OUT)])


def describe(run):
  """(family, method, tau) of a run, read from its recorded config and label."""
  cfg = run.record["config"]
  a = cfg["train"]["async_sim"]
  family = run.label.split(":")[0]
  if not a["enabled"] or int(a["tau"]) == 0:
    return family, "sync", 0
  method = {"none": "ASGD", "constant": "DC-ASGD-c", "adaptive": "DC-ASGD-a"}[a["delay_compensation"]]
  return family, method, int(a["tau"])


METRICS = ("auc", "logloss", "ne", "pcoc", "nonfinite_batches", "rows_per_sec")
rows = aggregate(runs, METRICS)
info = {}   # table label -> (family, method, tau)
for r in rows:
  members = [run for run in runs if run.dir in r.dirs]
  kinds = {describe(run) for run in members}
  assert len(kinds) == 1, (r.label, kinds)
  info[r.label] = kinds.pop()
print(f"{len(runs)} runs in {len(rows)} table rows; seeds per row: "
      f"{sorted({r.n for r in rows})}")

# %% [markdown]
# ## Result table
#
# Progressive validation over the whole stream (every row scored before it is
# learned from). NE = log loss / entropy of the base rate (1 = as good as
# predicting the base rate; above 1 = worse). "non-finite batches" counts
# batches whose loss or gradient was not finite: they are skipped (no update)
# and their rows are left out of the metrics.

# %%
table = format_table(rows, METRICS)
print(table)

# %% [markdown]
# ## Progressive AUC and log loss against staleness

# %%
COLORS = {"sync": "black", "ASGD": "tab:red", "DC-ASGD-c": "tab:blue", "DC-ASGD-a": "tab:green"}
STYLES = {"default": "-", "lr/10": "--", "SGD": ":"}
MARKERS = {"default": "o", "lr/10": "s", "SGD": "^"}


def series(family, method, key):
  """Points (tau, mean, std, seeds) of one method of a family; sync (tau 0) included."""
  out = []
  for r in rows:
    f, m, tau = info[r.label]
    if f == family and (m == method or m == "sync"):
      out.append((tau, r.mean(key), r.std(key), r.n))
  return sorted(out)


def x_of(tau):
  return np.log2(np.asarray(tau, float) + 1.0)   # tau + 1 on a log axis, so tau = 0 fits


taus_all = sorted({info[r.label][2] for r in rows})
fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
for ax, key, name in zip(axes, ("auc", "logloss"), ("progressive AUC", "progressive log loss")):
  for family in STYLES:
    for method in ("ASGD", "DC-ASGD-c", "DC-ASGD-a"):
      pts = series(family, method, key)
      if len(pts) < 2:
        continue
      tau, mean, std, n = map(np.asarray, zip(*pts))
      ax.errorbar(x_of(tau), mean, yerr=np.nan_to_num(std), color=COLORS[method],
                  ls=STYLES[family], marker=MARKERS[family], capsize=3,
                  label=f"{family}: {method} (n={n.min()}" + (f"–{n.max()}" if n.max() != n.min() else "")
                  + " seeds)")
  sync = [r for r in rows if info[r.label][1] == "sync" and info[r.label][0] == "default"]
  if sync:
    ax.axhline(sync[0].mean(key), color="black", lw=0.8, label="default: sync (tau = 0)")
  ax.set_xticks(x_of(taus_all))
  ax.set_xticklabels([str(t) for t in taus_all])
  ax.set_xlabel("staleness tau (updates; axis is log(tau + 1))")
  ax.set_ylabel(f"{name} (over all rows)" + (" [nats/row]" if key == "logloss" else ""))
  ax.set_title(f"{name} vs staleness (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  if key == "logloss":
    ax.set_yscale("log")
axes[0].legend(fontsize=7, loc="lower left")
fig.suptitle(f"DeepFM (dim {base.model.embed_dim}, MLP {tuple(base.model.mlp_dims)}), "
             f"{base.data.max_rows:,} synthetic rows, batch {base.data.batch_size} ({steps} updates)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Over the stream: NE per window of rows
#
# NE of each window of rows, mean over seeds (band = ± std), for the default
# optimizers (left) and with both learning rates divided by 10 (right).

# %%
def window_curve(label, metric="ne"):
  r = next(r for r in rows if r.label == label)
  per_seed = [[w[metric] for w in read_windows(d, "rows")] for d in r.dirs]
  n = min(len(p) for p in per_seed)
  ends = [w["end_row"] for w in read_windows(r.dirs[0], "rows")][:n]
  vals = np.asarray([p[:n] for p in per_seed], float)
  return np.asarray(ends), vals.mean(0), (vals.std(0, ddof=1) if len(vals) > 1 else 0 * vals[0]), len(vals)


fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=False)
for ax, family in zip(axes, ("default", "lr/10")):
  labels = [r.label for r in rows if info[r.label][0] == family
            and info[r.label][1] in ("sync", "ASGD", "DC-ASGD-a")]
  if not labels:
    ax.set_visible(False)
    continue
  cmap = plt.get_cmap("viridis")
  for label in labels:
    _, method, tau = info[label]
    x, mean, std, n = window_curve(label)
    color = "black" if method == "sync" else cmap(min(math.log2(tau + 1) / 6.1, 0.95))
    ls = "-" if method in ("sync", "ASGD") else "--"
    ax.plot(x, mean, color=color, ls=ls, label=f"{method} tau={tau} ({n} seeds)")
    ax.fill_between(x, np.maximum(mean - std, 0.5), mean + std, color=color, alpha=0.12)
  ax.axhline(1.0, color="grey", lw=0.6)
  ax.set_yscale("log")
  ax.set_ylim(bottom=0.8)
  ax.set_xlabel("rows streamed (end of window)")
  ax.set_ylabel("NE of the window (log scale; 1 = base-rate predictor)")
  ax.set_title(f"{family}: NE per {base.metrics.window_rows:,}-row window "
               "(solid ASGD, dashed DC-ASGD-a)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Key numbers
#
# Computed from the runs above (mean ± std over seeds; n = number of seeds).

# %%
def cell(label, key, fmt=".4f"):
  r = next((r for r in rows if r.label == label), None)
  if r is None:
    return "–"
  std = r.std(key)
  return f"{r.mean(key):{fmt}}" + (f" ± {std:{fmt}}" if math.isfinite(std) else "") + f" (n={r.n})"


def label_of(family, method, tau):
  return next((lab for lab, v in info.items() if v == (family, method, tau)), None)


for family in STYLES:
  present = sorted({(m, t) for f, m, t in info.values() if f == family}, key=lambda mt: (mt[1], mt[0]))
  if not present:
    continue
  print(f"--- {family}")
  for method, tau in present:
    lab = label_of(family, method, tau)
    _, ne_w, ne_w_std, _ = window_curve(lab)
    last, last_std = ne_w[-1], ne_w_std[-1]
    print(f"  {method:10s} tau={tau:<3d} AUC {cell(lab, 'auc')}   NE {cell(lab, 'ne')}   "
          f"last-window NE {last:.4f} ± {last_std:.4f}   "
          f"non-finite batches {cell(lab, 'nonfinite_batches', '.0f')}")
# The largest tau at which each method stays within 0.01 NE of its family's sync run.
for family in STYLES:
  sync = label_of(family, "sync", 0)
  if sync is None:
    continue
  sync_ne = next(r for r in rows if r.label == sync).mean("ne")
  for method in ("ASGD", "DC-ASGD-c", "DC-ASGD-a"):
    ok = [t for f, m, t in info.values() if f == family and m == method
          and next(r for r in rows if r.label == label_of(f, m, t)).mean("ne") <= sync_ne + 0.01]
    tried = [t for f, m, t in info.values() if f == family and m == method]
    if tried:
      print(f"{family}: {method}: within 0.01 NE of sync ({sync_ne:.4f}) at tau in "
            f"{sorted(ok) or 'none'} of {sorted(tried)}")

# %% [markdown]
# ## Findings
#
# Real-sized run: DeepFM (embedding dim 16, MLP 256-128, 2^16 buckets/field),
# 131,072 synthetic rows in batches of 256 (512 server updates), seeds 0 and 1
# for every row (mean ± std over the 2 seeds). Whole-stream progressive
# metrics; "last window" = the last 8,192 rows. The 42-run sweep took 918 s on
# the shared 2-core machine (load average 8.5–9.6 when sampled).
#
# 1. **Staleness hurts early and a lot with rectrain's default optimizers**
#    (Adam 1e-3 dense, row-wise AdaGrad 0.05 rows). Sync: NE 0.9231 ± 0.0072,
#    AUC 0.6942 ± 0.0085. ASGD: NE 0.9516 at tau = 1, 1.5646 at tau = 4
#    (worse than predicting the base rate), 4.46 at tau = 16 and 12.90 at
#    tau = 64 (AUC 0.502, chance). At tau <= 4 the model recovers late in the
#    stream (last-window NE 0.9025 at tau = 1 and 0.9351 at tau = 4 vs 0.8990
#    sync); at tau = 16 and 64 it does not (1.61 and 7.14).
# 2. **No non-finite batch occurred in any of the 42 runs**: the failure is not
#    NaN/inf but a model driven into confident wrong predictions (PCOC 2.15 at
#    tau = 64), which the skip-and-count guard cannot see.
# 3. **DC-ASGD with the paper's constant lambda = 0.04 does nothing here**: its
#    NE equals ASGD's to within 0.04 at every tau (e.g. 1.5614 vs 1.5646 at
#    tau = 4), well inside the seed spread.
# 4. **Adaptive DC-ASGD (lambda_0 = 2) helps at small staleness but does not
#    close the gap**: tau = 1 NE 0.9457 ± 0.0004 (ASGD 0.9516), tau = 4 NE
#    1.1413 ± 0.0330 and AUC 0.6352 (ASGD 1.5646 and 0.6094), tau = 16 NE 3.99
#    ± 0.40 (ASGD 4.46 ± 0.09: within about one std), tau = 64 NE 10.70 (ASGD
#    12.90) with AUC still at chance. It never comes within 0.01 NE of sync.
# 5. **A smaller learning rate is what buys staleness tolerance.** With both
#    learning rates / 10 the synchronous run is as good (NE 0.9247 vs 0.9231)
#    and ASGD tolerates tau = 4 (NE 0.9370, last window 0.8924 vs 0.8901 sync)
#    and degrades gracefully at tau = 16 (0.9986, AUC 0.593); tau = 64
#    (1/8 of the run's updates) still breaks it (NE 2.94). In this regime
#    adaptive DC changes nothing (0.9969 vs 0.9986 at tau = 16; 2.84 vs 2.94
#    at tau = 64).
# 6. **It is not Adam-specific.** Plain SGD (lr 0.1, no momentum) on the dense
#    parameters is worse synchronously (NE 0.9745) and much worse under
#    staleness: NE 5.365 at tau = 4 vs Adam's 1.565. The step size relative to
#    tau matters, not the use of Adam; the embedding rows (row-wise AdaGrad,
#    made stale too) are part of every setting here.
#
# What this does not show: whether a tuned lambda, a lr schedule scaled with
# tau, or longer streams (where tau is a smaller fraction of the run) change
# the picture; all of it is on the synthetic stream at 131k rows.
