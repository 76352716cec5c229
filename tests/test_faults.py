"""Faults of the input and the output (issue 18): one-line errors naming the place,
everything trained before an input fault checkpointed, the same command resuming
bit for bit once the file is fixed, a failed write leaving the older checkpoint
and metrics intact, and every CLI error path ending in one line."""

import gzip
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rectrain import cli, configs
from rectrain.data.criteo import CriteoStream, split_lines
from rectrain.data.pipeline import map_ordered
from rectrain.data.synthetic import write_tsv
from rectrain.errors import InputError, OutputError
from rectrain.train import checkpoint as ckpt
from rectrain.train.loop import train_stream

ROWS = 40_000
RUN = ["data.source=criteo", "data.max_rows=0", "data.batch_size=512", "data.cat_buckets=4096",
       "model.name=lr", "train.steps_per_dispatch=4", "train.progress=False",
       "metrics.window_rows=8000", "train.checkpoint_every=8"]


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
  d = tmp_path_factory.mktemp("faults")
  path = str(d / "all.tsv")
  write_tsv(path, num_rows=ROWS, seed=3)
  with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
    g.write(f.read())
  return path


def _lines(path):
  return sum(1 for _ in open(path, "rb"))


# --- the readers --------------------------------------------------------------

def test_truncated_gzip_names_file_line_and_byte(tsv, tmp_path):
  data = open(tsv + ".gz", "rb").read()
  bad = tmp_path / "cut.tsv.gz"
  bad.write_bytes(data[: len(data) // 2])
  with pytest.raises(InputError, match=r"cut\.tsv\.gz: corrupt or truncated gzip data after "
                                        r"line [\d,]+ \(decompressed byte [\d,]+\)"):
    for _ in split_lines(str(bad), chunk_bytes=1 << 16):
      pass


def test_corrupt_gzip_is_an_input_error(tsv, tmp_path):
  data = bytearray(open(tsv + ".gz", "rb").read())
  mid = len(data) // 2
  data[mid: mid + 64] = bytes(64)  # zeros in the middle of the deflate stream
  bad = tmp_path / "corrupt.tsv.gz"
  bad.write_bytes(bytes(data))
  stream = CriteoStream(str(bad), batch_size=256, cat_buckets=64)
  with pytest.raises(InputError, match=r"corrupt\.tsv\.gz: "):
    for _ in stream:
      pass


def test_items_before_a_source_fault_come_out_first():
  def source():
    yield from range(5)
    raise InputError("x: broken")

  out = []
  with pytest.raises(InputError, match="broken"):
    for y in map_ordered(lambda v: v * 10, source(), workers=2):
      out.append(y)
  assert out == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("kind", ["parquet", "binary", "csv"])
def test_a_file_of_another_format_is_named(tsv, tmp_path, kind):
  if kind == "parquet":
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"a": list(range(100))}), path)
    want = r"data\.parquet: a parquet file, not Criteo text"
  elif kind == "binary":
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 100)
    want = r"blob\.bin: binary data"
  else:  # another text layout, e.g. Avazu's comma-separated columns
    path = tmp_path / "avazu.csv"
    path.write_text("id,click,hour,C1\n" + "".join(f"{i},0,14102100,1005\n" for i in range(100)))
    want = r"avazu\.csv: not in the Criteo layout .*none of the first 101 lines.*avazu\.csv:1:"
  with pytest.raises(InputError, match=want):
    for _ in CriteoStream(str(path), batch_size=64, cat_buckets=64):
      pass


def test_a_few_bad_lines_are_still_skipped_and_counted(tmp_path):
  path = tmp_path / "few.tsv"
  path.write_text("garbage\n" * 5)  # fewer lines than a format check needs
  stream = CriteoStream(str(path), batch_size=8, cat_buckets=64)
  assert list(stream) == [] and stream.report()["skipped"] == {"wrong_field_count": 5}


