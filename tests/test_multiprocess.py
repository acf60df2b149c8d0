"""Two processes on this machine (JAX multi-controller runtime, CPU
collectives over 127.0.0.1) train data-parallel over the global mesh and
match a single-process run: examples/multiprocess_train.py, and
`optax-extras compare` with --coordinator-address/--num-processes/
--process-id."""

import csv
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

EXAMPLE = (pathlib.Path(__file__).resolve().parents[1] / "examples"
           / "multiprocess_train.py")
TIMEOUT_S = 120


@pytest.fixture(name="example", scope="module")
def fixture_example():
  spec = importlib.util.spec_from_file_location("multiprocess_train", EXAMPLE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(name="runs", scope="module")
def fixture_runs(example, tmp_path_factory):
  """(results of each of two processes, the single-process results)."""
  out_dir = str(tmp_path_factory.mktemp("multiprocess"))
  workers = example.start_workers(2, out_dir)
  try:
    reference = example.single_process_results()
  finally:
    distributed = example.wait_for_workers(workers, out_dir, TIMEOUT_S)
  return distributed, reference


def test_two_processes_form_one_global_mesh(runs):
  distributed, _ = runs
  for result in distributed:
    assert result["process_count"] == 2
    assert result["device_count"] == 2


@pytest.mark.parametrize("name", [
    "optax.adam", "diffgrad", "expectigrad", "sgd_hd", "adam_hd",
    "gdtuo.Adam(optimizer=SGD(1e-5))"])
def test_data_parallel_step_matches_single_process(runs, name):
  distributed, reference = runs
  for leaf in ("w", "b"):
    key = f"{name}/{leaf}"
    for result in distributed:
      np.testing.assert_allclose(result[key], reference[key],
                                 rtol=1e-5, atol=1e-6)



def _compare(out, devices, *extra, env=None):
  """`optax-extras compare` on a tiny MLP, in a new process."""
  return subprocess.Popen(
      [sys.executable, "-m", "optax_extras.experiments", "compare",
       "--optimizers", "sgd,adam_hd,adam/sgd", "--epochs", "1",
       "--hidden-size", "8", "--hidden-layers", "1", "--quiet",
       "--devices", str(devices), "--out", str(out), *extra],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, **(env or {})})


def _two_processes(out, devices):
  address = f"127.0.0.1:{_free_port()}"
  return [_compare(out(i), devices, "--coordinator-address", address,
                   "--num-processes", "2", "--process-id", str(i),
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
          for i in range(2)]


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _losses(run_dir):
  """{optimizer CSV: its per-step losses} of a compare run."""
  losses = {}
  for path in sorted(run_dir.glob("*.csv")):
    if path.name != "summary.csv":
      with open(path) as f:
        losses[path.name] = np.array(
            [float(row["Loss"]) for row in csv.DictReader(f)])
  return losses


def test_compare_on_two_processes_equals_two_local_devices(tmp_path):
  """`optax-extras compare` over two processes (one CPU device each, gloo)
  equals the same comparison in one process with two devices; process 0
  writes the files, process 1 writes nothing and says so."""
  workers = _two_processes(lambda i: tmp_path / f"process{i}", 2)
  local = _compare(tmp_path / "local", 2, env={
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in [*workers, local]]
  for process, output in zip([*workers, local], outputs):
    assert process.returncode == 0, output
  assert "process 1 of 2: process 0 writes the files" in outputs[1]
  assert not (tmp_path / "process1").exists()
  distributed, single = (_losses(tmp_path / "process0"),
                         _losses(tmp_path / "local"))
  assert sorted(distributed) == sorted(single)
  assert len(distributed) == 3
  for name, losses in distributed.items():
    assert len(losses) > 5
    np.testing.assert_allclose(losses, single[name], rtol=1e-5, err_msg=name)


def test_compare_on_two_processes_needs_every_device(tmp_path):
  for process in _two_processes(lambda i: tmp_path / "out", 1):
    output = process.communicate(timeout=TIMEOUT_S)[0]
    assert process.returncode == 2, output
    assert ("--devices 1: with --num-processes 2 every device of every "
            "process takes part; give --devices 2") in output
  assert not (tmp_path / "out").exists()
