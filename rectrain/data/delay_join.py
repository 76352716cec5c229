"""The label-delay join: the training stream a real joiner emits from an event stream.

Every impression is logged at its event time ``t`` without a label; a
conversion (positive label) arrives ``delay`` seconds later, or never
(``delay = inf``). Only conversions within the attribution window ``A``
count: the TRUE label is ``y = [delay <= A]`` (later conversions are
negatives everywhere). A join policy decides when each sample is emitted
for training and with which OBSERVED label (the label known at emission):

* ``oracle``: emit at ``t`` with the true label (not realisable: the
  reference).
* ``wait`` (wait window ``W``): emit at ``t + W`` with ``[delay <= W]``;
  positives with ``W < delay <= A`` are lost (counted as
  ``lost_positives``). ``W = inf`` waits until every label is final and
  emits at ``t + A`` with the true label; a finite ``W > A`` is an error.
* ``fast`` (fast emit, Ktena et al. 2019, "Addressing Delayed Feedback for
  Continuous Training with Neural Networks in CTR prediction"): emit at
  ``t`` with ``[delay <= 0]`` (a negative unless the conversion is
  instantaneous), and again as a positive at ``t + delay`` when
  ``0 < delay <= A``. ``wait_s`` is ignored (``W = 0``).
* ``esdfm`` (elapsed-time sampling, Yang et al. 2021, "Capturing Delayed
  Feedback in Conversion Rate Prediction via Elapsed-Time Sampling"): emit
  at ``t + W`` with ``[delay <= W]``; positives with ``W < delay <= A``
  again at ``t + delay`` as positives.
* ``defer`` (Gu et al. 2021, "Real Negatives Matter: Continuous Training
  with Real Negatives for Delayed Feedback Modeling"): as ``esdfm``, and
  every sample that is not a delayed positive is emitted again at
  ``t + A`` with its true label: real negatives (``kind 2``, label 0, which
  includes conversions later than ``A``) and in-window positives
  (``kind 3``, label 1). So every sample is emitted exactly twice and the
  emitted feature distribution equals the actual one (the paper's Fig. 1b:
  "duplicate both positives and real negatives"). The authors' code
  (github.com/gusuperstar/defer, ``src/data.py``,
  ``add_esdfm_cut_fake_neg3``) ingests the in-window positive duplicates at
  conversion time + A instead; we emit both duplicates when the
  attribution window of the impression closes (``t + A``), when a joiner
  knows the label is final.
* ``snapshots``: emit every sample at ``t + s_k`` for each snapshot
  ``s_k`` (``kind = k``) with ``[delay <= s_k]`` (for the multi-head
  delayed-conversion tower).

Emission kinds: 0 first emission, 1 delayed positive re-emitted at its
conversion, 2 real negative re-emitted at ``t + A`` (DEFER), 3 in-window
positive duplicated at ``t + A`` (DEFER); ``k`` snapshot index in
``snapshots`` mode.

Emission follows event time: emissions are released in ``(emit_time,
index, kind)`` order once no unseen impression can emit earlier (the source
must be in event-time order; a row that is not raises). Pending emissions
are kept in FIFO queues of sorted runs (one per constant offset) and a
log-structured set of sorted runs for the variable ``t + delay`` offset, so
memory is bounded by the rows with a pending emission (those of the last
``max offset`` seconds), never by the stream, and every step is vectorised
NumPy over whole batches.

Positive scattering (``scatter_rows = S > 0``): a window's emissions, in
event-time order, are cut into consecutive blocks of at most ``S`` rows
(``ceil(N / S)`` blocks of equal size) and within each block the observed
positives are placed evenly among the negatives
(positive ``r`` of ``p`` in a block of ``n`` rows at offset
``floor((r + 1/2) n / p)``; negatives and positives each keep their order).
A burst of positives is so spread over the ``S / B`` batches of its block;
no row moves by ``S`` positions or more (the buffer bound), and the multiset
of a window's samples is unchanged. Blocks are formed once the window
closes, which is when the trainer receives its samples, so this is no
look-ahead into data the trainer would not have.

Windows (test-then-train): :meth:`LabelJoiner.windows` cuts event time into
windows ``[start, end)`` aligned to multiples of ``window_s`` and yields,
for each, the impressions with ``time`` in the window (true labels, to
evaluate the model before it learns the window) and the samples the joiner
emitted with ``emit_time`` in the window (to learn). At the end of the
source the joiner stops after the window holding the last impression;
emissions due later are dropped and counted (``dropped_at_end``), unless
``JoinConfig.drain`` (an addition to the issue's interface) continues with
impression-free windows until every pending emission is out.

Batches (:mod:`rectrain.data.batch`): every per-row key of the source
(``label``, ``weight``, ``cat``, ``dense``, ``index``, ``time``,
``true_prob``, ``delay``, and e.g. ``raw_ids``) plus, in emitted batches,
``label`` = the OBSERVED label, ``label_true`` (B,) float32,
``emit_time`` (B,) float64, ``elapsed`` (B,) float32 = ``emit_time - time``,
``kind`` (B,) int32. Impression batches carry ``label`` = ``label_true`` =
the true label. Batches hold ``batch_size`` rows; the last of a window is
padded with rows of weight 0 (index -1, NaN times, 0 labels and kind).

Counters (``JoinWindow.counts``, every value a number; additive over
windows except ``pending``): ``impressions``, ``impression_positives``
(true), ``late_conversions`` (converted after ``A``), ``lost_positives``
(true positives this mode never emits as positive: ``wait`` with
``delay > W``, ``snapshots`` with ``delay > s_last``), ``emitted``,
``emitted_positives``, ``emitted_kind_<k>``, ``fake_negatives`` (emitted
with label 0, true label 1), ``scattered`` (positives moved by scattering),
``pending`` (emissions scheduled and not yet emitted at the window end),
``dropped_at_end`` / ``dropped_kind_<k>`` (last window, without ``drain``).
:meth:`LabelJoiner.report` gives the totals of the latest pass, with
``scheduled_kind_<k> == emitted_kind_<k> + dropped_kind_<k>``.

Additions to the issue's interface: ``JoinConfig.drain``,
``LabelJoiner.report()``, ``LabelJoiner.emissions(window_s)``,
:func:`scatter_order`, :func:`true_labels`.

Where things live (this module re-exports them):

* :mod:`rectrain.data.delay_join_config`: ``MODES``, ``KIND_*``,
  :class:`JoinConfig`, :class:`JoinWindow`, :func:`true_labels`.
* :mod:`rectrain.data.delay_join_rows`: row chunks (``Rows``), the pending
  emission queues, :func:`scatter_order` and batch padding.
* :mod:`rectrain.data.delay_join_joiner`: :class:`LabelJoiner`.
* here: the throughput measurement (``python -m rectrain.data.delay_join``).

Shape legend: N rows of a chunk, B batch size.
"""