def test_unreadable_file(tmp_path):
  d = tmp_path / "a_directory.tsv"
  d.mkdir()
  with pytest.raises(InputError, match=r"a_directory\.tsv: cannot read"):
    list(split_lines(str(d)))
  if os.geteuid() != 0:  # root reads anything
    f = tmp_path / "locked.tsv"
    f.write_text("0\t" * 39 + "\n")
    f.chmod(0)
    with pytest.raises(InputError, match=r"locked\.tsv: cannot read"):
      list(split_lines(str(f)))


def test_a_file_that_shrinks_while_read(tsv, tmp_path):
  path = tmp_path / "shrinks.tsv"
  data = open(tsv, "rb").read() * 3  # > pyarrow's 1 MiB read buffer
  path.write_bytes(data)
  items = split_lines(str(path), chunk_bytes=1 << 16)
  next(items)
  os.truncate(path, len(data) // 2)
  with pytest.raises(InputError, match=r"shrinks\.tsv: file shrank while read \(read [\d,]+ of "
                                        rf"{len(data):,} bytes\) after line [\d,]+ \(byte "):
    for _ in items:
      pass


# --- the loop: checkpoint before the fault, resume after the fix ---------------

def _config(path, *extra):
  c = configs.default_config()
  configs.apply_overrides(c, RUN + [f"data.path={path}"] + list(extra))
  return c


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.tables, state.dense_params))]


def _same_run(a, b, wa, wb):
  skip = {"rows_per_sec", "wall_time_sec", "resumed_from", "_state", "_unique_sizes", "_idmap",
          "params"}
  assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
  assert (wa / "metrics.jsonl").read_text() == (wb / "metrics.jsonl").read_text()
  for x, y in zip(_leaves(a["_state"]), _leaves(b["_state"])):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("idmap", [False, True], ids=["hashed", "idmap"])
def test_input_fault_checkpoints_and_the_same_command_resumes(tsv, tmp_path, idmap):
  extra = ["idmap.enabled=True", "idmap.capacity=8192", "idmap.clock=index"] if idmap else []
  full = train_stream(_config(tsv + ".gz", *extra), workdir=str(tmp_path / "ref"))
  data = open(tsv + ".gz", "rb").read()
  live = tmp_path / "day0.tsv.gz"
  live.write_bytes(data[: int(len(data) * 0.6)])
  work = tmp_path / "run"
  config = _config(str(live), *extra)
  with pytest.raises(InputError, match=r"day0\.tsv\.gz: corrupt or truncated gzip data after line "
                                        r"[\d,]+ .*; the ([\d,]+) rows trained before it are in "
                                        r"checkpoint .*: fix or replace the file") as info:
    train_stream(config, workdir=str(work))
  saved = ckpt.latest_checkpoint(str(work))
  meta = json.load(open(os.path.join(saved, "meta.json")))
  assert 0 < meta["rows"] < ROWS and f"{meta['rows']:,} rows" in str(info.value)
  assert meta["batches"] % 8 != 0  # not a periodic checkpoint: the one of the fault
  assert not (work / "summary.json").exists()
  live.write_bytes(data)  # the file is fixed
  resumed = train_stream(config, workdir=str(work))
  assert resumed["resumed_from"] == saved
  _same_run(resumed, full, work, tmp_path / "ref")


def test_bad_line_error_checkpoints_too(tsv, tmp_path):
  lines = open(tsv).read().splitlines(keepends=True)
  live = tmp_path / "bad.tsv"
  live.write_text("".join(lines[:27000]) + "not\ta\tcriteo\tline\n" + "".join(lines[27000:]))
  with pytest.raises(InputError, match=r"bad line: .*bad\.tsv:27001: wrong_field_count.*checkpoint"):
    train_stream(_config(str(live), "data.bad_lines=error"), workdir=str(tmp_path / "run"))
  meta = json.load(open(os.path.join(ckpt.latest_checkpoint(str(tmp_path / "run")), "meta.json")))
  assert 20000 <= meta["rows"] <= 27000


# --- the output: a failed write keeps the previous checkpoint and metrics -------

