"""Measures the parity of optax_extras with the upstream PyTorch code.

Runs every parity case of the test suite (tests/torch_reference.py: diffGrad,
Expectigrad, SGD-HD, Adam-HD for 200 steps in float64 and float32;
tests/test_gdtuo.py: gdtuo stacks for 60 steps of an MLP in float64) against
the live upstream torch code (the stored golden runs of that code when torch
or an upstream package is missing) and writes the largest relative
difference of each to docs/migration/parity_results.md, which the migration
guides include.

Run from the repository root: ``python docs/parity.py``.
"""

from __future__ import annotations

import contextlib
import pathlib
import platform
import sys
import time
import warnings

import jax
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import optax_extras  # noqa: E402  pylint: disable=wrong-import-position
import test_gdtuo  # noqa: E402  pylint: disable=wrong-import-position
import test_hypergradient  # noqa: E402  pylint: disable=wrong-import-position
import torch_reference as ref  # noqa: E402  pylint: disable=wrong-import-position

OUT = ROOT / "docs" / "migration" / "parity_results.md"
UPSTREAM = {
    "diffgrad": "`torch_optimizer.DiffGrad`",
    "expectigrad": "`expectigrad.pytorch.Expectigrad`",
    # Not on the package index: the tests run hypergrad/sgd_hd.py and
    # adam_hd.py as restated in tests/torch_reference.py.
    "sgd_hd": "`hypergrad.SGDHD`",
    "adam_hd": "`hypergrad.AdamHD`",
}
LEARNED_RATE = ("sgd_hd", "adam_hd")


def _hparams(values: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in values.items())


def flat_case_rows(algo: str) -> list[str]:
  """One table row per parity case of `algo`: params and learned rate."""
  rows = []
  for name in ref.cases_for(algo):
    case = ref.CASES[name]
    cells, sources = [], set()
    for learned_rate in (False, True)[:1 + (algo in LEARNED_RATE)]:
      for dtype in ref.DTYPES:
        source, torch_run, jax_run = ref.parity_runs(name, dtype)
        sources.add(source)
        keys = [k for k in torch_run if (k == "lr") == learned_rate]
        diff = max(ref.max_relative_difference(jax_run[k], torch_run[k])
                   for k in keys)
        cells.append(f"{diff:.1e}")
    note = " (global dot product)" if case.reference == "global_dot" else ""
    rows.append(f"| `{name}`{note} | {_hparams(case.hparams)} | "
                + " | ".join(cells) + f" | {'/'.join(sorted(sources))} |")
  return rows


def per_tensor_rows() -> list[str]:
  """adam_hd on the test suite's MLP against AdamHD's per-tensor loop, with
  hypergradient="per_tensor" and, for contrast, the default "global"."""
  hd = test_hypergradient
  rows = []
  for case, hparams in hd.MLP_CASES.items():
    for mode in ("per_tensor", "global"):
      cells = []
      for dtype in ref.DTYPES:
        torch_run, jax_run = hd._mlp_runs(case, dtype, mode)  # pylint: disable=protected-access
        cells += [
            f"{hd._max_tensor_relative_difference(jax_run, torch_run):.1e}",  # pylint: disable=protected-access
            f"{ref.max_relative_difference(jax_run['lr'], torch_run['lr']):.1e}"]
      rows.append(f"| `{case}` | {_hparams(hparams)} | `{mode}` | "
                  + " | ".join(cells) + " |")
  return rows


def gdtuo_rows() -> list[str]:
  """One row per gdtuo case: final weights and learned hyperparameters."""
  rows = []
  source = "live" if test_gdtuo.LIVE else "golden"
  for case, build in test_gdtuo.golden.CASES.items():
    reference = test_gdtuo.reference(case)
    with jax.enable_x64(True):
      params, state = test_gdtuo.train(build(optax_extras.gdtuo,
                                             test_gdtuo.per_param),
                                       test_gdtuo.inputs())
      weights = max(ref.max_relative_difference(params[name], reference[name])
                    for name in test_gdtuo.golden.NAMES)
      learned = [ref.max_relative_difference(float(value), reference[key])
                 for key, value in test_gdtuo.flat_hyperparameters(
                     state).items()]
    learned_cell = f"{max(learned):.1e}" if learned else "(none)"
    rows.append(f"| `{case}` | {weights:.1e} | {learned_cell} | {source} |")
  return rows


