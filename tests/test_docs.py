"""The README and the documentation: every Python code block runs as written,
and every public name has its API page.

Each ```python block of the README runs alone, in a fresh namespace (readers
copy one). The blocks of a docs page run in order in one namespace (a page
reads top to bottom). All run in a temporary working directory. A block that imports a
module that is not installed (torch, an upstream package, TensorFlow) is
skipped, and so is a later block that reads a name only a skipped block
defines (a NameError after a skip). Shell blocks are not run.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import linecache
import pathlib
import re
import sys
import textwrap

import jax
import pytest

import optax_extras

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(
    p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
_OPENING = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})python *$")


def python_blocks(text: str) -> list[tuple[int, str]]:
  """(first line number, dedented code) of each ```python block of `text`."""
  blocks, lines, index = [], text.splitlines(), 0
  while index < len(lines):
    opening = _OPENING.match(lines[index])
    index += 1
    if not opening:
      continue
    indent, fence = opening["indent"], opening["fence"]
    start = index
    while index < len(lines) and lines[index].strip() != fence:
      index += 1
    code = "\n".join(line.removeprefix(indent) for line in lines[start:index])
    blocks.append((start + 1, textwrap.dedent(code)))
    index += 1
  return blocks


def missing_modules(code: str) -> list[str]:
  """Top-level modules that `code` imports and that are not installed."""
  names = set()
  for node in ast.walk(ast.parse(code)):
    if isinstance(node, ast.Import):
      names.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split(".")[0])
  return sorted(n for n in names if importlib.util.find_spec(n) is None)


CODE_PAGES = [p for p in PAGES if python_blocks(p.read_text())]


def _page_id(page: pathlib.Path) -> str:
  return str(page.relative_to(ROOT))


def test_the_pages_with_code_are_found():
  expected = {"README.md", "docs/quickstart.md", "docs/how_it_works.md",
              "docs/migration/diffgrad.md", "docs/migration/expectigrad.md",
              "docs/migration/hypergrad.md", "docs/migration/gdtuo.md",
              "docs/migration/pytorch.md"}
  assert expected <= {_page_id(p) for p in CODE_PAGES}


def test_block_extraction_handles_indented_and_nested_fences():
  text = textwrap.dedent("""\
      ```python
      a = 1
      ```
      ```bash
      rm -rf /
      ```
      ::::{grid-item}
        ````python
        if a:
          b = 2
        ````
      ::::
      """)
  assert python_blocks(text) == [(2, "a = 1"), (9, "if a:\n  b = 2")]


def test_missing_modules_reads_every_import_form():
  code = "import os, no_such_module_a\nfrom no_such_module_b.x import y\n"
  assert missing_modules(code) == ["no_such_module_a", "no_such_module_b"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
  """A temporary working directory; the page's changes to JAX's x64 flag
  and torch's default dtype are undone afterwards."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  x64 = jax.config.jax_enable_x64
  torch = sys.modules.get("torch")
  torch_dtype = torch.get_default_dtype() if torch else None
  yield
  jax.config.update("jax_enable_x64", x64)
  if "torch" in sys.modules:
    sys.modules["torch"].set_default_dtype(torch_dtype or
                                           sys.modules["torch"].float32)


@pytest.mark.parametrize("page", CODE_PAGES, ids=_page_id)
def test_code_blocks_run(page, isolated):  # pylint: disable=unused-argument
  blocks = python_blocks(page.read_text())
  independent_blocks = page.name == "README.md"
  namespace, skipped = {"__name__": "__docs__"}, []
  for line, code in blocks:
    if independent_blocks:
      namespace = {"__name__": "__docs__"}
    missing = missing_modules(code)
    if missing:
      skipped.append(f"line {line} needs {', '.join(missing)}")
      continue
    filename = f"{_page_id(page)}, block at line {line}"
    # Tracebacks show the block's lines.
    linecache.cache[filename] = (len(code), None, code.splitlines(True),
                                 filename)
    try:
      exec(compile(code, filename, "exec"), namespace)  # pylint: disable=exec-used
    except NameError as error:
      if independent_blocks or not skipped:
        raise
      skipped.append(f"line {line} needs a skipped block ({error})")
  if len(skipped) == len(blocks):
    pytest.skip("; ".join(skipped))


def _load_docs_extension(name: str):
  spec = importlib.util.spec_from_file_location(
      name, DOCS / "_ext" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


api_coverage = _load_docs_extension("api_coverage")


@pytest.mark.parametrize("docname", api_coverage.PAGES)
def test_every_public_name_is_on_its_api_page(docname):
  module = pytest.importorskip(api_coverage.PAGES[docname])
  source = (DOCS / f"{docname}.rst").read_text()
  built = api_coverage.with_unlisted_names(source, module)
  names = api_coverage.public_names(module)
  assert names
  for name in names:
    assert (name in api_coverage.listed_names(source)
            or f":: {module.__name__}.{name}\n" in built), name


def test_a_public_name_missing_from_its_page_is_appended():
  source = "Title\n=====\n\n.. autosummary::\n\n   diffgrad\n"
  built = api_coverage.with_unlisted_names(source, optax_extras)
  assert built.startswith(source.rstrip("\n"))
  assert ".. autofunction:: optax_extras.diffgrad" not in built
  assert ".. autofunction:: optax_extras.adam_hd\n" in built
  assert ".. autoclass:: optax_extras.Learned\n" in built
  assert "optax_extras.gdtuo\n" not in built  # a submodule has its own page

