"""The binaries' flags come from SimConfig's fields, and errors become flags."""

import dataclasses

from absl import flags
import pytest

from eahes_jax import config as config_lib
from eahes_jax import results_folder
from experiments import cli
from experiments import config_flags


def _define(**kwargs):
  fv = flags.FlagValues()
  holders = config_flags.define_config_flags(fv, **kwargs)
  return fv, holders


def test_every_field_has_a_flag_with_its_default_and_help():
  fv, holders = _define()
  fields = {f.name: f.default for f in dataclasses.fields(config_lib.SimConfig)}
  assert set(holders) == set(fields)
  fv(["prog"])
  config = config_flags.config_from_flags(holders)
  assert config == config_lib.SimConfig()
  docs = config_flags.field_help()
  for name in fields:
    assert docs.get(name), f"SimConfig's docstring does not describe {name}"
    assert docs[name] in fv[name].help


def test_flags_reach_fields_that_had_none():
  # hessian_power and eval_batch_size had no flag when flags were copied by
  # hand; a generated flag set cannot drift from the dataclass.
  fv, holders = _define()
  fv(["prog", "--hessian_power=0.5", "--eval_batch_size=250",
      "--dw_history=2", "--dw_coeffs=0.7,0.3", "--lr=0.05",
      "--method=EAHES-OM", "--oracle_variant=graded"])
  config = config_flags.config_from_flags(holders)
  assert config.hessian_power == 0.5
  assert config.eval_batch_size == 250
  assert config.dw_coeffs == (0.7, 0.3)
  assert config.lr == 0.05
  assert (config.method, config.oracle_variant) == ("EAHES-OM", "graded")


def test_enum_flags_take_exactly_the_configs_choices():
  fv, _ = _define()
  for name, allowed in config_lib.choices().items():
    assert tuple(fv[name].parser.enum_values) == tuple(allowed), name
  with pytest.raises(flags.IllegalFlagValueError):
    fv(["prog", "--failure_mode=explode"])


def test_skip_and_fixed_fields():
  fv, holders = _define(skip=("num_seeds",), help_notes={"seed": "NOTE."})
  assert "num_seeds" not in holders and "num_seeds" not in fv
  assert fv["seed"].help.endswith("NOTE.")
  fv(["prog"])
  assert config_flags.config_from_flags(holders, num_seeds=3).num_seeds == 3


def test_a_bad_value_is_a_config_error_naming_the_flag():
  fv, holders = _define()
  fv(["prog", "--dw_coeffs=0.5,x,0.2"])
  with pytest.raises(config_lib.ConfigError) as e:
    config_flags.config_from_flags(holders)
  assert e.value.field == "dw_coeffs"
  fv.unparse_flags()
  fv(["prog", "--alpha=0"])
  with pytest.raises(config_lib.ConfigError) as e:
    config_flags.config_from_flags(holders)
  assert e.value.field == "alpha"


@pytest.mark.parametrize("message, shown", [
    ("pass `resume=True` to continue", "pass --resume to continue"),
    ("`out_dir` 'x' is a file", "--out_dir 'x' is a file"),
    ("pass `data_source=idx` `mnist_dir=FOLDER`",
     "pass --data_source=idx --mnist_dir=FOLDER"),
    ("`data_source='tfds'` needs TensorFlow", "--data_source=tfds needs"
     " TensorFlow"),
    ("`checkpoint=False`", "--nocheckpoint"),
    ("no arguments here", "no arguments here"),
])
def test_library_arguments_become_flags(message, shown):
  assert cli.flag_text(message) == shown


def test_main_error_names_the_flag_once(capsys):
  code = cli.main_error(config_lib.ConfigError("lr must be > 0, got -1", "lr"))
  assert code == 1
  assert capsys.readouterr().err.strip() == "error: --lr must be > 0, got -1"
  cli.main_error(config_lib.ConfigError(
      "`mnist_dir` '/x' does not exist", "mnist_dir"))
  assert capsys.readouterr().err.strip() == (
      "error: --mnist_dir '/x' does not exist")
  cli.main_error(results_folder.FolderMismatchError(
      "`out_dir` 'r' already holds this run; pass `resume=True`"))
  assert capsys.readouterr().err.strip() == (
      "error: --out_dir 'r' already holds this run; pass --resume")


def test_an_interrupted_grid_says_how_a_grid_continues(monkeypatch, tmp_path):
  # reproduce_paper has no --resume: its runs resume when it runs again.
  from eahes_jax import experiment  # pylint: disable=g-import-not-at-top
  from eahes_jax import grid  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top

  def interrupted(*args, **kwargs):
    raise experiment.Interrupted(signal.SIGTERM, 7, True)

  monkeypatch.setattr(experiment, "run_experiment", interrupted)
  with pytest.raises(experiment.Interrupted) as e:
    grid.run_configs([("EASGD_k2", config_lib.SimConfig(method="EASGD"))],
                     str(tmp_path), data=object(), log=lambda s: None)
  shown = cli.flag_text(str(e.value))
  assert "--resume" not in shown
  assert "run the same command again: EASGD_k2 resumes" in shown
  assert e.value.rounds_done == 7 and e.value.saved
