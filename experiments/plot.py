r"""Draws the paper's Figures 3, 4, 5 and the results table from stored results.

  python -m experiments.plot RESULTS_DIR [--out_dir=FIGURES_DIR]

RESULTS_DIR is a folder written by experiments.reproduce_paper (or one run's
folder from experiments.train). For the paper's grid it writes
figure3_overlap.png, figure4_test_accuracy.png, figure5_training_loss.png
(those the results allow), results.md (final test accuracy and training
loss, mean ± sample std over seeds) and claims.md (the paper's claims as
paired per-seed comparisons with 95 % t intervals); runs whose metrics have
wall-clock seconds (experiments.train_distributed's) also get
accuracy_vs_seconds.png, test accuracy against seconds. For a study folder
(reproduce_paper --study=...) it writes the study's table (<study>.md) and,
for the mechanism study, mechanism_curves.png, mechanism_roc.png and
mechanism_events.md.
"""

import sys

from absl import app
from absl import flags

from eahes_jax import plotting
from eahes_jax import studies
from eahes_jax import study_figures
from experiments import cli

_OUT_DIR = flags.DEFINE_string("out_dir", None,
                               "Where figures go (default: RESULTS_DIR).")


def main(argv):
  if len(argv) != 2:
    cli.usage_error("usage: python -m experiments.plot RESULTS_DIR"
                           " [--out_dir=FIGURES_DIR]")
  cli.binary_prologue(argv, positional=1)
  try:
    paths = []
    if studies.read_study(argv[1]) is None:
      paths += plotting.make_figures(argv[1], _OUT_DIR.value)
    paths += study_figures.write_report(argv[1], _OUT_DIR.value)
    for path in paths:
      print(path)
  except (OSError, ValueError, KeyError) as e:
    # No results, an unwritable --out_dir, or a results file that is not ours
    # (bad JSON, missing fields): one line, no traceback.
    what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
    print(f"error: {what}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