def _versions() -> str:
  versions = [f"JAX {jax.__version__}", f"optax {optax.__version__}"]
  with contextlib.suppress(ImportError):
    import torch  # pylint: disable=import-outside-toplevel
    versions.append(f"torch {torch.__version__}")
  return ", ".join(versions)


def main() -> None:
  start = time.perf_counter()
  lines = [
      "<!-- Written by `python docs/parity.py`; do not edit by hand. -->",
      "<!-- begin header -->",
      f"Measured with `python docs/parity.py` on {platform.machine()} "
      f"({platform.processor() or 'CPU'}), {_versions()}. "
      "Each number is the largest relative difference "
      "`max |ours - upstream| / |upstream|` over every element of every "
      "parameter (or the learned rate) at steps 1, 2, 10, 50 and 200 of "
      "the test suite's problem (tests/torch_reference.py), against the "
      "upstream torch code run live (`live`) or its stored run (`golden`). "
      "The tests assert 1e-12 (float64) and 1e-5 (float32). "
      "`hypergrad` is not on the package index: its SGDHD and AdamHD run "
      "as restated, loops and all, in tests/torch_reference.py.",
      "<!-- end header -->",
      "",
  ]
  for algo, upstream in UPSTREAM.items():
    rate_columns = (" learned rate float64 | learned rate float32 |"
                    if algo in LEARNED_RATE else "")
    lines += [
        f"<!-- begin {algo} -->",
        f"### `optax_extras.{algo}` against {upstream}",
        "",
        "| case | hyperparameters | params float64 | params float32 |"
        + rate_columns + " upstream run |",
        "| --- " * (5 + 2 * (algo in LEARNED_RATE)) + "|",
        *flat_case_rows(algo),
        f"<!-- end {algo} -->",
        "",
    ]
  lines += [
      "<!-- begin adam_hd_per_tensor -->",
      "### `optax_extras.adam_hd(hypergradient=...)` against `hypergrad.AdamHD` "
      "on an MLP",
      "",
      "AdamHD updates the rate inside its loop over tensors; "
      "`hypergradient=\"per_tensor\"` does the same. The test suite's MLP "
      f"(tests/test_hypergradient.py), {test_hypergradient.MLP_STEPS} steps. "
      "Params: `max |ours - upstream| / max |upstream|` per tensor (weights "
      "and biases pass near zero), the largest over tensors and steps "
      f"{', '.join(map(str, test_hypergradient.MLP_CHECKPOINTS))}; learned "
      "rate: relative, every step. The default `\"global\"` (the paper's "
      "one dot product) is shown for contrast: it is a different algorithm "
      "on several tensors.",
      "",
      "| case | hyperparameters | hypergradient | params float64 "
      "| learned rate float64 | params float32 | learned rate float32 |",
      "| --- | --- | --- | --- | --- | --- | --- |",
      *per_tensor_rows(),
      "<!-- end adam_hd_per_tensor -->",
      "",
  ]
  lines += [
      "<!-- begin gdtuo -->",
      "### `optax_extras.gdtuo` against `gradient_descent_the_ultimate_optimizer`",
      "",
      "A 6-8-3 tanh MLP trained for 60 steps in float64 with gdtuo's "
      "`ModuleWrapper` and with the same expression over `optax_extras.gdtuo` "
      "(tests/test_gdtuo.py, which asserts 1e-9): the final weights and every "
      "learned hyperparameter of every level.",
      "",
      "| stack | weights | learned hyperparameters | upstream run |",
      "| --- | --- | --- | --- |",
      *gdtuo_rows(),
      "<!-- end gdtuo -->",
      "",
  ]
  OUT.write_text("\n".join(lines))
  print(f"wrote {OUT} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  warnings.simplefilter("ignore")  # upstream torch code's deprecations
  main()
