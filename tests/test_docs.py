"""The documentation's sources: an API page for every public module, and
docstrings that point to pages which exist. (CI builds the documentation
itself with ``python -m sphinx -W``.)"""

import pkgutil
import re
from pathlib import Path

import fastmoe

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_public_module_has_an_api_page():
    public = {m.name for m in pkgutil.iter_modules(fastmoe.__path__)
              if not m.name.startswith("_")}
    api = (DOCS / "api.rst").read_text()
    block = api.split("Modules\n-------", 1)[1]
    listed = set(re.findall(r"^   ([a-z_]+)$", block, flags=re.M))
    assert listed == public


def test_method_sections_cited_in_the_code_exist():
    method = (DOCS / "method.rst").read_text()
    sections = {int(n) for n in re.findall(r"^(\d+)\. ", method, flags=re.M)}
    root = Path(fastmoe.__file__).parent
    cited = set()
    for path in list(root.rglob("*.py")) + list(root.rglob("*.h")):
        for ref in re.findall(r"docs/method\.rst, sections? (\d+)(?:-(\d+))?", path.read_text()):
            cited |= {int(n) for n in ref if n}
    assert cited and cited <= sections
