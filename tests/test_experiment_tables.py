"""The result tables of experiments/*/README.md against ``rectrain table``.

A README table in the shape ``rectrain table`` prints (``| model | seeds | ...``) is paired
with the ``rectrain table`` command of its README (in a code block or an inline code span)
whose header agrees with it in the most columns, on a tie the nearest one above it
(then below). When that command's run directories are present, every cell must equal
what the command prints now (bold markers ``**`` aside). runs/ is not committed, so these checks usually skip, naming
the directory they need; the parsing, pairing and comparison are tested on fabricated runs.
"""

import contextlib
import glob
import io
import json
import os
import re
import shlex
from typing import List, NamedTuple, Tuple

import pytest

from rectrain import configs
from rectrain.cli import build_parser
from rectrain.experiments.records import experiment_section, write_run_record
from rectrain.experiments.tables import DEFAULT_METRICS, format_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READMES = sorted(glob.glob(os.path.join(REPO, "experiments", "*", "README.md")))


class Command(NamedTuple):
  line: int          # README line (1-based) where the command starts
  argv: List[str]    # after "rectrain": ["table", "runs/x", "--metrics", ...]


class Table(NamedTuple):
  line: int                 # README line of the header
  rows: List[List[str]]     # header first, separator left out


def _cells(line: str) -> List[str]:
  return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]


def _tables(lines: List[Tuple[int, str]]) -> List[Table]:
  """Markdown tables in ``(line number, text)`` lines: a header, a ``|---|`` row, rows."""
  out, i = [], 0
  while i < len(lines):
    j = i
    while j < len(lines) and lines[j][1].lstrip().startswith("|"):
      j += 1
    block = lines[i:j]
    if len(block) >= 2 and re.fullmatch(r"\|[\s:|-]+\|", block[1][1].strip()):
      out.append(Table(block[0][0], [_cells(block[0][1])] + [_cells(t) for _, t in block[2:]]))
    i = max(j, i + 1)
  return out


def parse_readme(text: str) -> Tuple[List[Command], List[Table]]:
  """The ``rectrain table`` commands and the rectrain-table-shaped tables of a README."""
  commands, prose, fenced, pending = [], [], False, None
  for n, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith("```"):
      fenced = not fenced
      continue
    if fenced:
      start, joined = pending or (n, "")
      joined += line
      pending = (start, joined[:-1]) if joined.endswith("\\") else None
      if pending is None and joined.split()[:2] == ["rectrain", "table"]:
        commands.append(Command(start, shlex.split(joined, comments=True)[1:]))
      continue
    prose.append((n, line))
    commands += [Command(n, shlex.split(m)[1:]) for m in re.findall(r"`(rectrain table [^`]+)`",
                                                                   line)]
  tables = [t for t in _tables(prose) if t.rows[0][:2] == ["model", "seeds"]]
  return commands, tables


def static_header(command: Command) -> List[str] | None:
  """The header the command prints, or None where it depends on the runs (``--windows``)."""
  args = build_parser().parse_args(command.argv)
  if args.windows:
    return None
  metrics = [m for v in args.metrics or [] for m in v.split(",") if m] or DEFAULT_METRICS
  return _cells(format_table([], metrics, provenance=False).splitlines()[0])


def pair(table: Table, commands: List[Command]) -> Command | None:
  """The command whose header agrees with the table's in the most columns (then the
  nearest one above the table, then the nearest below)."""
  def key(c):
    header = static_header(c) or []
    agree = sum(a == b for a, b in zip(header, table.rows[0]))
    return (-agree, c.line > table.line, abs(c.line - table.line))
  return min(commands, key=key, default=None)


def run_dirs(command: Command, root: str) -> Tuple[List[str], List[str]]:
  """The command's run directories under ``root``, globs expanded, and the absent ones."""
  found, missing = [], []
  for pattern in build_parser().parse_args(command.argv).run_dirs:
    matches = sorted(glob.glob(os.path.join(root, pattern)))
    found += matches
    if not matches:
      missing.append(pattern)
  return found, missing


def printed_rows(command: Command, root: str) -> List[List[str]]:
  """The table rows ``rectrain table`` prints for the command, its paths under ``root``."""
  args = build_parser().parse_args(command.argv)
  args.run_dirs = run_dirs(command, root)[0]
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    args.func(args)
  return _tables(list(enumerate(buf.getvalue().splitlines(), 1)))[0].rows


def compare_rows(readme: List[List[str]], printed: List[List[str]]) -> List[str]:
  """The differences between a README table and the printed one (rows matched by label)."""
  diffs = []
  if readme[0] != printed[0]:
    diffs.append(f"header: README {readme[0]} != printed {printed[0]}")
  want = {r[0]: r for r in readme[1:]}
  got = {r[0]: r for r in printed[1:]}
  diffs += [f"row {label!r}: in the README, not printed" for label in want if label not in got]
  diffs += [f"row {label!r}: printed, not in the README" for label in got if label not in want]
  for label in (lbl for lbl in want if lbl in got):
    a, b = want[label], got[label]
    if len(a) != len(b):
      diffs.append(f"row {label!r}: {len(a)} cells in the README, {len(b)} printed")
      continue
    diffs += [f"row {label!r}, column {printed[0][k]!r}: README {x!r} != printed {y!r}"
              for k, (x, y) in enumerate(zip(a, b)) if x != y]
  return diffs


