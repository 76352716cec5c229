"""Tests of rectrain.data.split: the hash split by row index and SplitStream.

The assignment is checked against a plain-Python reference (integer
splitmix64, exact thresholds from fractions); streams are checked to be
disjoint, covering, deterministic and exactly as long as ``split_counts`` says.
"""

import fractions
import os

import numpy as np
import pytest

from rectrain import configs
from rectrain.data import make_stream
from rectrain.data.criteo import CriteoStream
from rectrain.data.split import (SPLITS, SplitStream, assign_split, count_split, split_counts,
                                 split_hash)
from rectrain.data.synthetic import SyntheticStream

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "criteo_dac_head4222.tsv")
MASK = (1 << 64) - 1


def _splitmix64_py(x: int) -> int:
  z = (x + 0x9E3779B97F4A7C15) & MASK
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
  return z ^ (z >> 31)


def _assign_py(i: int, ratios, seed: int) -> int:
  """The module docstring's formula, in Python integers."""
  h = _splitmix64_py(_splitmix64_py(i) ^ _splitmix64_py(seed ^ 0x53504C4954))
  parts = [fractions.Fraction(r) for r in ratios]
  total = sum(parts)
  t1 = (parts[0] / total * (1 << 64)).__floor__()
  t2 = ((parts[0] + parts[1]) / total * (1 << 64)).__floor__()
  return 0 if h < t1 else (1 if h < t2 else 2)


def _synthetic(n, batch_size=256, start_row=0, seed=0):
  return SyntheticStream(batch_size=batch_size, cat_buckets=64, num_rows_total=n,
                         start_row=start_row, seed=seed)


