r"""The sweep that picks dynamic weighting's defaults (p, c, k; §5).

  python -m experiments.sweep_dynamic --out_dir=results/dw_sweep

DEAHES-O over p ∈ {1, 2, 3} (c = (1), (0.7, 0.3), (0.6, 0.3, 0.1)) and the
threshold k ∈ {-0.1, -0.3, -1, -3}, with EAHES-O and EAHES-OM as references,
on the MNIST sample (its held-out split, not the MNIST test set), k = 4
workers, τ = 1, failure rate 1/3, 100 rounds, three seeds, the mlp by default
(14 runs in a few minutes on 2 cores). Prints and writes sweep.md; the
README quotes the table behind SimConfig's defaults.
"""

from absl import app
from absl import flags

from eahes_jax import config as config_lib
from eahes_jax import grid
from experiments import cli

_OUT_DIR = flags.DEFINE_string("out_dir", "results/dw_sweep",
                               "Results folder.")
_MODEL = flags.DEFINE_enum("model", "mlp", list(config_lib.MODELS),
                           "Network.")
_ROUNDS = flags.DEFINE_integer("rounds", 100, "Rounds per run.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 4, "Workers.")
_DATA_SOURCE = flags.DEFINE_string("data_source", "sample", "MNIST source.")


def main(argv):
  cli.binary_prologue(argv)
  base = config_lib.SimConfig(model=_MODEL.value, rounds=_ROUNDS.value,
                              num_workers=_NUM_WORKERS.value, num_seeds=3,
                              eval_every=10, train_eval_size=1000)
  print(grid.run_dynamic_weighting_sweep(base, _OUT_DIR.value,
                                         data_source=_DATA_SOURCE.value))


if __name__ == "__main__":
  app.run(main)
