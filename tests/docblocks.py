"""The Python code blocks of the README (markdown) and of the documentation
(reStructuredText), for the tests that run them as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path


def blocks_of(path: Path) -> list[str]:
    """The Python code blocks of a markdown or reStructuredText file, in order."""
    text = Path(path).read_text()
    if Path(path).suffix == ".md":
        return re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return [textwrap.dedent(b) for b in
            re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|[ \t]*\n)+)", text)]
