"""Held-out quality of rectrain's defaults beside Vowpal Wabbit and DeepCTR-Torch.

  python benchmarks/quality.py [--rows 1000000] [--out DIR] [--all-models]
      [--vw-bits 18,24] [--skip-peers] [--venv ~/.cache/rectrain-peers-venv] [--smoke]

Writes the synthetic stream as Criteo TSV (``rectrain synth``), splits it by
line (first 90% train, last 10% test) and runs, each as its own subprocess on
the same two files: rectrain LR, FM and DeepFM (``--all-models``: also
Wide&Deep, DCNv2, DLRM) with the default config (only ``model.name`` and the
data source changed), VW logistic regression (one run per ``--vw-bits``) and
DeepCTR-Torch DeepFM (Adam 3e-3, batch 4096, dim 16, one epoch, no shuffle).
VW ``-b 18`` is VW's default; ``2^24`` weights are at least rectrain's
26 x 2^18 table rows.
One pass over train.tsv in order, the frozen model on test.tsv; AUC and log
loss of every system by the same function. The protocol, the side venv
(built once, CPU-only torch) and the runners are in ``peers_lib.py``.

Prints one markdown table (held-out AUC, log loss, training rows/s, process
wall time, peak RSS) and writes ``OUT/result.json`` (every number, each
system's command, machine, versions) and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers_lib as pl  # noqa: E402

MODELS = ("lr", "fm", "deepfm")
MORE_MODELS = ("wide_deep", "dcnv2", "dlrm")


def quality_table(record: dict) -> str:
  """The markdown table of ``record`` (from :func:`peers_lib.run_comparison`)."""
  rows = []
  for s in record["systems"]:
    if "error" in s:
      rows.append([s["system"], "failed (see log)", "–", "–", "–", "–", "–"])
      continue
    rows.append([s["system"], pl.fmt(s["auc"], ".4f"), pl.fmt(s["logloss"], ".4f"),
                 pl.fmt(s.get("train_rows_per_sec")), pl.fmt(s["wall_sec"], ".1f"),
                 pl.fmt(s["peak_rss_mb"])])
  table = pl.markdown_table(
      ["system", "held-out AUC", "held-out log loss", "train rows/s", "process wall (s)",
       "peak RSS (MB)"], rows)
  notes = pl.header_lines(record) + [""] + [
      f"* {s['system']}: {s.get('settings', s.get('error', ''))}" for s in record["systems"]]
  conv = record.get("vw_conversion")
  if conv:
    notes.append(f"* VW input: TSV -> VW text conversion {conv['train']['wall_sec']:.1f} s (train) + "
                 f"{conv['test']['wall_sec']:.1f} s (test), not in VW's wall time.")
  return table + "\n\n" + "\n".join(notes)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  pl.add_common_args(parser, default_bits="18,24")
  parser.add_argument("--all-models", action="store_true", help="also Wide&Deep, DCNv2, DLRM")
  args = parser.parse_args(argv)
  models = list(MODELS) + (list(MORE_MODELS) if args.all_models else [])
  record = pl.run_comparison(args, models, "quality")
  pl.write_outputs(record, quality_table(record))


if __name__ == "__main__":
  main()
