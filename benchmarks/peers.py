"""Speed of rectrain beside Vowpal Wabbit and DeepCTR-Torch, same file, same protocol.

  python benchmarks/peers.py [--rows 1000000] [--out DIR] [--vw-bits 24]
      [--skip-peers] [--venv ~/.cache/rectrain-peers-venv] [--smoke]

Same runs as ``quality.py`` (``peers_lib.py`` holds the protocol): the
synthetic stream as Criteo TSV, split by line 90/10; rectrain LR and DeepFM
with the default config, VW logistic regression, DeepCTR-Torch DeepFM, each
its own subprocess; one pass over the first 90% in order, the frozen model on
the last 10%. VW runs with ``-b 24`` (``2^24`` weights, at least rectrain's
26 x 2^18 table rows); ``--vw-bits 18,24`` adds runs, the ratios use the first.

Each rectrain model runs twice on a fresh JAX compilation cache (the command
line turns the cache on by default): cold, then warm; the ratios use the
warm run (every run after the first of a configuration).

Prints one table (training rows/s, rectrain's steady-state rows/s after the
first dispatch, training rows / process wall time, process wall, peak RSS,
held-out AUC and log loss) and the ratios rectrain LR / VW (rows/s, process
wall) and rectrain DeepFM / DeepCTR-Torch (rows/s); writes ``OUT/result.json``
and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_lib as pl  # noqa: E402

MODELS = ("lr", "deepfm")
RATIO_LABELS = {
    "lr_vs_vw_steady_rows_per_sec": "rectrain LR steady rows/s / VW train rows/s",
    "lr_vs_vw_train_rows_per_sec": "rectrain LR train rows/s / VW train rows/s",
    "lr_vs_vw_rows_per_process_sec": "rectrain LR rows/process s / VW rows/process s",
    "lr_wall_over_vw_wall": "rectrain LR process wall / VW process wall",
    "lr_wall_over_vw_wall_plus_conversion": "rectrain LR process wall / (VW wall + TSV->VW conversion)",
    "deepfm_vs_deepctr_steady_rows_per_sec": "rectrain DeepFM steady rows/s / DeepCTR-Torch fit rows/s",
    "deepfm_vs_deepctr_train_rows_per_sec": "rectrain DeepFM train rows/s / DeepCTR-Torch fit rows/s",
    "deepfm_vs_deepctr_rows_per_process_sec": "rectrain DeepFM rows/process s / DeepCTR-Torch rows/process s",
    "deepfm_wall_over_deepctr_wall": "rectrain DeepFM process wall / DeepCTR-Torch process wall",
}


def speed_table(record: dict) -> str:
  """The markdown tables (systems, ratios) of ``record``."""
  rows = []
  for s in record["systems"]:
    if "error" in s:
      rows.append([s["system"]] + ["failed (see log)"] + ["–"] * 6)
      continue
    rows.append([s["system"], pl.fmt(s.get("train_rows_per_sec")),
                 pl.fmt(s.get("steady_rows_per_sec")), pl.fmt(s["rows_per_process_sec"]),
                 pl.fmt(s["wall_sec"], ".1f"), pl.fmt(s["peak_rss_mb"]),
                 pl.fmt(s["auc"], ".4f"), pl.fmt(s["logloss"], ".4f")])
  table = pl.markdown_table(
      ["system", "train rows/s", "steady rows/s", "rows / process s", "process wall (s)",
       "peak RSS (MB)", "held-out AUC", "held-out log loss"], rows)
  ratios = record["ratios"]
  ratio_table = pl.markdown_table(
      ["ratio", "value"], [[label, pl.fmt(ratios[k], ".2f")] for k, label in RATIO_LABELS.items()])
  notes = pl.header_lines(record) + [""] + [
      f"* {s['system']}: {s.get('settings', s.get('error', ''))}" for s in record["systems"]]
  notes.append("* train rows/s: rows / in-process training time (rectrain: train_stream incl. "
               "init and compile; VW: its reader + learner; DeepCTR: model.fit). steady: rectrain "
               "after the first dispatch. rows / process s: rows / the whole subprocess.")
  return table + "\n\n" + ratio_table + "\n\n" + "\n".join(notes)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  pl.add_common_args(parser, default_bits="24")
  args = parser.parse_args(argv)
  record = pl.run_comparison(args, list(MODELS), "peers", cold_runs=True)
  record["ratios"] = pl.speed_ratios(record["systems"])
  pl.write_outputs(record, speed_table(record))


if __name__ == "__main__":
  main()
