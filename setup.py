"""Installs eahes_jax: elastic averaging with AdaHessian and dynamic weighting, in JAX."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements():
  lines = (_HERE / "requirements.txt").read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="eahes_jax",
    version="0.1.0",
    description=(
        "Elastic averaging (EASGD) with AdaHessian and the dynamic weighting"
        " strategy of Xu & Carr, in JAX."
    ),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["eahes_jax", "eahes_jax.*", "experiments"]),
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={
        "test": [
            "pytest>=8",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
        ],
    },
)
