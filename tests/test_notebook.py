"""experiments/colab.ipynb runs top to bottom as on a fresh runtime.

The notebook runs in a fresh Jupyter kernel through nbclient, as "Run all"
would, with its first cell pointed at a copy of this checkout (``REPO_DIR``) and
``REINSTALL = True``: the install cell then really installs eahes_jax, as on
a fresh Colab runtime. The kernel runs in a virtual environment created for
the test on top of this interpreter's packages (``--system-site-packages``),
so that install lands in the test's environment only, and needs no network
(every other requirement is already there, as Colab's are). Then a few cells
are run again with another failure rate, as a user changing a variable
would: new runs start next to the old ones, and the plot shows again.

A static test checks that no cell and no step of the installer would install
TensorFlow or pin, upgrade or replace jax.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from eahes_jax import experiment  # pylint: disable=g-import-not-at-top
from eahes_jax import results_folder

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "experiments" / "colab.ipynb"
KERNEL = "eahes-jax-test"
# What a copy of the checkout leaves out: build outputs and results.
_NOT_COPIED = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", "results", "runs",
    ".pytest_cache", ".ipynb_checkpoints", "tmp")


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "stream")


def _set(source: str, name: str, value: str) -> str:
  """Replaces the value of the assignment ``name = ...`` in a cell."""
  new, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", source,
                   flags=re.M)
  assert n == 1, f"the notebook lost its {name} variable"
  return new


def _cell_assigning(nb, name: str):
  cells = [c for c in _code_cells(nb)
           if re.search(rf"^{name} = ", c.source, re.M)]
  assert len(cells) == 1, name
  return cells[0]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """The executed notebook, its folder, and the copy it installed from."""
  root = tmp_path_factory.mktemp("notebook")
  source = root / "eahes_jax_checkout"
  shutil.copytree(REPO, source, ignore=_NOT_COPIED)
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                  str(venv)], check=True, timeout=300)
  python = venv / "bin" / "python"
  spec_dir = root / "jupyter" / "kernels" / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [str(python), "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "eahes_jax test", "language": "python"}))
  work = root / "work"
  work.mkdir()

  nb = nbformat.read(NOTEBOOK, as_version=4)
  first = _code_cells(nb)[0]
  first.source = _set(first.source, "REPO_DIR", repr(str(source)))
  first.source = _set(first.source, "REINSTALL", "True")
  # Re-run as a user would after changing a variable: another failure rate
  # (one method, to keep it short), its runs, and the plot again.
  config = _cell_assigning(nb, "FAILURE_RATE")
  again = nbformat.v4.new_code_cell(
      _set(_set(config.source, "FAILURE_RATE", "0.2"), "METHODS",
           '["EASGD"]'))
  run_cell = next(c for c in _code_cells(nb)
                  if "run_experiment(" in c.source)
  plot_cell = next(c for c in _code_cells(nb) if "plt.show()" in c.source)
  nb.cells += [again, nbformat.v4.new_code_cell(run_cell.source),
               nbformat.v4.new_code_cell(plot_cell.source)]

  saved = {k: os.environ.get(k)
           for k in ("JUPYTER_PATH", "PYTHONPATH", "JAX_PLATFORMS")}
  os.environ["JUPYTER_PATH"] = str(root / "jupyter")
  os.environ.pop("PYTHONPATH", None)  # eahes_jax must come from the install.
  os.environ["JAX_PLATFORMS"] = "cpu"
  try:
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL,
        resources={"metadata": {"path": str(work)}})
    client.execute()  # Raises CellExecutionError on any failing cell.
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, work, venv


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in _code_cells(nb):
    assert not cell.outputs and cell.execution_count is None


def test_no_cell_installs_tensorflow_or_touches_jax():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in _code_cells(nb):
    for line in cell.source.splitlines():
      if re.search(r"\bpip\b|install", line) and not line.lstrip(
          ).startswith("#"):
        assert not re.search(r"tensorflow|\bjax|\btf-|--upgrade|\s-U\b",
                             line), line
  # The installer the install cell runs is the tested one, from the source.
  install = _code_cells(nb)[2].source
  assert '"experiments", "colab_install.py"' in install
  assert "colab_install.install(src)" in install


def test_every_cell_ran_without_error(executed):
  nb, _, venv = executed
  for cell in _code_cells(nb):
    assert cell.execution_count is not None
    assert not [o for o in cell.outputs if o.output_type == "error"]
  drive, install, devices = _code_cells(nb)[1:4]
  # Installed from the checkout, into the kernel's environment, and nothing
  # else was installed: the environment had every other requirement.
  assert "every other requirement was present" in _text(install)
  assert f"eahes_jax from {venv}" in _text(install)
  assert "Drive not mounted" in _text(drive)
  assert "backend: cpu -> execution: map" in _text(devices)


def test_the_tiny_configuration_ran_and_wrote_its_results(executed):
  nb, work, _ = executed
  out = work / "results" / "colab_tiny_k4_tau1_fail0333"
  runs = sorted((out / "runs").iterdir())
  assert [r.name.split("_")[0] for r in runs] == ["DEAHES-O", "EASGD"]
  for run in runs:
    assert results_folder.is_complete(str(run))
    rows = results_folder.read_metrics(str(run))
    assert max(r["round"] for r in rows) == 20
    assert {r["seed"] for r in rows} == {0, 1}
  summaries = "".join(_text(c) for c in _code_cells(nb))
  assert summaries.count("k=4 tau=1 rounds=20 seeds=2 data=sample") == 3


def test_another_failure_rate_runs_next_to_the_first(executed):
  nb, work, _ = executed
  out = work / "results" / "colab_tiny_k4_tau1_fail0200"
  (run,) = (out / "runs").iterdir()
  assert results_folder.is_complete(str(run))
  record = json.loads((run / results_folder.CONFIG_FILE).read_text())
  assert record["config"]["failure_rate"] == 0.2
  assert "different configuration" not in "".join(
      _text(c) for c in _code_cells(nb))


def test_the_plots_were_drawn_every_time(executed):
  nb, work, _ = executed
  images = [[o for o in c.outputs
             if o.output_type == "display_data" and "image/png" in o.data]
            for c in _code_cells(nb)]
  plot_cells = [i for i, c in enumerate(_code_cells(nb))
                if "plt.show()" in c.source]
  # The inline plot, the first time and again after make_figures ran.
  assert len(plot_cells) == 2
  assert all(len(images[i]) == 1 for i in plot_cells)
  # Figures 4 and 5 from make_figures.
  assert sum(len(i) for i in images) == 4
  out = work / "results" / "colab_tiny_k4_tau1_fail0333"
  for name in ("figure4_test_accuracy.png", "figure5_training_loss.png"):
    assert (out / name).stat().st_size > 5000
  table = (out / "results.md").read_text().strip().splitlines()
  assert len(table) == 2 + 2  # Header, rule, one row per method.
