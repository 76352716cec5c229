"""Field-salted feature hashing and the fused-table layout.

Every categorical field ``f`` owns ``buckets[f]`` consecutive rows of one fused
table starting at ``offsets[f]``. Bucket 0 of a field is its missing value;
present values hash into buckets ``1 .. buckets[f] - 1``:

  row = offsets[f] + 1 + splitmix64(value XOR salt_f) mod (buckets[f] - 1)

The hash is a pure function of (value, field index, buckets): stable across
runs, processes and machines.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

NUM_INT_FIELDS = 13
NUM_CAT_FIELDS = 26
INT_NAMES = tuple(f"I{i}" for i in range(1, NUM_INT_FIELDS + 1))
CAT_NAMES = tuple(f"C{i}" for i in range(1, NUM_CAT_FIELDS + 1))

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser, vectorised over a uint64 array."""
  x = np.asarray(x, dtype=np.uint64)
  with np.errstate(over="ignore"):
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def field_salt(field: int) -> np.uint64:
  """A per-field salt, so equal raw values in two fields hash apart."""
  return splitmix64(np.array([field + 1], dtype=np.uint64))[0]


def hash_to_bucket(values: np.ndarray, field: int, num_buckets: int) -> np.ndarray:
  """Hashes raw uint64 values of ``field`` into buckets ``1 .. num_buckets-1``."""
  if num_buckets < 2:
    raise ValueError(f"field {field}: num_buckets must be >= 2, got {num_buckets}")
  h = splitmix64(np.asarray(values, dtype=np.uint64) ^ field_salt(field))
  return (h % np.uint64(num_buckets - 1)).astype(np.int64) + 1


def log1p_transform(values: np.ndarray, missing: np.ndarray) -> np.ndarray:
  """log1p of the value clipped at 0; a missing value maps to 0."""
  v = np.log1p(np.maximum(values, 0).astype(np.float64)).astype(np.float32)
  v[missing] = 0.0
  return v


def log_square_token(values: np.ndarray) -> np.ndarray:
  """Criteo winners' bucketisation: floor(ln(x)^2) for x > 2, else x itself.

  The result for x > 2 is offset by 2**32 so it never equals a small raw value.
  """
  values = np.asarray(values, dtype=np.int64)
  big = values > 2
  out = values.copy()
  with np.errstate(divide="ignore", invalid="ignore"):
    tok = np.floor(np.log(np.where(big, values, 3).astype(np.float64)) ** 2)
  out[big] = tok[big].astype(np.int64) + (1 << 32)
  return out


POOLS = ("sum", "mean", "seq")


@dataclasses.dataclass(frozen=True)
class FieldLayout:
  """Names and bucket counts of the categorical fields of a fused table.

  Field ``f`` owns rows ``offsets[f] .. offsets[f + 1] - 1``. A single-valued
  field is one column of the batch's ``cat``; a multi-hot field (``lengths[f]
  = L > 0``) is ``L`` columns, its values from the left and the unused slots
  the padding id ``num_rows``, pooled into one field by ``pools[f]``
  (:data:`POOLS`: ``sum``, ``mean``, or ``seq``, a behaviour sequence kept for
  sequence models and mean-pooled for the others). Single-valued fields come
  first, so their column index is their field index. ``lengths`` / ``pools``
  empty: every field single-valued.
  """

  names: tuple[str, ...]
  buckets: tuple[int, ...]
  lengths: tuple[int, ...] = ()
  pools: tuple[str, ...] = ()

  def __post_init__(self):
    if len(self.names) != len(self.buckets):
      raise ValueError(f"{len(self.names)} field names but {len(self.buckets)} bucket sizes")
    for name, b in zip(self.names, self.buckets):
      if int(b) < 2:
        raise ValueError(f"field {name}: buckets must be >= 2, got {b}")
    if self.lengths or self.pools:
      if not len(self.lengths) == len(self.pools) == len(self.names):
        raise ValueError(f"{len(self.names)} fields but {len(self.lengths)} lengths and "
                         f"{len(self.pools)} pools")
      multi = [int(n) > 0 for n in self.lengths]
      if any(m and not later for m, later in zip(multi, multi[1:])):
        raise ValueError("multi-hot fields must come after the single-valued ones")
      for name, n, pool in zip(self.names, self.lengths, self.pools):
        if int(n) < 0 or (int(n) > 0 and pool not in POOLS) or (int(n) == 0 and pool):
          raise ValueError(f"field {name}: length {n} and pool {pool!r} (a multi-hot field has "
                           f"length >= 1 and a pool of {POOLS}; a single one 0 and '')")

  @property
  def num_single(self) -> int:
    """Single-valued fields (the first ``cat`` columns)."""
    return sum(1 for n in self.lengths if int(n) == 0) if self.lengths else len(self.names)

  @property
  def num_columns(self) -> int:
    """Columns of the batch's ``cat``: one per single field, ``L`` per multi-hot field."""
    return self.num_single + sum(int(n) for n in self.lengths)

  @property
  def multi_hot(self) -> tuple[tuple[int, int, str], ...]:
    """``(first column, length, pool)`` of each multi-hot field, in field order."""
    out, col = [], self.num_single
    for n, pool in zip(self.lengths, self.pools):
      if int(n) > 0:
        out.append((col, int(n), pool))
        col += int(n)
    return tuple(out)

  @property
  def offsets(self) -> np.ndarray:
    """(F + 1,) int64 row offsets; ``offsets[-1] == num_rows``."""
    return np.concatenate([[0], np.cumsum(np.asarray(self.buckets, dtype=np.int64))])

  @property
  def num_rows(self) -> int:
    return int(np.sum(np.asarray(self.buckets, dtype=np.int64)))

  @property
  def num_fields(self) -> int:
    return len(self.names)


