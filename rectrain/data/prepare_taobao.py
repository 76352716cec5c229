"""``rectrain data prepare taobao_ad``: Taobao display ads with behaviour sequences.

The Alibaba "Ad Display/Click Data on Taobao.com" release (Tianchi dataset
56; the data of the DIN and DIEN papers) ships four CSV files with headers:

* ``raw_sample.csv``: user, time_stamp, adgroup_id, pid, nonclk, clk (26M
  impressions over 8 days);
* ``ad_feature.csv``: adgroup_id, cate_id, campaign_id, customer, brand, price;
* ``user_profile.csv``: userid, cms_segid, cms_group_id, final_gender_code,
  age_level, pvalue_level, shopping_level, occupation, new_user_class_level;
* ``behavior_log.csv``: user, time_stamp, btag, cate, brand (700M events over
  22 days: page views, carts, favourites, buys).

Every impression is joined with its ad's and its user's features (a user
without a profile gets empty values: missing), and gets ``hist_cate`` /
``hist_brand``: the categories and brands of the user's ``history_len`` latest
behaviour events **strictly before** the impression's second, most recent
first (events of the same second or later are never seen: no leakage).

The behaviour log does not fit in memory at full size, so it is read once in
blocks and split by ``user % partitions`` into parquet files; each partition's
impressions then find their histories by a binary search over the
partition's events sorted by (user, time), all vectorised. Bad lines (wrong
field count, a key or time that is not an integer) are skipped and counted
by reason with the first ones as ``file:line``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rectrain.data.prepare import _count, _steps, first_per_key

FILES = {
    "raw_sample.csv": ("user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"),
    "ad_feature.csv": ("adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"),
    "user_profile.csv": ("userid", "cms_segid", "cms_group_id", "final_gender_code",
                         "age_level", "pvalue_level", "shopping_level", "occupation",
                         "new_user_class_level"),
    "behavior_log.csv": ("user", "time_stamp", "btag", "cate", "brand"),
}
INT_KEYS = {"raw_sample.csv": ("user", "time_stamp", "adgroup_id", "clk"),
            "ad_feature.csv": ("adgroup_id",), "user_profile.csv": ("userid",),
            "behavior_log.csv": ("user", "time_stamp")}


class _CSV:
  """Blocks of a headed CSV as string columns, bad lines counted into ``report``."""

  def __init__(self, report: dict, max_reported: int = 10, block_size: int = 1 << 24):
    self.report, self.max_reported, self.block_size = report, max_reported, block_size

  def _error(self, path, line, reason, text=""):
    _count(self.report, reason, f"{path}:{line}: {reason}" + (f": {text}" if text else ""),
           max_reported=self.max_reported)

  def blocks(self, raw_dir: str, name: str):
    path = os.path.join(raw_dir, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"prepare taobao_ad: {path} not found")
    with open(path, "rb") as f:
      header = [h.strip() for h in f.readline().decode("utf-8", "replace").rstrip("\r\n").split(",")]
    want = FILES[name]
    absent = [c for c in want if c not in header]
    if absent:
      raise ValueError(f"{path}: header {header} lacks the columns {absent}")
    invalid = []

    def on_invalid(row):
      invalid.append(int(row.number) if row.number is not None else -1)
      return "skip"

    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=False,
                                             block_size=self.block_size),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header}, include_columns=list(want),
            strings_can_be_null=True, null_values=["", "NULL"]))
    read = good_before = reported = 0
    for batch in reader:
      for line in invalid[reported:]:
        self._error(path, line, "wrong_field_count")
      reported = len(invalid)
      cols = {c: batch.column(c) for c in want}
      n = batch.num_rows
      read += n
      ok = np.ones(n, bool)
      for c in INT_KEYS[name]:
        ok &= np.asarray(pc.fill_null(pc.match_substring_regex(cols[c], r"^\s*-?[0-9]+\s*$"),
                                      False).to_numpy(zero_copy_only=False), bool)
      if not ok.all():
        lines = np.sort(np.asarray([x for x in invalid if x > 0], np.int64))
        for i in np.flatnonzero(~ok)[:self.max_reported]:
          k = good_before + int(i) + 2  # 1-based, after the header, before skipped lines
          k += int(np.searchsorted(lines - np.arange(lines.size), k, side="right"))
          self._error(path, k, "bad_value", "a key or time that is not an integer")
        extra = int((~ok).sum()) - min(int((~ok).sum()), self.max_reported)
        if extra:
          self.report["skipped"]["bad_value"] += extra
        keep = pa.array(ok)
        cols = {c: pc.filter(v, keep) for c, v in cols.items()}
      good_before += n
      out = {}
      for c, v in cols.items():
        out[c] = pc.cast(pc.utf8_trim_whitespace(v), pa.int64()) if c in INT_KEYS[name] else v
      yield out
    for line in invalid[reported:]:
      self._error(path, line, "wrong_field_count")
    self.report["rows_read"][name] = read + len(invalid)


def _table(csv: _CSV, raw_dir: str, name: str) -> pa.Table:
  blocks = list(csv.blocks(raw_dir, name))
  if not blocks:
    return pa.table({c: pa.array([], pa.int64() if c in INT_KEYS[name] else pa.string())
                     for c in FILES[name]})
  return pa.concat_tables([pa.table(b) for b in blocks])


def _histories(events: pa.Table, imps: pa.Table, length: int) -> dict:
  """``hist_cate`` / ``hist_brand`` of the impressions from the events of their users."""
  n = imps.num_rows
  if events.num_rows == 0 or n == 0:
    empty = pa.array([""] * n)
    return {"hist_cate": empty, "hist_brand": empty}
  e_user = events["user"].to_numpy()
  e_time = events["time_stamp"].to_numpy()
  key = (e_user << 32) | e_time
  order = np.argsort(key, kind="stable")
  key = key[order]
  i_user = imps["user"].to_numpy()
  i_time = imps["time_stamp"].to_numpy()
  first = np.searchsorted(key, i_user << 32, side="left")        # the user's first event
  stop = np.searchsorted(key, (i_user << 32) | i_time, side="left")  # strictly before t
  count = np.minimum(stop - first, length)
  offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int32)
  row = np.repeat(np.arange(n), count)
  pos = np.arange(offsets[-1]) - offsets[:-1][row]
  take = order[stop[row] - 1 - pos]  # most recent first
  out = {}
  for src, dst in (("cate", "hist_cate"), ("brand", "hist_brand")):
    values = pc.fill_null(events[src].combine_chunks().take(pa.array(take)), "")
    lists = pa.ListArray.from_arrays(pa.array(offsets), values)
    out[dst] = pc.fill_null(pc.binary_join(lists, "|"), "")
  return out


def prepare_taobao_ad(raw_dir: str, out: str, history_len: int = 20, partitions: int = 0,
                      progress: bool = True, block_size: int = 1 << 24) -> dict:
  """Writes the joined, time-ordered impressions with their behaviour histories; the report."""
  report = {"dataset": "taobao_ad", "rows_read": {}, "skipped": {}, "first_errors": []}
  csv = _CSV(report, block_size=block_size)
  if not partitions:  # about 20M behaviour events per partition
    size = os.path.getsize(os.path.join(raw_dir, "behavior_log.csv")) \
        if os.path.exists(os.path.join(raw_dir, "behavior_log.csv")) else 0
    partitions = max(1, size // (600 << 20))
  step = _steps(progress, 4 + partitions)
  ads = first_per_key(_table(csv, raw_dir, "ad_feature.csv"), "adgroup_id", report,
                       "ad_feature.csv")
  users = first_per_key(_table(csv, raw_dir, "user_profile.csv").rename_columns(
      ["user"] + list(FILES["user_profile.csv"][1:])), "user", report, "user_profile.csv")
  step("ads, users")
  tmp = tempfile.mkdtemp(prefix="taobao_", dir=os.path.dirname(os.path.abspath(out)) or None)
  try:
    writers = {}

    def split(name, kind):
      for block in csv.blocks(raw_dir, name):
        t = pa.table(block)
        part = block["user"].to_numpy() % partitions
        order = np.argsort(part, kind="stable")  # one pass: each partition a slice
        t = t.take(pa.array(order))
        bounds = np.searchsorted(part[order], np.arange(partitions + 1))
        for p in range(partitions):
          sel = t.slice(int(bounds[p]), int(bounds[p + 1] - bounds[p]))
          if sel.num_rows:
            key = (kind, p)
            if key not in writers:
              writers[key] = pq.ParquetWriter(os.path.join(tmp, f"{kind}_{p}.parquet"), sel.schema)
            writers[key].write_table(sel)

    split("behavior_log.csv", "events")
    step("behaviour log split")
    split("raw_sample.csv", "imps")
    for w in writers.values():
      w.close()
    step("impressions split")
    parts = []
    for p in range(partitions):
      ip = os.path.join(tmp, f"imps_{p}.parquet")
      if not os.path.exists(ip):
        step(f"partition {p}")
        continue
      imps = pq.read_table(ip)
      ep = os.path.join(tmp, f"events_{p}.parquet")
      events = pq.read_table(ep, columns=["user", "time_stamp", "cate", "brand"]) \
          if os.path.exists(ep) else pa.table({"user": pa.array([], pa.int64()),
                                               "time_stamp": pa.array([], pa.int64()),
                                               "cate": pa.array([], pa.string()),
                                               "brand": pa.array([], pa.string())})
      hist = _histories(events, imps, history_len)
      for k, v in hist.items():
        imps = imps.append_column(k, v)
      parts.append(imps)
      step(f"partition {p}")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if not parts:
    raise ValueError(f"prepare taobao_ad: {raw_dir}/raw_sample.csv has no valid impression")
  imps = pa.concat_tables(parts)
  # ad and user features (left joins: an unknown ad or user keeps its row, features missing)
  known_ad = pc.is_in(imps["adgroup_id"], value_set=ads["adgroup_id"])
  known_user = pc.is_in(imps["user"], value_set=users["user"])
  report["impressions_without_ad_features"] = int(imps.num_rows - pc.sum(known_ad).as_py())
  report["impressions_without_user_profile"] = int(imps.num_rows - pc.sum(known_user).as_py())
  joined = imps.join(ads, keys="adgroup_id", join_type="left outer")
  joined = joined.join(users, keys="user", join_type="left outer")
  joined = joined.sort_by([("time_stamp", "ascending"), ("user", "ascending"),
                           ("adgroup_id", "ascending")])
  names = ["clk", "time_stamp", "user", "adgroup_id", "pid", "nonclk", "cate_id", "campaign_id",
           "customer", "brand", "price", *FILES["user_profile.csv"][1:], "hist_cate", "hist_brand"]
  joined = joined.select(names)
  pq.write_table(joined, out, row_group_size=1 << 17)
  step("written")
  ts = joined["time_stamp"]
  report.update(rows_written=int(joined.num_rows), out=os.path.abspath(out),
                users=int(pc.count_distinct(joined["user"]).as_py()),
                time_span_s=[int(pc.min(ts).as_py()), int(pc.max(ts).as_py())],
                history_len=int(history_len), partitions=int(partitions))
  return report
