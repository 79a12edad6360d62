"""The PyTorch peer benchmark (issue 15): the program, its smoke mode.

Skipped where PyTorch is absent (the optional extra
``pip install -e ".[torch]"``), except the checks that need no torch.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

from absl import flags
import jax
import pytest

from eahes_jax import benchmarking
from eahes_jax import data as data_lib
from eahes_jax import models
from eahes_jax import peer_benchmark
from experiments import benchmark
from tests.conftest import REPO

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason='PyTorch is an optional extra: pip install -e ".[torch]"')


def test_importing_the_library_and_the_binary_does_not_import_torch():
  code = ("import sys, eahes_jax, eahes_jax.peer_benchmark,"
          " experiments.benchmark; assert 'torch' not in sys.modules,"
          " 'torch imported'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_peer_rejects_what_it_does_not_have_before_running():
  with pytest.raises(ValueError, match="models"):
    peer_benchmark.run_peer_benchmark(
        benchmarking.make_cases(["sgd"], ["mlp"], ["map"], [2]))
  with pytest.raises(ValueError, match="peer"):
    peer_benchmark.run_peer_benchmark([], peer="tensorflow")


@needs_torch
@pytest.mark.parametrize("optimizer", ["sgd", "adahessian"])
def test_sequential_peer_steps_then_exchanges_with_the_master(optimizer):
  # pylint: disable=g-import-not-at-top
  import torch
  from eahes_jax import torch_crosscheck as tc
  from eahes_jax import torch_peer
  # pylint: enable=g-import-not-at-top
  data = data_lib.synthetic_mnist(64, 1, seed=0)
  params = models.init_params(models.get_model("small_cnn"),
                              jax.random.key(0))
  # alpha = 1 swaps: the worker takes the old master (the initial weights),
  # the master the worker's stepped weights.
  peer = torch_peer.SequentialPeer(
      "small_cnn", optimizer, 1, data.train_images, data.train_labels,
      batch_size=8, lr=0.1, alpha=1.0, flax_params=params)
  initial = [m.clone() for m in peer.master]
  peer.run_rounds(1)
  worker = list(peer.workers[0].parameters())
  for w, m0, m in zip(worker, initial, peer.master):
    torch.testing.assert_close(w.detach(), m0, rtol=0, atol=1e-6)
  moved = max(float((m - m0).abs().max())
              for m0, m in zip(initial, peer.master))
  assert moved > 1e-4
  # The initial weights are flax's, converted exactly.
  first = tc.flax_to_torch(params)
  for name, m0 in zip(tc.PARAM_NAMES, initial):
    assert torch.equal(first[name], m0), name


@needs_torch
def test_torch_gets_the_cores_xla_uses():
  import torch  # pylint: disable=g-import-not-at-top
  from eahes_jax import torch_peer  # pylint: disable=g-import-not-at-top
  threads = torch_peer.set_threads()
  assert threads == len(os.sched_getaffinity(0)) == torch.get_num_threads()


@needs_torch
def test_peer_smoke_prints_rows_with_rates_and_a_ratio(tmp_path, capsys):
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values)
  out = tmp_path / "peer.json"
  flag_values(["benchmark", "--peer=torch", "--smoke", "--processes=2",
               f"--json_out={out}"])
  benchmark.main(["benchmark"], flag_values=flag_values)
  result = json.loads(out.read_text())
  rows = result["rows"]
  s = benchmark.PEER_SMOKE_SETTINGS
  assert [(r["model"], r["method"], r["num_workers"]) for r in rows] == [
      ("small_cnn", "EASGD", 2), ("small_cnn", "EAHES", 2)]
  for r in rows:
    assert "error" not in r, r
    assert len(r["steady_all_s"]) == len(r["torch_steady_all_s"]) == 2
    samples = r["num_workers"] * r["batch_size"] * s["rounds"]
    assert r["samples_per_s"] == pytest.approx(samples / r["steady_s"])
    assert r["torch_samples_per_s"] == pytest.approx(
        samples / r["torch_steady_s"])
    assert r["ratio"] == pytest.approx(
        r["samples_per_s"] / r["torch_samples_per_s"])
    # Two measurements; the row is the one whose ratio is the lower middle.
    assert len(r["ratio_all"]) == 2 and r["ratio"] == min(r["ratio_all"])
    for name in ("samples_per_s", "torch_samples_per_s", "ratio",
                 "flops_per_sample", "peak_fraction", "torch_peak_fraction",
                 "achieved_gflops", "torch_achieved_gflops"):
      assert math.isfinite(r[name]) and r[name] > 0, (name, r)
    # im2col: the peer's convolutions do the simulator's FLOPs.
    assert r["torch_flops_per_sample"] == r["flops_per_sample"]
    assert r["compile_s"] >= 0 and len(r["load_average_start"]) == 3
    assert r["torch_threads"] == len(os.sched_getaffinity(0))
    # JAX computes on the CPU here, so the peer does too.
    assert r["torch_device"] == "cpu" and r["torch_tf32_matmul"] is False
  # AdaHessian's step does more work than SGD's.
  assert rows[1]["flops_per_sample"] > 1.5 * rows[0]["flops_per_sample"]
  assert result["environment"]["matmul_peak_gflops"] > 0
  printed = capsys.readouterr().out
  header = next(line for line in printed.splitlines()
                if line.startswith("method"))
  assert "sim smp/s" in header and "torch smp/s" in header
  assert "ratio" in header
  assert "PyTorch on cpu (TF32 matmuls off)" in printed
  assert "simulator conv_impl: auto; seed_execution: vmap" in printed
  for r in rows:
    assert any(line.startswith(r["method"]) and " small_cnn " in line
               and f"{r['ratio']:.2f}" in line
               and line.endswith(f"{max(r['ratio_all']):.2f} over 2"
                                 " processes")
               for line in printed.splitlines()), printed


@needs_torch
def test_the_peer_counts_a_direct_convolution_under_winograd():
  """Winograd does fewer FLOPs than PyTorch's convolutions: the peer's
  share of the peak is of im2col's count, and the table says so."""
  case = benchmarking.Case(family="sgd", model="cnn", execution="map",
                           num_workers=1, rounds=1, repeats=1, batch_size=8,
                           conv_impl="winograd")
  row = peer_benchmark.measure_pair(case)
  direct = benchmarking.cpu_reference_flops_per_sample(case, direct=True)
  assert row["torch_flops_per_sample"] == pytest.approx(direct)
  # cnn's second convolution, ~86 % of a step, at about a third.
  assert row["torch_flops_per_sample"] > 2 * row["flops_per_sample"]
  table = peer_benchmark.format_table(
      {"environment": benchmarking.environment(), "rows": [row]})
  assert ("torch %pk from a direct convolution's MFLOP/smp (the simulator's"
          f" do fewer): cnn EASGD k=1 {direct / 1e6:.2f}") in table


