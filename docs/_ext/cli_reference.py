"""The ``fastmoe-cli`` directive: the command line's reference, generated
from its argparse parser (``fastmoe.cli.build_parser``), one section per
command with its full help."""

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class CliReference(SphinxDirective):
    has_content = False

    def run(self):
        from fastmoe.cli import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if getattr(a, "choices", None)
                   and "demo" in a.choices)
        lines = []
        for name, p in sub.choices.items():
            p.prog = f"fastmoe {name}"
            title = f"fastmoe {name}"
            lines += [title, "-" * len(title), "", ".. code-block:: text", ""]
            lines += ["   " + line for line in p.format_help().splitlines()]
            lines.append("")
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source="fastmoe.cli"), self.content_offset,
                                node, match_titles=True)
        return node.children


def setup(app):
    app.add_directive("fastmoe-cli", CliReference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
