r"""Runs `execution=sharded` rounds over several JAX processes (hosts).

Every process runs this same program; `jax.distributed.initialize` joins them
through the coordinator (process 0's address), and the simulator lays the k
workers over every device of every process (`execution.worker_mesh`); the
exchange's master reductions become cross-process collectives (on CPU, by
Gloo over TCP). Process 0 prints the master's checksum and, with --out,
writes the master, the workers and the round metrics as .npz.

Two processes on one machine, two CPU devices each (a mesh of 4 devices):

  python -m experiments.multihost --coordinator_address=localhost:12355 \
      --num_processes=2 --process_id=0 --local_devices=2 --out=master.npz &
  python -m experiments.multihost --coordinator_address=localhost:12355 \
      --num_processes=2 --process_id=1 --local_devices=2

On two hosts, the same with the first host's address and --process_id=0 on
it, 1 on the other. k (--num_workers) must be a multiple of the total device
count. `--num_processes=1 --execution=vmap` gives the single-process result
to compare with. The data (synthetic, or the bundled sample) is the same on every
process, as each draws it from the same seed.
"""


from absl import app
from absl import flags
import jax
import numpy as np

from eahes_jax import config as config_lib
from eahes_jax import data as data_lib
from eahes_jax import execution
from eahes_jax import methods
from eahes_jax import simulator
from experiments import cli

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator.",
    required=True)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 2, "Processes.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank.",
                                   lower_bound=0, required=True)
_LOCAL_DEVICES = flags.DEFINE_integer(
    "local_devices", 0, "CPU devices of this process (0: the backend's).",
    lower_bound=0)
_METHOD = flags.DEFINE_enum("method", "DEAHES-O", list(methods.methods()),
                            "Method to run (§7).")
_MODEL = flags.DEFINE_enum("model", "mlp", list(config_lib.MODELS), "Network.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 4, "k.")
_COMM_PERIOD = flags.DEFINE_integer("comm_period", 2, "τ.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Minibatch per step.")
_FAILURE_RATE = flags.DEFINE_float("failure_rate", 0.25,
                                   "Fraction of rounds a worker fails.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_EXECUTION = flags.DEFINE_enum(
    "execution", "sharded", ["sharded", "vmap", "map"],
    "Worker axis (the others for a single-process reference).")
_DATA_SOURCE = flags.DEFINE_enum(
    "data_source", "synthetic", ["synthetic", "sample"],
    "synthetic: 256 random MNIST-shaped images; sample: the bundled sample.")
_OUT = flags.DEFINE_string("out", None, "Process 0 writes results here (.npz).")


def make_config() -> config_lib.SimConfig:
  """The simulator configuration the flags describe."""
  return config_lib.SimConfig(
      method=_METHOD.value, model=_MODEL.value,
      num_workers=_NUM_WORKERS.value, comm_period=_COMM_PERIOD.value,
      rounds=_ROUNDS.value, batch_size=_BATCH_SIZE.value,
      failure_rate=_FAILURE_RATE.value, seed=_SEED.value,
      exchange_order="sequential", execution=_EXECUTION.value,
      eval_every=_ROUNDS.value, train_eval_size=64, eval_batch_size=64)


def load_data(source: str) -> data_lib.MNIST:
  """The same dataset on every process."""
  if source == "sample":
    return data_lib.load_mnist("sample")
  return data_lib.synthetic_mnist(256, 128, 0)


def run(config: config_lib.SimConfig, data: data_lib.MNIST
        ) -> dict[str, np.ndarray]:
  """Runs the config's rounds; returns master, workers and metrics as NumPy.

  Every process must call it (the gathers are collectives).
  """
  sim = simulator.Simulation(config, data)
  state, metrics = sim.run_rounds(sim.init_state(), config.rounds)
  out = {}
  for prefix, tree in (("master", state.master), ("workers", state.workers),
                       ("metrics", metrics)):
    flat = jax.tree_util.tree_flatten_with_path(execution.to_host(tree))[0]
    for path, leaf in flat:
      out[prefix + jax.tree_util.keystr(path)] = leaf
  return out


# Nothing above may touch a JAX backend (a SimConfig validates with jnp):
# jax.distributed.initialize must come before it.


def main(argv):
  cli.binary_prologue(argv)
  if _LOCAL_DEVICES.value:
    jax.config.update("jax_num_cpu_devices", _LOCAL_DEVICES.value)
  # Gloo over TCP: the CPU backend's cross-process collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)
  try:
    result = run(make_config(), load_data(_DATA_SOURCE.value))
  except config_lib.ConfigError as e:
    cli.exit_with(e)
  except ValueError as e:
    cli.usage_error(str(e))
  if jax.process_index() == 0:
    master = sum(float(np.abs(v).sum()) for k, v in result.items()
                 if k.startswith("master"))
    print(f"{jax.process_count()} processes, {jax.device_count()} devices;"
          f" sum |master| = {master:.6f}", flush=True)
    if _OUT.value:
      np.savez(_OUT.value, **result)
  jax.distributed.shutdown()


if __name__ == "__main__":
  app.run(main)