def _real_rows(stream):
  """All real rows of a stream, concatenated per key, and the batch count."""
  parts, batches = [], 0
  for batch in stream:
    batches += 1
    assert batch["label"].shape == (stream.batch_size,)
    real = batch["weight"] > 0
    parts.append({k: v[real] for k, v in batch.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, batches


# ---------------------------------------------------------------------------
# The assignment.


@pytest.mark.parametrize("ratios,seed", [((7, 2, 1), 0), ((7, 2, 1), 5), ((0.8, 0.1, 0.1), 1),
                                         ((1, 0, 1), 2)])
def test_assignment_matches_python_reference(ratios, seed):
  index = np.concatenate([np.arange(300), [10**9, 2**40 + 7, 45_840_616]])
  got = assign_split(index, ratios, seed)
  want = [_assign_py(int(i), ratios, seed) for i in index]
  np.testing.assert_array_equal(got, want)


def test_padding_rows_get_no_split():
  np.testing.assert_array_equal(assign_split(np.array([-1, -1])), [-1, -1])


@pytest.mark.parametrize("ratios", [(7, 2, 1), (0.8, 0.1, 0.1), (1, 1, 1)])
def test_shares_match_ratios(ratios):
  n = 200_000
  counts = np.bincount(assign_split(np.arange(n), ratios, seed=3), minlength=3)
  p = np.asarray(ratios, float) / sum(ratios)
  # 5 binomial standard deviations
  np.testing.assert_allclose(counts / n, p, atol=5 * np.sqrt(p * (1 - p) / n).max())


def test_seed_changes_the_assignment_but_not_the_shares():
  index = np.arange(50_000)
  a, b = assign_split(index, seed=0), assign_split(index, seed=1)
  # two independent 7:2:1 draws agree with probability 0.49 + 0.04 + 0.01 = 0.54
  assert abs(np.mean(a == b) - 0.54) < 0.02
  assert abs(np.mean(b == 0) - 0.7) < 0.01
  np.testing.assert_array_equal(assign_split(index, seed=1), b)   # deterministic
  assert split_counts(50_000, seed=0) != split_counts(50_000, seed=1)


def test_split_counts_exact():
  for n, start, seed in [(1, 0, 0), (1000, 0, 0), (12_345, 777, 4), (0, 10, 0)]:
    got = split_counts(n, (7, 2, 1), seed, start_row=start)
    want = np.bincount(assign_split(np.arange(start, start + n), (7, 2, 1), seed), minlength=3)
    assert [got[s] for s in SPLITS] == want.tolist()
    assert count_split(n, "valid", (7, 2, 1), seed, start_row=start) == want[1]
  # chunked counting (chunks of 4M) agrees with one pass
  n = (1 << 22) + 1001
  h = split_hash(np.arange(n), 0)
  t1 = np.uint64(int(fractions.Fraction(7, 10) * (1 << 64)))
  assert split_counts(n)["train"] == int(np.count_nonzero(h < t1))


# ---------------------------------------------------------------------------
# SplitStream.


def test_splits_are_disjoint_and_cover_the_source():
  n = 5000
  sizes = split_counts(n)
  rows = {}
  for split in SPLITS:
    stream = SplitStream(_synthetic(None), split, max_rows=sizes[split])
    got, batches = _real_rows(stream)
    assert batches == -(-sizes[split] // 256)
    rows[split] = got["index"]
    np.testing.assert_array_equal(got["index"], np.flatnonzero(
        assign_split(np.arange(n)) == SPLITS.index(split)))
    assert stream.report()["split"]["source_rows"] <= n
  everything = np.concatenate(list(rows.values()))
  assert everything.size == n and np.array_equal(np.sort(everything), np.arange(n))


def test_rows_keep_their_values():
  """A split row carries exactly the source row's columns."""
  source, _ = _real_rows(_synthetic(3000))
  got, _ = _real_rows(SplitStream(_synthetic(3000), "test"))
  pos = np.searchsorted(source["index"], got["index"])
  for key in ("label", "cat", "dense", "time", "true_prob", "delay"):
    np.testing.assert_array_equal(got[key], source[key][pos], err_msg=key)


def test_deterministic_and_padded():
  stream = SplitStream(_synthetic(2000, batch_size=128), "train", shuffle_buffer=500,
                       shuffle_seed=1)
  first, second = list(stream), list(stream)
  again = list(SplitStream(_synthetic(2000, batch_size=128), "train", shuffle_buffer=500,
                           shuffle_seed=1))
  assert len(first) == len(second) == len(again)
  for a, b, c in zip(first, second, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      np.testing.assert_array_equal(a[key], c[key])
  # every batch but the last is full; the last is padded (weight 0, index -1)
  assert all((b["weight"] > 0).all() for b in first[:-1])
  last = first[-1]
  pad = last["weight"] == 0
  assert pad.any() and (last["index"][pad] == -1).all() and (last["label"][pad] == 0).all()


def test_shuffle_permutes_the_same_rows():
  plain, _ = _real_rows(SplitStream(_synthetic(3000), "train"))
  shuffled, _ = _real_rows(SplitStream(_synthetic(3000), "train", shuffle_buffer=4096,
                                       shuffle_seed=2))
  assert not np.array_equal(plain["index"], shuffled["index"])
  np.testing.assert_array_equal(np.sort(shuffled["index"]), plain["index"])
  other, _ = _real_rows(SplitStream(_synthetic(3000), "train", shuffle_buffer=4096,
                                    shuffle_seed=3))
  assert not np.array_equal(other["index"], shuffled["index"])


def test_max_rows_counts_rows_of_the_split_and_stops_the_source():
  stream = SplitStream(_synthetic(None, batch_size=100), "valid", max_rows=250)
  got, batches = _real_rows(stream)
  assert got["index"].size == 250 and batches == 3
  first = np.flatnonzero(assign_split(np.arange(5000)) == 1)[:250]
  np.testing.assert_array_equal(got["index"], first)
  # the source was read up to the 250th valid row only
  assert stream.report()["split"]["source_rows"] == first[-1] + 1
  assert stream.report()["rows"] == 250
  assert list(SplitStream(_synthetic(1000), "train", max_rows=0)) == []


def test_start_row_counts_match_the_stream():
  stream = SplitStream(_synthetic(3000, start_row=1000), "test")
  got, _ = _real_rows(stream)
  assert got["index"].size == count_split(3000, "test", start_row=1000)
  assert got["index"].min() >= 1000


def test_real_criteo_sample_counts_and_report():
  sizes = split_counts(4222)
  total = 0
  for split in SPLITS:
    stream = SplitStream(CriteoStream(SAMPLE, batch_size=512, cat_buckets=1024), split)
    got, _ = _real_rows(stream)
    assert got["index"].size == sizes[split]
    report = stream.report()
    assert report["rows"] == sizes[split] and report["rows_read"] == 4222
    assert report["split"] == {"name": split, "ratios": [7, 2, 1], "seed": 0,
                               "source_rows": 4222}
    total += got["index"].size
  assert total == 4222


# ---------------------------------------------------------------------------
# Configs and make_stream.


def _config(*overrides):
  c = configs.default_config()
  configs.apply_overrides(c, ["data.batch_size=256", "data.cat_buckets=64", *overrides])
  return c


def test_make_stream_applies_the_split():
  c = _config("data.split=test", "data.max_rows=300", "data.split_seed=2",
              "data.shuffle_buffer=128")
  configs.validate(c)
  stream = make_stream(c.data, seed=c.seed)
  assert isinstance(stream, SplitStream)
  assert (stream.split, stream.seed, stream.max_rows, stream.shuffle_buffer) == (
      "test", 2, 300, 128)
  assert stream.num_rows == 26 * 64 and stream.num_dense == 13 and stream.batch_size == 256
  assert stream.layout == stream.source.layout
  # the source itself is read whole and unshuffled
  assert stream.source.num_rows_total is None
  got, batches = _real_rows(stream)
  assert got["index"].size == 300 and batches == 2
  assert (assign_split(got["index"], seed=2) == 2).all()
  # no split: the plain source
  assert isinstance(make_stream(_config("data.max_rows=300").data), SyntheticStream)


@pytest.mark.parametrize("overrides,key", [
    (["data.split=tset"], "data.split="),
    (["data.split_ratios=(7, 2)"], "data.split_ratios"),
    (["data.split_ratios=(7, -2, 1)"], "data.split_ratios"),
    (["data.split_ratios=(0, 0, 0)"], "data.split_ratios"),
    (["data.split_seed=-1"], "data.split_seed"),
    (["data.split=valid", "data.split_ratios=(9, 0, 1)"], "data.split="),
    (["offline.eval_data.split=bogus"], "offline.eval_data.split"),
])
def test_bad_split_config_names_the_key(overrides, key):
  c = _config()
  c.offline.eval_data.split = ""
  configs.apply_overrides(c, overrides)
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    configs.validate(c)


def test_split_stream_argument_errors():
  with pytest.raises(ValueError, match="split='dev'"):
    SplitStream(_synthetic(10), "dev")
  with pytest.raises(ValueError, match="split_ratios"):
    SplitStream(_synthetic(10), "train", ratios=(1, "a", 1))
  with pytest.raises(ValueError, match="max_rows"):
    SplitStream(_synthetic(10), "train", max_rows=-1)
