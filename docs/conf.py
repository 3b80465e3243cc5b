"""Sphinx configuration of fastmoe's documentation.

Build: ``pip install ".[docs]"`` then ``python -m sphinx -W -b html docs <dir>``.
"""

import os
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).parent
# document the installed fastmoe (with its compiled kernels), not the source
# tree that ``python -m sphinx`` run from the repository's root would import
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent.resolve()]
try:
    import fastmoe
except ImportError as exc:
    raise ImportError(f"the documentation needs fastmoe installed: pip install '.[docs]' "
                      f"({exc})") from exc
sys.path.insert(0, str(HERE / "_ext"))

project = "fastmoe"
author = "fastmoe developers"
copyright = "2026, fastmoe developers"
release = version = fastmoe.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "cli_reference",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "examples"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "Fast mixture-of-experts regression, centralised and "
                      "distributed", "fixed_sidebar": True}

autosummary_generate = True
# a module's page lists its __all__: the public API, not its helpers
autosummary_ignore_module_all = False
# scikit-learn's metadata-routing setters and its score carry scikit-learn's
# cross-references; they are documented there
# the estimators' pages show the methods of fastmoe's prediction mixin, not
# those of scikit-learn's bases or of the builtin bases of the exceptions and
# named tuples
autodoc_default_options = {"members": True,
                           "inherited-members": "BaseEstimator, RegressorMixin, "
                           "ClassifierMixin, BaseException, tuple, object",
                           "exclude-members": "set_fit_request, set_score_request, "
                           "set_predict_request, set_predict_proba_request, score, "
                           "get_metadata_routing"}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

# The examples run at build time (each in seconds); their plots land in the
# gallery. They are plain scripts: users write no main guard.
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}


# intersphinx: the projects' published inventories, with a small offline
# fallback (the names these pages link to) for builds without a network, so
# that -W holds on both.
_OBJECTS = {
    "numpy": ("https://numpy.org/doc/stable/", {
        "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html"),
        "numpy.random.Generator": ("py:class",
                                   "reference/random/generator.html#numpy.random.Generator"),
    }),
    "scipy": ("https://docs.scipy.org/doc/scipy/", {
        "scipy.optimize.linear_sum_assignment": (
            "py:function", "reference/generated/scipy.optimize.linear_sum_assignment.html"),
    }),
    "sklearn": ("https://scikit-learn.org/stable/", {
        "sklearn.base.BaseEstimator": (
            "py:class", "modules/generated/sklearn.base.BaseEstimator.html"),
        "sklearn.base.RegressorMixin": (
            "py:class", "modules/generated/sklearn.base.RegressorMixin.html"),
    }),
    "matplotlib": ("https://matplotlib.org/stable/", {
        "matplotlib.axes.Axes": ("py:class", "api/_as_gen/matplotlib.axes.Axes.html"),
        "matplotlib.pyplot.subplots": (
            "py:function", "api/_as_gen/matplotlib.pyplot.subplots.html"),
    }),
}


def _offline_inventory(name, objects) -> str:
    """Write a Sphinx v2 inventory of ``objects`` and return its path."""
    out = HERE / "_build_inventories"
    out.mkdir(exist_ok=True)
    lines = "".join(f"{obj} {role} 1 {uri} -\n" for obj, (role, uri) in objects.items())
    head = f"# Sphinx inventory version 2\n# Project: {name}\n# Version: \n" \
           "# The remainder of this file is compressed using zlib.\n"
    path = out / f"{name}.inv"
    path.write_bytes(head.encode() + zlib.compress(lines.encode()))
    return str(path)


_online = os.environ.get("FASTMOE_DOCS_OFFLINE") != "1"
intersphinx_mapping = {
    name: (url, ((None,) if _online else ()) + (_offline_inventory(name, objects),))
    for name, (url, objects) in _OBJECTS.items()
}
intersphinx_timeout = 5
