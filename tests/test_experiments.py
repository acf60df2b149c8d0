"""Tests of `optax-extras compare`: data, optimizer lists, training, outputs."""

import contextlib
import csv
import gzip
import io
import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import optax
import pytest
from matplotlib import image as mpl_image

from optax_extras.experiments import cli
from optax_extras.experiments import data
from optax_extras.experiments import models
from optax_extras.experiments import optimizers
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
  (choice,) = optimizers.parse([text])
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


# --- optimizer lists ----------------------------------------------------------


def test_list_syntax_names_and_options():
  choices = optimizers.parse(
      ["sgd,adam_hd:lr=0.001,hypergrad_lr=1e-7,adam", "nadam:b1=0.8"])
  assert [c.name for c in choices] == ["sgd", "adam_hd", "adam", "nadam"]
  assert choices[1].options == {"lr": 0.001, "hypergrad_lr": 1e-7}
  assert choices[3].options == {"b1": 0.8}
  assert choices[1].label == "adam_hd:lr=0.001,hypergrad_lr=1e-07"


@pytest.mark.parametrize("name", list(optimizers._FLAT))
def test_every_named_optimizer_builds_and_steps(name):
  (choice,) = optimizers.parse([name])
  built = optimizers.build(choice)
  params = {"w": np.ones(3, np.float32), "b": np.zeros(2, np.float32)}
  state = built.tx.init(params)
  grads = {"w": np.full(3, 0.5, np.float32), "b": np.ones(2, np.float32)}
  updates, state = built.tx.update(grads, state, params)
  assert np.all(np.asarray(updates["w"]) < 0)
  assert float(built.rate(state)) > 0


def test_stack_parses_into_levels():
  (choice,) = optimizers.parse(["rmsprop/adam:lr=0.001/1e-4,gamma=0.9/"])
  assert choice.is_stack
  assert choice.options == ({"lr": 0.001, "gamma": 0.9}, {"lr": 1e-4})
  assert choice.label == "rmsprop/adam:lr=0.001/0.0001,gamma=0.9/"


class _FakeGdtuo:
  """Records constructor calls as nested tuples instead of building them."""

  def __getattr__(self, constructor):
    return lambda **kwargs: (constructor, kwargs)


@pytest.mark.parametrize("text, expected", [
    ("adam/sgd:lr=0.001/1e-5",
     ("Adam", {"alpha": 0.001, "optimizer": ("SGD", {"alpha": 1e-5})})),
    ("sgd/sgd/sgd",
     ("SGD", {"optimizer": ("SGD", {"alpha": optimizers.HYPER_LEVEL_LR,
                                    "optimizer": ("SGD", {
                                        "alpha": optimizers.HYPER_LEVEL_LR})})})),
    ("rmsprop/adam:gamma=0.9/,lr=/1e-3",
     ("RMSProp", {"gamma": 0.9, "optimizer": ("Adam", {"alpha": 1e-3})})),
    ("adagrad/adam:beta1=/0.8",
     ("AdaGrad", {"optimizer": ("Adam", {"alpha": optimizers.HYPER_LEVEL_LR,
                                         "beta1": 0.8})})),
])
def test_stack_builds_nested_gdtuo_constructors(text, expected):
  (choice,) = optimizers.parse([text])
  assert optimizers.stack_transformation(choice, _FakeGdtuo()) == expected


@pytest.mark.parametrize("text, message", [
    ("adam/sgd:lr=0.001", "option lr of adam/sgd needs 2 values separated by"),
    ("adam/sgd:gamma=0.9/", "unknown option 'gamma' for the adam level of "
     "adam/sgd; valid options: lr, beta1, beta2, log_eps"),
    ("adam/lbfgs", "unknown level 'lbfgs' in stack adam/lbfgs; valid levels: "
     "sgd, adam, rmsprop, adagrad"),
    ("adam_hd:momentum=0.9", "unknown option 'momentum' for adam_hd; valid "
     "options: lr, b1, b2, eps, hypergrad_lr, weight_decay"),
    ("sgd:lr=fast", "option lr of sgd must be a number, got 'fast'"),
    ("lr=0.1,sgd", "option 'lr=0.1' comes before any optimizer name"),
    ("sgd,,adam", "empty item"),
    ("sgd,sgd", "optimizer 'sgd' is listed twice"),
    ("sgd:lr", "option 'lr' of sgd is not of the form key=value"),
])
def test_bad_lists_name_the_problem(text, message):
  with pytest.raises(optimizers.OptimizerError) as error:
    optimizers.parse([text])
  assert message in str(error.value)


def test_bad_value_from_the_constructor_names_the_optimizer():
  (choice,) = optimizers.parse(["adam_hd:b1=1.5"])
  with pytest.raises(optimizers.OptimizerError, match="adam_hd:b1=1.5: b1"):
    optimizers.build(choice)


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


# --- data loaders -------------------------------------------------------------


def _idx(array, magic=None):
  array = np.asarray(array, np.uint8)
  magic = 0x800 | array.ndim if magic is None else magic
  header = magic.to_bytes(4, "big") + b"".join(
      n.to_bytes(4, "big") for n in array.shape)
  return header + array.tobytes()


