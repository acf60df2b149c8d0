"""Tests of `optax-extras compare`: training, outputs, devices, the command."""

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpl_image

from optax_extras.experiments import cli
from optax_extras.experiments import data
from optax_extras.experiments import models
from optax_extras.experiments import optimizers
from optax_extras.experiments import options
from optax_extras.experiments import train

COLUMNS = ["Epoch", "Iteration", "Time", "Loss", "LossEpoch", "ValidLossEpoch",
           "Alpha", "AlphaEpoch", "Beta"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_csv(path):
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader)
    return header, np.array([[float(x) for x in row] for row in reader])


def _run_module(*args, env=None):
  return subprocess.run(
      [sys.executable, "-m", "optax_extras.experiments", *args], cwd=ROOT,
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, **(env or {})))


# --- end to end on digits ----------------------------------------------------

EPOCHS = 3
STEPS = 1437 // 128


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("compare"))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    code = cli.main(["compare", "--epochs", str(EPOCHS), "--hidden-size", "32",
                     "--optimizers", "sgd,sgd_hd:hypergrad_lr=0.01",
                     "adam_hd:lr=0.003", "--out", out, "--quiet"])
  return out, code, printed.getvalue()


def test_compare_exits_zero_and_writes_every_file(digits_run):
  out, code, _ = digits_run
  assert code == 0
  assert sorted(os.listdir(out)) == sorted([
      "sgd.csv", "sgd_hd-hypergrad_lr=0.01.csv", "adam_hd-lr=0.003.csv",
      "summary.csv", "summary.json", "paper.png", "log_loss.png"])


def test_csv_has_the_hypergradient_repo_columns(digits_run):
  header, _ = _read_csv(os.path.join(digits_run[0], "sgd.csv"))
  assert header == COLUMNS


def test_csv_rows_follow_train_py(digits_run):
  _, rows = _read_csv(os.path.join(digits_run[0], "adam_hd-lr=0.003.csv"))
  table = dict(zip(COLUMNS, rows.T))
  assert len(rows) == 1 + EPOCHS * STEPS
  np.testing.assert_array_equal(table["Iteration"], np.arange(len(rows)))
  np.testing.assert_array_equal(
      table["Epoch"], np.concatenate([[0], np.repeat(np.arange(1, EPOCHS + 1),
                                                     STEPS)]))
  epoch_rows = np.concatenate([[0], np.arange(1, EPOCHS + 1) * STEPS])
  for column in ("LossEpoch", "ValidLossEpoch", "AlphaEpoch"):
    np.testing.assert_array_equal(np.flatnonzero(~np.isnan(table[column])),
                                  epoch_rows)
  assert table["Loss"][0] == table["LossEpoch"][0]
  np.testing.assert_allclose(table["LossEpoch"][STEPS],
                             table["Loss"][1:STEPS + 1].mean(), rtol=1e-6)
  assert np.all(np.diff(table["Time"]) >= 0)
  np.testing.assert_array_equal(table["Beta"], 1e-7)


def test_loss_falls(digits_run):
  _, rows = _read_csv(os.path.join(digits_run[0], "adam_hd-lr=0.003.csv"))
  table = dict(zip(COLUMNS, rows.T))
  epochs = table["LossEpoch"][~np.isnan(table["LossEpoch"])]
  valid = table["ValidLossEpoch"][~np.isnan(table["ValidLossEpoch"])]
  assert epochs[-1] < 0.7 * epochs[0]
  assert valid[-1] < 0.7 * valid[0]


def test_alpha_is_the_learned_rate_for_hd_and_the_set_one_otherwise(digits_run):
  _, sgd = _read_csv(os.path.join(digits_run[0], "sgd.csv"))
  _, sgd_hd = _read_csv(os.path.join(digits_run[0],
                                     "sgd_hd-hypergrad_lr=0.01.csv"))
  np.testing.assert_allclose(sgd[:, 6], 1e-3, rtol=1e-6)
  assert sgd_hd[0, 6] == pytest.approx(1e-3)
  assert sgd_hd[-1, 6] > 1.5e-3  # descending the loss raises a too-low rate


