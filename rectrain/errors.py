"""The errors rectrain raises for faults of the user's world (not bugs).

Each carries a one-line message naming the place (file and line or byte,
config key, directory); the command line prints it as one line and exits
non-zero (``--debug`` shows the traceback).

* :class:`InputError`: an input file cannot be read as what it should be
  (missing, unreadable, truncated or corrupt compressed data, another
  format, shrunk while read, a bad line under ``bad_lines="error"``). The
  streaming loop checkpoints everything trained before it, so the same
  command resumes once the file is fixed or replaced.
* :class:`OutputError`: the run directory cannot be written (read-only,
  full, over a file-size limit); the previous checkpoint and metrics are
  left intact.
"""

from __future__ import annotations


class RectrainError(Exception):
  """Base of the user-facing errors (one-line message)."""


class InputError(RectrainError, ValueError):
  """An input file fault; the message names the file and the line or byte."""


class OutputError(RectrainError, OSError):
  """The run directory cannot be written; the message names the path."""

  def __str__(self):  # OSError would format (errno, strerror) pairs
    return str(self.args[0]) if self.args else ""
