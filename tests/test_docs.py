"""The documentation's sources: an API page for every public module, and
docstrings that point to pages which exist. (CI builds the documentation
itself with ``python -m sphinx -W``.)"""

import pkgutil
import re
from pathlib import Path

import pytest

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


def public_api() -> dict:
    """Every public object: the package's names, each public module's
    ``__all__``, and the public methods and properties of their classes."""
    import dataclasses
    import importlib
    import inspect

    found = {f"fastmoe.{name}": getattr(fastmoe, name) for name in fastmoe.__all__
             if name != "__version__"}
    for module in pkgutil.iter_modules(fastmoe.__path__):
        if module.name.startswith("_"):
            continue
        mod = importlib.import_module(f"fastmoe.{module.name}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    objects = {}
    for name, obj in found.items():
        if any(obj is seen for seen in objects.values()):
            continue
        objects[name] = obj
        if not inspect.isclass(obj):
            continue
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) \
            else set(getattr(obj, "_fields", ()))
        for attr, member in vars(obj).items():
            if attr.startswith("_") or attr in fields:
                continue
            if inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod,
                                                                 property)):
                objects[f"{name}.{attr}"] = member
    return objects


def test_the_public_api_passes_numpydoc_validation():
    """Every public function and method describes each of its parameters and
    what it returns; every public class, method and property has a
    docstring; no docstring documents a parameter that does not exist
    (numpydoc's checks PR01, PR02, PR07, RT01, RT03 and GL08). Result
    classes (dataclasses and named tuples) document their fields as
    Attributes."""
    import dataclasses
    import inspect

    validate = pytest.importorskip("numpydoc.validate").validate
    objects = public_api()
    assert len(objects) > 100
    found = []
    for name, obj in objects.items():
        if inspect.isfunction(obj) or isinstance(obj, (classmethod, staticmethod)):
            codes = {"PR01", "PR02", "PR07", "RT01", "RT03", "GL08"}
        elif isinstance(obj, property) or dataclasses.is_dataclass(obj) \
                or hasattr(obj, "_fields"):
            codes = {"GL08"}
        else:  # a class with its own constructor: the estimators, the exceptions
            codes = {"PR01", "PR02", "PR07", "GL08"}
        found += [f"{name}: {code} {message}" for code, message in validate(name)["errors"]
                  if code in codes]
    assert found == [], "\n".join(found)
