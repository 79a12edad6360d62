"""Progress lines: rates and time left from steady-state chunks only."""

import pytest

from eahes_jax import progress
from eahes_jax import results_folder


class FakeClock:
  """A clock the test advances by hand."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_first_chunk_reports_its_duration_not_a_rate():
  clock = FakeClock()
  p = progress.ChunkProgress(total_rounds=40, start_round=0, clock=clock)
  clock.now += 20.0  # Compiling, then 10 rounds.
  line = p.chunk_done(10, 0.5)
  assert line == ("round 10/40 | first 10 rounds in 20.0 s, compiling"
                  " included | test accuracy 0.5000")
  assert "rounds/s" not in line and "left" not in line


def test_rate_and_time_left_exclude_the_compiling_chunk():
  clock = FakeClock()
  p = progress.ChunkProgress(total_rounds=40, start_round=0, clock=clock)
  clock.now += 20.0
  p.chunk_done(10, None)
  clock.now += 2.0  # Steady state: 10 rounds in 2 s.
  assert p.chunk_done(20, 0.75) == ("round 20/40 | 5.00 rounds/s | 4 s left"
                                    " | test accuracy 0.7500")
  clock.now += 2.0
  assert p.chunk_done(30, None).startswith("round 30/40 | 5.00 rounds/s |"
                                           " 2 s left | test accuracy n/a")


def test_a_resumed_run_counts_its_first_chunk_from_the_resume():
  clock = FakeClock()
  p = progress.ChunkProgress(total_rounds=40, start_round=30, clock=clock)
  clock.now += 7.5
  assert "first 5 rounds in 7.5 s" in p.chunk_done(35, None)


@pytest.mark.parametrize("values, text", [
    ([0.5], "0.5000"),
    # The sample std, ddof = 1: sqrt(0.02 / 1), not the population's 0.1.
    ([0.5, 0.7], "0.6000 ± 0.1414"),
])
def test_mean_std_drops_the_spread_for_one_seed(values, text):
  assert progress.mean_std(values) == text


def test_compiling_line_names_the_chunk():
  assert progress.compiling_line(1).startswith(
      "compiling… (the first chunk of 1 round includes")


def test_single_seed_summary_has_no_spread():
  from eahes_jax import experiment  # pylint: disable=g-import-not-at-top
  common = dict(method="EASGD", num_workers=4, comm_period=1, rounds=10,
                final_test_loss=[0.3], wall_time_s=1.0, data_source="sample")
  one = results_folder.RunSummary(seeds=[0], final_test_accuracy=[0.9],
                              final_train_loss=[0.25], **common)
  assert "±" not in one.line()
  assert "test accuracy 0.9000, train loss 0.2500" in one.line()
  two = results_folder.RunSummary(seeds=[0, 1], final_test_accuracy=[0.9, 0.8],
                              final_train_loss=[0.25, 0.35], **common)
  assert "test accuracy 0.8500 ± 0.0707" in two.line()