def make_layout(cat_buckets: int | Sequence[int], int_mode: str = "log1p",
                int_buckets: int = 512) -> FieldLayout:
  """The Criteo-schema layout: C1..C26, then I1..I13 if ints are categorical.

  Args:
    cat_buckets: buckets per categorical field (one int for all, or 26 ints).
    int_mode: ``"log1p"`` (integers are dense inputs) or ``"categorical"``
      (integers bucketised with :func:`log_square_token` and hashed).
    int_buckets: buckets per integer field in categorical mode.
  """
  if isinstance(cat_buckets, (int, np.integer)):
    cat = (int(cat_buckets),) * NUM_CAT_FIELDS
  else:
    cat = tuple(int(b) for b in cat_buckets)
    if len(cat) != NUM_CAT_FIELDS:
      raise ValueError(f"cat_buckets: expected 1 or {NUM_CAT_FIELDS} values, got {len(cat)}")
  if int_mode == "log1p":
    return FieldLayout(CAT_NAMES, cat)
  if int_mode == "categorical":
    return FieldLayout(CAT_NAMES + INT_NAMES, cat + (int(int_buckets),) * NUM_INT_FIELDS)
  raise ValueError(f"int_mode must be 'log1p' or 'categorical', got {int_mode!r}")


def hash_fields_to_buckets(values_FxN: np.ndarray, fields: Sequence[int],
                           num_buckets: Sequence[int]) -> np.ndarray:
  """:func:`hash_to_bucket` of many fields at once, with identical results.

  Row ``f`` of ``values_FxN`` (raw uint64 values) is hashed as field
  ``fields[f]`` into buckets ``1 .. num_buckets[f] - 1``; the splitmix64 steps
  run in place on one (F, N) array and the remainder uses a division by a
  scalar, several times faster than one :func:`hash_to_bucket` call per field.

  Returns:
    (F, N) int64 buckets.
  """
  values_FxN = np.asarray(values_FxN)
  if values_FxN.ndim != 2 or values_FxN.shape[0] != len(fields) or len(fields) != len(num_buckets):
    raise ValueError(f"values (F, N) {values_FxN.shape}, {len(fields)} fields and "
                     f"{len(num_buckets)} bucket counts must agree")
  for f, b in zip(fields, num_buckets):
    if int(b) < 2:
      raise ValueError(f"field {f}: num_buckets must be >= 2, got {b}")
  salts = np.array([field_salt(int(f)) for f in fields], dtype=np.uint64)[:, None]
  z = np.bitwise_xor(values_FxN.astype(np.uint64, copy=False), salts)
  tmp = np.empty_like(z)
  with np.errstate(over="ignore"):
    z += _GOLDEN
    z ^= np.right_shift(z, np.uint64(30), out=tmp)
    z *= _M1
    z ^= np.right_shift(z, np.uint64(27), out=tmp)
    z *= _M2
    z ^= np.right_shift(z, np.uint64(31), out=tmp)
  # z mod m as z - (z // m) * m: NumPy divides by a scalar with libdivide,
  # several times faster than its uint64 remainder.
  mods = [np.uint64(int(b) - 1) for b in num_buckets]
  if all(m == mods[0] for m in mods):
    np.floor_divide(z, mods[0], out=tmp)
    tmp *= mods[0]
    z -= tmp
  else:
    for f, m in enumerate(mods):
      z[f] -= (z[f] // m) * m
  z += np.uint64(1)
  return z.view(np.int64)
