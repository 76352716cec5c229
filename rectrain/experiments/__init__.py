"""Reproducible experiments: run records, sweeps, result tables and plots.

Every number in a result table traces back to a run directory holding

* ``config.json``   the full resolved config (written by the training loop),
* ``metrics.jsonl`` one JSON record per closed metric window,
* ``summary.json``  overall metrics, throughput, parameter count,
* ``run.json``      the run record of :func:`write_run_record`: config, seed,
  git commit (and whether the tree was dirty), package versions, device, wall
  time, rows/s, parameter count and the one command that re-runs it.

An experiment is a folder ``experiments/<name>/`` with a ``config.py`` holding
``get_config(arg=None)`` and ``get_sweep(arg=None)``. ``get_sweep`` returns a
list of *points*: dicts of config overrides (``{"model.name": "lr", "seed": 0}``)
plus an optional ``"name"`` (the run directory name; derived from the overrides
otherwise). Points that differ only in ``seed`` and share ``experiment.label``
form one row of the table.

Tables report, per row, the mean and the sample standard deviation (ddof = 1)
over the seeds of that row; the number of seeds is shown. The best mean of each
column among the model rows is bold (higher AUC / rows/s, lower log loss / NE /
wall time, PCOC closest to 1); reference rows (the Bayes ceiling of the
synthetic stream) are listed last and never bold.

The Bayes ceiling run (``experiment.oracle = True``) streams the true click
probabilities of the synthetic stream through the same metric windows as a
model, so it has a summary and per-window curves like any run.

Modules: :mod:`.records` (run records, one run), :mod:`.sweeps`, :mod:`.tables`,
:mod:`.plots`, :mod:`.commands` (the ``sweep | table | plot`` commands).
"""

from rectrain.experiments.records import (CONFIG, LR_FTRL, METRICS_FILE, NON_SEMANTIC_KEYS,
                                          PACKAGES, RECORD_FORMAT, RUN_RECORD, STANDARD_MODELS,
                                          SUMMARY, config_hash, device_info, experiment_section,
                                          git_state, package_versions, recorded_config_hash,
                                          reproduce_command, resolve_windows, run_bayes_ceiling,
                                          run_experiment, run_label, standard_model,
                                          write_run_record)  # noqa: F401
from rectrain.experiments.sweeps import (SweepPoint, is_finished, load_sweep, point_config,
                                         point_name, run_sweep)  # noqa: F401
from rectrain.experiments.tables import (DEFAULT_METRICS, MetricSpec, Row, Run, aggregate,
                                         find_run_dirs, format_table, load_run, load_runs,
                                         metric_spec, read_windows, run_value, window_metrics)  # noqa: F401
from rectrain.experiments.plots import plot_runs  # noqa: F401
from rectrain.experiments.commands import add_experiment_commands  # noqa: F401
