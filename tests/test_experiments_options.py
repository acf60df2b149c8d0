"""Tests of the study tool's optimizer lists: names, options, ranges, grids."""

import os

import numpy as np
import optax
import pytest

from optax_extras.experiments import cli
from optax_extras.experiments import optimizers
from optax_extras.experiments import options


def test_list_syntax_names_and_options():
  choices = options.parse(
      ["sgd,adam_hd:lr=0.001,hypergrad_lr=1e-7,adam", "nadam:b1=0.8"])
  assert [c.name for c in choices] == ["sgd", "adam_hd", "adam", "nadam"]
  assert choices[1].options == {"lr": 0.001, "hypergrad_lr": 1e-7}
  assert choices[3].options == {"b1": 0.8}
  assert choices[1].label == "adam_hd:lr=0.001,hypergrad_lr=1e-07"


@pytest.mark.parametrize("name", list(options.FLAT))
def test_every_named_optimizer_builds_and_steps(name):
  (choice,) = options.parse([name])
  built = optimizers.build(choice)
  params = {"w": np.ones(3, np.float32), "b": np.zeros(2, np.float32)}
  state = built.tx.init(params)
  grads = {"w": np.full(3, 0.5, np.float32), "b": np.ones(2, np.float32)}
  updates, state = built.tx.update(grads, state, params)
  assert np.all(np.asarray(updates["w"]) < 0)
  assert float(built.rate(state)) > 0


def test_stack_parses_into_levels():
  (choice,) = options.parse(["rmsprop/adam:lr=0.001/1e-4,gamma=0.9/"])
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
     ("SGD", {"optimizer": ("SGD", {"alpha": options.HYPER_LEVEL_LR,
                                    "optimizer": ("SGD", {
                                        "alpha": options.HYPER_LEVEL_LR})})})),
    ("rmsprop/adam:gamma=0.9/,lr=/1e-3",
     ("RMSProp", {"gamma": 0.9, "optimizer": ("Adam", {"alpha": 1e-3})})),
    ("adagrad/adam:beta1=/0.8",
     ("AdaGrad", {"optimizer": ("Adam", {"alpha": options.HYPER_LEVEL_LR,
                                         "beta1": 0.8})})),
])
def test_stack_builds_nested_gdtuo_constructors(text, expected):
  (choice,) = options.parse([text])
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
  with pytest.raises(options.OptimizerError) as error:
    options.parse([text])
  assert message in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("sgd:lr=-1", "sgd: lr must be a finite number > 0, got lr=-1.0."),
    ("sgd:lr=nan", "sgd: lr must be a finite number > 0, got lr=nan."),
    ("adam:lr=inf", "adam: lr must be a finite number > 0, got lr=inf."),
    ("adam:b1=2", "adam: b1 must be in [0, 1), got b1=2.0."),
    ("adam_hd:b1=1.5", "adam_hd: b1 must be in [0, 1), got b1=1.5."),
    ("sgdn:momentum=1", "sgdn: momentum must be in [0, 1), got momentum=1.0."),
    ("rmsprop:decay=-0.1", "rmsprop: decay must be in [0, 1), got decay=-0.1."),
    ("sgd_hd:hypergrad_lr=-1e-3", "sgd_hd: hypergrad_lr must be a finite "
     "number >= 0, got hypergrad_lr=-0.001."),
    ("adam:weight_decay=-1", "adam: weight_decay must be a finite number >= 0"),
    ("adam:eps=-1e-8", "adam: eps must be a finite number >= 0"),
    ("adam/sgd:lr=-1/1e-5", "adam/sgd (level 1, adam): lr must be a finite "
     "number > 0, got lr=-1.0."),
    ("adam/sgd:lr=/-1e-5", "adam/sgd (level 2, sgd): lr must be a finite "
     "number > 0, got lr=-1e-05."),
    ("sgd/sgd/sgd:mu=//1.5", "sgd/sgd/sgd (level 3, sgd): mu must be in "
     "[0, 1), got mu=1.5."),
    ("rmsprop/adam:gamma=2/", "rmsprop/adam (level 1, rmsprop): gamma must "
     "be in [0, 1), got gamma=2.0."),
    ("adam/adam:beta1=/1", "adam/adam (level 2, adam): beta1 must be in "
     "[0, 1), got beta1=1.0."),
    ("adam/sgd:log_eps=inf/", "log_eps must be a finite number, got "
     "log_eps=inf."),
])
def test_every_option_of_every_level_is_range_checked(text, message):
  with pytest.raises(options.OptimizerError) as error:
    options.parse([text])
  assert message in str(error.value)


@pytest.mark.parametrize("text", [
    "sgd:lr=-1", "sgd:lr=nan", "adam:lr=inf", "adam:b1=2",
    "adam/sgd:lr=-1/1e-5"])
def test_bad_values_exit_2_before_training(text, capsys, tmp_path):
  out = tmp_path / "out"
  code = cli.main(["compare", "--optimizers", text, "--out", str(out)])
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith("optax-extras compare: error: ")
  assert "must be" in err and "got" in err
  assert not out.exists()  # nothing was prepared, let alone trained


def test_the_range_table_covers_every_option_of_every_optimizer():
  names = {k for defaults in options.FLAT.values() for k in defaults}
  names |= {k for _, level in options.LEVELS.values() for k in level}
  assert names <= set(options.RANGES)


