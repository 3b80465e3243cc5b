"""The package's structure, drawn from its imports (function-level ones too)."""

import ast
from pathlib import Path

import fastmoe

ROOT = Path(fastmoe.__file__).parent


def _imports() -> dict:
    """module -> the fastmoe modules it imports (relative imports)."""
    names = {}
    for f in ROOT.rglob("*.py"):
        parts = ("fastmoe",) + f.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    edges = {}
    for name, f in names.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for cand in [target] + [f"{target}.{a.name}" for a in node.names]:
                    if cand in names and cand not in (name, "fastmoe"):
                        found.add(cand)
        edges[name] = found
    return edges


def test_no_import_circle():
    edges = _imports()
    state, circles = {}, []

    def visit(u, path):
        state[u] = "open"
        for v in sorted(edges[u]):
            if state.get(v) == "open":
                circles.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert circles == []


def test_the_engine_layer_imports_nothing_above_it():
    edges = _imports()
    above = {"fastmoe." + m for m in ("aggregation", "baselines", "server", "machine",
                                      "distributed", "model_selection", "moe", "studies",
                                      "diagnostics", "cli", "health")}
    for low in ("engine", "_em", "_gating", "_reduction", "_gate_refit", "_params", "_kernels",
                "_linalg", "_runtime", "_validation", "io", "message", "metrics"):
        assert not edges["fastmoe." + low] & above, low


#: the most decisions one function may hold (radon's cyclomatic complexity):
#: beyond it a reader cannot keep the function in their head
MAX_COMPLEXITY = 25


def test_no_function_is_too_complex_to_read():
    import pytest

    cc_visit = pytest.importorskip("radon.complexity").cc_visit
    over = [f"{f.relative_to(ROOT)}: {block.fullname} ({block.complexity})"
            for f in sorted(ROOT.rglob("*.py"))
            for block in cc_visit(f.read_text())
            if block.complexity > MAX_COMPLEXITY]
    assert over == []


def test_the_protocol_is_split_by_side():
    """What runs on a machine is in fastmoe.machine, what runs on the server
    in fastmoe.server; the machine's side needs nothing of the server's, and
    the old fastmoe.protocol names still resolve, with a warning naming
    their new home."""
    import pytest

    import fastmoe.machine
    import fastmoe.protocol
    import fastmoe.server

    edges = _imports()
    assert "fastmoe.server" not in edges["fastmoe.machine"]
    for name in fastmoe.machine.__all__:
        with pytest.warns(DeprecationWarning, match=f"fastmoe.machine.{name}"):
            assert getattr(fastmoe.protocol, name) is getattr(fastmoe.machine, name)
    for name in ("aggregate_messages", "read_messages", "refine_step", "pooled_support"):
        with pytest.warns(DeprecationWarning, match=f"fastmoe.server.{name}"):
            assert getattr(fastmoe.protocol, name) is getattr(fastmoe.server, name)
    with pytest.raises(AttributeError):
        _ = fastmoe.protocol.no_such_name
