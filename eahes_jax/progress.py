"""Progress lines of a run: rates and time left from steady-state chunks.

A run advances one jitted chunk of rounds at a time, and the first chunk
(after a start or a resume) also compiles, which on a CPU can take longer than
the rest of a short run. Rates and the time left are therefore measured from
the end of the first chunk on; until a second chunk has finished, the line
says how long the first one took instead of guessing.
"""

from __future__ import annotations

import time
from typing import Callable


class ChunkProgress:
  """Turns chunk ends into progress lines.

  Attributes:
    total_rounds: the run's last round.
  """

  def __init__(self, total_rounds: int, start_round: int,
               clock: Callable[[], float] = time.perf_counter):
    """Starts timing just before the first chunk runs.

    Args:
      total_rounds: the run's last round.
      start_round: rounds already done (0, or where a resume starts).
      clock: seconds as a float (injectable for tests).
    """
    self.total_rounds = total_rounds
    self._clock = clock
    self._start = clock()
    self._start_round = start_round
    # Time and round at the end of the first (compiling) chunk.
    self._steady: tuple[float, int] | None = None

  def chunk_done(self, rounds_done: int,
                 test_accuracy: float | None) -> str:
    """Records a chunk's end and returns its progress line.

    Args:
      rounds_done: rounds done after the chunk.
      test_accuracy: the latest mean test accuracy over seeds, if any.

    Returns:
      ``round R/N | <speed> | test accuracy A``, where the speed part is the
      first chunk's duration (with compilation) after the first chunk, and
      ``X rounds/s | Y s left`` over the steady-state chunks afterwards.
    """
    now = self._clock()
    head = f"round {rounds_done}/{self.total_rounds}"
    acc = "n/a" if test_accuracy is None else f"{test_accuracy:.4f}"
    if self._steady is None:
      self._steady = (now, rounds_done)
      first = rounds_done - self._start_round
      speed = (f"first {first} round{'s' if first != 1 else ''} in"
               f" {now - self._start:.1f} s, compiling included")
    else:
      t0, r0 = self._steady
      rate = (rounds_done - r0) / max(now - t0, 1e-9)
      left = (self.total_rounds - rounds_done) / rate
      speed = f"{rate:.2f} rounds/s | {left:.0f} s left"
    return f"{head} | {speed} | test accuracy {acc}"


def compiling_line(chunk_rounds: int) -> str:
  """The line printed before the first chunk, which compiles."""
  return (f"compiling… (the first chunk of {chunk_rounds} round"
          f"{'s' if chunk_rounds != 1 else ''} includes XLA compilation;"
          " rates follow from the second chunk on)")


def mean_std(values: list[float]) -> str:
  """``m ± s`` over seeds (s the sample std, ddof = 1, as every table of
  the project reports it), or just ``m`` for a single seed."""
  if len(values) == 1:
    return f"{values[0]:.4f}"
  mean = sum(values) / len(values)
  std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
  return f"{mean:.4f} ± {std:.4f}"
