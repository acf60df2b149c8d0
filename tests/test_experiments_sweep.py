"""Tests of `optax-extras sweep`: the grid, batched training equal to one run
per value, seeds, divergence, spreads, the files and the figure."""

import csv
import json
import math
import os

import numpy as np
import pytest
from matplotlib import image as mpl_image

from optax_extras import experiments
from optax_extras.experiments import cli
from optax_extras.experiments import options
from optax_extras.experiments import studies

TASK = dict(epochs=2, hidden_size=8, hidden_layers=1)


@pytest.fixture(scope="module")
def swept():
  return experiments.sweep("sgd_hd,adam/sgd", "lr=1e-3:1e-1:3", seeds=(1, 2),
                           **TASK)


def test_one_row_per_optimizer_and_value(swept):
  assert [(r["optimizer"], r["value"]) for r in swept.rows] == [
      (o, v) for o in ("sgd_hd", "adam/sgd") for v in (0.001, 0.01, 0.1)]
  for row in swept.rows:
    assert row["option"] == "lr" and row["seeds"] == 2
    assert row["train_loss_min"] <= row["train_loss"] <= row["train_loss_max"]
    assert 0 <= row["valid_accuracy"] <= 1
  assert "L1.learning_rate" in swept.rows[0]
  # adam/sgd: SGD learns Adam's hyperparameters; nothing learns SGD's.
  assert {k for k in swept.rows[3] if k.startswith("L")} == {
      "L1.alpha", "L1.beta1", "L1.beta2"}


@pytest.mark.parametrize("index, text", [(1, "sgd_hd:lr=0.01"),
                                         (5, "adam/sgd:lr=0.1/")])
def test_batched_grid_equals_one_compare_per_value(swept, index, text):
  points = [p for p in swept.points
            if p["optimizer"] == swept.rows[index]["optimizer"]
            and p["value"] == swept.rows[index]["value"]]
  for point in points:
    (result,) = experiments.compare(text, seed=point["seed"], **TASK).results
    losses = result.table()["Loss"][1:]
    np.testing.assert_allclose(point["losses"], losses, rtol=2e-5)
    assert point["train_loss"] == pytest.approx(
        result.summary["train_loss"], rel=2e-5)
    learned = [k for k in result.columns if k.startswith("L") and "." in k]
    for key in learned:
      assert point[key] == pytest.approx(result.rows[-1][
          result.columns.index(key)], rel=2e-5)


def test_seeds_give_their_own_weights_and_batches(swept):
  one, two = [p for p in swept.points
              if p["optimizer"] == "sgd_hd" and p["value"] == 0.001]
  assert one["seed"] == 1 and two["seed"] == 2
  assert one["losses"][0] != two["losses"][0]
  row = swept.rows[0]
  assert row["train_loss"] == pytest.approx(
      (one["train_loss"] + two["train_loss"]) / 2)
  assert row["train_loss_min"] == min(one["train_loss"], two["train_loss"])


def test_spread_over_the_grid(swept):
  rows = [r for r in swept.rows if r["optimizer"] == "sgd_hd"]
  losses = [r["train_loss"] for r in rows]
  assert swept.spreads["sgd_hd"]["spread"] == pytest.approx(
      max(losses) / min(losses))
  assert swept.spreads["sgd_hd"]["non_diverged_points"] == 3


def test_diverged_points_are_marked_and_spread_separately():
  run = experiments.sweep("sgd", "lr=1e-2:1e6:2", **TASK)
  low, high = run.rows
  assert not low["diverged"] and high["diverged"]
  assert high["train_loss"] == math.inf and high["diverged_seeds"] == 1
  (point,) = [p for p in run.points if p["value"] == 1e6]
  assert point["diverged_step"] >= 1
  assert not np.isfinite(point["losses"][point["diverged_step"] - 1])
  assert run.spreads["sgd"]["spread"] == math.inf
  assert run.spreads["sgd"]["spread_non_diverged"] == 1.0


def test_grid_batches(swept):
  experiment = studies._experiment(studies.Task(**TASK), studies._load(
      studies.Task(**TASK)), seed=1)
  count = lambda text, key: len(experiment._grid_groups(
      options.parse([text])[0], key, (0.1, 0.2, 0.3)))
  assert count("adam", "lr") == 1  # traced into the constructor
  assert count("adam/sgd", "lr") == 1  # a learned initial value: in the state
  assert count("adam/sgd", "beta1") == 1
  assert count("adam/sgd", "log_eps") == 3  # closed over: one batch each


