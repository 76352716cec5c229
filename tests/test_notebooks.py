"""The study notebooks: committed executed, in sync with their jupytext pair, and re-run at smoke scale.

Each ``notebooks/<name>.ipynb`` is committed with the outputs of a real-sized
run, and paired with ``notebooks/<name>.py`` (jupytext percent format), the
file that is reviewed and edited. Here every notebook is (1) checked to hold
the same cells as its pair, (2) checked to carry outputs with no error and at
least one figure, and (3) executed again from a temporary copy with
``RECTRAIN_SMOKE=1`` (the notebooks shrink their runs and write into a
temporary directory), so a change in rectrain that breaks a study fails CI.
"""

import copy
import glob
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")


def _ids():
  return [os.path.basename(p)[:-len(".ipynb")] for p in NOTEBOOKS]


def _sources(nb):
  return [(c.cell_type, c.source.strip()) for c in nb.cells if c.source.strip()]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids())
def test_notebook_matches_its_jupytext_pair(path):
  pair = path[:-len(".ipynb")] + ".py"
  assert os.path.exists(pair), f"{path}: no jupytext pair {pair}"
  nb = nbformat.read(path, as_version=4)
  py = jupytext.read(pair)
  assert _sources(nb) == _sources(py), (
      f"{path} and {pair} differ; run `jupytext --sync {pair}` and re-execute the notebook")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids())
def test_notebook_is_committed_executed(path):
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
  assert code, f"{path}: no code cells"
  unexecuted = [i for i, c in enumerate(code) if c.execution_count is None]
  assert not unexecuted, f"{path}: code cells {unexecuted} were not executed"
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, f"{path}: committed with an error output: {errors[0].get('ename')}"
  images = [o for c in code for o in c.outputs
            if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]
  assert images, f"{path}: no figure in the committed outputs"
  assert nb.cells[0].cell_type == "markdown", f"{path}: must open with its question (markdown)"
  assert "finding" in nb.cells[-1].source.lower(), f"{path}: must close with its findings"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids())
def test_notebook_runs_at_smoke_scale(path, tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("RECTRAIN_SMOKE", "1")
  monkeypatch.setenv("RECTRAIN_ROOT", ROOT)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = copy.deepcopy(nbformat.read(path, as_version=4))
  watched = [os.path.join(ROOT, d) for d in ("notebooks", "experiments", "runs")]
  before = {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in watched}
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  after = {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in watched}
  assert after == before, f"{path}: the smoke run wrote into the repository tree"
