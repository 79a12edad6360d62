"""Smoke test of experiments/hessian_benchmark.py (no timing assertions)."""

import math

from absl import flags
import pytest

from eahes_jax import hessian_cost
from experiments import hessian_benchmark


def _check_result(result):
  assert result["model"] == "mlp"
  assert result["batch_size"] == hessian_cost.SMOKE_SETTINGS["batch_size"]
  assert result["num_params"] > 0
  for name in ("grad_ms", "hutchinson_ms", "ratio"):
    assert math.isfinite(result[name]) and result[name] > 0, (name, result)
  assert result["ratio"] == pytest.approx(
      result["hutchinson_ms"] / result["grad_ms"])


def test_smoke_run_returns_positive_finite_times():
  results = hessian_cost.run_benchmark(smoke=True)
  assert len(results) == 1
  _check_result(results[0])
  table = hessian_cost.format_table(results)
  assert "mlp" in table and "ratio" in table


def test_main_with_smoke_flag_prints_table(capsys):
  # A private registry: the global FLAGS stay untouched by this test.
  flag_values = flags.FlagValues()
  hessian_benchmark.define_flags(flag_values)
  flag_values(["hessian_benchmark", "--smoke"])
  hessian_benchmark.main(["hessian_benchmark"], flag_values=flag_values)
  out = capsys.readouterr().out
  assert "mlp" in out and "hutchinson ms" in out
  assert "small_cnn" not in out


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"repeats": 0}])
def test_invalid_sizes_raise(kwargs):
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    hessian_cost.measure_hutchinson_cost("mlp", **kwargs)
