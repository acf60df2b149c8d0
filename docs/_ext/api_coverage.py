"""Every public name on its API page, also one the page does not list yet.

The API pages (docs/api/*.rst) group the public names of a module in
``autosummary`` tables. When a public name is added to the module but not yet
to its page, this extension appends an "Other names" section documenting it,
so the site always covers every public name; tests/test_docs.py checks it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types

# API page (docname) -> the module whose public names it documents.
PAGES = {
    "api/optax_extras": "optax_extras",
    "api/gdtuo": "optax_extras.gdtuo",
    "api/torch": "optax_extras.torch",
    "api/experiments": "optax_extras.experiments",
}
_LISTED = re.compile(r"^   (\w+)$", flags=re.MULTILINE)


def public_names(module: types.ModuleType) -> list[str]:
  """`__all__` (or the public functions and classes defined in `module`),
  without submodules."""
  names = getattr(module, "__all__", None) or [
      name for name, value in vars(module).items()
      if not name.startswith("_")
      and getattr(value, "__module__", None) == module.__name__
      and (inspect.isfunction(value) or inspect.isclass(value))]
  return [name for name in names
          if not inspect.ismodule(getattr(module, name))]


def listed_names(page_source: str) -> set[str]:
  """The names listed in the autosummary tables of an API page."""
  return set(_LISTED.findall(page_source))


def with_unlisted_names(page_source: str, module: types.ModuleType) -> str:
  """`page_source` plus an autodoc entry for each public name it lacks."""
  unlisted = [name for name in public_names(module)
              if name not in listed_names(page_source)]
  if not unlisted:
    return page_source
  entries = []
  for name in unlisted:
    value = getattr(module, name)
    kind = ("class" if inspect.isclass(value)
            else "function" if callable(value) else "data")
    entries.append(f".. auto{kind}:: {module.__name__}.{name}\n")
  return (page_source.rstrip("\n") + "\n\nOther names\n-----------\n\n"
          + "\n".join(entries))


def _add_unlisted_names(app, docname, source):  # pylint: disable=unused-argument
  if docname not in PAGES:
    return
  try:
    module = importlib.import_module(PAGES[docname])
  except ImportError:  # optax_extras.torch without torch: autodoc mocks it.
    return
  source[0] = with_unlisted_names(source[0], module)


def setup(app):
  app.connect("source-read", _add_unlisted_names)
  return {"parallel_read_safe": True}
