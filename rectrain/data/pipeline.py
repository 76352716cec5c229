"""Generic host-side stages for streams of batches (or of row blocks).

Everything here works on any iterator of ``dict``s of NumPy arrays whose
arrays share their first axis (rows); nothing is Criteo specific.

* :func:`prefetch` runs an iterator in a background thread (parsing overlaps
  training).
* :func:`map_ordered` applies a function in a thread pool, results in order.
* :func:`with_unique` adds the host-side dedup keys of
  :func:`rectrain.data.batch.add_unique`.
* :func:`take_rows` stops after ``n`` real (non-padding) rows.
* :func:`shuffle_rows` is a bounded, seeded shuffle buffer over row blocks.
* :func:`rebatch` cuts row blocks into fixed-size batches, the last one padded.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from typing import Callable, Dict, Iterable, Iterator

import numpy as np

from rectrain.data.batch import Batch, add_unique, pad_batch

Block = Dict[str, np.ndarray]

_DONE = object()


class _Raised:
  """Carries an exception from the producer thread to the consumer."""

  def __init__(self, exc: BaseException):
    self.exc = exc


def prefetch(iterator: Iterable, depth: int = 2) -> Iterator:
  """Yields the items of ``iterator``, produced ahead in a background thread.

  At most ``depth`` items wait in a bounded queue. An exception raised by the
  producer is re-raised in the consumer at the position where it happened.
  If the consumer stops early (``break``, ``close()``, garbage collection),
  the producer thread is told to stop and joined; it never hangs on a full
  queue.

  Args:
    iterator: any iterable; it is iterated only in the background thread.
    depth: queue size, >= 1.
  """
  if depth < 1:
    raise ValueError(f"prefetch: depth must be >= 1, got {depth}")
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put(item):
          return
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer.
      put(_Raised(exc))
      return
    put(_DONE)

  thread = threading.Thread(target=produce, name="rectrain-prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _DONE:
        return
      if isinstance(item, _Raised):
        raise item.exc
      yield item
  finally:
    stop.set()
    thread.join()


def map_ordered(fn: Callable, iterable: Iterable, workers: int = 2,
                read_ahead: bool = True) -> Iterator:
  """Yields ``fn(x)`` for each ``x`` of ``iterable``, in order, from ``workers`` threads.

  At most ``workers + 1`` calls are in flight (bounded memory). With
  ``read_ahead`` the iterable itself runs in a :func:`prefetch` thread.
  ``workers=0`` maps in the calling thread. Useful where ``fn`` spends its
  time in code that releases the GIL (NumPy, pyarrow). An exception of
  ``fn`` is raised at its item; stopping early cancels pending calls.
  """
  if workers < 0:
    raise ValueError(f"map_ordered: workers must be >= 0, got {workers}")
  if workers == 0:
    for x in iterable:
      yield fn(x)
    return
  items = prefetch(iterable, depth=2) if read_ahead else iter(iterable)
  window: collections.deque = collections.deque()
  with concurrent.futures.ThreadPoolExecutor(workers, "rectrain-map") as pool:
    try:
      source = iter(items)
      fault = None
      while True:
        try:
          x = next(source)
        except StopIteration:
          break
        except Exception as exc:  # the source failed: its items before the fault come out first
          fault = exc
          break
        window.append(pool.submit(fn, x))
        if len(window) > workers:
          yield window.popleft().result()
      while window:
        yield window.popleft().result()
      if fault is not None:
        raise fault
    finally:
      for fut in window:
        fut.cancel()
      if read_ahead:
        items.close()


def with_unique(iterator: Iterable[Batch], num_rows: int, max_unique: int | None = None,
                workers: int = 0) -> Iterator[Batch]:
  """Adds ``unique``/``inverse``/``num_unique`` to every batch (see batch.py).

  With ``workers > 0`` the dedup (a NumPy sort per batch) runs ahead in that
  many threads (:func:`map_ordered`), overlapping the consumer.
  """
  def dedup(batch):
    return add_unique(batch, num_rows, max_unique)

  yield from map_ordered(dedup, iterator, workers, read_ahead=False)


def take_rows(iterator: Iterable[Batch], n: int) -> Iterator[Batch]:
  """Yields batches until ``n`` real rows (``weight > 0``) have been yielded.

  The batch that crosses ``n`` is yielded with its rows beyond ``n`` turned
  into padding (weight 0, label 0, index -1; other keys untouched, so
  ``unique``/``inverse`` stay consistent with ``cat``); shapes stay fixed.
  """
  if n < 0:
    raise ValueError(f"take_rows: n must be >= 0, got {n}")
  seen = 0
  if n == 0:
    return
  for batch in iterator:
    real = np.flatnonzero(batch["weight"] > 0)
    if seen + real.size <= n:
      seen += real.size
      yield batch
      if seen == n:
        return
      continue
    drop = real[n - seen:]
    out = dict(batch)
    out["weight"] = batch["weight"].copy()
    out["weight"][drop] = 0
    out["label"] = batch["label"].copy()
    out["label"][drop] = 0
    if "index" in batch:
      out["index"] = batch["index"].copy()
      out["index"][drop] = -1
    yield out
    return


def _num_rows(block: Block) -> int:
  return next(iter(block.values())).shape[0]


def _take(block: Block, idx) -> Block:
  return {k: v[idx] for k, v in block.items()}


def _concat(blocks: list[Block]) -> Block:
  if len(blocks) == 1:
    return blocks[0]
  return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def shuffle_rows(blocks: Iterable[Block], buffer_size: int, seed: int = 0) -> Iterator[Block]:
  """A bounded shuffle buffer over row blocks (the light shuffle of a live stream).

  The buffer holds ``buffer_size`` rows. Once it is full, each incoming block
  of ``n`` rows (cut into pieces of at most ``buffer_size``) evicts ``n``
  distinct buffer slots chosen uniformly at random, in random order, and its
  rows take their places; at the end the buffer is flushed in random order.
  Every row is emitted exactly once (a permutation), memory is bounded, a row
  is displaced by at most about ``buffer_size`` positions in expectation, and
  the order is a pure function of ``seed`` and the input.
  """
  if buffer_size <= 0:
    yield from blocks
    return
  rng = np.random.default_rng(seed)
  buf: Block | None = None
  fill = 0
  for block in blocks:
    n = _num_rows(block)
    start = 0
    while start < n:
      if buf is None:
        buf = {k: np.empty((buffer_size,) + v.shape[1:], v.dtype) for k, v in block.items()}
      if fill < buffer_size:
        take = min(buffer_size - fill, n - start)
        for k, v in block.items():
          buf[k][fill:fill + take] = v[start:start + take]
        fill += take
        start += take
        continue
      take = min(buffer_size, n - start)
      slots = rng.choice(buffer_size, size=take, replace=False)
      out = {k: v[slots] for k, v in buf.items()}
      for k, v in block.items():
        buf[k][slots] = v[start:start + take]
      start += take
      yield out
  if buf is not None and fill:
    order = rng.permutation(fill)
    yield {k: v[:fill][order] for k, v in buf.items()}


def rebatch(blocks: Iterable[Block], batch_size: int) -> Iterator[Batch]:
  """Cuts row blocks into batches of exactly ``batch_size`` rows.

  The last, partial batch is kept and padded with zero-weight rows
  (:func:`rectrain.data.batch.pad_batch`, which needs a ``label`` key);
  an empty stream yields nothing.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  pending: list[Block] = []
  count = 0
  for block in blocks:
    n = _num_rows(block)
    if n == 0:
      continue
    pending.append(block)
    count += n
    if count < batch_size:
      continue
    rows = _concat(pending)
    full = count // batch_size * batch_size
    for start in range(0, full, batch_size):
      yield {k: v[start:start + batch_size] for k, v in rows.items()}
    pending = [{k: v[full:] for k, v in rows.items()}] if count > full else []
    count -= full
  if count:
    yield pad_batch(_concat(pending), batch_size)