def test_sweep_command_writes_csv_summary_and_figure(tmp_path, capsys):
  out = tmp_path / "sweep"
  code = cli.main(["sweep", "--optimizers", "sgd,sgd/sgd", "--grid",
                   "lr=1e-2:1:2", "--seeds", "1", "--epochs", "1",
                   "--hidden-size", "8", "--hidden-layers", "1", "--out",
                   str(out), "--quiet"])
  assert code == 0
  printed = capsys.readouterr().out
  assert "spread max/min" in printed and "sgd/sgd" in printed
  with open(out / "sweep.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [(r["optimizer"], float(r["value"])) for r in rows] == [
      ("sgd", 0.01), ("sgd", 1.0), ("sgd/sgd", 0.01), ("sgd/sgd", 1.0)]
  with open(out / "summary.json") as f:
    summary = json.load(f)
  assert summary["complete"] is True
  assert set(summary["spreads"]) == {"sgd", "sgd/sgd"}
  os.remove(out / "robustness.png")
  assert cli.main(["plot", str(out)]) == 0
  assert mpl_image.imread(out / "robustness.png")[..., :3].std() > 0.05


@pytest.mark.parametrize("options_", [dict(batched=False), dict(devices=2)])
def test_one_at_a_time_and_two_devices_match_the_batched_grid(options_):
  task = TASK | dict(epochs=1)
  reference = experiments.sweep("adam,sgd/sgd", "lr=1e-3:1e-1:2", **task)
  other = experiments.sweep("adam,sgd/sgd", "lr=1e-3:1e-1:2",
                            **(task | options_))
  for ours, theirs in zip(other.points, reference.points):
    np.testing.assert_allclose(ours["losses"], theirs["losses"], rtol=2e-5)


@pytest.mark.parametrize("call, error, message", [
    (lambda: experiments.compare("sgd", batch_size=0), studies.StudyError,
     "batch_size must be an integer >= 1, got batch_size=0"),
    (lambda: experiments.compare("sgd", devices=0), studies.StudyError,
     "devices must be an integer >= 1, got devices=0"),
    (lambda: experiments.compare("sgd", task="foo"), studies.StudyError,
     "task must be one of logreg, mlp, cnn, got task='foo'"),
    (lambda: experiments.compare("sgd", hidden_size=0), studies.StudyError,
     "hidden_size must be None"),
    (lambda: experiments.compare("sgd", channels=()), studies.StudyError,
     "channels must be a non-empty sequence"),
    (lambda: experiments.compare("sgd", init="xavier"), studies.StudyError,
     "init must be one of torch, flax"),
    (lambda: experiments.compare([]), options.OptimizerError,
     "the optimizer list is empty"),
    (lambda: experiments.compare("sgd", seed=2**32), studies.StudyError,
     "seed: a seed must be an integer in [0, 2**32)"),
    (lambda: experiments.sweep("sgd", "lr=1e-3:1:3", seeds=()),
     studies.StudyError, "seeds: give at least one seed"),
    (lambda: experiments.sweep("sgd", "lr=1e-3:1:3", seeds=(1, 1)),
     studies.StudyError, "seeds lists seed 1 more than once"),
    (lambda: experiments.sweep("sgd", "lr=1e-3:1:3", seeds=(True,)),
     studies.StudyError, "seeds: a seed must be an integer"),
    (lambda: experiments.sweep("sgd", "lr=1e-3:1:3", epochs=0),
     studies.StudyError, "epochs must be an integer >= 1"),
])
def test_python_entry_points_check_what_the_command_line_checks(
    call, error, message, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(error) as raised:
    call()
  assert message in str(raised.value)


def test_numpy_integers_are_integers_to_the_python_entry_points(tmp_path):
  run = experiments.sweep("sgd", "lr=1e-2:1e-1:2", seeds=np.array([3, 4]),
                          epochs=np.int64(1), hidden_size=np.int32(4),
                          hidden_layers=1, out=str(tmp_path / "out"))
  assert [row["seeds"] for row in run.rows] == [2, 2]
  with open(tmp_path / "out" / "summary.json") as f:
    config = json.load(f)["config"]
  assert config["seeds"] == [3, 4] and config["epochs"] == 1


@pytest.mark.parametrize("task", ["logreg", "mlp", "cnn"])
def test_task_config_builds_the_same_task(task):
  config = studies.Task(task=task).config()
  assert studies.Task(**config).config() == config
