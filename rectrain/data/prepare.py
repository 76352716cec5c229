"""One-time conversions of raw public datasets into time-ordered parquet.

``rectrain data prepare NAME RAW_DIR OUT`` reads a dataset as its publisher
ships it, joins what needs joining, derives what a streaming run needs, and
writes one parquet file in event-time order that the dataset card of the
same name (rectrain/data/schema.py) reads. It prints progress and a report
(rows read per file, rows written, bad lines by reason with the first of them
as ``file:line``), which is also returned and written as ``OUT.report.json``.

Datasets:

* ``movielens_1m`` (GroupLens MovieLens 1M: ``ratings.dat``, ``movies.dat``,
  ``users.dat``, ``::``-separated, Latin-1): every rating joined with its
  movie's genres and its user's gender, age, occupation and zip code, and
  ``history``: the user's previously rated movies, most recent first, at most
  ``history_len``, **strictly before** the rating's timestamp (ratings of the
  same second are not each other's history: no leakage). The card's label is
  ``rating >= 4``.
* ``taobao_ad`` (Alibaba's Taobao display ads, Tianchi dataset 56:
  ``raw_sample.csv``, ``ad_feature.csv``, ``user_profile.csv``,
  ``behavior_log.csv``): impressions joined with ad and user features, and
  the user's behaviour categories and brands strictly before each impression
  (rectrain/data/prepare_taobao.py).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("movielens_1m", "taobao_ad")


class _Lines:
  """The good fields of a ``sep``-separated file, bad lines counted by reason."""

  def __init__(self, report: dict, max_reported: int = 10):
    self.report, self.max_reported = report, max_reported

  def read(self, path: str, fields: int, checks: Dict[int, Callable[[str], object]],
           sep: str = "::", encoding: str = "latin-1") -> list:
    if not os.path.exists(path):
      raise FileNotFoundError(f"prepare: {path} not found")
    name = os.path.basename(path)
    rows, read, bad = [], 0, self.report["skipped"]
    with open(path, encoding=encoding, newline="") as f:
      for number, line in enumerate(f, 1):
        line = line.rstrip("\r\n")
        if not line:
          continue
        read += 1
        parts = line.split(sep)
        reason = None
        if len(parts) != fields:
          reason = "wrong_field_count"
        else:
          try:
            parts = [checks[i](p) if i in checks else p for i, p in enumerate(parts)]
          except ValueError:
            reason = "bad_value"
        if reason:
          bad[reason] = bad.get(reason, 0) + 1
          if len(self.report["first_errors"]) < self.max_reported:
            self.report["first_errors"].append(f"{path}:{number}: {reason}: {line[:80]!r}")
          continue
        rows.append(parts)
    self.report["rows_read"][name] = read
    return rows


def _histories(user: np.ndarray, time: np.ndarray, item: np.ndarray, length: int) -> list:
  """Per row: the items of the same user at strictly earlier times, most recent first."""
  order = np.lexsort((item, time, user))
  out = [""] * user.size
  starts = np.flatnonzero(np.r_[True, user[order][1:] != user[order][:-1]])
  ends = np.r_[starts[1:], order.size]
  for a, b in zip(starts, ends):
    rows = order[a:b]
    t, it = time[rows], item[rows].astype(str)
    before = np.searchsorted(t, t, side="left")  # rows of this user strictly earlier
    for r, j in zip(rows, before):
      if j:
        out[r] = "|".join(it[max(0, j - length):j][::-1])
  return out


def prepare_movielens_1m(raw_dir: str, out: str, history_len: int = 20,
                         progress: bool = True) -> dict:
  import pyarrow as pa
  import pyarrow.parquet as pq

  report = {"dataset": "movielens_1m", "rows_read": {}, "skipped": {}, "first_errors": []}
  lines = _Lines(report)
  step = _steps(progress, 5)
  movies = {int(m): g for m, _, g in lines.read(os.path.join(raw_dir, "movies.dat"), 3, {0: int})}
  step("movies")
  users = {u: rest for u, *rest in lines.read(os.path.join(raw_dir, "users.dat"), 5,
                                             {0: int, 2: int, 3: int})}
  step("users")
  ratings = lines.read(os.path.join(raw_dir, "ratings.dat"), 4, {0: int, 1: int, 2: int, 3: int})
  step("ratings")
  unknown = {"unknown_movie": 0, "unknown_user": 0}
  kept = []
  for r in ratings:
    if r[1] not in movies:
      unknown["unknown_movie"] += 1
    elif r[0] not in users:
      unknown["unknown_user"] += 1
    else:
      kept.append(r)
  for k, v in unknown.items():
    if v:
      report["skipped"][k] = v
  if not kept:
    raise ValueError(f"prepare movielens_1m: no rating of {raw_dir}/ratings.dat joins a movie "
                     "and a user")
  arr = np.array(kept, dtype=np.int64)
  user, movie, rating, ts = arr.T
  history = _histories(user, ts, movie, history_len)
  step("histories")
  order = np.lexsort((movie, user, ts))  # event time; ties by user, movie
  table = pa.table({
      "rating": pa.array(rating[order].astype(np.int8)),
      "user_id": pa.array(user[order].astype(str)),
      "movie_id": pa.array(movie[order].astype(str)),
      "genres": pa.array([movies[int(m)] for m in movie[order]]),
      "gender": pa.array([users[int(u)][0] for u in user[order]]),
      "age": pa.array([str(users[int(u)][1]) for u in user[order]]),
      "occupation": pa.array([str(users[int(u)][2]) for u in user[order]]),
      "zip": pa.array([users[int(u)][3] for u in user[order]]),
      "history": pa.array([history[i] for i in order]),
      "timestamp": pa.array(ts[order]),
  })
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  pq.write_table(table, out, row_group_size=1 << 17)
  step("written")
  report.update(rows_written=int(table.num_rows), users=int(np.unique(user).size),
                movies=int(np.unique(movie).size), out=os.path.abspath(out),
                time_span_s=[int(ts.min()), int(ts.max())], history_len=int(history_len))
  return report


def _steps(progress: bool, total: int):
  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=total, unit="step", leave=False)

  def step(what: str):
    if bar is not None:
      bar.set_description(what)
      bar.update(1)
      if bar.n >= total:
        bar.close()
  return step


def _taobao(*args, **kwargs):
  from rectrain.data.prepare_taobao import prepare_taobao_ad
  return prepare_taobao_ad(*args, **kwargs)


PREPARERS = {"movielens_1m": prepare_movielens_1m, "taobao_ad": _taobao}


def prepare(name: str, raw_dir: str, out: str, progress: bool = True, **kwargs) -> dict:
  """Converts dataset ``name`` (:data:`DATASETS`) from ``raw_dir`` into the parquet ``out``;
  returns the report (also written as ``OUT.report.json``)."""
  if name not in PREPARERS:
    raise ValueError(f"prepare: unknown dataset {name!r}; one of {list(DATASETS)} (the other "
                     "cards read their published files directly)")
  if not os.path.isdir(raw_dir):
    raise FileNotFoundError(f"prepare: raw directory {raw_dir} not found")
  report = PREPARERS[name](raw_dir, out, progress=progress, **kwargs)
  with open(out + ".report.json", "w") as f:
    json.dump(report, f, indent=2)
  return report
