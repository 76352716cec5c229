"""`rectrain data prepare` (issue 16, item 2) and the cards that read its output or a
published file directly: movielens_1m (joins, genres multi-hot, the behaviour
history strictly before each rating) and criteo_attribution (header by name)."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from rectrain.configs import apply_overrides, default_config, validate
from rectrain.data.prepare import prepare

GENRES = ["Action", "Comedy", "Drama", "Crime", "War", "Romance", "Horror", "Sci-Fi"]


def _write_raw_movielens(d, ratings=3000, seed=0):
  """A small directory in MovieLens 1M's published format (``::``, Latin-1), with ties
  in the same second, a bad line and ratings of an unknown movie and user."""
  rng = np.random.default_rng(seed)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "movies.dat"), "w", encoding="latin-1") as f:
    for m in range(1, 121):
      g = "|".join(sorted({GENRES[i] for i in rng.integers(0, 8, size=int(rng.integers(1, 4)))}))
      f.write(f"{m}::Caf\u00e9 Film {m} (199{m % 10})::{g}\n")
  with open(os.path.join(d, "users.dat"), "w", encoding="latin-1") as f:
    for u in range(1, 61):
      f.write(f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35][u % 4]}::{u % 21}::{10000 + u}\n")
  lines = []
  t = 978_300_000
  for i in range(ratings):
    t += int(rng.integers(0, 3))  # 0: the same second as the previous rating
    u, m = int(rng.integers(1, 61)), int(rng.integers(1, 121))
    r = 5 if (m % 4) == (u % 4) else int(rng.integers(1, 5))
    lines.append(f"{u}::{m}::{r}::{t}\n")
  lines.insert(10, "7::12::five::978300100\n")     # bad value
  lines.insert(20, "7::12::4\n")                   # wrong field count
  lines.append(f"3::999::4::{t}\n")                # unknown movie
  lines.append(f"999::5::4::{t}\n")                # unknown user
  with open(os.path.join(d, "ratings.dat"), "w", encoding="latin-1") as f:
    f.writelines(lines)
  return d


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  d = tmp_path_factory.mktemp("ml")
  raw = _write_raw_movielens(str(d / "raw"))
  out = str(d / "ml1m.parquet")
  return raw, out, prepare("movielens_1m", raw, out, progress=False)


def test_movielens_report_counts_every_line(prepared):
  raw, out, report = prepared
  assert report["rows_read"] == {"movies.dat": 120, "users.dat": 60, "ratings.dat": 3004}
  assert report["skipped"] == {"bad_value": 1, "wrong_field_count": 1, "unknown_movie": 1,
                               "unknown_user": 1}
  assert report["rows_written"] == 3000 == pq.read_metadata(out).num_rows
  assert report["first_errors"][0].startswith(f"{raw}/ratings.dat:11: bad_value")
  assert json.load(open(out + ".report.json")) == report


def test_movielens_joined_time_ordered_and_history_strictly_before(prepared):
  raw, out, _ = prepared
  t = pq.read_table(out).to_pydict()
  ts = np.array(t["timestamp"])
  assert (np.diff(ts) >= 0).all()
  movies = {}
  for line in open(os.path.join(raw, "movies.dat"), encoding="latin-1"):
    m, _, g = line.rstrip("\n").split("::")
    movies[m] = g
  seen = {}  # user -> [(time, movie)] in file order of time
  for i in range(len(ts)):
    u, m = t["user_id"][i], t["movie_id"][i]
    assert t["genres"][i] == movies[m]
    assert t["gender"][i] == "MF"[int(u) % 2] and t["zip"][i] == str(10000 + int(u))
    earlier = sorted([(tt, int(mm)) for tt, mm in seen.get(u, []) if tt < ts[i]])
    want = [str(mm) for _, mm in earlier][::-1][:20]
    hist = t["history"][i].split("|") if t["history"][i] else []
    assert hist == want, i  # the user's movies strictly before, most recent first
    seen.setdefault(u, []).append((ts[i], m))
  # ties exist, so "strictly before" was tested where it matters
  assert (np.diff(ts) == 0).sum() > 100


def test_movielens_card_trains_deepfm_and_din(prepared):
  from rectrain.train.loop import train_stream
  _, out, _ = prepared
  for model in (["model.name=deepfm", "model.mlp_dims=(16,)"],
                ["model.name=din", "model.target=movie_id", "model.att_dims=(8,)",
                 "model.mlp_dims=(16,)"]):
    c = apply_overrides(default_config(), [
        "data.source=table", "data.schema=movielens_1m", f"data.path={out}",
        "data.batch_size=128", "data.cat_buckets=1024", "data.max_rows=0",
        "train.progress=False", "metrics.window_rows=1000", "model.embed_dim=8", *model])
    validate(c)
    s = train_stream(c)
    assert s["rows"] == 3000 and s["skipped_rows"] == 0 and 0 < s["logloss"] < 1


def test_prepare_command_line_and_errors(tmp_path):
  raw = _write_raw_movielens(str(tmp_path / "raw"), ratings=200)
  exe = [sys.executable, "-m", "rectrain.cli", "data", "prepare"]
  r = subprocess.run(exe + ["movielens_1m", raw, str(tmp_path / "o.parquet"), "--quiet"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert "wrote 200 rows" in r.stdout and "bad_value" in r.stdout
  r = subprocess.run(exe + ["movielens_1m", str(tmp_path / "nowhere"), str(tmp_path / "x.parquet")],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not found" in r.stderr
  os.remove(os.path.join(raw, "users.dat"))
  r = subprocess.run(exe + ["movielens_1m", raw, str(tmp_path / "x.parquet")],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "users.dat not found" in r.stderr
  r = subprocess.run(exe + ["netflix", raw, str(tmp_path / "x.parquet")],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "invalid choice" in r.stderr


def test_criteo_attribution_card_reads_the_published_header(tmp_path):
  from rectrain.data.table import TableStream
  header = ["timestamp", "uid", "campaign", "conversion", "conversion_timestamp",
            "conversion_id", "attribution", "click", "click_pos", "click_nb", "cost", "cpo",
            "time_since_last_click"] + [f"cat{i}" for i in range(1, 10)]
  rng = np.random.default_rng(0)
  path = tmp_path / "pcb_dataset_final.tsv"
  with open(path, "w") as f:
    f.write("\t".join(header) + "\n")
    for i in range(300):
      row = [str(i * 10), str(rng.integers(0, 50)), str(rng.integers(0, 9)), "0", "-1", "-1",
             "0", str(int(rng.random() < 0.3)), "-1", "-1", "0.1", "0.0", "-1"]
      f.write("\t".join(row + [str(rng.integers(0, 20)) for _ in range(9)]) + "\n")
  s = TableStream(str(path), 64, "criteo_attribution", cat_buckets=256)
  assert s.layout.names == ("campaign",) + tuple(f"cat{i}" for i in range(1, 10))
  batches = list(s)
  assert sum(int((b["weight"] > 0).sum()) for b in batches) == 300
  assert batches[0]["time"][1] == 10.0 and s.report()["skipped"] == {}


# ---------------------------------------------------------------------------
# taobao_ad


def _write_raw_taobao(d, imps=1500, events=6000, seed=0):
  """The four published CSV files at small size: events at an impression's second and after
  it, users without a profile, ads without features, a short line and a bad value."""
  rng = np.random.default_rng(seed)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "ad_feature.csv"), "w") as f:
    f.write("adgroup_id,cate_id,campaign_id,customer,brand,price\n")
    for a in range(1, 91):  # ads 91..100 have no features
      f.write(f"{a},{a % 12},{a % 30},{a % 17},{'NULL' if a % 9 == 0 else a % 25},{1.5 * a}\n")
  with open(os.path.join(d, "user_profile.csv"), "w") as f:
    f.write("userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,"
            "shopping_level,occupation,new_user_class_level \n")  # the published trailing space
    for u in range(1, 41):  # users 41..50 have no profile
      f.write(f"{u},0,{u % 13},{1 + u % 2},{u % 7},{'' if u % 5 == 0 else u % 3},{u % 3 + 1},0,"
              f"{u % 4 + 1}\n")
  t0 = 1_494_000_000
  ev = []
  for _ in range(events):
    ev.append((int(rng.integers(1, 51)), t0 + int(rng.integers(0, 4000)),
               ["pv", "cart", "fav", "buy"][int(rng.integers(0, 4))],
               int(rng.integers(0, 12)), int(rng.integers(0, 25))))
  lines = ["user,time_stamp,btag,cate,brand\n"] + [f"{u},{t},{b},{c},{br}\n" for u, t, b, c, br in ev]
  lines.insert(50, "7,1494000100,pv\n")  # short line: file line 51
  with open(os.path.join(d, "behavior_log.csv"), "w") as f:
    f.writelines(lines)
  im = ["user,time_stamp,adgroup_id,pid,nonclk,clk\n"]
  for _ in range(imps):
    u, t, a = int(rng.integers(1, 51)), t0 + int(rng.integers(0, 4000)), int(rng.integers(1, 101))
    clk = int(rng.random() < (0.5 if a % 12 == u % 12 else 0.1))
    im.append(f"{u},{t},{a},430548_1007,{1 - clk},{clk}\n")
  im.insert(30, "12,notatime,5,430548_1007,1,0\n")  # bad value: file line 31
  with open(os.path.join(d, "raw_sample.csv"), "w") as f:
    f.writelines(im)
  return d, ev


@pytest.fixture(scope="module")
def taobao(tmp_path_factory):
  d = tmp_path_factory.mktemp("taobao")
  raw, events = _write_raw_taobao(str(d / "raw"))
  out1, out3 = str(d / "tb1.parquet"), str(d / "tb3.parquet")
  r1 = prepare("taobao_ad", raw, out1, progress=False, partitions=1)
  r3 = prepare("taobao_ad", raw, out3, progress=False, partitions=3, block_size=1 << 14)
  return raw, events, out1, out3, r1, r3


def test_taobao_report_and_partitions_agree(taobao):
  raw, _, out1, out3, r1, r3 = taobao
  assert r1["rows_read"] == {"ad_feature.csv": 90, "user_profile.csv": 40,
                             "behavior_log.csv": 6001, "raw_sample.csv": 1501}
  assert r1["skipped"] == {"wrong_field_count": 1, "bad_value": 1}
  assert f"{raw}/behavior_log.csv:51: wrong_field_count" in r1["first_errors"]
  assert any(e.startswith(f"{raw}/raw_sample.csv:31: bad_value") for e in r1["first_errors"])
  assert r1["rows_written"] == 1500 == r3["rows_written"]
  assert r1["impressions_without_ad_features"] > 0 and r1["impressions_without_user_profile"] > 0
  assert pq.read_table(out1).equals(pq.read_table(out3))  # partitioned = whole, any block size


def test_taobao_histories_strictly_before_and_joined(taobao):
  _, events, out1, _, _, _ = taobao
  t = pq.read_table(out1).to_pydict()
  ts = np.array(t["time_stamp"])
  assert (np.diff(ts) >= 0).all()
  by_user = {}
  for u, tt, _, c, br in events:
    by_user.setdefault(u, []).append((tt, c, br))
  same_second = 0
  for i in range(len(ts)):
    u = int(t["user"][i])
    ev = by_user.get(u, [])
    same_second += any(tt == ts[i] for tt, _, _ in ev)
    before = [e for e in ev if e[0] < ts[i]]
    # the latest 20 before, most recent first (ties within a second: any order; compare sets)
    latest = sorted(before, key=lambda e: e[0])[-20:]
    cates = t["hist_cate"][i].split("|") if t["hist_cate"][i] else []
    assert sorted(cates) == sorted(str(c) for _, c, _ in latest), i
    a = int(t["adgroup_id"][i])
    assert t["cate_id"][i] == (str(a % 12) if a <= 90 else None)
    assert t["cms_group_id"][i] == (str(u % 13) if u <= 40 else None)
  assert same_second > 0  # events at an impression's second exist and were left out


def test_taobao_card_trains_din(taobao):
  from rectrain.train.loop import train_stream
  _, _, out1, _, _, _ = taobao
  c = apply_overrides(default_config(), [
      "data.source=table", "data.schema=taobao_ad", f"data.path={out1}", "data.batch_size=128",
      "data.cat_buckets=512", "data.max_rows=0", "train.progress=False",
      "metrics.window_rows=500", "model.name=din", "model.target=cate_id", "model.embed_dim=8",
      "model.att_dims=(8,)", "model.mlp_dims=(16,)"])
  validate(c)
  s = train_stream(c)
  assert s["rows"] == 1500 and s["skipped_rows"] == 0 and 0 < s["logloss"] < 1


# ---------------------------------------------------------------------------
# kuairand


def _write_raw_kuairand(d, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(d, exist_ok=True)
  outcomes = ["is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate",
              "long_view", "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time",
              "is_profile_enter", "is_rand", "tab"]
  head = ["user_id", "video_id", "date", "hourmin", "time_ms"] + outcomes
  t0 = 1_649_400_000_000
  for name, n, rand in (("log_standard_4_08_to_4_21_pure.csv", 900, 0),
                        ("log_random_4_22_to_5_08_pure.csv", 300, 1)):
    rows = [",".join(head)]
    for i in range(n):
      u, v = int(rng.integers(0, 40)), int(rng.integers(0, 80))
      t = t0 + int(rng.integers(0, 10**9)) + rand * 10**9
      click = int(rng.random() < (0.6 if (u + v) % 3 == 0 else 0.2))
      like = int(click and rng.random() < 0.5)
      rows.append(",".join(map(str, [u, v, 20220408, 1230, t, click, like, 0, 0, 0, 0, click,
                                     click * 5000, 9000, 0, 0, 0, rand, 1])))
    if not rand:
      rows.insert(5, "3,4,20220408")  # short line: file line 6
    with open(os.path.join(d, name), "w") as f:
      f.write("\n".join(rows) + "\n")
  with open(os.path.join(d, "user_features_pure.csv"), "w") as f:
    f.write("user_id,user_active_degree,follow_user_num_range,register_days_range,onehot_feat0\n")
    for u in range(35):  # users 35..39 have no features
      f.write(f"{u},{['high_active', 'full_active', 'middle_active'][u % 3]},{u % 5},{u % 7},{u % 2}\n")
  with open(os.path.join(d, "video_features_basic_pure.csv"), "w") as f:
    f.write("video_id,author_id,video_type,upload_dt,upload_type,music_type,tag\n")
    for v in range(80):
      f.write(f"{v},{v % 11},NORMAL,2022-03-01,ShortImport,{v % 4},\"{v % 9},{v % 5}\"\n")
  return d


def test_kuairand_joined_time_ordered_and_labels(tmp_path):
  from rectrain.data.table import TableStream
  from rectrain.train.loop import train_stream
  raw = _write_raw_kuairand(str(tmp_path / "raw"))
  out = str(tmp_path / "kr.parquet")
  r = prepare("kuairand", raw, out, progress=False)
  assert r["rows_written"] == 1200 and r["skipped"] == {"wrong_field_count": 1}
  assert r["first_errors"] == [f"{raw}/log_standard_4_08_to_4_21_pure.csv:6: wrong_field_count"]
  assert r["interactions_without_user_features"] > 0
  t = pq.read_table(out).to_pydict()
  assert (np.diff(t["time_ms"]) >= 0).all()
  assert set(t["log"]) == {"log_standard_4_08_to_4_21_pure", "log_random_4_22_to_5_08_pure"}
  for i in range(0, 1200, 37):
    u, v = t["user_id"][i], t["video_id"][i]
    assert t["author_id"][i] == v % 11 and t["tag"][i] == f"{v % 9},{v % 5}"
    assert t["user_active_degree"][i] == (["high_active", "full_active", "middle_active"][u % 3]
                                         if u < 35 else None)
  outcomes = {"is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
              "play_time_ms", "profile_stay_time", "comment_stay_time", "is_profile_enter"}
  for label in ("", "is_like"):
    s = TableStream(out, 64, "kuairand" if not label else
                    __import__("rectrain.data.schema", fromlist=["get_schema"]).get_schema(
                        "kuairand", label=label), cat_buckets=256)
    assert not (set(s.layout.names) & (outcomes | {"is_click", "time_ms", "date"}))  # no leakage
    assert {"user_id", "video_id", "author_id", "tag", "log", "hourmin"} <= set(s.layout.names)
    labels = np.concatenate([b["label"][b["weight"] > 0] for b in s])
    want = np.array(t["is_like" if label else "is_click"], np.float32)
    np.testing.assert_array_equal(labels, want)
  c = apply_overrides(default_config(), [
      "data.source=table", "data.schema=kuairand", f"data.path={out}", "data.label=is_like",
      "data.batch_size=64", "data.cat_buckets=256", "data.max_rows=0", "train.progress=False",
      "metrics.window_rows=400", "model.name=lr"])
  s = train_stream(c)
  assert s["rows"] == 1200 and 0 < s["logloss"] < 1
