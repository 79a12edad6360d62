r"""Draws the paper's Figures 3, 4, 5 and the results table from stored results.

  python -m experiments.plot RESULTS_DIR [--out_dir=FIGURES_DIR]

RESULTS_DIR is a folder written by experiments.reproduce_paper (or one run's
folder from experiments.train). Writes figure3_overlap.png,
figure4_test_accuracy.png, figure5_training_loss.png (those the results
allow) and results.md (final test accuracy and training loss, mean ± std
over seeds).
"""

import sys

from absl import app
from absl import flags

from eahes_jax import experiment
from eahes_jax import plotting

_OUT_DIR = flags.DEFINE_string("out_dir", None,
                               "Where figures go (default: RESULTS_DIR).")


def main(argv):
  if len(argv) != 2:
    experiment.usage_error("usage: python -m experiments.plot RESULTS_DIR"
                           " [--out_dir=FIGURES_DIR]")
  try:
    for path in plotting.make_figures(argv[1], _OUT_DIR.value):
      print(path)
  except (OSError, ValueError, KeyError) as e:
    # No results, an unwritable --out_dir, or a results file that is not ours
    # (bad JSON, missing fields): one line, no traceback.
    what = f"missing field {e}" if isinstance(e, KeyError) else str(e)
    print(f"error: {what}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