def test_median_row_keeps_one_measurement_together():
  rows = [{"ratio": 1.2, "samples_per_s": 12.0, "torch_samples_per_s": 10.0},
          {"ratio": 0.5, "samples_per_s": 5.0, "torch_samples_per_s": 10.0},
          {"ratio": 3.0, "samples_per_s": 30.0, "torch_samples_per_s": 10.0}]
  row = peer_benchmark.median_row(rows)
  assert (row["ratio"], row["samples_per_s"]) == (1.2, 12.0)
  assert row["ratio_all"] == [1.2, 0.5, 3.0]  # In the order measured.
  assert row["samples_per_s_all"] == [12.0, 5.0, 30.0]
  assert "ratio_all" not in rows[0]  # A copy.
  # An even count takes the lower middle: no figure is averaged away.
  assert peer_benchmark.median_row(rows[:2])["ratio"] == 0.5
  assert peer_benchmark.median_row(rows[:1])["ratio_all"] == [1.2]
  with pytest.raises(ValueError, match="rows"):
    peer_benchmark.median_row([])


def test_peer_processes_must_be_positive_and_the_binary_names_the_flag(
    capsys):
  with pytest.raises(ValueError, match="processes"):
    peer_benchmark.run_peer_benchmark([], processes=0)
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values)
  flag_values(["benchmark", "--peer=torch", "--smoke", "--processes=0"])
  with pytest.raises(SystemExit):
    benchmark.main(["benchmark"], flag_values=flag_values)
  assert "--processes" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--processes=3", "--torch_threads=1",
                                  "--torch_device=cpu"])
def test_the_peers_flags_without_a_peer_are_refused(flag, capsys):
  # They used to be ignored: --processes=3 without --peer measured each row
  # once, in one process, and said nothing.
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values)
  flag_values(["benchmark", "--smoke", flag])
  with pytest.raises(SystemExit):
    benchmark.main(["benchmark"], flag_values=flag_values)
  err = capsys.readouterr().err
  assert f"{flag.split('=')[0]} only apply with --peer" in err


@needs_torch
def test_the_peer_computes_where_jax_does_and_refuses_a_missing_gpu(
    capsys):
  import torch  # pylint: disable=g-import-not-at-top
  assert peer_benchmark.resolve_torch_device("cpu") == "cpu"
  expected = ("cuda" if torch.cuda.is_available()
              and jax.default_backend() == "gpu" else "cpu")
  assert peer_benchmark.resolve_torch_device("auto") == expected
  with pytest.raises(ValueError, match="torch_device"):
    peer_benchmark.resolve_torch_device("tpu")
  if torch.cuda.is_available():
    return
  with pytest.raises(ValueError, match="no CUDA device"):
    peer_benchmark.run_peer_benchmark(
        benchmarking.make_cases(["sgd"], ["small_cnn"], ["map"], [2]),
        torch_device="cuda")
  # The binary names the flag, before anything runs.
  flag_values = flags.FlagValues()
  benchmark.define_flags(flag_values)
  flag_values(["benchmark", "--peer=torch", "--smoke",
               "--torch_device=cuda"])
  with pytest.raises(SystemExit):
    benchmark.main(["benchmark"], flag_values=flag_values)
  err = capsys.readouterr().err
  assert "--torch_device=cuda" in err and "no CUDA device" in err
