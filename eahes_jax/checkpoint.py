"""Checkpoints of a run's ``SimState`` with orbax, written atomically.

A checkpoint holds the whole stacked ``SimState`` and a small JSON record of
how far the run's metrics file had been written when it was taken (rounds
done, rows and bytes), so a resumed run truncates the metrics file back to
exactly that point and repeats the rounds after it: no row is lost or
duplicated. Orbax writes every checkpoint into a temporary folder and renames
it when complete, so a process killed mid-write leaves the previous
checkpoint valid. Saving is synchronous: the simulator donates the state's
buffers to the next chunk, so an asynchronous save could read freed memory.
"""

from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp


class Progress(NamedTuple):
  """How far a run had got when a checkpoint was taken.

  Attributes:
    rounds_done: communication rounds completed.
    metrics_rows: rows in the metrics file.
    metrics_bytes: bytes in the metrics file.
  """

  rounds_done: int
  metrics_rows: int
  metrics_bytes: int


class _QuietOrbax(logging.Filter):
  """Drops orbax's per-save INFO lines from absl's log (warnings stay)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "orbax" not in (
        record.pathname or "")


_QUIET = _QuietOrbax()


class Checkpointer:
  """Saves and restores ``(SimState, Progress)`` under one folder.

  Args:
    directory: the checkpoint folder (created if missing).
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    for handler in logging.getLogger("absl").handlers + [
        logging.getLogger("absl")]:
      if _QUIET not in getattr(handler, "filters", []):
        handler.addFilter(_QUIET)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_round(self) -> int | None:
    """Rounds done at the newest complete checkpoint, or None if none."""
    self._manager.reload()
    return self._manager.latest_step()

  def save(self, state: Any, progress: Progress) -> None:
    """Writes a checkpoint of ``state`` at ``progress.rounds_done`` rounds."""
    self._manager.save(
        progress.rounds_done,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(progress._asdict())),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, like_state: Any) -> tuple[Any, Progress]:
    """Restores the newest checkpoint.

    Args:
      like_state: a state of the same structure, shapes and dtypes (e.g. a
        freshly initialised one); only its shapes and dtypes are used.

    Returns:
      The restored state and its ``Progress``.

    Raises:
      FileNotFoundError: if the folder holds no complete checkpoint.
    """
    step = self.latest_round()
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                      like_state)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            progress=ocp.args.JsonRestore()))
    return restored.state, Progress(**restored.progress)

  def close(self) -> None:
    self._manager.close()
