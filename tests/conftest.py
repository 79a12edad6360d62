"""Shared test fixtures: the MNIST folder and small synthetic datasets.

Before JAX is imported, the suite (and every subprocess it starts, which
inherits the environment) is set to compile at XLA's optimisation level 0 and
to share a persistent compilation cache for the session: on 2 cores that makes
compiles about three times faster, and repeated programs (the same binary run
twice to compare) nearly free. Tests check semantics, never speed; set
EAHES_TEST_XLA_FLAGS to run them under other flags (an empty value: XLA's
defaults).
"""

import atexit
import os
import pathlib
import shutil
import signal
import tempfile

os.environ.setdefault("XLA_FLAGS", os.environ.get(
    "EAHES_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0"))
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="eahes_jax_test_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import logging
import pytest

from eahes_jax import data as data_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def mnist_dir() -> pathlib.Path | None:
  """The full IDX MNIST: the folder $EAHES_MNIST_DIR names, if it is one."""
  value = os.environ.get("EAHES_MNIST_DIR")
  if value and pathlib.Path(value).is_dir():
    return pathlib.Path(value)
  return None


def tiny_mnist(n_train: int = 256, n_test: int = 128,
               seed: int = 0) -> data_lib.MNIST:
  """A small random dataset shaped like MNIST, for engine tests."""
  return data_lib.synthetic_mnist(n_train, n_test, seed)


@pytest.fixture(autouse=True)
def _process_state_restored():
  """Undoes what a binary's ``main`` called in-process sets for its process.

  ``cli.binary_prologue`` installs SIGINT/SIGTERM handlers that end the
  process at once (pytest would then stop without its summary or cleanup)
  and lowers absl's verbosity; the benchmark sets a JAX environment default.
  """
  handlers = {sig: signal.getsignal(sig)
              for sig in (signal.SIGINT, signal.SIGTERM)}
  verbosity = logging.get_verbosity()
  env = {name: os.environ.get(name)
         for name in ("XLA_PYTHON_CLIENT_PREALLOCATE",)}
  yield
  for sig, handler in handlers.items():
    signal.signal(sig, handler)
  logging.set_verbosity(verbosity)
  for name, value in env.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


@pytest.fixture(scope="session")
def sample_mnist() -> data_lib.MNIST:
  return data_lib.load_mnist("sample")
