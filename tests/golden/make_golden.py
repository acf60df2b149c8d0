"""Writes golden/torch_reference.npz: the torch side of every parity case.

Run from the repository root with torch, torch-optimizer and expectigrad
installed::

  python tests/golden/make_golden.py

Keys are "<case>/<dtype>/p<k>" (leaf k at `CHECKPOINTS`) and
"<case>/<dtype>/lr" (the rate after every step); "_versions" records the
packages that produced them.
"""

import importlib.metadata
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch_reference


def main():
  arrays = {}
  for name, case in torch_reference.CASES.items():
    for dtype in torch_reference.DTYPES:
      for key, value in torch_reference.run_torch(case, dtype).items():
        arrays[f"{name}/{dtype}/{key}"] = value
  arrays["_versions"] = np.array([
      f"{package}=={importlib.metadata.version(package)}"
      for package in ("torch", "torch-optimizer", "expectigrad", "numpy")])
  np.savez_compressed(torch_reference.GOLDEN_PATH, **arrays)
  print(f"wrote {len(arrays)} arrays to {torch_reference.GOLDEN_PATH}")


if __name__ == "__main__":
  main()
