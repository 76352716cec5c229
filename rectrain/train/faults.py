"""Faults of a streaming run's input and output, turned into one-line errors.

* Input (:class:`rectrain.errors.InputError`, raised by the readers with the
  file and the line or byte): :func:`grouped` hands the loop every batch read
  before the fault, then a group marked with :data:`FAULT`; the loop trains
  them, checkpoints and raises :func:`input_fault` (the same command resumes
  once the file is fixed or replaced).
* Output: :func:`writing` turns an ``OSError`` of a write into the run
  directory (read-only, full, ``RLIMIT_FSIZE``) into an
  :class:`rectrain.errors.OutputError` naming the path and the newest intact
  checkpoint, which (with ``metrics.jsonl`` up to it) the failed write left
  as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Callable, Iterator

from rectrain.errors import InputError, OutputError

FAULT = "_fault"  # key of the group that ends a stream at an input fault


def grouped(batches: Iterator[dict], k: int, stack: Callable[[list], dict],
            done: int = 0) -> Iterator[tuple[int, dict]]:
  """Stacks up to ``k`` consecutive batches; yields (count, stacked).

  ``done``: batches before these (a resumed run); the first group is cut so
  that groups end at multiples of ``k`` as in an uninterrupted run (the
  metric sums then add in the same order, bit for bit).

  At an :class:`InputError` of ``batches`` the batches read before it come out
  as a last, shorter group (``(0, {})`` if none) carrying the error under
  :data:`FAULT`, and the iteration ends.
  """
  buf = []
  size = k - done % k
  it = iter(batches)
  while True:
    try:
      b = next(it)
    except StopIteration:
      break
    except InputError as e:
      group = stack(buf) if buf else {}
      group[FAULT] = e
      yield len(buf), group
      return
    buf.append(b)
    if len(buf) == size:
      yield size, stack(buf)
      buf, size = [], k
  if buf:
    yield len(buf), stack(buf)


def newest_checkpoint(workdir: str) -> str | None:
  from rectrain.train import checkpoint as ckpt
  done = ckpt._complete(workdir)
  return done[-1] if done else None


def _kept(workdir: str) -> str:
  path = newest_checkpoint(workdir)
  if path is None:
    return "no checkpoint was written yet"
  return (f"the checkpoint {path} and metrics.jsonl up to it are intact; free space or fix "
          "the directory and run the same command to resume")


def output_error(workdir: str, what: str, err: BaseException) -> OutputError:
  reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
  return OutputError(f"{workdir}: cannot write {what} ({reason}); {_kept(workdir)}")


@contextlib.contextmanager
def writing(workdir: str | None, what: str):
  """Turns an ``OSError`` of the block into an :class:`OutputError` naming ``what``."""
  try:
    yield
  except OutputError:
    raise
  except OSError as e:
    raise output_error(workdir or ".", what, e) from e


@contextlib.contextmanager
def quiet_orbax():
  """Holds back what a checkpoint write prints on stderr (file descriptor 2).

  A failed orbax/tensorstore save prints tracebacks from its background
  threads (absl ERROR logs, "Event loop is closed"); the failure itself is
  raised and reported in one line. On success everything held back is
  written out; on failure it is dropped unless ``RECTRAIN_DEBUG`` is set.
  """
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  sys.stderr.flush()
  held = tempfile.TemporaryFile()
  saved_fd = os.dup(2)
  os.dup2(held.fileno(), 2)
  ok = False
  try:
    yield
    ok = True
  finally:
    sys.stderr.flush()
    if not ok:  # the failed save's background threads still print: let them finish here
      _settle(held)
    os.dup2(saved_fd, 2)
    os.close(saved_fd)
    logger.setLevel(level)
    if ok or os.environ.get("RECTRAIN_DEBUG", "") not in ("", "0"):
      held.seek(0)
      data = held.read()
      if data:
        os.write(2, data)
    held.close()


def _settle(held, quiet_s: float = 0.3, max_s: float = 3.0) -> None:
  """Waits until nothing was written to ``held`` for ``quiet_s`` (at most ``max_s``)."""
  import time
  size, start, since = -1, time.monotonic(), time.monotonic()
  while time.monotonic() - start < max_s:
    now = os.fstat(held.fileno()).st_size
    if now != size:
      size, since = now, time.monotonic()
    elif time.monotonic() - since >= quiet_s:
      return
    time.sleep(0.05)


def checkpoint_write_error(workdir: str, path: str, err: BaseException) -> OutputError:
  """The one-line error of a failed checkpoint write (tensorstore reports
  ``File too large`` / ``No space left`` as ValueError)."""
  first = str(err).splitlines()[0] if str(err) else type(err).__name__
  for phrase in ("File too large", "No space left on device", "Read-only file system",
                 "Permission denied", "Disk quota exceeded"):
    if phrase in first:
      first = phrase
      break
  return OutputError(f"{workdir}: cannot write checkpoint {os.path.basename(path)} ({first}); "
                     f"{_kept(workdir)}")


def input_fault(err: InputError, saved: str | None, rows: int) -> InputError:
  """The error that ends a run at an input fault, saying what was kept."""
  if saved:
    return InputError(f"{err}; the {rows:,} rows trained before it are in checkpoint {saved}: "
                      "fix or replace the file and run the same command to resume")
  return InputError(f"{err}; nothing was trained before it")


# ---------------------------------------------------------------------------
# Fault injection (tests): RECTRAIN_FAULT_KILL="POINT:N" makes the process
# SIGKILL itself at the N-th (1-based) pass of the named point, e.g.
# "dispatch:7" (after the 7th dispatch), "checkpoint:2" (inside the 2nd
# checkpoint write, after its state and before meta.json), "metrics:5" (after
# the 5th metrics.jsonl line, before any flush). Unset in normal use.

_KILL = os.environ.get("RECTRAIN_FAULT_KILL", "")
_KILL_POINT, _, _KILL_N = _KILL.partition(":")
_passes: dict = {}
POINTS = ("dispatch", "checkpoint", "metrics")


# "count:PATH" writes {point: passes} of the whole run to PATH at exit (to draw moments).


def kill_point(name: str) -> None:
  """Dies by SIGKILL here if RECTRAIN_FAULT_KILL names this pass of ``name``."""
  if _KILL_POINT != name and _KILL_POINT != "count":
    return
  _passes[name] = _passes.get(name, 0) + 1
  if _KILL_POINT == name and _passes[name] == int(_KILL_N or 1):
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


if _KILL_POINT == "count":
  import atexit
  import json

  def _dump_counts():
    with open(_KILL_N, "w") as f:
      json.dump(_passes, f)

  atexit.register(_dump_counts)
