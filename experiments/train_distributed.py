r"""Runs one experiment on Ray: the master and every worker as processes.

Example (local Ray, no dashboard; 4 workers, dropped exchanges 1/3 of rounds):

  python -m experiments.train_distributed --method=DEAHES-O --model=mlp \
      --num_workers=4 --rounds=100 --out_dir=runs/ray_deahes

On a cluster (``ray start --head`` on one machine, ``ray start
--address=HEAD:6379`` on the others) add ``--ray_address=auto`` on the head.
The folder gets the simulator's config.json, metrics.jsonl (with wall_time_s)
and summary.json, plus the master's exchanges.jsonl and runtime.json. With
--checkpoint_every=N the master checkpoints every N exchanges and journals
every call in between (OUT_DIR/master_checkpoint), so a killed master is
restarted by Ray and goes on from where it died (--kill_master=R kills it at
round R, for tests and demos).
"""


from absl import app
from absl import flags

from eahes_jax import config as config_lib
from eahes_jax import experiment
from experiments import cli
from experiments import config_flags

# One flag per SimConfig field; the runtime refuses the values it does not
# support (ray_runtime.check_config) with a one-line error naming the flag.
_CONFIG = config_flags.define_config_flags(help_notes={
    "failure_mode": "On Ray, crash kills the worker's process and Ray"
                    " restarts it.",
    "straggler_slowdown": "On Ray, a straggling round takes 1 / (1 - this)"
                          " times as long (at most 10x).",
})
_DATA_SOURCE, _MNIST_DIR = cli.define_data_flags()
# Listed in this binary's --help, not only under --helpfull.
flags.adopt_module_key_flags(config_flags)
flags.adopt_module_key_flags(cli)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Results folder.")
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", None,
    "None: start a local Ray (no dashboard); 'auto' or host:port: join a"
    " running cluster.")
_ORDERED = flags.DEFINE_bool(
    "ordered", False,
    "Lockstep, exchanges in the simulator's order (reproduces it).")
_KILL_WORKER = flags.DEFINE_list(
    "kill_worker", [],
    "worker:round pairs: kill that worker's process once the master heard"
    " that round from it (Ray restarts it).")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 0,
    "Exchanges between the master's orbax checkpoints (in"
    " OUT_DIR/master_checkpoint; every call is also journaled): a killed"
    " master is restarted by Ray and restores. 0: no checkpoint, a killed"
    " master ends the run.")
_KILL_MASTER = flags.DEFINE_list(
    "kill_master", [],
    "Rounds: kill the master's process (SIGKILL) right after it applied the"
    " first exchange of each (Ray restarts it; needs --checkpoint_every).")


def main(argv):
  cli.binary_prologue(argv)
  # Imported here so that a missing Ray is a one-line error, not a traceback.
  from eahes_jax import ray_runtime  # pylint: disable=g-import-not-at-top
  try:
    kills = []
    for pair in _KILL_WORKER.value:
      worker, _, round_ = pair.partition(":")
      if not (worker.isdigit() and round_.isdigit()):
        raise config_lib.ConfigError(
            f"kill_worker must be worker:round pairs, got {pair!r}",
            "kill_worker")
      kills.append((int(worker), int(round_)))
    if not all(r.isdigit() for r in _KILL_MASTER.value):
      raise config_lib.ConfigError(
          f"kill_master must be rounds, got {','.join(_KILL_MASTER.value)!r}",
          "kill_master")
    config = config_flags.config_from_flags(_CONFIG)
    out_dir = _OUT_DIR.value or experiment.default_out_dir(config) + "_ray"
    ray_runtime.train(config, out_dir, data_source=_DATA_SOURCE.value,
                      mnist_dir=_MNIST_DIR.value,
                      ray_address=_RAY_ADDRESS.value, ordered=_ORDERED.value,
                      kills=kills, checkpoint_every=_CHECKPOINT_EVERY.value,
                      kill_master=[int(r) for r in _KILL_MASTER.value])
  except cli.EXPECTED_ERRORS + (ray_runtime.RayUnavailableError,) as e:
    cli.exit_with(e)


if __name__ == "__main__":
  app.run(main)
