"""Shared test fixtures: the MNIST folder and small synthetic datasets."""

import os
import pathlib

import numpy as np
import pytest

from eahes_jax import data as data_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def mnist_dir() -> pathlib.Path | None:
  """The full IDX MNIST: $EAHES_MNIST_DIR, else ../shared/data/mnist."""
  candidates = [os.environ.get("EAHES_MNIST_DIR"),
                REPO.parent / "shared" / "data" / "mnist"]
  for c in candidates:
    if c and pathlib.Path(c).is_dir():
      return pathlib.Path(c)
  return None


def tiny_mnist(n_train: int = 256, n_test: int = 128,
               seed: int = 0) -> data_lib.MNIST:
  """A small random dataset shaped like MNIST, for engine tests."""
  rng = np.random.default_rng(seed)
  return data_lib.MNIST(
      train_images=rng.normal(size=(n_train, 28, 28, 1)).astype(np.float32),
      train_labels=rng.integers(0, 10, n_train).astype(np.int32),
      test_images=rng.normal(size=(n_test, 28, 28, 1)).astype(np.float32),
      test_labels=rng.integers(0, 10, n_test).astype(np.int32),
      source="synthetic")


@pytest.fixture(scope="session")
def sample_mnist() -> data_lib.MNIST:
  return data_lib.load_mnist("sample")