def test_summary_files(digits_run):
  out = digits_run[0]
  with open(os.path.join(out, "summary.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["optimizer"] for r in rows] == [
      "sgd", "sgd_hd:hypergrad_lr=0.01", "adam_hd:lr=0.003"]
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  assert summary["config"]["epochs"] == EPOCHS
  for entry in summary["results"]:
    _, rows = _read_csv(os.path.join(out, entry["csv"]))
    assert entry["train_loss"] == pytest.approx(rows[-1, 4])
    assert entry["valid_loss"] == pytest.approx(rows[-1, 5])
    assert entry["final_learning_rate"] == pytest.approx(rows[-1, 6])
    assert 0.0 <= entry["valid_accuracy"] <= 1.0
    assert entry["steps_per_second"] > 0 and entry["wall_time_s"] > 0
  assert summary["results"][2]["valid_accuracy"] > 0.7


@pytest.mark.parametrize("name, min_shape", [("paper.png", (1000, 400)),
                                             ("log_loss.png", (600, 1200))])
def test_figures_are_png_images(digits_run, name, min_shape):
  path = os.path.join(digits_run[0], name)
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  pixels = mpl_image.imread(path)
  assert pixels.shape[0] >= min_shape[0] and pixels.shape[1] >= min_shape[1]
  assert pixels[..., :3].std() > 0.05  # not a blank canvas


def test_summary_table_is_printed(digits_run):
  lines = digits_run[2].splitlines()
  header = lines.index(next(l for l in lines if l.startswith("optimizer")))
  assert lines[header].split() == ["optimizer", "train", "loss", "valid",
                                   "loss", "valid", "acc", "time", "s",
                                   "steps/s", "final", "lr"]
  rows = [l.split()[0] for l in lines[header + 2:header + 5]]
  assert rows == ["sgd", "sgd_hd:hypergrad_lr=0.01", "adam_hd:lr=0.003"]


# --- same data, same weights --------------------------------------------------


def _experiment(devices=1, epochs=2, task="mlp", seed=0, batch_size=128):
  dataset = data.load_digits()
  model = models.make(task, dataset.train_images.shape[1:], 10, hidden_size=16,
                      hidden_layers=1, channels=(4, 8), seed=seed)
  return train.Experiment(model, dataset, batch_size=batch_size,
                          epochs=epochs, seed=seed, devices=devices)


def _train(experiment, text):
  (choice,) = options.parse([text])
  return experiment.train(choice.label, optimizers.build(choice),
                          progress=False)


def test_every_optimizer_sees_the_same_batches_and_initial_weights():
  experiment = _experiment()
  first, second = _train(experiment, "sgd"), _train(experiment, "adam_hd")
  assert first.batch_digest == second.batch_digest
  assert first.init_digest == second.init_digest
  # The first step's loss is taken before any update: same weights, same batch.
  assert first.rows[1][3] == second.rows[1][3]
  assert first.rows[0][:6] == second.rows[0][:6]
  assert first.rows[2][3] != second.rows[2][3]  # the optimizers did differ


def test_batch_index_stream_is_a_permutation_per_epoch_fixed_by_the_seed():
  order = train.batch_indices(100, 32, epochs=3, seed=5)
  assert order.shape == (3, 3, 32)
  for epoch in order:
    assert len(np.unique(epoch)) == epoch.size
  assert not np.array_equal(order[0], order[1])
  np.testing.assert_array_equal(order, train.batch_indices(100, 32, 3, seed=5))
  assert not np.array_equal(order, train.batch_indices(100, 32, 3, seed=6))


@pytest.mark.parametrize("task", ["logreg", "cnn"])
def test_other_tasks_train(task):
  result = _train(_experiment(task=task, epochs=2), "adam:lr=0.01")
  losses = [row[4] for row in result.rows if not math.isnan(row[4])]
  assert losses[-1] < losses[0]


@pytest.mark.parametrize("task", ["logreg", "mlp", "cnn"])
def test_flax_init_is_used_for_the_linear_layers_of_every_task(task):
  def make(init):
    return models.make(task, (8, 8, 1), 10, hidden_size=16, hidden_layers=1,
                       channels=(4,), seed=0, init=init)
  flax_model, torch_model = make("flax"), make("torch")
  layer = {"logreg": "linear", "mlp": "out", "cnn": "hidden"}[task]
  flax_layer, torch_layer = getattr(flax_model, layer), getattr(torch_model,
                                                                 layer)
  # Flax's biases start at zero, torch's are uniform in +-1/sqrt(fan_in).
  assert not np.any(np.asarray(flax_layer.bias[...]))
  assert np.any(np.asarray(torch_layer.bias[...]))
  assert not np.allclose(flax_layer.kernel[...], torch_layer.kernel[...])


# --- several devices ----------------------------------------------------------


def test_two_devices_match_one_device():
  one = _train(_experiment(devices=1), "adam_hd:hypergrad_lr=1e-5")
  two = _train(_experiment(devices=2), "adam_hd:hypergrad_lr=1e-5")
  rows_one = np.array(one.rows)[:, 3:8]  # Loss .. AlphaEpoch (not Time)
  rows_two = np.array(two.rows)[:, 3:8]
  np.testing.assert_allclose(rows_two, rows_one, rtol=2e-5, atol=1e-7)
  assert one.summary["valid_accuracy"] == pytest.approx(
      two.summary["valid_accuracy"], abs=1 / 360)


def test_cli_runs_on_two_devices(tmp_path):
  completed = _run_module(
      "compare", "--devices", "2", "--epochs", "1", "--hidden-size", "8",
      "--optimizers", "sgd_hd", "--out", str(tmp_path),
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert completed.returncode == 0, completed.stderr
  assert "on 2 cpu device(s)" in completed.stdout
  assert (tmp_path / "sgd_hd.csv").exists()


def test_more_devices_than_available_is_an_error(capsys):
  code = cli.main(["compare", "--devices", "64", "--optimizers", "sgd"])
  err = capsys.readouterr().err
  assert code == 2
  assert "--devices 64" in err and "available" in err


def test_batch_size_not_divisible_by_devices_is_an_error(capsys):
  code = cli.main(["compare", "--devices", "3", "--batch-size", "128",
                   "--optimizers", "sgd"])
  assert code == 2
  assert "--batch-size 128 is not divisible by --devices 3" in (
      capsys.readouterr().err)


@pytest.mark.parametrize("text, initial_rate", [
    ("adam/sgd:lr=0.01/1e-4", 0.01), ("sgd/sgd/sgd:lr=0.1/1e-3/", 0.1),
    ("rmsprop/adam", 0.01)])
def test_stack_trains_end_to_end(text, initial_rate):
  result = _train(_experiment(epochs=2), text)
  losses = [row[4] for row in result.rows if not math.isnan(row[4])]
  assert losses[-1] < losses[0]
  rates = np.array([row[6] for row in result.rows])
  assert rates[0] == pytest.approx(initial_rate)
  assert np.all(np.isfinite(rates)) and not np.all(rates == rates[0])


# --- command line -------------------------------------------------------------


def test_unknown_optimizer_lists_the_valid_ones_without_traceback():
  completed = _run_module("compare", "--optimizers", "sgd,adamw")
  assert completed.returncode == 2
  assert "unknown optimizer 'adamw'; valid names: sgd, sgd_hd" in (
      completed.stderr)
  assert "adam/sgd" in completed.stderr
  assert "Traceback" not in completed.stderr + completed.stdout


def test_unknown_option_is_a_usage_error(capsys):
  code = cli.main(["compare", "--optimizers", "adam_hd:hypergrad=1e-7"])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith("optax-extras compare: error: unknown option "
                        "'hypergrad' for adam_hd; valid options: lr,")


def test_missing_data_file_is_a_usage_error(capsys, tmp_path):
  code = cli.main(["compare", "--dataset", "mnist", "--data-dir",
                   str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2
  assert "expected train-images-idx3-ubyte or train-images-idx3-ubyte.gz in" in err
  assert str(tmp_path) in err


def test_help_works_through_python_m():
  completed = _run_module("--help")
  assert completed.returncode == 0 and "compare" in completed.stdout
  completed = _run_module("compare", "--help")
  assert completed.returncode == 0
  for name in ("--optimizers", "--devices", "adam_hd", "expectigrad",
               "adam/sgd:lr=0.001/1e-5"):
    assert name in completed.stdout