def _write_mnist(directory, gz, train_n=6, valid_n=4, mutate=None):
  rng = np.random.default_rng(0)
  arrays = {
      "train-images-idx3-ubyte": rng.integers(0, 256, (train_n, 28, 28)),
      "train-labels-idx1-ubyte": rng.integers(0, 10, train_n),
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (valid_n, 28, 28)),
      "t10k-labels-idx1-ubyte": rng.integers(0, 10, valid_n),
  }
  for name, array in arrays.items():
    content = _idx(array)
    if mutate:
      content = mutate(name, content)
    if gz:
      with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
        f.write(content)
    else:
      with open(os.path.join(directory, name), "wb") as f:
        f.write(content)
  return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loader_reads_idx_files(tmp_path, gz):
  arrays = _write_mnist(tmp_path, gz)
  dataset = data.load("mnist", str(tmp_path))
  assert dataset.train_images.shape == (6, 28, 28, 1)
  assert dataset.valid_images.shape == (4, 28, 28, 1)
  assert dataset.train_images.dtype == np.float32
  np.testing.assert_array_equal(dataset.train_labels,
                                arrays["train-labels-idx1-ubyte"])
  expected = (arrays["t10k-images-idx3-ubyte"] / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(dataset.valid_images[..., 0], expected, rtol=1e-5)


def test_mnist_missing_file_names_it(tmp_path):
  _write_mnist(tmp_path, gz=False)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(data.DataError) as error:
    data.load("mnist", str(tmp_path))
  assert str(error.value) == (
      f"mnist: expected t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz "
      f"in {tmp_path} (not found)")


def test_mnist_bad_magic_number(tmp_path):
  _write_mnist(tmp_path, gz=True, mutate=lambda name, c: (
      (0x801).to_bytes(4, "big") + c[4:] if name.startswith("train-images")
      else c))
  with pytest.raises(data.DataError) as error:
    data.load("mnist", str(tmp_path))
  message = str(error.value)
  assert "train-images-idx3-ubyte.gz: bad magic number 0x00000801" in message
  assert "expected 0x00000803" in message


def test_mnist_truncated_file(tmp_path):
  _write_mnist(tmp_path, gz=False, mutate=lambda name, c: (
      c[:-10] if name.startswith("t10k-images") else c))
  with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte: truncated"):
    data.load("mnist", str(tmp_path))


def test_mnist_corrupt_gzip(tmp_path):
  _write_mnist(tmp_path, gz=True)
  (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
  with pytest.raises(data.DataError, match="train-labels-idx1-ubyte.gz: cannot "
                     "read it"):
    data.load("mnist", str(tmp_path))


def test_missing_data_dir(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.load("cifar10", str(tmp_path / "nowhere"))
  with pytest.raises(data.DataError, match="needs --data-dir"):
    data.load("mnist")


def _write_cifar(directory, n=3):
  rng = np.random.default_rng(1)
  batches = {}
  for name in (*data.CIFAR10_TRAIN, data.CIFAR10_VALID):
    batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": list(rng.integers(0, 10, n)),
             b"batch_label": name.encode()}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(batch, f)
    batches[name] = batch
  return batches


@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_loader_reads_pickle_batches(tmp_path, nested):
  directory = tmp_path / "cifar-10-batches-py" if nested else tmp_path
  directory.mkdir(exist_ok=True)
  batches = _write_cifar(directory)
  dataset = data.load("cifar10", str(tmp_path))
  assert dataset.train_images.shape == (15, 32, 32, 3)
  assert dataset.valid_images.shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(dataset.valid_labels,
                                batches["test_batch"][b"labels"])
  raw = batches["data_batch_2"][b"data"][0]  # channel-major rows of 1024
  pixel = raw.reshape(3, 32, 32)[:, 4, 7] / 255.0
  np.testing.assert_allclose(
      dataset.train_images[3, 4, 7],
      (pixel - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD),
      rtol=1e-5)


def test_cifar10_missing_batch_names_it(tmp_path):
  _write_cifar(tmp_path)
  os.remove(tmp_path / "data_batch_4")
  with pytest.raises(data.DataError) as error:
    data.load("cifar10", str(tmp_path))
  assert str(error.value) == (
      f"cifar10: expected the batch file {tmp_path / 'data_batch_4'} "
      "(not found)")


def test_cifar10_malformed_batch(tmp_path):
  _write_cifar(tmp_path)
  (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
  with pytest.raises(data.DataError, match="test_batch: not a CIFAR-10 python "
                     "batch, the pickle does not load"):
    data.load("cifar10", str(tmp_path))
  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
  with pytest.raises(data.DataError, match=r"'data' is uint8 \(2, 100\)"):
    data.load("cifar10", str(tmp_path))


def test_optax_tree_get_reads_the_logged_rate():
  built = optimizers.build(optimizers.parse(["adam_hd:lr=0.02"])[0])
  state = built.tx.init({"w": np.ones(2, np.float32)})
  assert float(built.rate(state)) == pytest.approx(
      float(optax.tree.get(state, "learning_rate"))) == pytest.approx(0.02)
