"""Checkpoints of a run's ``SimState`` with orbax, written atomically.

A checkpoint holds the whole stacked ``SimState`` and a small JSON record of
how far the run's metrics file had been written when it was taken (rounds
done, rows, bytes and a SHA-256 of those bytes), so a resumed run can check
the metrics file, truncate it back to exactly that point and repeat the
rounds after it: no row is lost or duplicated. The JSON record also holds the
run's configuration record (checked on resume even when ``config.json`` is
gone) and a SHA-256 of the state's bytes, so a damaged checkpoint is told
apart from a diverged run. Orbax writes every checkpoint into a temporary
folder and renames it when complete, so a process killed mid-write leaves
the previous checkpoint valid; a checkpoint damaged afterwards is skipped in
favour of the previous one. Saving is synchronous: the simulator donates the
state's buffers to the next chunk, so an asynchronous save could read freed
memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp


class Progress(NamedTuple):
  """How far a run had got when a checkpoint was taken.

  Attributes:
    rounds_done: communication rounds completed.
    metrics_rows: rows in the metrics file.
    metrics_bytes: bytes in the metrics file.
    metrics_sha256: hex SHA-256 of those ``metrics_bytes`` bytes (None in
      checkpoints written before it was recorded).
  """

  rounds_done: int
  metrics_rows: int
  metrics_bytes: int
  metrics_sha256: str | None = None


class CorruptCheckpointError(RuntimeError):
  """No checkpoint in the folder restores; the message says why."""


def state_sha256(state: Any) -> str:
  """Hex SHA-256 of a state's leaves: their dtypes, shapes and bytes."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(state):
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


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

  def rounds(self) -> list[int]:
    """Rounds done at every complete checkpoint, newest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps(), reverse=True)

  def save(self, state: Any, progress: Progress,
           record: dict[str, Any] | None = None) -> None:
    """Writes a checkpoint of ``state`` at ``progress.rounds_done`` rounds.

    Args:
      state: the state to save.
      progress: how far the run's metrics had been written.
      record: the run's configuration record (JSON-serialisable), returned
        by ``record`` and checked before a restore.
    """
    meta = dict(progress._asdict(), state_sha256=state_sha256(state),
                record=record)
    if progress.rounds_done in self.rounds():
      # A newer checkpoint that did not restore (``restore`` fell back past
      # it): the run has just recomputed its round.
      self._manager.delete(progress.rounds_done)
    self._manager.save(
        progress.rounds_done,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(meta)),
        force=True)
    self._manager.wait_until_finished()

  def _meta(self, step: int) -> dict[str, Any]:
    """The JSON record of the checkpoint at ``step``."""
    try:
      meta = self._manager.restore(
          step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
      meta = meta.progress
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many types for damaged files.
      raise CorruptCheckpointError(
          f"its progress record does not read ({type(e).__name__})") from e
    if not isinstance(meta, dict) or any(
        not isinstance(meta.get(f), int) for f in Progress._fields[:3]):
      raise CorruptCheckpointError("its progress record is malformed")
    return meta

  def record(self, step: int) -> dict[str, Any] | None:
    """The configuration record saved with the checkpoint at ``step``.

    Returns:
      The record, or None for a checkpoint saved without one.

    Raises:
      CorruptCheckpointError: the checkpoint's JSON record does not read.
    """
    return self._meta(step).get("record")

  def restore(self, like_state: Any, *,
              check_record: Callable[[dict[str, Any] | None], None] | None
              = None,
              warn: Callable[[str], None] | None = None
              ) -> tuple[Any, Progress]:
    """Restores the newest checkpoint that restores intact.

    A checkpoint that does not read, or whose state does not match the
    checksum saved with it, is reported through ``warn`` and the previous one
    is tried.

    Args:
      like_state: a state of the same structure, shapes and dtypes (e.g. a
        freshly initialised one); only its shapes and dtypes are used.
      check_record: called with each checkpoint's configuration record
        before its state is read; whatever it raises propagates.
      warn: where the line about a skipped checkpoint goes (default:
        ``logging.warning``).

    Returns:
      The restored state and its ``Progress``.

    Raises:
      FileNotFoundError: if the folder holds no complete checkpoint.
      CorruptCheckpointError: if none of them restores intact.
    """
    warn = warn or logging.warning
    steps = self.rounds()
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                      like_state)
    reasons = []
    for step in steps:
      try:
        meta = self._meta(step)
        if check_record is not None:
          check_record(meta.get("record"))
        try:
          state = self._manager.restore(
              step, args=ocp.args.Composite(
                  state=ocp.args.StandardRestore(abstract))).state
        except Exception as e:  # pylint: disable=broad-except
          # Orbax and tensorstore raise many types for damaged files.
          raise CorruptCheckpointError(
              f"its state does not read ({type(e).__name__})") from e
        saved = meta.get("state_sha256")
        if saved is not None and state_sha256(state) != saved:
          raise CorruptCheckpointError(
              "its state does not match the checksum saved with it")
      except CorruptCheckpointError as e:
        reasons.append(f"round {step}: {e}")
        if step != steps[-1]:
          warn(f"warning: the checkpoint at round {step} is corrupt ({e});"
               " trying the previous one")
        continue
      return state, Progress(**{f: meta[f] for f in Progress._fields
                                if f in meta})
    raise CorruptCheckpointError(
        f"no checkpoint in {self.directory} restores intact ("
        + "; ".join(reasons) + ")")

  def close(self) -> None:
    self._manager.close()