def _readme_tables():
  for path in READMES:
    with open(path) as f:
      commands, tables = parse_readme(f.read())
    name = os.path.basename(os.path.dirname(path))
    for table in tables:
      yield pytest.param(path, table, commands, id=f"{name}:{table.line}")


@pytest.mark.parametrize("path,table,commands", list(_readme_tables()))
def test_readme_table_equals_rectrain_table(path, table, commands):
  where = f"{os.path.relpath(path, REPO)}:{table.line}"
  command = pair(table, commands)
  assert command is not None, f"{where}: a result table but no `rectrain table` command"
  shown = f"`rectrain {shlex.join(command.argv)}` (line {command.line})"
  _, missing = run_dirs(command, REPO)
  if missing:
    pytest.skip(f"{where}: needs {', '.join(missing)} for {shown}; absent (runs/ is not "
                f"committed)")
  diffs = compare_rows(table.rows, printed_rows(command, REPO))
  assert not diffs, f"{where} differs from what {shown} prints:\n" + "\n".join(diffs)


# ---------------------------------------------------------------------------
# The checks on fabricated runs.


def _fake_run(workdir, label, seed, auc, ne, model="lr"):
  config = configs.default_config()
  config.experiment = experiment_section(name="fake", label=label)
  configs.apply_overrides(config, [f"model.name={model}", f"seed={seed}"])
  summary = {"model": model, "rows": 1000, "auc": auc, "ne": ne}
  os.makedirs(workdir)
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f)
  write_run_record(workdir, config, summary, seed)


FAKE_README = """# fake

```
rectrain sweep experiments/fake
rectrain table runs/fake --metrics auc,ne     # both models
rectrain table runs/fake/LR_* \\
    --metrics ne
```

| model | seeds | AUC ↑ | NE ↓ |
|:---|---:|---:|---:|
| LR | 2 | 0.7100 ± 0.0141 | 0.8800 ± 0.0283 |
| DeepFM | 1 | **0.7500** | **0.8500** |

Only LR (`rectrain table runs/fake/LR_* --metrics ne`):

| model | seeds | NE ↓ |
|:---|---:|---:|
| LR | 2 | 0.8800 ± 0.0283 |
"""


@pytest.fixture
def fake_root(tmp_path):
  # LR AUC (0.70, 0.72): mean 0.71, std 0.02 / sqrt(2) = 0.0141; NE (0.90, 0.86): 0.88, 0.0283.
  _fake_run(str(tmp_path / "runs" / "fake" / "LR_seed0"), "LR", 0, 0.70, 0.90)
  _fake_run(str(tmp_path / "runs" / "fake" / "LR_seed1"), "LR", 1, 0.72, 0.86)
  _fake_run(str(tmp_path / "runs" / "fake" / "DeepFM_seed0"), "DeepFM", 0, 0.75, 0.85,
            model="deepfm")
  return str(tmp_path)


def test_parse_and_pair_fabricated_readme():
  commands, tables = parse_readme(FAKE_README)
  assert commands == [Command(5, ["table", "runs/fake", "--metrics", "auc,ne"]),
                      Command(6, ["table", "runs/fake/LR_*", "--metrics", "ne"]),
                      Command(15, ["table", "runs/fake/LR_*", "--metrics", "ne"])]
  assert [t.line for t in tables] == [10, 17]
  assert tables[0].rows[2] == ["DeepFM", "1", "0.7500", "0.8500"]   # bold stripped
  assert static_header(commands[0]) == ["model", "seeds", "AUC ↑", "NE ↓"]
  assert pair(tables[0], commands) == commands[0]
  assert pair(tables[1], commands) == commands[2]   # the same header as line 6's, nearer


def test_compare_fabricated_readme_with_fabricated_runs(fake_root, tmp_path):
  commands, tables = parse_readme(FAKE_README)
  for table in tables:
    command = pair(table, commands)
    assert run_dirs(command, fake_root)[1] == []
    assert compare_rows(table.rows, printed_rows(command, fake_root)) == []
  # a changed cell, a missing row, a changed header: each reported, naming the place
  printed = printed_rows(commands[0], fake_root)
  wrong = [list(r) for r in tables[0].rows]
  wrong[1][3] = "0.8801 ± 0.0283"
  assert compare_rows(wrong, printed) == [
      "row 'LR', column 'NE ↓': README '0.8801 ± 0.0283' != printed '0.8800 ± 0.0283'"]
  assert compare_rows(tables[0].rows[:2], printed) == ["row 'DeepFM': printed, not in the README"]
  assert compare_rows(tables[1].rows, printed)[0].startswith("header: README ")
  # runs absent: the check names what it needs
  assert run_dirs(commands[1], str(tmp_path / "nowhere")) == ([], ["runs/fake/LR_*"])
