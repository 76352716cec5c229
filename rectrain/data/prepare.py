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
* ``kuairand`` (KuaiRand Pure / 1K: ``log_*.csv``, ``user_features*.csv``,
  ``video_features_basic*.csv``): every log joined with its user's and video's
  features, in ``time_ms`` order; a ``log`` column names the file (standard or
  random exposure). The card's label is ``is_click``; ``data.label=is_like``
  (or any other outcome) picks another, and the other outcomes stay ignored.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Dict

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("movielens_1m", "taobao_ad", "kuairand")


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


KUAIRAND_OUTCOMES = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate",
                     "is_collect", "long_view", "play_time_ms", "profile_stay_time",
                     "comment_stay_time", "is_profile_enter")
KUAIRAND_NAMED = ("date", "upload_dt", "duration_ms")  # the card's other named columns


def prepare_kuairand(raw_dir: str, out: str, progress: bool = True) -> dict:
  """KuaiRand (Gao et al. 2022; Pure / 1K versions): every ``log_*.csv`` in ``raw_dir``
  (standard and random exposures) joined with ``user_features*.csv`` on ``user_id``
  and ``video_features_basic*.csv`` on ``video_id``, in ``time_ms`` order. Every
  column is kept; the card marks the outcomes (:data:`KUAIRAND_OUTCOMES`) as
  ignored except the chosen label. Each file is read whole (the 27K version's
  322M-row logs need more memory than this machine has)."""
  import glob

  import pyarrow as pa
  import pyarrow.compute as pc
  import pyarrow.csv as pacsv
  import pyarrow.parquet as pq

  report = {"dataset": "kuairand", "rows_read": {}, "skipped": {}, "first_errors": []}
  logs = sorted(glob.glob(os.path.join(raw_dir, "log_*.csv")))
  users = sorted(glob.glob(os.path.join(raw_dir, "user_features*.csv")))
  videos = sorted(glob.glob(os.path.join(raw_dir, "video_features_basic*.csv")))
  for what, found in (("log_*.csv", logs), ("user_features*.csv", users),
                      ("video_features_basic*.csv", videos)):
    if not found:
      raise FileNotFoundError(f"prepare kuairand: no {what} in {raw_dir}")
  step = _steps(progress, len(logs) + 3)

  def read(path, key_cols):
    invalid = []

    def on_invalid(row):
      invalid.append(int(row.number) if row.number is not None else -1)
      return "skip"

    try:
      t = pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                         parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
                         convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as e:
      raise ValueError(f"{path}: not a CSV with a header: {e}") from None
    name = os.path.basename(path)
    report["rows_read"][name] = t.num_rows + len(invalid)
    for line in invalid:
      _count(report, "wrong_field_count", f"{path}:{line}: wrong_field_count")
    absent = [c for c in key_cols if c not in t.column_names]
    if absent:
      raise ValueError(f"{path}: no column {absent} (it has {t.column_names})")
    ok = np.ones(t.num_rows, bool)
    for c in key_cols:
      col = t[c]
      if not pa.types.is_integer(col.type):
        good = pc.fill_null(pc.match_substring_regex(pc.cast(col, pa.string()), r"^-?[0-9]+$"),
                            False)
        ok &= np.asarray(good.to_numpy(zero_copy_only=False), bool)
      else:
        ok &= ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), bool)
    for i in np.flatnonzero(~ok):
      _count(report, "bad_value", f"{path}: row {int(i) + 1}: bad_value: {key_cols} not integers")
    if not ok.all():
      t = t.filter(pa.array(ok))
    return t.set_column(t.column_names.index(key_cols[0]), key_cols[0],
                        pc.cast(t[key_cols[0]], pa.int64())) if key_cols else t

  def features(paths, key):
    t = pa.concat_tables([read(p, [key]) for p in paths], promote_options="permissive")
    return first_per_key(t, key, report, paths[0])

  user_t, video_t = features(users, "user_id"), features(videos, "video_id")
  step("features")
  parts = []
  for path in logs:
    t = read(path, ["user_id", "video_id", "time_ms"])
    t = t.set_column(t.column_names.index("video_id"), "video_id", pc.cast(t["video_id"], pa.int64()))
    t = t.set_column(t.column_names.index("time_ms"), "time_ms", pc.cast(t["time_ms"], pa.int64()))
    t = t.append_column("log", pa.array([os.path.basename(path)[:-4]] * t.num_rows))
    parts.append(t)
    step(os.path.basename(path))
  inter = pa.concat_tables(parts, promote_options="permissive")
  dup = [c for c in user_t.column_names if c != "user_id" and c in inter.column_names]
  dup += [c for c in video_t.column_names if c != "video_id" and c in inter.column_names]
  if dup:
    raise ValueError(f"prepare kuairand: feature columns {dup} also in the logs")
  report["interactions_without_user_features"] = int(
      inter.num_rows - pc.sum(pc.is_in(inter["user_id"], value_set=user_t["user_id"])).as_py())
  report["interactions_without_video_features"] = int(
      inter.num_rows - pc.sum(pc.is_in(inter["video_id"], value_set=video_t["video_id"])).as_py())
  joined = inter.join(user_t, keys="user_id", join_type="left outer")
  joined = joined.join(video_t, keys="video_id", join_type="left outer")
  joined = joined.sort_by([("time_ms", "ascending"), ("user_id", "ascending"),
                           ("video_id", "ascending")])
  first = ["time_ms", "user_id", "video_id"]
  joined = joined.select(first + [c for c in joined.column_names if c not in first])
  # The columns the card names, null where this release has none (e.g. is_collect).
  absent = [c for c in KUAIRAND_OUTCOMES + KUAIRAND_NAMED if c not in joined.column_names]
  for c in absent:
    joined = joined.append_column(c, pa.nulls(joined.num_rows, pa.int64()))
  report["absent_columns"] = absent
  pq.write_table(joined, out, row_group_size=1 << 17)
  step("written")
  ts = joined["time_ms"]
  report.update(rows_written=int(joined.num_rows), out=os.path.abspath(out),
                logs=[os.path.basename(p) for p in logs], columns=joined.column_names,
                time_span_ms=[int(pc.min(ts).as_py()), int(pc.max(ts).as_py())])
  return report


def first_per_key(t, key: str, report: dict, name: str):
  """The first row of every ``key`` of table ``t`` (a repeated key would multiply rows in
  a join); the repeats are counted as ``duplicate_<key>``."""
  import pyarrow as pa
  keys = t[key].to_numpy()
  _, first = np.unique(keys, return_index=True)
  dup = keys.size - first.size
  if dup:
    _count(report, f"duplicate_{key}", f"{name}: {dup} rows repeat an earlier {key}; the first "
                                       "kept", dup)
  return t.take(pa.array(np.sort(first)))


def _count(report: dict, reason: str, text: str, n: int = 1, max_reported: int = 10) -> None:
  report["skipped"][reason] = report["skipped"].get(reason, 0) + n
  if len(report["first_errors"]) < max_reported:
    report["first_errors"].append(text)


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


PREPARERS = {"movielens_1m": prepare_movielens_1m, "taobao_ad": _taobao,
             "kuairand": prepare_kuairand}


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
