"""Command line, machine line and output shared by the benchmark scripts.

Importing this module puts the checkout that holds it first on ``sys.path``,
so a benchmark measures this checkout's optax_extras even where another copy
is installed: scripts import it before optax_extras.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import shlex
import sys

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))


def parser(doc: str) -> argparse.ArgumentParser:
  """An argument parser with the options every benchmark takes.

  ``--out PATH`` writes the markdown report there (without it the report is
  only printed, so committed results are rewritten only when named) and
  ``--quick`` runs a small, fast version.
  """
  summary, _, details = doc.partition("\n")
  result = argparse.ArgumentParser(
      description=summary, epilog=details.strip(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  result.add_argument(
      "--out", type=pathlib.Path, default=None,
      help="write the markdown report to this file (default: print only; "
      "e.g. --out benchmarks/results/NAME.md to refresh the committed one)")
  result.add_argument("--quick", action="store_true",
                      help="a small, fast run (smoke test, noisy numbers)")
  result.add_argument("--note", default=None,
                      help="a sentence added under the report's title, e.g. "
                      "on the load of the machine during the run")
  return result


def command_line() -> str:
  """The command that started this process, as one can paste it: with the
  JAX and XLA settings of its environment that change what is measured (a
  persistent compilation cache, XLA flags, the platform)."""
  settings = [f"{name}={shlex.quote(value)}"
              for name, value in sorted(os.environ.items())
              if name.startswith("JAX_") or name == "XLA_FLAGS"]
  return " ".join(settings + ["python"] + [shlex.quote(a) for a in sys.argv])


def machine_line() -> str:
  """One line naming the machine and the library versions."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  cpu = platform.processor() or platform.machine()
  model = _cpu_model()
  if model:
    cpu = model
  return (f"Machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPU "
          f"cores; jax {jax.__version__} ({jax.default_backend()}: "
          f"{jax.devices()[0].device_kind}), optax {optax.__version__}.")


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def emit(report: str, args: argparse.Namespace) -> None:
  """Prints the report and writes it to ``args.out`` when given.

  ``args.note``, when given, goes under the report's title line.
  """
  if args.note:
    title, _, rest = report.partition("\n")
    report = f"{title}\n\n{args.note}\n{rest}"
  out = args.out
  print(report)
  if out is not None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"wrote {out}")


_NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element",
                "bitcast"}
_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2,
               "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
               "u64": 8}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][\w-]*)\((.*?)\)(?:,|$)")
_ARRAY_TYPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def _type_bytes(type_text: str) -> int:
  """Bytes of an HLO type: ``f32[64,64]{1,0}`` or a tuple of them."""
  total = 0
  for dtype, dims in _ARRAY_TYPE.findall(type_text):
    size = 1
    for dim in filter(None, dims.split(",")):
      size *= int(dim)
    total += size * _ITEM_BYTES.get(dtype, 4)
  return total


def entry_kernels(hlo_text: str) -> list[tuple[str, int, int]]:
  """The kernels of a compiled module's entry computation: instructions that
  run code (fusions, copies, reductions; not parameters, constants, tuples,
  bitcasts), as ``(opcode, bytes written, bytes read)``: each kernel's
  output and operands, whole (XLA:CPU writes one array per kernel)."""
  entry = hlo_text[hlo_text.index("\nENTRY"):]
  types, found = {}, []
  for line in entry.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, type_text, opcode, operands = match.groups()
    types[name] = _type_bytes(type_text)
    if opcode not in _NOT_KERNELS:
      names = re.findall(r"%([\w.\-]+)", operands)
      found.append((opcode, types[name],
                    sum(types.get(operand, 0) for operand in names)))
  return found
