"""The per-operation profile of a local step (eahes_jax.step_profile)."""

import pytest

from eahes_jax import checks
from eahes_jax import step_profile


@pytest.mark.parametrize("family", step_profile.FAMILIES)
def test_profile_lists_the_steps_operations_most_expensive_first(family):
  result = step_profile.profile_steps("mlp", family, batch_size=8, steps=3)
  ops = result["operations"]
  times = [op["us_per_step"] for op in ops]
  assert ops and all(t > 0 for t in times)
  assert times == sorted(times, reverse=True)
  # The mlp's two dense layers are dots; the wrappers are left out.
  assert any(op["name"].startswith("dot") or "ynn" in op["name"]
             for op in ops)
  assert not any(op["name"].startswith(("$", "ThunkExecutor")) for op in ops)
  assert result["wall_ms_per_step"] > 0
  table = step_profile.format_table(result, top=3)
  assert len(table.splitlines()) == 2 + 3


def test_profile_names_a_bad_argument():
  with pytest.raises(checks.ArgumentError, match="family"):
    step_profile.profile_steps("mlp", "adam")
  with pytest.raises(checks.ArgumentError, match="steps"):
    step_profile.profile_steps("mlp", steps=0)


def test_binary_prints_the_table_and_dumps_hlo(tmp_path):
  from tests.test_experiments import run_binary  # pylint: disable=g-import-not-at-top
  dump = tmp_path / "hlo"
  proc = run_binary("profile_step", "--model=mlp", "--steps=2",
                    "--batch_size=4", "--top=3", f"--dump_hlo={dump}")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith("mlp sgd step, batch 4") and len(lines) == 5
  assert any(p.name.endswith("after_optimizations.txt")
             for p in dump.iterdir())
  bad = run_binary("profile_step", "--top=0")
  assert bad.returncode == 1
  assert bad.stderr.strip().splitlines()[-1] == "error: --top must be >= 1, got 0"


def test_binary_reads_dump_hlo_in_either_form(tmp_path):
  from tests.test_experiments import run_binary  # pylint: disable=g-import-not-at-top
  dump = tmp_path / "hlo"
  proc = run_binary("profile_step", "--model=mlp", "--steps=1",
                    "--batch_size=2", "--top=1", "--dump_hlo", str(dump))
  assert proc.returncode == 0, proc.stderr
  assert any(p.name.endswith("after_optimizations.txt")
             for p in dump.iterdir())
