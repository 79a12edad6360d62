r"""Runs the paper's grid (Figures 3-5) into one results folder.

  python -m experiments.reproduce_paper --preset=quick --out_dir=results/quick
  python -m experiments.plot results/quick

Six methods × k ∈ {4, 8} × τ ∈ {1, 2, 4} × 3 seeds at failure rate 1/3, and
the overlap sweep r ∈ {0, 12.5, 25, 37.5, 50} % on EAHES-O. Complete runs are
skipped and interrupted ones resume, so an interrupted grid is finished by
running the same command again. --preset=quick is for checking the pipeline
on a CPU: its 40 runs took from 3.5 minutes (2 cores, nothing else running)
to over 10 minutes (the cores shared with other jobs), see the README;
--preset=paper is for an accelerator (--eval_every=5 for smoother curves than
the preset's 10). Each run prints "compiling…" first: its first progress line
includes the compilation, the rates after it do not.

--study runs one of the fidelity studies instead of the grid (readings,
mechanism, lr_sweep, dw_sweep, label_skew; see eahes_jax/studies.py), at the
study's own scale unless --rounds, --num_seeds, --model or --eval_every say
otherwise; like the grid, it resumes:

  python -m experiments.reproduce_paper --study=readings --out_dir=results/readings
  python -m experiments.plot results/readings

--methods, --workers, --periods and --overlap_ratios reshape the grid, e.g. a
short smoke test of the whole pipeline:

  python -m experiments.reproduce_paper --out_dir=/tmp/smoke --rounds=4 \
      --num_seeds=1 --methods=EASGD,DEAHES-O --workers=2 --periods=1 \
      --overlap_ratios=0,0.5
"""


from absl import app
from absl import flags

from eahes_jax import config as config_lib
from eahes_jax import grid
from eahes_jax import studies
from eahes_jax import tensorboard_log
from experiments import cli

_STUDY = flags.DEFINE_enum(
    "study", "grid", ["grid"] + sorted(studies.STUDIES),
    "What to run: the paper's grid (--preset) or one of the fidelity"
    " studies (eahes_jax/studies.py).")
_PRESET = flags.DEFINE_enum("preset", "quick", list(grid.PRESETS),
                            "Grid size: quick (CPU) or paper (accelerator).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Results folder (required).")
# --data_source defaults to the preset's.
_DATA_SOURCE, _MNIST_DIR = cli.define_data_flags(default_source=None)
_ROUNDS = flags.DEFINE_integer("rounds", None,
                               "Override the preset's rounds per run.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", None,
                                  "Override the preset's seeds per run.")
_MODEL = flags.DEFINE_enum("model", None, list(config_lib.MODELS),
                           "Override the preset's model.")
_EXECUTION = flags.DEFINE_enum("execution", "auto",
                               list(config_lib.EXECUTIONS),
                               "Worker-axis execution.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0, "Rounds between checkpoints of each run.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", None,
                                   "Override the preset's evaluation interval.")
# Shrink (or reshape) the grid, e.g. for a smoke test or one panel of Fig. 4.
_METHODS = flags.DEFINE_list(
    "methods", None, "Override the grid's methods (comma-separated; empty:"
    " only the overlap sweep).")
_WORKERS = flags.DEFINE_list("workers", None,
                             "Override the grid's k values (comma-separated).")
_PERIODS = flags.DEFINE_list("periods", None,
                             "Override the grid's τ values (comma-separated).")
_OVERLAP_RATIOS = flags.DEFINE_list(
    "overlap_ratios", None, "Override the overlap sweep's r values (Fig. 3;"
    " comma-separated; empty: no sweep).")

_TENSORBOARD = flags.DEFINE_bool(
    "tensorboard", True,
    "Write TensorBoard events into each run's folder (RUN/tensorboard; view"
    " them all with tensorboard --logdir OUT_DIR/runs) when tensorboardX is"
    f" installed ({tensorboard_log.INSTALL_HINT}).")

flags.mark_flag_as_required("out_dir")


def main(argv):
  cli.binary_prologue(argv)
  try:
    if _CHECKPOINT_EVERY.value < 0:
      raise config_lib.ConfigError(
          "checkpoint_every must be an integer >= 0, got"
          f" {_CHECKPOINT_EVERY.value}", "checkpoint_every")
    lists = {}
    if _WORKERS.value is not None:
      lists["workers"] = cli.parse_numbers(_WORKERS.value, "workers",
                                                  int)
    if _PERIODS.value is not None:
      lists["periods"] = cli.parse_numbers(_PERIODS.value, "periods",
                                                  int)
    if _OVERLAP_RATIOS.value is not None:
      lists["overlap_ratios"] = cli.parse_numbers(
          _OVERLAP_RATIOS.value, "overlap_ratios")
    if _METHODS.value is not None:
      lists["methods"] = tuple(_METHODS.value)
    base = config_lib.SimConfig(execution=_EXECUTION.value)
    if _STUDY.value != "grid":
      if lists:
        field = sorted(lists)[0]
        raise config_lib.ConfigError(
            f"{field} shapes the grid; --study={_STUDY.value} fixes its own"
            " runs", field)
      # The study's own scale, with the flags given on top of it.
      own = studies.get_study(_STUDY.value).runs[0][1]
      pick = lambda flag, default: default if flag.value is None else flag.value
      scale = studies.Scale(
          model=pick(_MODEL, own.model), rounds=pick(_ROUNDS, own.rounds),
          num_seeds=pick(_NUM_SEEDS, own.num_seeds),
          eval_every=pick(_EVAL_EVERY, own.eval_every),
          train_eval_size=own.train_eval_size)
      studies.run_study(
          studies.get_study(_STUDY.value, scale, base), _OUT_DIR.value,
          data_source=_DATA_SOURCE.value or "auto",
          mnist_dir=_MNIST_DIR.value,
          checkpoint_every=_CHECKPOINT_EVERY.value,
          tensorboard=_TENSORBOARD.value and tensorboard_log.available())
      return
    preset = grid.customize(grid.PRESETS[_PRESET.value], rounds=_ROUNDS.value,
                            num_seeds=_NUM_SEEDS.value, model=_MODEL.value,
                            eval_every=_EVAL_EVERY.value, **lists)
    grid.run_grid(preset, _OUT_DIR.value, base=base,
                  data_source=_DATA_SOURCE.value, mnist_dir=_MNIST_DIR.value,
                  checkpoint_every=_CHECKPOINT_EVERY.value,
                  tensorboard=_TENSORBOARD.value and tensorboard_log.available())
  except cli.EXPECTED_ERRORS as e:
    cli.exit_with(e)


if __name__ == "__main__":
  app.run(main)
