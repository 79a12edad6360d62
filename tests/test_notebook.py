"""experiments/colab.ipynb runs top to bottom on a CPU (issue 6).

The notebook runs in a fresh Jupyter kernel through nbclient, as "Run all"
would. The kernel is this interpreter (a kernelspec written into a temporary
JUPYTER_PATH), so the test needs no kernelspec installed on the machine and
the kernel sees the same packages; the repository is put on its PYTHONPATH,
so the notebook's install cell always takes its "already installed" branch
and never reaches for the network.
"""

import json
import os
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from eahes_jax import experiment  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "experiments" / "colab.ipynb"
KERNEL = "eahes-jax-test"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """The executed notebook and the folder it ran in."""
  root = tmp_path_factory.mktemp("notebook")
  spec_dir = root / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "eahes_jax test", "language": "python"}))
  work = root / "work"
  work.mkdir()
  saved = {k: os.environ.get(k)
           for k in ("JUPYTER_PATH", "PYTHONPATH", "JAX_PLATFORMS")}
  os.environ["JUPYTER_PATH"] = str(root / "jupyter")
  os.environ["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(REPO), saved["PYTHONPATH"]) if p)
  os.environ["JAX_PLATFORMS"] = "cpu"
  try:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name=KERNEL,
        resources={"metadata": {"path": str(work)}})
    client.execute()  # Raises CellExecutionError on any failing cell.
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, work


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "stream")


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in _code_cells(nb):
    assert not cell.outputs and cell.execution_count is None


def test_every_cell_ran_without_error(executed):
  nb, _ = executed
  for cell in _code_cells(nb):
    assert cell.execution_count is not None
    assert not [o for o in cell.outputs if o.output_type == "error"]
  install, devices = _code_cells(nb)[:2]
  assert "eahes_jax is already installed" in _text(install)
  assert "backend: cpu -> execution: map" in _text(devices)


def test_the_tiny_configuration_ran_and_wrote_its_results(executed):
  nb, work = executed
  runs = sorted((work / "results" / "colab_tiny" / "runs").iterdir())
  assert [r.name.split("_")[0] for r in runs] == ["DEAHES-O", "EASGD"]
  for run in runs:
    assert experiment.is_complete(str(run))
    rows = experiment.read_metrics(str(run))
    assert max(r["round"] for r in rows) == 20
    assert {r["seed"] for r in rows} == {0, 1}
  summaries = "".join(_text(c) for c in _code_cells(nb))
  assert summaries.count("k=4 tau=1 rounds=20 seeds=2 data=sample") == 2


def test_the_plots_were_drawn(executed):
  nb, work = executed
  images = [o for c in _code_cells(nb) for o in c.outputs
            if o.output_type == "display_data" and "image/png" in o.data]
  # The matplotlib figure, then Figures 4 and 5 from make_figures.
  assert len(images) == 3
  out = work / "results" / "colab_tiny"
  for name in ("figure4_test_accuracy.png", "figure5_training_loss.png"):
    assert (out / name).stat().st_size > 5000
  table = (out / "results.md").read_text().strip().splitlines()
  assert len(table) == 2 + 2  # Header, rule, one row per method.
