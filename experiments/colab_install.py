r"""Installs eahes_jax into a running Colab (or Jupyter) runtime, keeping its
jax, CUDA/TPU plugins and TensorFlow.

  python experiments/colab_install.py SOURCE_DIR

`experiments/colab.ipynb` runs this file from the checkout it cloned (or
found on Drive), before eahes_jax is importable, so it uses the standard
library and `packaging` only. It

1. installs the package itself with ``pip install --no-deps`` (nothing it
   depends on is touched);
2. installs only those runtime requirements (``requirements.txt``) that are
   missing or outside their range, never jax or TensorFlow, with every
   installed jax/TensorFlow distribution pinned by a constraints file, so pip
   fails rather than replace the runtime's accelerator-enabled builds.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Distributions the runtime provides and this installer never replaces: jax
# with its CUDA/TPU plugins, and TensorFlow (Colab's has GPU support; the
# tfds source uses whatever TensorFlow is there). tensorflow-datasets is not
# one of them: it does not depend on TensorFlow.
PROTECTED = frozenset({"jax", "jaxlib", "tensorflow", "tensorflow-cpu",
                       "tensorflow-gpu", "tensorflow-intel",
                       "tensorflow-macos", "tf-keras", "keras"})
PROTECTED_PREFIXES = ("jax-cuda", "jax-rocm", "libtpu")


def is_protected(name: str) -> bool:
  """Whether the installer must leave distribution ``name`` alone."""
  name = canonicalize_name(name)
  return name in PROTECTED or name.startswith(PROTECTED_PREFIXES)


def installed_versions() -> dict[str, str]:
  """Canonical distribution name -> version, for this interpreter."""
  out = {}
  for dist in importlib.metadata.distributions():
    name = dist.metadata["Name"]
    if name:
      out[canonicalize_name(name)] = dist.version
  return out


def plan(requirement_lines: list[str], installed: dict[str, str]
         ) -> tuple[list[str], list[str], list[str]]:
  """What to install, under which constraints.

  Args:
    requirement_lines: the lines of ``requirements.txt``.
    installed: canonical name -> installed version.

  Returns:
    ``(to_install, constraints, notes)``: requirement strings that are
    missing or out of range (never a protected one), ``name==version`` pins
    for every installed protected distribution, and lines to print about
    protected requirements the runtime does not meet.
  """
  to_install, notes = [], []
  for line in requirement_lines:
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    req = Requirement(line)
    name = canonicalize_name(req.name)
    have = installed.get(name)
    ok = have is not None and req.specifier.contains(have, prereleases=True)
    if is_protected(name):
      if not ok:
        notes.append(f"kept the runtime's {req.name} {have or '(absent)'}"
                     f" although eahes_jax was tested with {req.specifier}")
      continue
    if not ok:
      to_install.append(str(req))
  constraints = sorted(f"{name}=={version}"
                       for name, version in installed.items()
                       if is_protected(name))
  return to_install, constraints, notes


def _pip(*args: str) -> None:
  cmd = [sys.executable, "-m", "pip", "install", "-q", *args]
  print("$", " ".join(cmd), flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  print(proc.stdout + proc.stderr, end="", flush=True)
  if proc.returncode:
    raise RuntimeError(f"pip failed (exit {proc.returncode}); see above")


def install(source_dir: str) -> list[str]:
  """Installs eahes_jax from ``source_dir``; returns what else it installed."""
  with open(os.path.join(source_dir, "requirements.txt")) as f:
    lines = f.read().splitlines()
  to_install, constraints, notes = plan(lines, installed_versions())
  for note in notes:
    print(note, flush=True)
  # --no-build-isolation: build with the runtime's setuptools, offline.
  _pip("--no-deps", "--no-build-isolation", source_dir)
  if to_install:
    with tempfile.NamedTemporaryFile("w", suffix=".txt",
                                     delete=False) as f:
      f.write("\n".join(constraints) + "\n")
    try:
      _pip("-c", f.name, *to_install)
    finally:
      os.remove(f.name)
  print("installed eahes_jax" + (f" and {', '.join(to_install)}"
                                 if to_install else
                                 " (every other requirement was present)"),
        flush=True)
  return to_install


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python experiments/colab_install.py SOURCE_DIR")
  install(sys.argv[1])