@pytest.mark.parametrize("name", list(options.FLAT))
def test_every_default_is_in_its_range(name):
  for key, value in options.FLAT[name].items():
    assert options.check_value(name, key, value) == value



def test_optax_tree_get_reads_the_logged_rate():
  built = optimizers.build(options.parse(["adam_hd:lr=0.02"])[0])
  state = built.tx.init({"w": np.ones(2, np.float32)})
  assert float(built.rate(state)) == pytest.approx(
      float(optax.tree.get(state, "learning_rate"))) == pytest.approx(0.02)


def test_learned_names_every_level_of_a_stack():
  built = optimizers.build(options.parse(["adam/adam/sgd"])[0])
  state = built.tx.init({"w": np.ones(2, np.float32)})
  assert sorted(built.learned(state)) == [
      "L1.alpha", "L1.beta1", "L1.beta2", "L2.alpha", "L2.beta1", "L2.beta2"]
  built = optimizers.build(options.parse(["sgdn_hd"])[0])
  assert list(built.learned(built.tx.init({"w": np.ones(2)}))) == [
      "L1.learning_rate"]


def test_weight_decay_is_coupled_l2_before_the_rescaling():
  params = {"w": np.array([2.0, -1.0], np.float32)}
  grads = {"w": np.array([0.5, 0.25], np.float32)}
  built = optimizers.build(options.parse(["adam:weight_decay=0.1"])[0])
  updates, _ = built.tx.update(grads, built.tx.init(params), params)
  reference = optax.adam(1e-3)
  expected, _ = reference.update(
      {"w": grads["w"] + 0.1 * params["w"]}, reference.init(params))
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)


# --- grids --------------------------------------------------------------------


def test_grid_is_log_spaced_from_low_to_high():
  grid = options.parse_grid("lr=1e-4:1e-1:7")
  assert grid.name == "lr" and len(grid.values) == 7
  assert grid.values[0] == 1e-4 and grid.values[-1] == pytest.approx(1e-1)
  np.testing.assert_allclose(np.diff(np.log(grid.values)),
                             np.log(10) / 2, rtol=1e-5)


@pytest.mark.parametrize("text, message", [
    ("lr=1e-4:1e-1", "--grid must be NAME=LOW:HIGH:N"),
    ("lr=a:1:3", "LOW and HIGH must be numbers"),
    ("lr=1:0.1:3", "needs 0 < LOW < HIGH"),
    ("lr=0:1:3", "needs 0 < LOW < HIGH"),
    ("lr=1e-3:1:1", "N >= 2"),
    ("lr=1e-3:1.0000001e-3:3", "the value 0.001 comes more than once"),
])
def test_bad_grids_say_what_is_wrong(text, message):
  with pytest.raises(options.OptimizerError, match=message):
    options.parse_grid(text)


def test_grid_values_are_range_checked_and_the_option_must_exist():
  with pytest.raises(options.OptimizerError,
                     match=r"adam \(--grid\): b1 must be in \[0, 1\), got "
                     "b1=1.5"):
    options.check_grid(options.parse(["adam"]),
                       options.parse_grid("b1=0.5:1.5:3"))
  with pytest.raises(options.OptimizerError, match="'momentum' is not an "
                     "option of adam"):
    options.check_grid(options.parse(["sgdn,adam"]),
                       options.parse_grid("momentum=0.1:0.9:3"))


def test_sweep_with_a_bad_grid_value_exits_2(capsys):
  code = cli.main(["sweep", "--optimizers", "sgdn", "--grid",
                   "momentum=0.5:2:3"])
  err = capsys.readouterr().err
  assert code == 2 and "sgdn (--grid): momentum must be in [0, 1)" in err


@pytest.mark.parametrize("text", ["sgd:lr=0.5", "adam/sgd:lr=0.5/"])
def test_grid_over_an_option_the_list_fixes_is_refused(text):
  with pytest.raises(options.OptimizerError, match=r"--grid sets lr of every "
                     r"optimizer, but .* fixes lr=0.5"):
    options.check_grid(options.parse([text]), options.parse_grid("lr=1e-3:1:3"))
  # The grid may still range over an option the list fixes on another level.
  options.check_grid(options.parse(["adam/sgd:lr=/0.5"]),
                     options.parse_grid("lr=1e-3:1:3"))


@pytest.mark.parametrize("text", ["sgd:lr=0.1,lr=0.2",
                                  "adam/sgd:lr=1/,lr=/2"])
def test_an_option_given_twice_is_refused(text):
  with pytest.raises(options.OptimizerError, match="option lr of .* is given "
                     "twice"):
    options.parse([text])


def test_empty_optimizer_list_is_refused():
  with pytest.raises(options.OptimizerError, match="the optimizer list is "
                     "empty"):
    options.parse([])


@pytest.mark.parametrize("argv, message", [
    (["compare", "--seed", "-1"], "--seed: a seed must be an integer in "
     "[0, 2**32), got -1"),
    (["compare", "--seed", str(2**32)], f"got {2**32}"),
    (["compare", "--seed", "9" * 30], "got " + "9" * 30),
    (["sweep", "--optimizers", "sgd", "--grid", "lr=1e-3:1e-2:3", "--seeds",
      "1,2,1"], "--seeds lists seed 1 more than once"),
])
def test_bad_seeds_exit_2_naming_the_option(argv, message, capsys, tmp_path):
  assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out")