from __future__ import annotations

import time as time_lib

from rectrain.data.delay_join_config import (KIND_DELAYED_POSITIVE, KIND_FIRST,
                                             KIND_REAL_NEGATIVE, KIND_WINDOW_POSITIVE, MODES,
                                             JoinConfig, JoinWindow, _as_float, true_labels)
from rectrain.data.delay_join_joiner import _EMIT_KEYS, LabelJoiner
from rectrain.data.delay_join_rows import (_NAN_PAD, Rows, _concat, _FifoQueue, _length,
                                           _MergeQueue, _pad, _take, scatter_order)

# The re-exports (the private ones too, for callers of the former single module).
__all__ = [
    "KIND_DELAYED_POSITIVE", "KIND_FIRST", "KIND_REAL_NEGATIVE", "KIND_WINDOW_POSITIVE", "MODES",
    "JoinConfig", "JoinWindow", "LabelJoiner", "Rows", "_EMIT_KEYS", "_FifoQueue", "_MergeQueue",
    "_NAN_PAD", "_as_float", "_concat", "_length", "_pad", "_take", "scatter_order",
    "true_labels",
]


# ---------------------------------------------------------------------------
# Throughput: python -m rectrain.data.delay_join [rows] [mode ...]


def _throughput(rows: int = 1_000_000, modes=MODES, batch_size: int = 4096) -> None:
  from rectrain.data.synthetic import SyntheticStream
  t0 = time_lib.perf_counter()
  source = list(SyntheticStream(batch_size=batch_size, cat_buckets=1 << 16,
                                num_rows_total=rows, seed=0))
  t_gen = time_lib.perf_counter() - t0
  print(f"source: {rows} synthetic rows (1M rows/day) generated in {t_gen:.1f} s, "
        f"{rows / t_gen:,.0f} rows/s")
  for mode in modes:
    cfg = JoinConfig(mode=mode, wait_s=900.0, attribution_s=86400.0,
                     snapshot_s=(3600.0, 21600.0, 86400.0), batch_size=batch_size,
                     scatter_rows=8 * batch_size)
    joiner = LabelJoiner(source, cfg)
    t0, c0 = time_lib.perf_counter(), time_lib.process_time()
    emitted = 0
    for w in joiner.windows(3600.0):
      emitted += sum(int((b["weight"] > 0).sum()) for b in w.emitted)
    dt, dc = time_lib.perf_counter() - t0, time_lib.process_time() - c0
    rep = joiner.report()
    print(f"{mode:9s}: {rep['rows'] / dt:11,.0f} impressions/s wall ({dt:.2f} s), "
          f"{rep['rows'] / dc:11,.0f} /s CPU ({dc:.2f} s); emitted {emitted}, dropped at end "
          f"{rep['dropped_at_end']}, max pending {rep['max_pending']}")


if __name__ == "__main__":
  import sys
  _n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
  _throughput(_n, tuple(sys.argv[2:]) or MODES)