def warmup_sizes(batch_size: int, first: int) -> list[int]:
  """Row counts ``first, first, 2 first, ..., batch_size / 2`` summing to ``batch_size``.

  The halving starts from ``batch_size``: 4096 with ``first=64`` gives
  ``[64, 64, 128, 256, 512, 1024, 2048]``; ``first >= batch_size`` gives
  ``[batch_size]``.
  """
  if first < 1:
    raise ValueError(f"warmup_sizes: first must be >= 1, got {first}")
  sizes, rest = [], int(batch_size)
  while rest > first:
    sizes.append(rest - rest // 2)
    rest //= 2
  sizes.append(rest)
  return sizes[::-1]


def split_first_batch(iterator: Iterable[Batch], batch_size: int, first: int) -> Iterator[Batch]:
  """Splits the stream's first batch into :func:`warmup_sizes` sub-batches.

  Each sub-batch keeps its rows in stream order and is padded to
  ``batch_size`` with zero-weight rows (the step's shape does not change), so
  a model learns after ``first`` rows instead of after a whole batch: with
  progressive validation only the first ``first`` rows are scored by the
  untrained model. Sub-batches without a real row are dropped; every later
  batch passes unchanged.
  """
  it = iter(iterator)
  head = next(it, None)
  if head is None:
    return
  start = 0
  for size in warmup_sizes(batch_size, first):
    part = {k: (v[start:start + size] if np.ndim(v) > 0 else v) for k, v in head.items()}
    start += size
    if (part["weight"] > 0).any():
      yield pad_batch(part, batch_size)
  yield from it