def test_failed_checkpoint_write_keeps_the_previous_one(tsv, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  ref = train_stream(_config(tsv), workdir=str(tmp_path / "ref"))
  real_save = ocp.StandardCheckpointer.save
  calls = []

  def failing_save(self, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:
      raise ValueError('OUT_OF_RANGE: Error writing "tables" in OCDBT database: Failed to write '
                       "4096 bytes to file 7: No space left on device [os_error_code='28']")
    return real_save(self, path, *args, **kwargs)

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", failing_save)
  work = tmp_path / "run"
  with pytest.raises(OutputError, match=r"cannot write checkpoint 000000000016 \(No space left on "
                                         r"device\); the checkpoint .*000000000008 and metrics\.jsonl "
                                         r"up to it are intact"):
    train_stream(_config(tsv), workdir=str(work))
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", real_save)
  names = sorted(os.listdir(work / "checkpoints"))
  assert names == ["000000000008"]  # no half-written .partial left behind
  assert ckpt.verify_checkpoint(str(work / "checkpoints" / names[0])) is None
  meta = json.load(open(work / "checkpoints" / names[0] / "meta.json"))
  assert len((work / "metrics.jsonl").read_text().splitlines()) >= meta["metrics_lines"]
  resumed = train_stream(_config(tsv), workdir=str(work))  # the disk has room again
  _same_run(resumed, ref, work, tmp_path / "ref")


def test_file_size_limit_is_one_line_from_the_cli(tsv, tmp_path):
  argv = ["rectrain", "run", "--workdir", str(tmp_path / "run")]
  for o in RUN + [f"data.path={tsv}"]:
    argv += ["--set", o]
  # RLIMIT_FSIZE below the checkpoint's table file, above config.json and metrics.jsonl.
  code = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (60000, 60000)); "
          f"sys.argv = {argv!r}; runpy.run_module('rectrain.cli', run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  err = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  assert len(err) == 1 and err[0].startswith("rectrain: error: "), err
  assert "cannot write checkpoint 000000000008 (File too large)" in err[0]


# --- every CLI error path: one line, non-zero -----------------------------------

def _cli_cases(tsv, tmp):
  cut = os.path.join(tmp, "cut.tsv.gz")
  data = open(tsv + ".gz", "rb").read()
  with open(cut, "wb") as f:
    f.write(data[: len(data) // 2])
  parquet = os.path.join(tmp, "x.parquet")
  pq.write_table(pa.table({"a": [1, 2, 3]}), parquet)
  bad_config = os.path.join(tmp, "bad_config.py")
  with open(bad_config, "w") as f:
    f.write("def get_config(:\n")
  run = ["run", "--workdir", os.path.join(tmp, "w")]
  lr = ["--set", "model.name=lr", "--set", "train.progress=False", "--set", "data.max_rows=2000",
        "--set", "data.batch_size=512"]
  return {
      "missing config": (run + ["no_such_config.py"], "no_such_config.py"),
      "config with a syntax error": (run + [bad_config], "bad_config.py"),
      "unknown key": (run + ["--set", "model.nope=1"], "model.nope"),
      "bad value": (run + ["--set", "data.batch_size=abc"], "data.batch_size"),
      "unknown model": (run + ["--set", "model.name=nosuch"], "nosuch"),
      "unknown optimizer argument": (run + ["--set", "optim.sparse.nosuch=1"], "nosuch"),
      "missing data file": (run + lr + ["--set", "data.source=criteo", "--set",
                                        "data.path=/no/such.tsv"], "/no/such.tsv"),
      "truncated gzip": (run + lr + ["--set", "data.source=criteo", "--set", f"data.path={cut}",
                                     "--set", "data.max_rows=0"], "cut.tsv.gz"),
      "parquet for tsv": (run + lr + ["--set", "data.source=criteo", "--set",
                                      f"data.path={parquet}"], "x.parquet"),
      "data stats on a missing file": (["data", "stats", "/no/such.tsv"], "/no/such.tsv"),
      "synth into a missing directory": (["synth", "--rows", "10", "--out", "/no/such/dir/x.tsv"],
                                         "/no/such/dir/x.tsv"),
      "tune with a bad search space": (["tune", "--param", "model.x=foo:1", "--dir",
                                        os.path.join(tmp, "tune")], "foo"),
      "table of a missing run": (["table", "/no/such/run"], "/no/such/run"),
      "sweep of a missing experiment": (["sweep", "/no/such/experiment"], "/no/such/experiment"),
      "a directory as the data file": (run + lr + ["--set", "data.source=criteo", "--set",
                                                   f"data.path={tmp}"], "Is a directory"),
      "unknown argument": (["run", "--no-such-flag"], "--no-such-flag"),
      "unknown command": (["frobnicate"], "frobnicate"),
  }


def test_every_cli_error_is_one_line(tsv, tmp_path, capsys):
  for name, (argv, where) in _cli_cases(tsv, str(tmp_path)).items():
    try:
      rc = cli.main(argv)
    except SystemExit as e:  # argparse
      rc = e.code
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith("WARNING")]
    assert rc not in (0, None), name
    assert len(err) == 1 and err[0].startswith("rectrain: "), (name, err)
    assert where in err[0], (name, err)


def test_debug_shows_the_traceback(capsys):
  with pytest.raises(KeyError):
    cli.main(["--debug", "run", "--set", "model.nope=1"])


def test_resume_skips_the_files_finished_before_the_fault(tsv, tmp_path):
  """The stream position is kept per file: after a fault in the third file, the
  resumed run does not read the first two again (here they are even replaced
  by garbage) and still finishes bit-identical to the uninterrupted run."""
  lines = open(tsv).read().splitlines(keepends=True)
  parts = [lines[:10000], lines[10000:16000], lines[16000:]]
  ref_paths, live_paths = [], []
  for i, part in enumerate(parts):
    ref = tmp_path / f"ref_day{i}.tsv"
    ref.write_text("".join(part))
    ref_paths.append(str(ref))
    live = tmp_path / f"day{i}.tsv.gz"
    with gzip.open(live, "wt") as g:
      g.write("".join(part))
    live_paths.append(str(live))
  full_gz = open(live_paths[2], "rb").read()
  open(live_paths[2], "wb").write(full_gz[: len(full_gz) * 9 // 10])
  extra = ["data.bad_lines=skip"]
  ref = train_stream(_config(",".join(ref_paths), *extra), workdir=str(tmp_path / "ref"))
  work = tmp_path / "run"
  with pytest.raises(InputError, match=r"day2\.tsv\.gz: corrupt or truncated gzip data"):
    train_stream(_config(",".join(live_paths), *extra), workdir=str(work))
  meta = json.load(open(os.path.join(ckpt.latest_checkpoint(str(work)), "meta.json")))
  assert [os.path.basename(f["source"]) for f in meta["stream_files"]] == ["day0.tsv.gz", "day1.tsv.gz"]
  assert [f["rows"] for f in meta["stream_files"]] == [10000, 6000]
  assert meta["stream_rows"] > 16000
  for p in live_paths[:2]:  # not read again: garbage there changes nothing
    open(p, "wb").write(b"\x1f\x8b garbage")
  open(live_paths[2], "wb").write(full_gz)  # the damaged file is replaced
  resumed = train_stream(_config(",".join(live_paths), *extra), workdir=str(work))
  skip = {"rows_per_sec", "wall_time_sec", "resumed_from", "_state", "_unique_sizes", "params"}
  assert {k: v for k, v in resumed.items() if k not in skip} == \
      {k: v for k, v in ref.items() if k not in skip}
  assert (work / "metrics.jsonl").read_text() == (tmp_path / "ref" / "metrics.jsonl").read_text()
  for x, y in zip(_leaves(resumed["_state"]), _leaves(ref["_state"])):
    np.testing.assert_array_equal(x, y)
