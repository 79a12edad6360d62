"""`execution=sharded` over two JAX processes equals one process's `vmap`.

Two local processes join through `jax.distributed.initialize` (a coordinator
on localhost, a free port), each with two CPU devices, so the k = 4 workers
lie over a mesh of 4 devices in 2 processes and the exchange's reductions
cross processes (Gloo over TCP, the CPU backend's collectives). Both run
`experiments.multihost`, the documented launch command; so does the
single-process `vmap` reference (`--num_processes=1`).
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 600

# CPU multi-process collectives came with the Gloo implementation.
pytestmark = pytest.mark.skipif(
    "jax_cpu_collectives_implementation" not in jax.config.values,
    reason="this jax has no CPU cross-process collectives"
    " (jax_cpu_collectives_implementation)")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(process_id: int, num_processes: int, port: int, out: str | None,
            *extra: str) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             # Two processes writing one persistent cache would race.
             JAX_ENABLE_COMPILATION_CACHE="false")
  cmd = [sys.executable, "-m", "experiments.multihost",
         f"--coordinator_address=localhost:{port}",
         f"--num_processes={num_processes}", f"--process_id={process_id}",
         *extra]
  if out:
    cmd.append(f"--out={out}")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_all(procs: list[subprocess.Popen]) -> list[str]:
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for proc in procs:  # A process left waiting for a dead peer.
      if proc.poll() is None:
        proc.kill()
        proc.communicate()
  for proc, output in zip(procs, outputs):
    assert proc.returncode == 0, output[-3000:]
  return outputs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  port = _free_port()
  sharded = _wait_all([
      _launch(0, 2, port, str(tmp / "sharded.npz"), "--local_devices=2"),
      _launch(1, 2, port, None, "--local_devices=2")])
  reference = _wait_all([
      _launch(0, 1, _free_port(), str(tmp / "vmap.npz"), "--execution=vmap")])
  return (dict(np.load(tmp / "sharded.npz")), dict(np.load(tmp / "vmap.npz")),
          sharded[0], reference[0])


def test_two_processes_lay_the_workers_over_four_devices(results):
  _, _, sharded_out, reference_out = results
  assert "2 processes, 4 devices" in sharded_out
  assert "1 processes, 1 devices" in reference_out


def test_sharded_over_two_processes_equals_single_process_vmap(results):
  sharded, vmap, _, _ = results
  assert sorted(sharded) == sorted(vmap)
  assert any(k.startswith("master") for k in sharded)
  for name in sharded:
    a, b = sharded[name], vmap[name]
    assert a.shape == b.shape, name
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
      np.testing.assert_array_equal(a, b, err_msg=name)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
  # Non-trivial: the workers trained apart and some exchanges were missed.
  w = sharded["workers['fc1']['kernel']"]
  assert not np.allclose(w[0, 0], w[0, 1])
  assert not sharded["metrics.connected"].all()
