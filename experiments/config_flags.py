"""``SimConfig``'s fields as absl flags: a run's configuration written once.

Every field of ``eahes_jax.config.SimConfig`` becomes a flag of the same name,
with the field's type, default and the description from the class docstring's
``Attributes`` section, and the allowed values of ``config.choices()`` for the
fields that have them. A binary defines them with ``define_config_flags`` and
builds its config with ``config_from_flags``; a new field is on the command
line without further code (flax's examples do the same with ml_collections'
config_flags; a frozen dataclass that validates itself plays that part here).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from absl import flags

from eahes_jax import config as config_lib
from experiments import cli


def field_help() -> dict[str, str]:
  """Each field's description, from ``SimConfig``'s ``Attributes`` section.

  Returns:
    Field name -> its description on one line (continuation lines joined).
  """
  doc = inspect.cleandoc(config_lib.SimConfig.__doc__ or "")
  section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
  out: dict[str, list[str]] = {}
  name = None
  for line in section.splitlines():
    m = re.match(r"^  (\w+): (.*)$", line)
    if m:
      name = m.group(1)
      out[name] = [m.group(2).strip()]
    elif name is not None and line.startswith("    "):
      out[name].append(line.strip())
    elif line.strip():
      name = None  # the section ended
  return {k: " ".join(v).replace("``", "") for k, v in out.items()}


def _flag_kind(tp: Any) -> str:
  """The flag kind of a field type: bool, int, float, str or list (a tuple
  of numbers). ``X | None`` is X's kind: a None default passes through the
  flag unset, and the config resolves it."""
  args = typing.get_args(tp)
  if type(None) in args:
    tp = next(a for a in args if a is not type(None))
  if tp in (bool, int, float, str):
    return tp.__name__
  if typing.get_origin(tp) is tuple:
    return "list"
  raise TypeError(f"no flag kind for a field of type {tp!r}")


def define_config_flags(
    flag_values: flags.FlagValues = flags.FLAGS, *,
    skip: Iterable[str] = (),
    help_notes: Mapping[str, str] | None = None,
) -> dict[str, flags.FlagHolder]:
  """Defines one flag per ``SimConfig`` field in ``flag_values``.

  Args:
    flag_values: where to define them.
    skip: fields the binary sets itself (they get no flag).
    help_notes: text appended to a field's help, for what is particular to
      one binary (e.g. what a crash means on Ray).

  Returns:
    Field name -> its flag holder, for ``config_from_flags``.
  """
  hints = typing.get_type_hints(config_lib.SimConfig)
  docs = field_help()
  choices = config_lib.choices()
  notes = dict(help_notes or {})
  skip = frozenset(skip)
  holders = {}
  for field in dataclasses.fields(config_lib.SimConfig):
    name = field.name
    if name in skip:
      continue
    kind = _flag_kind(hints[name])
    text = docs.get(name, name)
    if name in notes:
      text = f"{text} {notes[name]}"
    default = field.default
    kwargs = dict(flag_values=flag_values)
    if name in choices:
      holder = flags.DEFINE_enum(name, default, list(choices[name]), text,
                                 **kwargs)
    elif kind == "list":
      # str, not a format: the flag's default parses back to the field's.
      holder = flags.DEFINE_list(name, [str(x) for x in default], text,
                                 **kwargs)
    elif kind == "int":
      holder = flags.DEFINE_integer(name, default, text, **kwargs)
    elif kind == "float":
      holder = flags.DEFINE_float(name, default, text, **kwargs)
    elif kind == "bool":
      holder = flags.DEFINE_bool(name, default, text, **kwargs)
    else:
      holder = flags.DEFINE_string(name, default, text, **kwargs)
    holders[name] = holder
  return holders


def config_from_flags(holders: Mapping[str, flags.FlagHolder],
                      **fixed: Any) -> config_lib.SimConfig:
  """The config the parsed flags describe (validated by ``SimConfig``).

  Args:
    holders: what ``define_config_flags`` returned.
    **fixed: values of the fields the binary set itself (``skip``).

  Returns:
    The config.

  Raises:
    config.ConfigError: naming the first bad field (= its flag).
  """
  hints = typing.get_type_hints(config_lib.SimConfig)
  values = dict(fixed)
  for name, holder in holders.items():
    value = holder.value
    if _flag_kind(hints[name]) == "list":
      value = cli.parse_numbers(value, name)
    values[name] = value
  return config_lib.SimConfig(**values)
