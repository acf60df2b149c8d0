"""Sphinx configuration of the optax-extras documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(needs the ``docs`` extra: ``pip install -e ".[docs]"``). The shape follows
optax's and flax's docs: sphinx-book-theme, autodoc + autosummary with
Google-style docstrings (napoleon), MyST markdown pages, MathJax.
"""

import importlib.util
import os
import sys

# The checkout's package, not an installed copy.
sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

import optax_extras  # noqa: E402

project = "optax-extras"
author = "The optax-extras authors"
copyright = "The optax-extras authors"  # pylint: disable=redefined-builtin
release = optax_extras.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_design",
    "sphinxarg.ext",
    "cli_reference",
    "api_coverage",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "migration/parity_results.md"]
templates_path = ["_templates"]

# The docstrings write `name` for Python objects, as optax's do.
default_role = "py:obj"
# `hyperparameters` is public in both optax_extras and optax_extras.gdtuo; a
# bare reference to it may resolve to either page, which is fine.
suppress_warnings = ["ref.python"]

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Show optax's and chex's type aliases by name, not expanded.
autodoc_type_aliases = {
    name: name for name in (
        "optax.ScalarOrSchedule", "optax.Updates", "optax.Params",
        "optax.OptState", "optax.Schedule", "chex.Array", "jax.typing.ArrayLike",
        "ArrayLike")
}
autodoc_default_options = {"show-inheritance": False}
# optax_extras.torch imports torch, which is an optional dependency.
autodoc_mock_imports = [] if importlib.util.find_spec("torch") else ["torch"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_enable_extensions = ["colon_fence", "dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = f"optax-extras {release}"
html_static_path = ["_static"]
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
