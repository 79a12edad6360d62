"""TensorBoard output: the event file is written, readable, and right."""

import json
import struct

import numpy as np
import pytest

from eahes_jax import config as config_lib
from eahes_jax import experiment
from eahes_jax import tensorboard_log
from eahes_jax import results_folder
from tests.conftest import tiny_mnist

needs_writer = pytest.mark.skipif(
    not tensorboard_log.available(),
    reason="tensorboardX is not installed (the [tensorboard] extra)")


def read_events(log_dir):
  """Every event in ``log_dir``'s event files, parsed with tensorboardX's
  own protobuf (TFRecord framing: length, its CRC, data, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(log_dir.glob("events.out.tfevents.*")):
    raw = path.read_bytes()
    pos = 0
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      data = raw[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(data)
      events.append(event)
  return events


def scalars(events):
  """tag -> [(step, value)] of the simple scalar values."""
  out = {}
  for e in events:
    for v in e.summary.value:
      if v.WhichOneof("value") == "simple_value":
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("tb") / "run"
  config = config_lib.SimConfig(model="mlp", method="DEAHES-O",
                                num_workers=2, rounds=4, eval_every=2,
                                num_seeds=2, train_eval_size=64)
  if not tensorboard_log.available():
    pytest.skip("tensorboardX is not installed (the [tensorboard] extra)")
  experiment.run_experiment(config, str(out), data=tiny_mnist(),
                            tensorboard_dir=str(out / "tensorboard"),
                            log=lambda s: None)
  return out, read_events(out / "tensorboard")


@needs_writer
def test_eval_scalars_are_the_metrics_mean_over_seeds(run):
  out, events = run
  rows = [r for r in results_folder.read_metrics(str(out))
          if r["test_accuracy"] is not None]
  got = scalars(events)
  for column in ("test_accuracy", "test_loss", "train_loss"):
    want = [(r, np.mean([x[column] for x in rows if x["round"] == r]))
            for r in (0, 2, 4)]
    steps = [s for s, _ in got[f"eval/{column}"]]
    assert steps == [0, 2, 4], column
    np.testing.assert_allclose([v for _, v in got[f"eval/{column}"]],
                               [v for _, v in want], rtol=1e-6)


@needs_writer
def test_per_worker_scalars_every_round(run):
  out, events = run
  got = scalars(events)
  rows = results_folder.read_metrics(str(out))
  for name in ("h_worker", "h_master", "score", "connected"):
    for i in range(2):
      series = got[f"{name}/worker_{i}"]
      assert [s for s, _ in series] == [1, 2, 3, 4], name
      want = [np.mean([float(x[name][i]) for x in rows if x["round"] == r])
              for r in (1, 2, 3, 4)]
      np.testing.assert_allclose([v for _, v in series], want, rtol=1e-6)
  assert [s for s, _ in got["train/minibatch_loss"]] == [1, 2, 3, 4]
  histograms = {v.tag for e in events for v in e.summary.value
                if v.WhichOneof("value") == "histo"}
  assert {"h_worker", "h_master", "score"} <= histograms


@needs_writer
def test_config_is_written_as_hparams(run):
  out, events = run
  plugin = [v for e in events for v in e.summary.value
            if v.metadata.plugin_data.plugin_name == "hparams"]
  assert plugin
  content = b"".join(v.metadata.plugin_data.content for v in plugin)
  record = json.loads((out / results_folder.CONFIG_FILE).read_text())
  for name in ("method", "num_workers", "failure_rate", "dw_threshold",
               "data_source"):
    assert name.encode() in content, name
  assert record["config"]["method"].encode() in content


def test_tensorboard_dir_without_the_writer_names_the_flag(monkeypatch,
                                                          tmp_path):
  monkeypatch.setattr(tensorboard_log, "available", lambda: False)
  config = config_lib.SimConfig(model="mlp", num_workers=2, rounds=2)
  with pytest.raises(config_lib.ConfigError) as info:
    experiment.run_experiment(config, str(tmp_path / "run"),
                              data=tiny_mnist(),
                              tensorboard_dir=str(tmp_path / "tb"))
  assert info.value.field == "tensorboard_dir"
  assert '".[tensorboard]"' in str(info.value)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("installed, value, want", [
    (True, None, "OUT/tensorboard"), (False, None, None),
    (True, "none", None), (False, "/x/tb", "/x/tb"), (True, "/x/tb", "/x/tb")])
def test_resolve_dir(monkeypatch, installed, value, want):
  monkeypatch.setattr(tensorboard_log, "available", lambda: installed)
  assert tensorboard_log.resolve_dir(value, "OUT") == want
