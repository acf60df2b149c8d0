"""The ``optax-extras`` parser for the docs, and its epilogs as literal text.

sphinx-argparse renders a subcommand's epilog as reStructuredText, but the
command's epilogs are preformatted text (``RawDescriptionHelpFormatter``): the
``parser`` here is the command's parser without them, and the
``cli-epilogs`` directive shows each as the terminal does.
"""

import argparse

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from optax_extras.experiments import cli


def _subcommands(top: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
  for action in top._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      return dict(action.choices)
  return {}


def parser() -> argparse.ArgumentParser:
  """`cli.parser()` with the subcommands' epilogs removed."""
  top = cli.parser()
  for subcommand in _subcommands(top).values():
    subcommand.epilog = None
  return top


class CliEpilogs(SphinxDirective):
  """One section per subcommand with an epilog: the epilog, verbatim."""

  def run(self):
    sections = []
    for name, subcommand in _subcommands(cli.parser()).items():
      if not subcommand.epilog:
        continue
      title = f"More on optax-extras {name}"
      section = nodes.section(ids=[nodes.make_id(f"epilog-{name}")])
      section += nodes.title(title, title)
      section += nodes.literal_block(text=subcommand.epilog.rstrip())
      sections.append(section)
    return sections


def setup(app):
  app.add_directive("cli-epilogs", CliEpilogs)
  return {"parallel_read_safe": True}
