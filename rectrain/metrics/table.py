"""A plain-text table of metric records.

See :mod:`rectrain.metrics` for the definitions and conventions.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence | None = None,
                 digits: int = 4, missing: str = "") -> str:
  """A plain-text table: one line per row, aligned columns.

  Args:
    rows: dicts of values.
    columns: keys to show, each a key or a ``(key, header)`` pair; default the
      keys of the first row.
    digits: decimals of floats (NaN/None shown as ``nan``/``missing``).
    missing: text for absent keys and None.
  """
  if columns is None:
    columns = list(rows[0]) if rows else []
  cols = [(c, c) if isinstance(c, str) else (c[0], c[1]) for c in columns]

  def cell(v) -> tuple[str, bool]:
    if v is None:
      return missing, False
    if isinstance(v, (bool, np.bool_)):
      return str(bool(v)), False
    if isinstance(v, (int, np.integer)):
      return str(int(v)), True
    if isinstance(v, (float, np.floating)):
      return (f"{float(v):.{digits}f}" if np.isfinite(v) else str(float(v))), True
    return str(v), False

  body = [[cell(r.get(k)) for k, _ in cols] for r in rows]
  widths = [max([len(str(h))] + [len(line[j][0]) for line in body]) for j, (_, h) in enumerate(cols)]
  numeric = [any(line[j][1] for line in body) for j in range(len(cols))]

  def fmt(texts):
    return "  ".join(t.rjust(wd) if num else t.ljust(wd)
                     for t, wd, num in zip(texts, widths, numeric)).rstrip()

  lines = [fmt([str(h) for _, h in cols]), "  ".join("-" * wd for wd in widths)]
  lines += [fmt([t for t, _ in line]) for line in body]
  return "\n".join(lines)
