"""experiments/colab_install.py: what it installs, and what it never touches."""

import importlib.util
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location(
    "colab_install", REPO / "experiments" / "colab_install.py")
colab_install = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(colab_install)

# Colab-like: accelerator jax, TensorFlow, most light packages present.
COLAB = {"jax": "0.12.0", "jaxlib": "0.12.0", "jax-cuda12-plugin": "0.12.0",
         "tensorflow": "2.19.0", "flax": "0.10.7", "numpy": "2.0.2",
         "matplotlib": "3.10.0", "absl-py": "1.4.0"}


def test_never_installs_jax_or_tensorflow_even_when_out_of_range():
  lines = ["jax[cpu]>=0.6,<0.11", "tensorflow-cpu>=2.18,<2.22",
           "tensorflow-datasets>=4.9.7,<5", "flax>=0.10.6,<0.13"]
  to_install, _, notes = colab_install.plan(lines, COLAB)
  # tensorflow-datasets does not depend on TensorFlow: installed if missing.
  assert to_install == ["tensorflow-datasets<5,>=4.9.7"]
  assert any("jax" in n for n in notes)  # Out of range: said, not changed.
  assert any("tensorflow-cpu" in n for n in notes)


def test_installs_only_what_is_missing_or_out_of_range():
  lines = ["# a comment", "", "flax>=0.10.6,<0.13", "mlxtend>=0.23.1",
           "absl-py>=2.1,<3  # trailing comment", "numpy>=1.26,<3"]
  to_install, _, _ = colab_install.plan(lines, COLAB)
  assert to_install == ["mlxtend>=0.23.1", "absl-py<3,>=2.1"]


def test_pins_every_installed_jax_and_tensorflow_distribution():
  _, constraints, _ = colab_install.plan(["mlxtend"], COLAB)
  assert constraints == ["jax-cuda12-plugin==0.12.0", "jax==0.12.0",
                         "jaxlib==0.12.0", "tensorflow==2.19.0"]


def test_the_repository_requirements_never_reach_jax_or_tensorflow():
  lines = (REPO / "requirements.txt").read_text().splitlines()
  to_install, _, _ = colab_install.plan(lines, {})
  names = [re.split(r"[\[<>=!~ ]", r)[0] for r in to_install]
  assert "flax" in names and "mlxtend" in names  # Nothing installed yet.
  assert not [n for n in names if n.startswith("jax")
              or n in ("tensorflow", "tensorflow-cpu")], names


def test_protected_names():
  for name in ("jax", "JAX", "jaxlib", "jax-cuda12-plugin", "jax_cuda12_pjrt",
               "libtpu", "tensorflow", "tensorflow-cpu", "tf-keras"):
    assert colab_install.is_protected(name), name
  for name in ("tensorflow-datasets", "flax", "jaxtyping", "chex"):
    assert not colab_install.is_protected(name), name
