"""Tests of what a study leaves behind: its own run folder, files written as
each optimizer finishes, diverged runs, learned hyperparameters of every
level, the figures and `optax-extras plot`, `--version`, a light `--help`,
the multi-process options and the Python API."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpl_image

from optax_extras import experiments
from optax_extras.experiments import cli
from optax_extras.experiments import results
from optax_extras.experiments import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs", "1", "--hidden-size", "8", "--hidden-layers", "1",
        "--quiet"]
TINY_TASK = dict(epochs=1, hidden_size=8, hidden_layers=1)


def _summary(out):
  with open(os.path.join(out, "summary.json")) as f:
    return json.load(f)


# --- run folders ----------------------------------------------------------------


def test_default_out_is_a_fresh_numbered_folder_per_run(tmp_path, monkeypatch,
                                                        capsys):
  monkeypatch.chdir(tmp_path)
  for _ in range(2):
    assert cli.main(["compare", "--optimizers", "sgd", *TINY]) == 0
  base = tmp_path / "runs" / "compare-mlp-digits"
  assert sorted(os.listdir(base)) == ["run-001", "run-002"]
  for run in ("run-001", "run-002"):
    assert _summary(base / run)["complete"] is True
  assert "runs/compare-mlp-digits/run-002" in capsys.readouterr().out


def test_non_empty_out_is_refused_without_overwrite(tmp_path, capsys):
  out = tmp_path / "out"
  assert cli.main(["compare", "--optimizers", "sgd,adam", "--out", str(out),
                   *TINY]) == 0
  before = sorted(os.listdir(out))
  assert cli.main(["compare", "--optimizers", "sgd_hd", "--out", str(out),
                   *TINY]) == 2
  err = capsys.readouterr().err
  assert f"--out {out} is not empty" in err and "--overwrite" in err
  assert sorted(os.listdir(out)) == before


def test_overwrite_removes_only_the_earlier_runs_files(tmp_path):
  out = tmp_path / "out"
  assert cli.main(["compare", "--optimizers", "sgd,adam", "--out", str(out),
                   *TINY]) == 0
  (out / "notes.txt").write_text("mine")
  assert cli.main(["compare", "--optimizers", "sgd_hd", "--out", str(out),
                   "--overwrite", *TINY]) == 0
  assert sorted(os.listdir(out)) == sorted([
      "notes.txt", "sgd_hd.csv", "summary.csv", "summary.json", "paper.png",
      "log_loss.png"])
  assert [r["optimizer"] for r in _summary(out)["results"]] == ["sgd_hd"]


def test_overwrite_refuses_a_folder_no_run_wrote(tmp_path, capsys):
  (tmp_path / "thesis.tex").write_text("precious")
  code = cli.main(["compare", "--optimizers", "sgd", "--out", str(tmp_path),
                   "--overwrite", *TINY])
  assert code == 2
  assert "holds no summary.json of an earlier run" in capsys.readouterr().err
  assert os.listdir(tmp_path) == ["thesis.tex"]


def test_out_naming_a_file_is_a_clear_error(tmp_path, capsys):
  path = tmp_path / "results.txt"
  path.write_text("x")
  assert cli.main(["compare", "--optimizers", "sgd", "--out", str(path),
                   *TINY]) == 2
  assert f"--out {path} is a file, not a folder" in capsys.readouterr().err


def test_interrupted_run_keeps_the_finished_optimizers(tmp_path, monkeypatch,
                                                       capsys):
  trained = []
  real_train = train.Experiment.train

  def train_then_interrupt(self, label, built, progress=True):
    if trained:
      raise KeyboardInterrupt
    trained.append(label)
    return real_train(self, label, built, progress)

  monkeypatch.setattr(train.Experiment, "train", train_then_interrupt)
  out = tmp_path / "out"
  code = cli.main(["compare", "--optimizers", "sgd,adam,sgd_hd", "--out",
                   str(out), *TINY])
  assert code == 130
  assert "interrupted" in capsys.readouterr().err
  summary = _summary(out)
  assert summary["complete"] is False
  assert [r["optimizer"] for r in summary["results"]] == ["sgd"]
  assert (out / "sgd.csv").exists() and not (out / "adam.csv").exists()
  assert (out / "paper.png").exists()


def test_concurrent_runs_claim_distinct_numbered_folders(tmp_path, monkeypatch):
  base = tmp_path / "runs"
  # Another run claimed run-002 between this one's listing and its mkdir.
  real_mkdir = os.mkdir

  def mkdir_after_a_competitor(path, *args, **kwargs):
    if path.endswith("run-001"):
      real_mkdir(path)
    return real_mkdir(path, *args, **kwargs)

  monkeypatch.setattr(os, "mkdir", mkdir_after_a_competitor)
  assert results.claim_run_dir(str(base)) == str(base / "run-002")
  monkeypatch.undo()
  assert results.claim_run_dir(str(base)) == str(base / "run-003")
  assert sorted(os.listdir(base)) == ["run-001", "run-002", "run-003"]


def test_a_run_that_fails_leaves_no_empty_numbered_folder(tmp_path, monkeypatch,
                                                          capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["compare", "--optimizers", "sgd", "--dataset", "mnist",
                   *TINY]) == 2
  assert "needs --data-dir" in capsys.readouterr().err
  assert not (tmp_path / "runs").exists()  # nor the folders above it
  (tmp_path / "runs" / "compare-mlp-mnist" / "run-001").mkdir(parents=True)
  assert cli.main(["compare", "--optimizers", "sgd", "--dataset", "mnist",
                   *TINY]) == 2
  assert os.listdir(tmp_path / "runs" / "compare-mlp-mnist") == ["run-001"]


@pytest.mark.parametrize("make, reason", [
    (lambda tmp: (tmp / "file").write_text("x") and str(tmp / "file" / "out"),
     "file is not a folder"),
    (lambda tmp: "/proc/optax-extras-out", "No such file or directory"),
])
def test_unusable_out_is_a_clear_error(tmp_path, capsys, make, reason):
  out = make(tmp_path)
  assert cli.main(["compare", "--optimizers", "sgd", "--out", out, *TINY]) == 2
  err = capsys.readouterr().err
  assert f"--out {out}: cannot use it" in err and reason in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_without_permission_is_a_clear_error(tmp_path, capsys):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  out = str(locked / "out")
  assert cli.main(["compare", "--optimizers", "sgd", "--out", out, *TINY]) == 2
  assert "Permission denied" in capsys.readouterr().err


def test_empty_out_is_refused(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["compare", "--optimizers", "sgd", "--out", "", *TINY]) == 2
  assert "--out is empty" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "runs")


def test_interrupt_before_any_optimizer_finished_says_nothing_written(
    tmp_path, monkeypatch, capsys):
  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(train.Experiment, "train", interrupt)
  monkeypatch.chdir(tmp_path)
  assert cli.main(["compare", "--optimizers", "sgd", *TINY]) == 130
  err = capsys.readouterr().err
  assert "nothing written" in err and "complete" not in err
  assert not (tmp_path / "runs").exists()  # the empty folders are removed


def test_labels_with_the_same_file_stem_get_distinct_csvs(tmp_path):
  writer = results.RunWriter(str(tmp_path), {})
  for label in ("x/y", "x:y"):
    writer.add(results.Result(label, ("Loss",), [(1.0,)], {}))
  csvs = [entry["csv"] for entry in writer.entries]
  assert csvs[0] == "x-y.csv" and csvs[1].startswith("x-y-")
  assert sorted(os.listdir(tmp_path)) == sorted(
      csvs + ["summary.csv", "summary.json"])


# --- divergence and learned hyperparameters -------------------------------------


@pytest.fixture(scope="module")
def diverging_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("diverging") / "out"
  run = experiments.compare(["sgd:lr=1e6", "adam/sgd/sgd"], out=str(out),
                            epochs=2, hidden_size=8, hidden_layers=1)
  return run, out


def test_diverged_run_stops_and_says_so_everywhere(diverging_run, capsys):
  run, out = diverging_run
  diverged, other = run.results
  step = diverged.summary["diverged_step"]
  assert diverged.summary["diverged"] is True and step >= 1
  loss = diverged.table()["Loss"]
  assert len(loss) == step + 1  # rows stop at the first non-finite loss
  assert not np.isfinite(loss[-1]) and np.all(np.isfinite(loss[:-1]))
  entry = _summary(out)["results"][0]
  assert entry["diverged"] is True and entry["diverged_step"] == step
  assert entry["train_loss"] is None  # NaN: no final loss
  assert other.summary["diverged"] is False
  assert np.isfinite(other.summary["train_loss"])
  assert f"diverged@{step}" in results.table(run.results)
  runs = results.read_run(str(out))
  assert [r.diverged_step for r in runs] == [step, None]


def test_diverged_run_is_marked_in_the_legend():
  from optax_extras.experiments import plots
  run = results.Curves("sgd:lr=1e+06", {}, 3)
  assert plots.legend_label(run) == "sgd:lr=1e+06 (diverged at step 3)"


def test_every_level_of_a_stack_is_logged(diverging_run):
  run, out = diverging_run
  stack = run.results[1]
  assert stack.columns[:9] == results.COLUMNS
  assert stack.columns[9:] == ("L1.alpha", "L1.beta1", "L1.beta2", "L2.alpha")
  header, values = results.read_csv(os.path.join(out, "adam-sgd-sgd.csv"))
  table = dict(zip(header, values.T))
  np.testing.assert_array_equal(table["L1.alpha"], table["Alpha"])
  assert table["L2.alpha"][0] == pytest.approx(1e-5)
  assert not np.all(table["L2.alpha"] == table["L2.alpha"][0])  # learned
  assert not np.all(table["L1.beta1"] == table["L1.beta1"][0])


def test_python_api_returns_states_and_params(diverging_run):
  import optax_extras
  stack = diverging_run[0].results[1]
  levels = optax_extras.hyperparameters(stack.final_state)
  assert float(levels[0]["alpha"]) == pytest.approx(stack.rows[-1][6])
  assert (jax_leaves(stack.final_params)[0].shape
          == jax_leaves(stack.init_params)[0].shape)


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


# --- figures and `plot` -----------------------------------------------------------


def test_plot_redraws_the_figures_from_the_csvs(diverging_run, capsys):
  _, out = diverging_run
  for name in ("paper.png", "log_loss.png"):
    os.remove(out / name)
  assert cli.main(["plot", str(out)]) == 0
  for name in ("paper.png", "log_loss.png"):
    pixels = mpl_image.imread(out / name)
    assert pixels[..., :3].std() > 0.05


def test_paper_figure_rate_axis_is_logarithmic_and_legend_outside(tmp_path):
  from matplotlib.figure import Figure
  from optax_extras.experiments import plots
  saved = []
  monkey = pytest.MonkeyPatch()
  monkey.setattr(Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
  columns = {c: np.array([0.0, 1.0, 2.0]) for c in results.COLUMNS}
  columns["Alpha"] = columns["AlphaEpoch"] = np.array([1e-3, 2e-3, 4e-3])
  try:
    plots.plot_paper([results.Curves("sgd_hd", columns, None)], "x.png", "t")
  finally:
    monkey.undo()
  (fig,) = saved
  axes = fig.axes
  rate_axes = [ax for ax in axes if ax.get_ylabel() == "Learning rate"]
  assert rate_axes and all(ax.get_yscale() == "log" for ax in rate_axes)
  assert not any(ax.get_legend() for ax in axes)  # no legend on the data
  assert fig.legends
  assert all(not ax.child_axes for ax in axes)  # no inset over the curves


def test_plot_of_a_folder_without_a_run_exits_2(tmp_path, capsys):
  assert cli.main(["plot", str(tmp_path)]) == 2
  assert "holds no summary.json" in capsys.readouterr().err


def _damaged(run, summary=None, csv_text=None):
  """A copy of a finished comparison with its summary.json or sgd's CSV
  replaced."""
  import shutil
  out = run.parent / f"damaged-{len(os.listdir(run.parent))}"
  shutil.copytree(run, out)
  if summary is not None:
    (out / "summary.json").write_text(
        summary if isinstance(summary, str) else json.dumps(summary))
  if csv_text is not None:
    (out / "sgd.csv").write_text(csv_text)
  return out


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("small") / "run"
  experiments.compare("sgd", out=str(out), **TINY_TASK)
  return out


@pytest.mark.parametrize("damage, message", [
    (lambda s: {}, "is damaged"),
    (lambda s: "{not json", "does not load as JSON"),
    (lambda s: [1, 2], "is damaged"),
    (lambda s: s | {"files": [1]}, "is damaged"),
    (lambda s: s | {"files": "summary.csv"}, "is damaged"),
    (lambda s: s | {"results": [s["results"][0] | {"csv": "/etc/passwd"}]},
     "is damaged"),
    (lambda s: s | {"results": [s["results"][0] | {"csv": "../x.csv"}]},
     "is damaged"),
])
def test_plot_of_a_damaged_summary_exits_2(small_run, capsys, damage, message):
  out = _damaged(small_run, damage(_summary(small_run)))
  assert cli.main(["plot", str(out)]) == 2
  assert message in capsys.readouterr().err


@pytest.mark.parametrize("csv_text, message", [
    ("", "is empty"),
    ("Epoch,Loss\n1,x\n", "not a CSV of numbers"),
    ("Epoch,Loss\n1,2,3\n", "line 2 has 3 values, the header 2"),
    ("Epoch,Loss\n1,2\n\n", "line 3 has 0 values, the header 2"),
    ("Epoch,Loss\n1,2\n", "lacks the column(s) Iteration"),
])
def test_plot_of_a_malformed_csv_exits_2(small_run, capsys, csv_text, message):
  out = _damaged(small_run, csv_text=csv_text)
  assert cli.main(["plot", str(out)]) == 2
  assert message in capsys.readouterr().err


def test_csv_linking_out_of_the_run_folder_is_refused(small_run, tmp_path,
                                                      capsys):
  out = _damaged(small_run)
  os.remove(out / "sgd.csv")
  (tmp_path / "elsewhere.csv").write_text("secret")
  os.symlink(tmp_path / "elsewhere.csv", out / "sgd.csv")
  assert cli.main(["plot", str(out)]) == 2
  assert "not a file name inside the run folder" in capsys.readouterr().err


def test_plot_of_a_sweep_without_sweep_csv_exits_2(tmp_path, capsys):
  (tmp_path / "summary.json").write_text(json.dumps(
      {"config": {"command": "sweep"}, "files": ["sweep.csv"]}))
  assert cli.main(["plot", str(tmp_path)]) == 2
  assert "holds no sweep.csv" in capsys.readouterr().err


def test_overwrite_never_removes_what_a_damaged_summary_names(small_run,
                                                             capsys):
  out = _damaged(small_run, _summary(small_run) | {
      "files": "summary.csv"})
  for name in ("s", "u"):
    (out / name).write_text("mine")
  before = sorted(os.listdir(out))
  assert cli.main(["compare", "--optimizers", "sgd", "--out", str(out),
                   "--overwrite", *TINY]) == 2
  assert "is damaged" in capsys.readouterr().err
  assert sorted(os.listdir(out)) == before


# --- the command line itself -------------------------------------------------------


def _run_module(*args):
  return subprocess.run([sys.executable, "-m", "optax_extras.experiments",
                         *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


def test_version():
  import optax_extras
  completed = _run_module("--version")
  assert completed.returncode == 0
  assert completed.stdout.strip() == f"optax-extras {optax_extras.__version__}"


def test_help_imports_no_flax_and_initialises_no_jax_backend():
  code = (
      "import sys\n"
      "from optax_extras.experiments import cli\n"
      "for argv in (['--help'], ['compare', '--help'], ['sweep', '--help']):\n"
      "  try:\n"
      "    cli.main(argv)\n"
      "  except SystemExit:\n"
      "    pass\n"
      "from jax._src import xla_bridge\n"
      "heavy = [m for m in ('flax', 'tqdm', 'matplotlib', 'sklearn')\n"
      "         if m in sys.modules]\n"
      "print('HEAVY', heavy, 'BACKENDS', list(xla_bridge._backends))\n")
  completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
  assert completed.returncode == 0, completed.stderr
  assert "HEAVY [] BACKENDS []" in completed.stdout


def test_results_and_plots_do_not_import_train():
  code = ("import sys\nfrom optax_extras.experiments import results, plots\n"
          "print('flax' in sys.modules, 'tqdm' in sys.modules,"
          " 'optax_extras.experiments.train' in sys.modules)\n")
  completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
  assert completed.stdout.split() == ["False", "False", "False"]


def test_help_says_why_defaults_differ_from_the_library():
  completed = _run_module("compare", "--help")
  text = " ".join(completed.stdout.split())
  assert "Defaults are the papers' settings (run.sh), not the library's" in text
  assert "1e-7 for adam_hd (optax_extras.adam_hd: 1e-8" in text
  assert "--init {torch,flax}" in text


@pytest.mark.parametrize("argv, message", [
    (["--coordinator-address", "host:1234"], "go together"),
    (["--num-processes", "2", "--process-id", "0"], "go together"),
    (["--coordinator-address", "host", "--num-processes", "2",
      "--process-id", "0"], "HOST:PORT"),
    (["--coordinator-address", "host:0", "--num-processes", "2",
      "--process-id", "0"], "port in 1..65535"),
    (["--coordinator-address", "host:1234", "--num-processes", "2",
      "--process-id", "2"], "--process-id must be in [0, 2)"),
    (["--coordinator-address", "host:1234", "--num-processes", "2",
      "--process-id", "-1"], "--process-id must be in [0, 2)"),
])
def test_multi_process_options_are_checked(argv, message, capsys, tmp_path):
  code = cli.main(["compare", "--optimizers", "sgd", "--out",
                   str(tmp_path / "out"), *argv, *TINY])
  assert code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_multi_process_options_start_the_runtime(monkeypatch, tmp_path):
  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize",
                      lambda *args: calls.append(args))
  code = cli.main(["compare", "--optimizers", "sgd", "--out",
                   str(tmp_path / "out"), "--coordinator-address",
                   "localhost:12345", "--num-processes", "1", "--process-id",
                   "0", *TINY])
  assert code == 0
  assert calls == [("localhost:12345", 1, 0)]


@pytest.mark.parametrize("process, message", [
    (0, "is not empty"),
    (1, "process 0 stopped: its output folder is not usable"),
])
def test_a_bad_out_stops_every_process(process, message, monkeypatch,
                                       tmp_path, capsys):
  import jax
  (tmp_path / "mine.txt").write_text("x")
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args: None)
  said = []

  def broadcast_from_process_0(failed):
    said.append(failed)
    return failed if process == 0 else True  # process 0's failure

  monkeypatch.setattr(cli, "_process_0_failed", broadcast_from_process_0)
  code = cli.main(["compare", "--optimizers", "sgd", "--out", str(tmp_path),
                   "--coordinator-address", "localhost:12345",
                   "--num-processes", "2", "--process-id", str(process),
                   "--devices", str(jax.device_count()), *TINY])
  assert code == 2 and message in capsys.readouterr().err
  assert said == [process == 0]
